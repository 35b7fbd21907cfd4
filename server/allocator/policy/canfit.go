package policy

import (
	"fmt"

	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

// CanFitRequest asks whether the budget holds more nodes (the caller validates it).
type CanFitRequest struct {
	SubnetID         string
	AvailabilityZone string
	NodeCount        int
	PodsPerNode      int
	// InstanceType, when set (and known to the instance type table), also checks the type's
	// per-node limits and counts the extra ENI primaries the pods need.
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
	// Budgets are the subnets considered (none: the cluster uses no subnet the request names).
	Budgets []ledger.Budget
}

// CanFit answers from subnet budgets alone: a node lands in one subnet, so each subnet holds
// floor(headroom / per-node need) nodes, and the nodes fit when the subnets considered hold them
// all together.
func CanFit(budgets []ledger.Budget, req CanFitRequest) CanFitResult {
	var res CanFitResult
	var typeReasons, subnetReasons []string
	extraENIs := 0
	if t, ok := instancetypes.Lookup(req.InstanceType); ok {
		if max := t.MaxENIsPerCard() * t.SecondaryIPsPerENI(); req.PodsPerNode > max {
			typeReasons = append(typeReasons, fmt.Sprintf("%s holds at most %d pod addresses in secondary-IP mode; %d pods per node do not fit on one node", t.Name, max, req.PodsPerNode))
		}
		if slots := t.SecondaryIPsPerENI(); slots > 0 {
			extraENIs = max(0, CeilDiv(req.PodsPerNode+DefaultAdaptiveFloor, slots)-1)
		}
	}
	res.PerNode = 1 + extraENIs + req.PodsPerNode + DefaultAdaptiveFloor
	res.Needed = res.PerNode * req.NodeCount
	room := 0
	for _, b := range budgets {
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
	return res
}

// PodFitRequest asks whether nodes of a policy with pod subnets fit: the nodes' own addresses
// (and the pods on their primary ENI, without custom networking) in their own subnets, their
// pods' ENIs in the pod subnets, each ENI whole in one subnet, spilling over from one pod
// subnet to the next as placement does.
type PodFitRequest struct {
	NodeCount, PodsPerNode int
	// SlotsPerENI, PodENIs (ENIs for pods, the primary included unless PrimaryUnused).
	SlotsPerENI, PodENIs int
	PrimaryUnused        bool
	// NodeBudgets are the subnets the nodes start in; PodBudgets their zone's pod subnets.
	NodeBudgets, PodBudgets []ledger.Budget
}

// PodFitResult is CanFitResult with how many ENIs each pod subnet takes (PodBudgets' order).
type PodFitResult struct {
	CanFitResult
	PodSubnetENIs []int
}

// CanFitPods answers a PodFitRequest from the budgets alone.
func CanFitPods(req PodFitRequest) PodFitResult {
	var res PodFitResult
	slots := max(req.SlotsPerENI, 1)
	pods := req.PodsPerNode + DefaultAdaptiveFloor
	onPrimary := 0
	if !req.PrimaryUnused {
		onPrimary = min(pods, slots)
	}
	rest := pods - onPrimary
	enis := CeilDiv(rest, slots)
	secondaryENIs := req.PodENIs
	if !req.PrimaryUnused {
		secondaryENIs--
	}
	if enis > secondaryENIs {
		res.Reasons = append(res.Reasons, fmt.Sprintf("%d pods per node need %d pod ENIs of %d addresses; the type has %d", req.PodsPerNode, enis, slots, max(secondaryENIs, 0)))
	}
	nodeNeed := 1 + onPrimary
	res.PerNode = nodeNeed + enis + rest
	res.Needed = res.PerNode * req.NodeCount
	nodeRoom := 0
	for _, b := range req.NodeBudgets {
		res.Budgets = append(res.Budgets, b)
		res.Available += b.Headroom
		nodeRoom += b.Headroom / nodeNeed
	}
	if nodeRoom < req.NodeCount {
		res.Reasons = append(res.Reasons, fmt.Sprintf("the nodes' own subnets hold %d of %d nodes needing %d addresses each there", nodeRoom, req.NodeCount, nodeNeed))
	}
	room := make([]int, len(req.PodBudgets))
	for i, b := range req.PodBudgets {
		res.Budgets = append(res.Budgets, b)
		res.Available += b.Headroom
		room[i] = b.Headroom
	}
	res.PodSubnetENIs = make([]int, len(req.PodBudgets))
	placed := 0
	if len(req.PodBudgets) == 0 && enis > 0 {
		res.Reasons = append(res.Reasons, "no pod subnet in the zone")
	} else {
	nodes:
		for ; placed < req.NodeCount; placed++ {
			left := rest
			for range enis {
				size := 1 + min(left, slots)
				best := -1
				for i := range room {
					if room[i] >= size && (best < 0 || room[i] > room[best]) {
						best = i
					}
				}
				if best < 0 {
					break nodes
				}
				room[best] -= size
				res.PodSubnetENIs[best]++
				left -= size - 1
			}
		}
		if placed < req.NodeCount {
			res.Reasons = append(res.Reasons, fmt.Sprintf("the %d pod subnets hold the pod ENIs of %d of %d nodes, spilling over from one to the next", len(req.PodBudgets), placed, req.NodeCount))
		}
	}
	res.Fits = len(res.Reasons) == 0
	return res
}
