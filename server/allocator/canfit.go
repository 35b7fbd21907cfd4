package allocator

import (
	"fmt"
	"time"

	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

// CanFitRequest asks whether the budget holds more nodes.
type CanFitRequest struct {
	SubnetID         string
	AvailabilityZone string
	NodeCount        int
	PodsPerNode      int
	// InstanceType, when set, also checks the type's per-node limits and counts the extra ENI
	// primaries the pods need.
	InstanceType string
}

// CanFitResult says whether the nodes fit and, if not, why.
type CanFitResult struct {
	Fits bool
	// Needed is what the nodes need in all; PerNode what one node needs: its own address, the
	// primaries of extra ENIs, its pods and the warm floor.
	Needed, PerNode int
	// Available is the headroom of the subnets considered.
	Available int
	Reasons   []string
	Budgets   []ledger.Budget
}

// CanFit answers from the ledger alone (any replica can): a node lands in one subnet, so each
// subnet holds floor(headroom / per-node need) nodes, and the nodes fit when the subnets
// considered hold them all together.
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
	var res CanFitResult
	var typeReasons, subnetReasons []string
	extraENIs := 0
	if req.InstanceType != "" {
		t, ok := instancetypes.Lookup(req.InstanceType)
		if !ok {
			return CanFitResult{}, invalid("instance_type", "unknown instance type %q", req.InstanceType)
		}
		if max := t.MaxENIsPerCard() * t.SecondaryIPsPerENI(); req.PodsPerNode > max {
			typeReasons = append(typeReasons, fmt.Sprintf("%s holds at most %d pod addresses in secondary-IP mode; %d pods per node do not fit on one node", t.Name, max, req.PodsPerNode))
		}
		if slots := t.SecondaryIPsPerENI(); slots > 0 {
			extraENIs = max(0, ceilDiv(req.PodsPerNode+defaultAdaptiveFloor, slots)-1)
		}
	}
	res.PerNode = 1 + extraENIs + req.PodsPerNode + defaultAdaptiveFloor
	res.Needed = res.PerNode * req.NodeCount
	room := 0
	for _, b := range led.Budgets(now) {
		if (req.SubnetID != "" && b.SubnetID != req.SubnetID) || (req.SubnetID == "" && b.AvailabilityZone != req.AvailabilityZone) {
			continue
		}
		res.Budgets = append(res.Budgets, b)
		res.Available += b.Headroom
		n := b.Headroom / res.PerNode
		room += n
		if n < req.NodeCount {
			limit := "its free addresses"
			if b.MaxHeld > 0 && b.MaxHeld-(b.Held+b.PrewarmReserved) <= b.Free-b.KeepFree {
				limit = fmt.Sprintf("its budget cap of %d", b.MaxHeld)
			} else if b.KeepFree > 0 {
				limit = fmt.Sprintf("its free addresses less the %d kept free", b.KeepFree)
			}
			subnetReasons = append(subnetReasons, fmt.Sprintf("%s (%s) has headroom %d under %s: room for %d of %d nodes needing %d addresses each",
				b.SubnetID, b.AvailabilityZone, b.Headroom, limit, n, req.NodeCount, res.PerNode))
		}
	}
	if len(res.Budgets) == 0 {
		where := req.SubnetID
		if where == "" {
			where = "availability zone " + req.AvailabilityZone
		}
		return CanFitResult{}, fmt.Errorf("%w: the cluster uses no subnet in %s", ErrNotFound, where)
	}
	// A type limit fails every node; a subnet's shortfall matters only when the subnets
	// considered do not hold the nodes together.
	res.Reasons = typeReasons
	if room < req.NodeCount {
		res.Reasons = append(res.Reasons, subnetReasons...)
		if len(res.Budgets) > 1 {
			res.Reasons = append(res.Reasons, fmt.Sprintf("together the %d subnets hold %d of %d nodes", len(res.Budgets), room, req.NodeCount))
		}
	}
	res.Fits = len(res.Reasons) == 0
	return res, nil
}
