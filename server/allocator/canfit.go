package allocator

import (
	"fmt"
	"time"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

// CanFitRequest asks whether the budget holds more nodes.
type CanFitRequest = policy.CanFitRequest

// CanFitResult says whether the nodes fit and, if not, why.
type CanFitResult = policy.CanFitResult

// CanFit validates the request and answers from the ledger's budgets alone (any replica can;
// the arithmetic is policy.CanFit).
func CanFit(led *ledger.Ledger, req CanFitRequest, now time.Time) (CanFitResult, error) {
	if (req.SubnetID == "") == (req.AvailabilityZone == "") {
		return CanFitResult{}, invalid("subnet_id", "give exactly one of subnet_id and availability_zone")
	}
	if req.NodeCount < 1 || req.NodeCount > 100000 {
		return CanFitResult{}, invalid("node_count", "%d is outside 1..100000", req.NodeCount)
	}
	if req.PodsPerNode < 0 || req.PodsPerNode > 1000 {
		return CanFitResult{}, invalid("pods_per_node", "%d is outside 0..1000", req.PodsPerNode)
	}
	if _, ok := instancetypes.Lookup(req.InstanceType); req.InstanceType != "" && !ok {
		return CanFitResult{}, invalid("instance_type", "unknown instance type %q", req.InstanceType)
	}
	res := policy.CanFit(led.Budgets(now), req)
	if len(res.Budgets) == 0 {
		where := req.SubnetID
		if where == "" {
			where = "availability zone " + req.AvailabilityZone
		}
		return CanFitResult{}, fmt.Errorf("%w: the cluster uses no subnet in %s", ErrNotFound, where)
	}
	return res, nil
}
