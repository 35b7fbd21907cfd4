package allocator

import (
	"errors"
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

// CanFitPolicy answers CanFit for nodes of policy p. Without pod subnets it is CanFit. With
// them, the nodes start in req's subnet (or in the zone's subnets that are no pod subnet of p)
// and their pods' ENIs go, whole, to p's pod subnets of the zone, spilling over from one to the
// next (policy.CanFitPods); it needs the instance type.
func CanFitPolicy(led *ledger.Ledger, req CanFitRequest, p policy.Policy, now time.Time) (policy.PodFitResult, error) {
	if !p.HasPodSubnets() {
		res, err := CanFit(led, req, now)
		return policy.PodFitResult{CanFitResult: res}, err
	}
	if _, err := CanFit(led, req, now); err != nil && !errors.Is(err, ErrNotFound) {
		return policy.PodFitResult{}, err // the request's own validation
	}
	t, ok := instancetypes.Lookup(req.InstanceType)
	if !ok {
		return policy.PodFitResult{}, invalid("instance_type", "needed (a known type) with policy %q, which names pod subnets", p.Name)
	}
	zone, subnetID, vpc := req.AvailabilityZone, req.SubnetID, ""
	if subnetID != "" {
		s, ok := led.Subnet(subnetID)
		if !ok {
			return policy.PodFitResult{}, fmt.Errorf("%w: the cluster uses no subnet %s", ErrNotFound, subnetID)
		}
		zone, vpc = s.AvailabilityZone, s.VPCID
	}
	cands := p.Candidates(policy.Place{Zone: zone, SubnetID: subnetID, VPCID: vpc}, led.Subnets())
	isPod := map[string]bool{}
	for _, c := range cands {
		if !c.NodeSubnet {
			isPod[c.SubnetID] = true
		}
	}
	fit := policy.PodFitRequest{NodeCount: req.NodeCount, PodsPerNode: req.PodsPerNode, SlotsPerENI: t.SecondaryIPsPerENI(),
		PodENIs: t.MaxENIsPerCard(), PrimaryUnused: p.ExcludesPrimaryENI()}
	budgets := map[string]ledger.Budget{}
	for _, b := range led.Budgets(now) {
		budgets[b.SubnetID] = b
		if (subnetID != "" && b.SubnetID == subnetID) || (subnetID == "" && b.AvailabilityZone == zone && !isPod[b.SubnetID]) {
			fit.NodeBudgets = append(fit.NodeBudgets, b)
		}
	}
	for _, c := range cands {
		if b, ok := budgets[c.SubnetID]; ok && !c.NodeSubnet {
			fit.PodBudgets = append(fit.PodBudgets, b)
		}
	}
	if len(fit.NodeBudgets) == 0 {
		return policy.PodFitResult{}, fmt.Errorf("%w: the cluster uses no node subnet in availability zone %s", ErrNotFound, zone)
	}
	return policy.CanFitPods(fit), nil
}
