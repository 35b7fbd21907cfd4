package allocator

import (
	"context"
	"fmt"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

// LaunchHintRequest asks what a new node of a policy and instance type should carry at launch.
type LaunchHintRequest struct {
	Policy       string
	InstanceType string
	// ExpectedPods, when set, replaces the policy's observed first-minute pod starts.
	ExpectedPods *int
}

// LaunchHint computes a launch hint (policy.ComputeLaunchHint) from the policy, the instance
// type, what the policy's new nodes started in their first minute (learned on this leader) and
// the fragmentation of the subnets its nodes run in (every known subnet before any does). It
// changes nothing and calls EC2 only for an instance type it has not seen (DescribeInstanceTypes).
func (a *Allocator) LaunchHint(ctx context.Context, req LaunchHintRequest) (policy.LaunchHint, error) {
	if req.Policy == "" {
		return policy.LaunchHint{}, invalid("policy", "a node group policy name is required")
	}
	if len(req.Policy) > 63 || policy.ValidateName("policy", req.Policy) != nil {
		return policy.LaunchHint{}, invalid("policy", "%q is not a policy name (a DNS-1123 label)", req.Policy)
	}
	if _, ok := instancetypes.Lookup(req.InstanceType); !ok {
		return policy.LaunchHint{}, invalid("instance_type", "unknown instance type %q", req.InstanceType)
	}
	if e := req.ExpectedPods; e != nil && (*e < 0 || *e > 4096) {
		return policy.LaunchHint{}, invalid("expected_pods", "%d is outside 0..4096", *e)
	}
	var pol policy.Policy
	found := false
	for _, p := range a.Policies() {
		if p.Name == req.Policy {
			pol, found = p, true
		}
	}
	if !found {
		return policy.LaunchHint{}, fmt.Errorf("%w: policy %q", ErrNotFound, req.Policy)
	}
	typ, err := a.instanceType(ctx, req.InstanceType)
	if err != nil {
		return policy.LaunchHint{}, err
	}
	in := policy.LaunchInputs{Policy: pol, Type: typ}
	a.mu.Lock()
	if sp := a.policyStarts[pol.Name]; sp != nil {
		in.FirstMinute, in.Observed = sp.Prior(), sp.Len()
	}
	a.mu.Unlock()
	if req.ExpectedPods != nil {
		in.FirstMinute, in.Expected = *req.ExpectedPods, true
	}

	nodes := a.led.Nodes()
	mine := map[string]bool{}
	prefixNodes := map[string]int{}
	for _, n := range nodes {
		if n.Policy == pol.Name {
			mine[n.SubnetID] = true
		}
		if n.Mode == ledger.ModePrefix {
			prefixNodes[n.SubnetID]++
		}
	}
	now := a.now()
	for _, b := range a.led.Budgets(now) {
		if len(mine) > 0 && !mine[b.SubnetID] {
			continue
		}
		in.Subnets = append(in.Subnets, policy.LaunchSubnet{ID: b.SubnetID, Free: b.Free, FreeBlocks: b.FreePrefixes, PrefixNodes: prefixNodes[b.SubnetID]})
	}
	return policy.ComputeLaunchHint(in), nil
}
