package allocator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

// RequestAddresses is the urgent path: pods are waiting on the node. It returns once the node's
// pool holds a free address in a generation newer than knownGen, or fails with the reason
// supply is short. Only problems that waiting cannot fix (exhausted subnet or budget, no /28,
// node at its limit, draining) end the wait early; throttling keeps waiting until the deadline.
func (a *Allocator) RequestAddresses(ctx context.Context, node string, count int, knownGen uint64) (*Pool, error) {
	if count < 1 || count > 256 {
		return nil, invalid("count", "%d is outside 1..256", count)
	}
	ns, ok := a.node(node)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	start := a.now()
	startRec, _ := a.led.Node(node)
	startActive := activeAddresses(startRec)
	a.mu.Lock()
	ns.waiting += count
	ns.nextSupply = time.Time{}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		ns.waiting -= count
		a.mu.Unlock()
	}()
	a.kick(ns.name)
	for {
		// The channel first, then the record: a commit that lands between the two reads (its
		// record read, its generation not) has closed this channel, so the loop looks again
		// instead of waiting for the next change with a stale record.
		a.mu.Lock()
		changed := ns.changed
		a.mu.Unlock()
		rec, ok := a.led.Node(node)
		if !ok {
			return nil, fmt.Errorf("%w: %s", ErrUnknownNode, node)
		}
		a.mu.Lock()
		gen := ns.generation
		problem, problemAt := ns.problem, ns.problemAt
		removed := ns.removed
		usageKnown := ns.usage != nil
		a.mu.Unlock()
		if removed {
			return nil, fmt.Errorf("%w: %s", ErrUnknownNode, node)
		}
		// The pool gained addresses since the request came, or (when the agent's usage is known)
		// holds one no pod uses in a pool the agent has not seen yet.
		grew := activeAddresses(rec) > startActive
		if gen > knownGen && (grew || (usageKnown && a.hasFree(node, rec))) {
			pool, err := a.Pool(node)
			return pool, err
		}
		if rec.Draining {
			return nil, fmt.Errorf("%w: %s is drained and gets no new addresses", ErrDraining, node)
		}
		// A node that holds all its instance type (and policy) allows, none of it free, is
		// full: waiting cannot help, so the pods hear it at once (not after the Add's wait).
		if usageKnown && !a.hasFree(node, rec) {
			a.mu.Lock()
			t := a.targetsLocked(ns, rec)
			a.mu.Unlock()
			if held := activeAddresses(rec); t.Max > 0 && held >= t.Max {
				return nil, fmt.Errorf("%w: %s (%s) holds %d pod addresses, the most its instance type and policy allow, and pods use all of them",
					ErrNodeAtLimit, node, rec.InstanceType, held)
			}
		}
		if problem != nil && !problemAt.Before(start) && definitive(problem) {
			return nil, problem
		}
		select {
		case <-ctx.Done():
			if problem != nil {
				return nil, fmt.Errorf("%w: %v", ErrSupplyTimeout, problem)
			}
			return nil, fmt.Errorf("%w: %v", ErrSupplyTimeout, ctx.Err())
		case <-changed:
		}
	}
}

// hasFree reports whether the node has an active address no pod uses.
func (a *Allocator) hasFree(node string, rec ledger.NodeRecord) bool {
	used := map[string]bool{}
	for _, ip := range a.led.Usage(node) {
		used[ip.String()] = true
	}
	for _, e := range rec.ENIs {
		for _, ad := range e.Addresses {
			if ad.State == ledger.LeaseActive && !used[ad.IP.String()] {
				return true
			}
		}
		for _, p := range e.Prefixes {
			if p.State != ledger.LeaseActive {
				continue
			}
			n := 0
			for ip := range used {
				if pfx := p.Prefix; pfx.Contains(mustAddr(ip)) {
					n++
				}
			}
			if n < 16 {
				return true
			}
		}
	}
	return false
}

// SetSubnetBudget caps what the cluster may hold in a subnet.
func (a *Allocator) SetSubnetBudget(ctx context.Context, subnet string, maxHeld, keepFree int) (ledger.SubnetRecord, error) {
	if err := ValidateSubnetID("subnet_id", subnet); err != nil {
		return ledger.SubnetRecord{}, err
	}
	release, err := a.slots.acquire(ctx, subnetKey(subnet))
	if err != nil {
		return ledger.SubnetRecord{}, err
	}
	defer release()
	rec, ok := a.led.Subnet(subnet)
	if !ok {
		return ledger.SubnetRecord{}, fmt.Errorf("%w: the cluster does not use subnet %s", ErrNotFound, subnet)
	}
	size := 1 << (32 - rec.CIDR.Bits())
	if maxHeld < 0 || maxHeld > size {
		return ledger.SubnetRecord{}, invalid("max_held", "%d is outside 0..%d (the subnet's size)", maxHeld, size)
	}
	if keepFree < 0 || keepFree > size {
		return ledger.SubnetRecord{}, invalid("keep_free", "%d is outside 0..%d (the subnet's size)", keepFree, size)
	}
	rec.MaxHeld, rec.KeepFree = maxHeld, keepFree
	if _, err := a.commit(ctx, PutSubnet(rec)); err != nil {
		return ledger.SubnetRecord{}, err
	}
	if err := a.led.PutSubnet(rec); err != nil {
		return ledger.SubnetRecord{}, err
	}
	a.log.Info("subnet budget set", "subnet", subnet, "max_held", maxHeld, "keep_free", keepFree)
	// Nodes above the new budget give back their surplus first.
	if a.subnetTight(subnet) {
		a.reclaimInSubnet(subnet, "")
	}
	return rec, nil
}

// Policies returns every policy, the default included, by order then name.
func (a *Allocator) Policies() []policy.Policy {
	a.mu.Lock()
	defer a.mu.Unlock()
	return policy.List(a.policies)
}

// SetPolicy creates or replaces a policy and re-evaluates which policy every node gets.
func (a *Allocator) SetPolicy(ctx context.Context, p policy.Policy) (policy.Policy, error) {
	if err := p.Validate(); err != nil {
		return policy.Policy{}, err
	}
	p = p.Normalized()
	// EC2 is asked before the slot is taken (no slot across an EC2 call).
	learn, err := a.checkPodSubnets(ctx, p)
	if err != nil {
		return policy.Policy{}, err
	}
	release, err := a.slots.acquire(ctx, policyKey(p.Name))
	if err != nil {
		return policy.Policy{}, err
	}
	a.mu.Lock()
	old, had := a.policies[p.Name]
	a.mu.Unlock()
	if had && old.Equal(p) {
		release()
		return p, nil
	}
	if _, err := a.commit(ctx, PutPolicy(p)); err != nil {
		release()
		return policy.Policy{}, err
	}
	a.mu.Lock()
	a.policies[p.Name] = p
	a.mu.Unlock()
	release()
	a.learnPodSubnets(ctx, learn, ec2gw.PriorityReconcile)
	a.rematchPolicies(ctx)
	return p, nil
}

// DeletePolicy removes a policy; its nodes fall to the next matching one.
func (a *Allocator) DeletePolicy(ctx context.Context, name string) error {
	release, err := a.slots.acquire(ctx, policyKey(name))
	if err != nil {
		return err
	}
	a.mu.Lock()
	_, had := a.policies[name]
	a.mu.Unlock()
	if !had {
		release()
		return fmt.Errorf("%w: policy %q", ErrNotFound, name)
	}
	if _, err := a.commit(ctx, DeletePolicy(name)); err != nil {
		release()
		return err
	}
	a.mu.Lock()
	delete(a.policies, name)
	a.mu.Unlock()
	release()
	a.rematchPolicies(ctx)
	return nil
}

// rematchPolicies gives every node the policy that now matches it. A node's address mode does
// not change after registration (its ENIs already carry addresses or prefixes).
func (a *Allocator) rematchPolicies(ctx context.Context) {
	a.mu.Lock()
	policies := policy.List(a.policies)
	nodes := make([]*nodeState, 0, len(a.nodes))
	for _, ns := range a.nodes {
		nodes = append(nodes, ns)
	}
	a.mu.Unlock()
	for _, ns := range nodes {
		rec, ok := a.led.Node(ns.name)
		if !ok {
			continue
		}
		p := policy.Match(policies, rec.MatchLabels(), rec.InstanceType)
		a.mu.Lock()
		ns.policy = p
		a.mu.Unlock()
		if rec.Policy != p.Name {
			if _, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
				r.Policy = p.Name
				return nil
			}); err != nil && !errors.Is(err, ErrUnknownNode) {
				a.log.Warn("re-match policy", "node", ns.name, "err", err)
			}
		}
		a.kick(ns.name)
	}
}

// NodeRuntime is what only the leader knows about a node.
type NodeRuntime struct {
	Connected    bool
	LastReport   time.Time
	Usage        *Usage
	Targets      policy.Targets
	Problem      error
	Policy       policy.Policy
	ModeMessage  string
	Generation   uint64
	PodsInUse    int
	StartRatePPS float64
	// Kubernetes: the allocator has a Cluster; BoundPods are then the pods bound to the node
	// that hold no address yet (bound earliest first), and WaitReason why those bound for
	// WaitSignalAfter or more wait.
	Kubernetes bool
	BoundPods  []PodRef
	WaitReason WaitReason
}

// WaitSignalAfter is how long a pod bound to a node may be without an address before it is
// said to wait (an Event, the Node condition, ipledgerctl's WAITING).
const WaitSignalAfter = waitSignalAfter

// Runtime returns the leader's view of a node.
func (a *Allocator) Runtime(node string) (NodeRuntime, bool) {
	ns, rec, err := a.nodeAndRecord(node)
	if err != nil {
		return NodeRuntime{}, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	rt := NodeRuntime{
		Connected:    len(ns.subs) > 0,
		LastReport:   ns.lastReport,
		Targets:      a.targetsLocked(ns, rec),
		Problem:      ns.problem,
		Policy:       ns.policy,
		ModeMessage:  ns.modeMsg,
		Generation:   ns.generation,
		StartRatePPS: ns.rate.Rate(a.now(), policy.RateMinSpan),
	}
	if ns.usage != nil {
		u := *ns.usage
		rt.Usage = &u
		rt.PodsInUse = len(u.InUse)
	}
	if a.cfg.Cluster != nil {
		rt.Kubernetes = true
		rt.BoundPods = a.boundWaitingLocked(ns)
		slices.SortStableFunc(rt.BoundPods, func(x, y PodRef) int { return x.BoundAt.Compare(y.BoundAt) })
		rt.WaitReason = waitReasonOf(ns.problem)
	}
	return rt, true
}
