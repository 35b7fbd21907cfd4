package allocator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ledger"
)

// fakeStore is the durable store in memory: it keeps the committed records (JSON round trips,
// as etcd stores them), numbers commits like etcd's revisions, refuses what the real store
// refuses (an invalid node record, a subnet without CIDR, a record written twice in one commit)
// and fails commits a test asks it to fail. An allocator commits through a fakeLeader, the
// Store of one leadership: after depose, that leader's commits fail with ErrNotLeader.
type fakeStore struct {
	mu       sync.Mutex
	rev      int64
	nodes    map[string]ledger.NodeRecord
	subnets  map[string]ledger.SubnetRecord
	policies map[string]policy.Policy
	prewarms map[string]ledger.PrewarmRecord
	epoch    int
	leader   *fakeLeader
	commits  int

	// fail, when set, decides the outcome of a commit: nil commits; an error that is
	// errStoreLate commits and then reports the error (the answer was lost); any other error
	// fails without writing.
	fail func() error
	// before runs first in every Commit (the lock checker hooks in here).
	before func()
}

// errStoreLate makes fakeStore.fail's commit happen although the caller sees an error.
var errStoreLate = errors.New("fake store: the commit happened but its answer was lost")

func newFakeStore() *fakeStore {
	s := &fakeStore{rev: 1, nodes: map[string]ledger.NodeRecord{}, subnets: map[string]ledger.SubnetRecord{},
		policies: map[string]policy.Policy{}, prewarms: map[string]ledger.PrewarmRecord{}}
	s.leader = &fakeLeader{s: s, epoch: s.epoch, done: make(chan struct{})}
	return s
}

// fakeLeader is one leadership's Store.
type fakeLeader struct {
	s     *fakeStore
	epoch int
	done  chan struct{}
}

var _ Store = (*fakeLeader)(nil)

func (l *fakeLeader) Done() <-chan struct{} { return l.done }

func (l *fakeLeader) Commit(ctx context.Context, changes ...Change) (int64, error) {
	return l.s.commit(ctx, l.epoch, changes)
}

// lead returns the current leadership's Store.
func (s *fakeStore) lead() *fakeLeader {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leader
}

// depose ends the current leadership (its Done closes, its commits fail with ErrNotLeader) and
// starts the next one.
func (s *fakeStore) depose() *fakeLeader {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.leader.done)
	s.epoch++
	s.leader = &fakeLeader{s: s, epoch: s.epoch, done: make(chan struct{})}
	return s.leader
}

func roundTrip[T any](v T) T {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	var out T
	if err := json.Unmarshal(b, &out); err != nil {
		panic(err)
	}
	return out
}

func (s *fakeStore) commit(ctx context.Context, epoch int, changes []Change) (int64, error) {
	if s.before != nil {
		s.before()
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var outcome error
	if s.fail != nil {
		outcome = s.fail()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if epoch != s.epoch {
		return 0, fmt.Errorf("%w: fake store: leadership %d ended", ErrNotLeader, epoch)
	}
	if outcome != nil && !errors.Is(outcome, errStoreLate) {
		return 0, outcome
	}
	seen := map[string]bool{}
	for _, c := range changes {
		key := c.Kind.String() + "/" + c.Name
		if seen[key] {
			return 0, fmt.Errorf("fake store: %s written twice in one commit", key)
		}
		seen[key] = true
		switch {
		case c.Name == "":
			return 0, fmt.Errorf("fake store: %s change without a name", c.Kind)
		case c.Kind == ChangeNode && !c.Delete:
			if err := c.Node.Validate(); err != nil {
				return 0, fmt.Errorf("fake store: node %s: %w", c.Name, err)
			}
		case c.Kind == ChangeSubnet && !c.Delete:
			if !c.Subnet.CIDR.IsValid() {
				return 0, fmt.Errorf("fake store: subnet %s without CIDR", c.Name)
			}
		}
	}
	for _, c := range changes {
		switch c.Kind {
		case ChangeNode:
			if c.Delete {
				delete(s.nodes, c.Name)
			} else {
				s.nodes[c.Name] = roundTrip(*c.Node)
			}
		case ChangeSubnet:
			if c.Delete {
				delete(s.subnets, c.Name)
			} else {
				s.subnets[c.Name] = roundTrip(*c.Subnet)
			}
		case ChangePolicy:
			if c.Delete {
				delete(s.policies, c.Name)
			} else {
				s.policies[c.Name] = roundTrip(*c.Policy)
			}
		case ChangePrewarm:
			if c.Delete {
				delete(s.prewarms, c.Name)
			} else {
				s.prewarms[c.Name] = roundTrip(*c.Prewarm)
			}
		}
	}
	s.rev++
	s.commits++
	if outcome != nil {
		return 0, outcome
	}
	return s.rev, nil
}

// state is what a new leader would load: a ledger built from the committed records (subnets,
// then nodes, then reservations, as the server builds it), the revision and the policies.
func (s *fakeStore) state() (*ledger.Ledger, int64, map[string]policy.Policy, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	led, err := BuildLedger(diff.RecordsOf(s.nodes, s.subnets, s.prewarms), ledger.Options{})
	if err != nil {
		return nil, 0, nil, err
	}
	pol := map[string]policy.Policy{}
	for k, v := range s.policies {
		pol[k] = roundTrip(v)
	}
	return led, s.rev, pol, nil
}

// records returns copies of the committed node, subnet and reservation records.
func (s *fakeStore) records() (map[string]ledger.NodeRecord, map[string]ledger.SubnetRecord, map[string]ledger.PrewarmRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, sn, p := map[string]ledger.NodeRecord{}, map[string]ledger.SubnetRecord{}, map[string]ledger.PrewarmRecord{}
	for k, v := range s.nodes {
		n[k] = roundTrip(v)
	}
	for k, v := range s.subnets {
		sn[k] = roundTrip(v)
	}
	for k, v := range s.prewarms {
		p[k] = roundTrip(v)
	}
	return n, sn, p
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
