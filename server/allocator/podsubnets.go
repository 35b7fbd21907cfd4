package allocator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

// Pod subnets: a policy may put its nodes' secondary ENIs (and so their pods' addresses) in
// subnets other than the node's own (policy.PodSubnets). The subnets are checked against EC2
// when the policy is set, learnt into the ledger (so their budgets are the ledger's like any
// other), a node is refused when its policy gives its zone none, and each new ENI goes to the
// candidate policy.Rank puts first, spilling over to the next when one has no room.

// clusterVPCs are the VPCs of the subnets the cluster's nodes live in (of every known subnet
// when no node is registered yet); empty when the cluster knows none.
func (a *Allocator) clusterVPCs() map[string]bool {
	out := map[string]bool{}
	for _, n := range a.led.Nodes() {
		if s, ok := a.led.Subnet(n.SubnetID); ok && s.VPCID != "" {
			out[s.VPCID] = true
		}
	}
	if len(out) == 0 {
		for _, s := range a.led.Subnets() {
			if s.VPCID != "" {
				out[s.VPCID] = true
			}
		}
	}
	return out
}

// describeSubnet is EC2's view of one subnet (the ledger's when it knows it); ok false when EC2
// does not know it.
func (a *Allocator) describeSubnet(ctx context.Context, id string, prio ec2gw.Priority) (ledger.SubnetRecord, bool, error) {
	if s, ok := a.led.Subnet(id); ok {
		return s, true, nil
	}
	subs, err := a.gw.DescribeSubnets(ctx, prio, []string{id}, "")
	if errors.Is(err, ec2gw.ErrNotFound) || (err == nil && len(subs) == 0) {
		return ledger.SubnetRecord{}, false, nil
	}
	if err != nil {
		return ledger.SubnetRecord{}, false, ec2Err(err, id)
	}
	s := subs[0]
	return ledger.SubnetRecord{ID: s.ID, CIDR: s.CIDR, AvailabilityZone: s.AvailabilityZone, AvailabilityZoneID: s.AvailabilityZoneID, VPCID: s.VPCID, Tags: s.Tags}, true, nil
}

// taggedSubnets are the subnets of the cluster's VPCs (of every VPC when it knows none) that
// carry the policy's tags, from EC2.
func (a *Allocator) taggedSubnets(ctx context.Context, p policy.Policy, prio ec2gw.Priority) ([]string, error) {
	vpcs := slices.Sorted(maps.Keys(a.clusterVPCs()))
	if len(vpcs) == 0 {
		vpcs = []string{""}
	}
	var out []string
	for _, vpc := range vpcs {
		subs, err := a.gw.DescribeSubnets(ctx, prio, nil, vpc)
		if err != nil {
			return nil, ec2Err(err, "")
		}
		for _, s := range subs {
			if p.MatchesTags(s.Tags) {
				out = append(out, s.ID)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// checkPodSubnets refuses a policy whose pod subnets cannot be used: a subnet EC2 does not
// know, one outside the cluster's VPC, one named for a zone it is not in, tags no subnet
// carries. It returns the subnets to learn once the policy is committed.
func (a *Allocator) checkPodSubnets(ctx context.Context, p policy.Policy) ([]string, error) {
	if !p.HasPodSubnets() {
		return nil, nil
	}
	const prio = ec2gw.PriorityReconcile
	vpcs := a.clusterVPCs()
	var ids []string
	for _, n := range p.NamedSubnets() {
		s, ok, err := a.describeSubnet(ctx, n.ID, prio)
		if err != nil {
			return nil, err
		}
		bad := func(format string, args ...any) error {
			return &PodSubnetError{Policy: p.Name, Field: n.Field, Msg: fmt.Sprintf(format, args...)}
		}
		switch {
		case !ok:
			return nil, bad("EC2 does not know subnet %s", n.ID)
		case len(vpcs) > 0 && !vpcs[s.VPCID]:
			return nil, bad("subnet %s is in %s, outside the cluster's VPC (%s)", n.ID, s.VPCID, strings.Join(slices.Sorted(maps.Keys(vpcs)), ", "))
		case n.Zone != "" && s.AvailabilityZone != n.Zone:
			return nil, bad("subnet %s is in zone %s, not %s", n.ID, s.AvailabilityZone, n.Zone)
		}
		ids = append(ids, n.ID)
	}
	if len(p.PodSubnets.Tags) > 0 {
		tagged, err := a.taggedSubnets(ctx, p, prio)
		if err != nil {
			return nil, err
		}
		if len(tagged) == 0 && !p.PodSubnets.IncludeNodeSubnet {
			return nil, &PodSubnetError{Policy: p.Name, Field: "pod_subnets.tags", Msg: "no subnet of the cluster's VPC carries these tags"}
		}
		ids = append(ids, tagged...)
	}
	return ids, nil
}

// learnPodSubnets learns subnets a policy uses; a failure is logged (registration and the
// reconciler try again).
func (a *Allocator) learnPodSubnets(ctx context.Context, ids []string, prio ec2gw.Priority) {
	for _, id := range ids {
		if err := a.learnSubnet(ctx, id, prio); err != nil && ctx.Err() == nil {
			a.log.Warn("learn pod subnet", "subnet", id, "err", err)
		}
	}
}

// preparePodSubnets makes sure the ledger knows the pod subnets a registering node's policy may
// give it: the subnets it names, and (when the zone has none yet) the subnets that now carry
// its tags.
func (a *Allocator) preparePodSubnets(ctx context.Context, p policy.Policy, at policy.Place) {
	if !p.HasPodSubnets() {
		return
	}
	var ids []string
	for _, n := range p.NamedSubnets() {
		if _, ok := a.led.Subnet(n.ID); !ok && (n.Zone == "" || n.Zone == at.Zone) {
			ids = append(ids, n.ID)
		}
	}
	a.learnPodSubnets(ctx, ids, ec2gw.PriorityNodeStart)
	if len(p.PodSubnets.Tags) > 0 && len(p.Candidates(at, a.led.Subnets())) == 0 {
		tagged, err := a.taggedSubnets(ctx, p, ec2gw.PriorityNodeStart)
		if err != nil {
			a.log.Warn("discover pod subnets by tags", "policy", p.Name, "err", err)
			return
		}
		a.learnPodSubnets(ctx, tagged, ec2gw.PriorityNodeStart)
	}
}

// discoverPodSubnets learns subnets that have come to carry a tag policy's tags (the reconcile
// loop calls it).
func (a *Allocator) discoverPodSubnets(ctx context.Context) {
	for _, p := range a.Policies() {
		if !p.HasPodSubnets() || len(p.PodSubnets.Tags) == 0 {
			continue
		}
		tagged, err := a.taggedSubnets(ctx, p, ec2gw.PriorityReconcile)
		if err != nil {
			a.log.Warn("discover pod subnets by tags", "policy", p.Name, "err", err)
			continue
		}
		a.learnPodSubnets(ctx, tagged, ec2gw.PriorityReconcile)
	}
}

// placeOf is where a node is, for its policy's candidates.
func (a *Allocator) placeOf(rec ledger.NodeRecord) policy.Place {
	at := policy.Place{Zone: rec.AvailabilityZone, SubnetID: rec.SubnetID}
	if s, ok := a.led.Subnet(rec.SubnetID); ok {
		at.VPCID = s.VPCID
	}
	return at
}

// noPodSubnet is the refusal of a node whose policy gives its zone no pod subnet.
func (a *Allocator) noPodSubnet(p policy.Policy, node string, at policy.Place) error {
	err := &PodSubnetError{Policy: p.Name, Node: node,
		Msg: fmt.Sprintf("the policy names no pod subnet in zone %s and VPC %s that EC2 knows", at.Zone, at.VPCID)}
	a.record(EventWarning, ReasonNoPodSubnet, node, "", err.Error())
	return err
}

// subnetPlan is the order a new ENI of a node tries its candidate subnets in: Rank's order,
// then the candidates without room (placement there fails at once, in the ledger, with the
// reason), and those left out for lack of room.
type subnetPlan struct {
	order  []policy.Candidate
	noRoom []string
}

func (a *Allocator) planSubnets(pol policy.Policy, rec ledger.NodeRecord, prefix bool, need int) subnetPlan {
	cands := pol.Candidates(a.placeOf(rec), a.led.Subnets())
	now := a.now()
	state := make(map[string]policy.SubnetState, len(cands))
	for _, c := range cands {
		b, err := a.led.Budget(c.SubnetID, now)
		if err != nil {
			continue
		}
		st := policy.SubnetState{Budget: b}
		if a.cfg.Trend != nil {
			st.HeldPerHour = a.cfg.Trend(c.SubnetID)
		}
		state[c.SubnetID] = st
	}
	var plan subnetPlan
	plan.order = policy.Rank(cands, state, prefix, need)
	for _, c := range cands {
		if !slices.ContainsFunc(plan.order, func(o policy.Candidate) bool { return o.SubnetID == c.SubnetID }) {
			plan.noRoom = append(plan.noRoom, c.SubnetID)
			plan.order = append(plan.order, c)
		}
	}
	return plan
}

// exhaustion reports whether a placement error says the subnet is out of room (so the next
// pod subnet may still have some).
func exhaustion(err error) bool {
	return errors.Is(err, ErrSubnetExhausted) || errors.Is(err, ErrBudgetExhausted) || errors.Is(err, ErrNoFreePrefixBlock)
}

// spilled says that a node's new ENI went to subnet to because the subnets from had no room.
func (a *Allocator) spilled(pol policy.Policy, node string, from []string, to string, why map[string]string) {
	for _, f := range from {
		a.met.spillovers.WithLabelValues(pol.Name, f, to).Inc()
		a.record(EventNormal, ReasonPodSubnetSpillover, node, f,
			fmt.Sprintf("pod subnet %s has no room (%s); node %s's new ENI goes to %s", f, why[f], node, to))
	}
}

// podSubnetIDs are the subnets of a node's secondary ENIs, sorted.
func podSubnetIDs(rec ledger.NodeRecord) []string {
	var out []string
	for _, e := range rec.ENIs {
		if e.ID != rec.PrimaryENI && e.DeviceIndex != 0 {
			out = append(out, e.SubnetID)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}
