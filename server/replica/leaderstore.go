package replica

import (
	"context"
	"errors"
	"fmt"

	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/store"
)

// leaderStore is the allocator's Store: its changes become one fenced transaction of the
// leadership.
type leaderStore struct{ lead *store.Leadership }

var _ allocator.Store = leaderStore{}

func (l leaderStore) Done() <-chan struct{} { return l.lead.Done() }

func (l leaderStore) Commit(ctx context.Context, changes ...allocator.Change) (int64, error) {
	ops := make([]store.Op, 0, len(changes))
	for _, c := range changes {
		ops = append(ops, storeOp(c))
	}
	rev, err := l.lead.Commit(ctx, ops...)
	if errors.Is(err, store.ErrNotLeader) {
		return 0, fmt.Errorf("%w: %w", allocator.ErrNotLeader, err)
	}
	return rev, err
}

// storeOp is the store's write for one change of the allocator.
func storeOp(c allocator.Change) store.Op {
	switch {
	case c.Kind == allocator.ChangeNode && c.Delete:
		return store.DeleteNode(c.Name)
	case c.Kind == allocator.ChangeNode && c.Node != nil:
		return store.PutNode(*c.Node)
	case c.Kind == allocator.ChangeSubnet && c.Delete:
		return store.DeleteSubnet(c.Name)
	case c.Kind == allocator.ChangeSubnet && c.Subnet != nil:
		return store.PutSubnet(*c.Subnet)
	case c.Kind == allocator.ChangePolicy && c.Delete:
		return store.DeletePolicy(c.Name)
	case c.Kind == allocator.ChangePolicy && c.Policy != nil:
		return store.PutPolicy(api.PolicyToProto(*c.Policy))
	case c.Kind == allocator.ChangePrewarm && c.Delete:
		return store.DeletePrewarm(c.Name)
	case c.Kind == allocator.ChangePrewarm && c.Prewarm != nil:
		return store.PutPrewarm(*c.Prewarm)
	}
	return store.Op{} // the zero Op: Commit refuses it with store.ErrInvalid
}
