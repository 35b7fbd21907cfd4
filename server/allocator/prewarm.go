package allocator

import (
	"context"

	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

// attachPrewarmed attaches a ready pre-warmed ENI of the node's subnet and type, if any.
func (a *Allocator) attachPrewarmed(ctx context.Context, ns *nodeState, rec ledger.NodeRecord, device int, prio ec2gw.Priority) (bool, error) {
	return false, nil
}
