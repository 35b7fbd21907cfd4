package allocator

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ledger"
)

// TestModel is a randomized model test of the allocator: registrations, pod starts and stops,
// usage reports, supply, release handshakes, reconciliation, instance checks, pre-warming,
// drains, instances terminated, leader failover and EC2 and store faults (failures, throttling,
// answers that arrive too late and work that lands later) interleaved under the fake clock.
// After every step it checks the invariants:
//
//   - no address has two owners: the store's records against EC2 (diff.Diff's DoubleLease,
//     ForeignLeased, DoubleOnEC2) and no two pods on one address;
//   - every address an agent hands out is leased to its node in the store, ACTIVE (or
//     RELEASE_PROPOSED after a commit whose answer was lost), never RELEASING;
//   - every subnet's totals add up (size = reserved + foreign + held + prewarm + free, held =
//     eni_primary + in_use + idle);
//   - nothing is released that an agent may hand out: EC2 never unassigns (or deletes with its
//     ENI) an address of a live node that its agent uses or still holds as ACTIVE and unlocked.
//
// EC2's faults: a call is throttled, fails, does its work but answers too late, or answers too
// late and does its work up to lateBound later (EC2 finishing a request the client gave up on;
// such work lands before a new leader takes over, which waits out the old leader's session).
//
// At the end, with the faults off, the allocator must converge: EC2 and the store agree.
//
// IPLEDGER_MODEL_STEPS (default 500) and IPLEDGER_MODEL_SEEDS (default 1-6; a list, or "N-M")
// run it longer by hand.
func TestModel(t *testing.T) {
	steps := 500
	if v, err := strconv.Atoi(os.Getenv("IPLEDGER_MODEL_STEPS")); err == nil && v > 0 {
		steps = v
	}
	seeds := []uint64{1, 2, 3, 4, 5, 6}
	if v := os.Getenv("IPLEDGER_MODEL_SEEDS"); v != "" {
		seeds = parseSeeds(t, v)
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runModel(t, seed, steps) })
	}
}

func parseSeeds(t *testing.T, v string) []uint64 {
	var out []uint64
	for _, part := range strings.Split(v, ",") {
		if lo, hi, ok := strings.Cut(part, "-"); ok {
			a, err1 := strconv.ParseUint(lo, 10, 64)
			b, err2 := strconv.ParseUint(hi, 10, 64)
			if err1 != nil || err2 != nil || b < a {
				t.Fatalf("IPLEDGER_MODEL_SEEDS: bad range %q", part)
			}
			for s := a; s <= b; s++ {
				out = append(out, s)
			}
			continue
		}
		s, err := strconv.ParseUint(part, 10, 64)
		if err != nil {
			t.Fatalf("IPLEDGER_MODEL_SEEDS: bad seed %q", part)
		}
		out = append(out, s)
	}
	return out
}

type model struct {
	t    *testing.T
	seed uint64
	rng  *rand.Rand
	ctx  context.Context
	ec2  *fakeEC2
	st   *fakeStore
	clk  *clockwork.FakeClock
	ids  *rand.ChaCha8 // the allocators' ids and tokens, so a seed replays exactly
	lw   *lockWatch
	a    *Allocator

	agents     map[string]*agentModel // by node name
	pending    []Registration         // launched, not registered yet
	terminated map[string]bool        // node names whose instance is gone

	ec2Fault, storeFault float64 // probability of a fault per call
	lostAnswers          int     // store commits that happened although the allocator saw them fail
	steps                int
	trail                []string // the last actions, for a failure's report
	counts               map[string]int
	violations           []string
}

// agentModel is what a node's agent knows and does: its newest pool, the pods on it, the
// addresses it confirmed for release (locked until they come back ACTIVE).
type agentModel struct {
	node    string
	sub     *Subscription
	pool    *Pool
	inUse   map[netip.Addr]bool
	locked  map[string]bool
	waiting int
	adds    uint64
}

// lateBound is how long (clock time) EC2 work whose answer did not arrive may take to land.
const lateBound = 5 * time.Second

const (
	modelSubnetA = subnetA // a /24
	modelSubnetB = subnetB // a /26: tight, so releases and exhaustion happen
)

func runModel(t *testing.T, seed uint64, steps int) {
	m := &model{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, seed*7919+1)), ctx: t.Context(), ec2: newFakeEC2(), st: newFakeStore(),
		clk: clockwork.NewFakeClockAt(testEpoch), ids: rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)}), agents: map[string]*agentModel{}, terminated: map[string]bool{}, counts: map[string]int{}}
	m.ec2.addSubnet(modelSubnetA, "10.0.0.0/24", testAZ)
	m.ec2.addSubnet(modelSubnetB, "10.0.1.0/26", testAZ)
	m.ec2.addForeign(modelSubnetA, 3)
	m.ec2.fault = m.ec2Faults
	m.ec2.onUnassign = m.checkUnassign
	m.ec2.trace = m.note
	m.ec2.now = m.clk.Now
	m.st.fail = m.storeFaults
	m.lw = newLockWatch(t)
	m.ec2.before, m.st.before = m.lw.ec2, m.lw.store
	m.lead(true)
	defer func() {
		if m.violations != nil || t.Failed() {
			t.Logf("seed %d, step %d; last actions:\n  %s", seed, m.steps, strings.Join(m.trail, "\n  "))
		}
	}()
	for m.steps = 1; m.steps <= steps; m.steps++ {
		m.act()
		m.check()
		if len(m.violations) > 0 {
			t.Fatalf("seed %d, step %d: invariants violated:\n  %s", seed, m.steps, strings.Join(m.violations, "\n  "))
		}
	}
	m.converge()
	t.Logf("seed %d: %d steps, actions %v, %d commits, EC2 calls %v", seed, steps, m.counts, m.st.commits, m.ec2.calls)
}

func (m *model) note(format string, args ...any) {
	s := fmt.Sprintf("%d: ", m.steps) + fmt.Sprintf(format, args...)
	m.trail = append(m.trail, s)
	if len(m.trail) > 200 {
		m.trail = m.trail[1:]
	}
}

func (m *model) violate(format string, args ...any) {
	m.violations = append(m.violations, fmt.Sprintf(format, args...))
}

// lead makes a new allocator the leader over the store's state.
func (m *model) lead(first bool) {
	led, rev, pols, err := m.st.state()
	if err != nil {
		m.t.Fatalf("the store's state does not build a ledger: %v", err)
	}
	a, err := New(Config{
		ClusterName: testCluster, Ledger: led, Store: m.st.lead(), EC2: m.ec2, Revision: rev, StoredPolicies: pols,
		Subnets: []string{modelSubnetA, modelSubnetB}, ReleaseDelay: 5 * time.Second, ProposalTimeout: 30 * time.Second,
		DriftGrace: 10 * time.Second, Clock: m.clk, Rand: m.ids, observer: m.lw,
	})
	if err != nil {
		m.t.Fatal(err)
	}
	m.a = a
	m.withoutFaults(func() {
		if err := a.learnSubnets(m.ctx); err != nil {
			m.t.Fatalf("learn subnets: %v", err)
		}
		if first {
			prefix := policy.Policy{Name: "prefix", Order: 10, Mode: ledger.ModePrefix, Selector: policy.Selector{Labels: map[string]string{"mode": "prefix"}}}
			if _, err := a.SetPolicy(m.ctx, prefix); err != nil {
				m.t.Fatalf("set policy: %v", err)
			}
		}
	})
	for name, ag := range m.agents {
		ag.sub = nil
		if _, ok := a.node(name); !ok {
			continue
		}
		s, err := a.Subscribe(name)
		if err != nil {
			m.t.Fatalf("subscribe %s to the new leader: %v", name, err)
		}
		ag.sub = s
	}
}

func (m *model) withoutFaults(f func()) {
	e, s := m.ec2Fault, m.storeFault
	m.ec2Fault, m.storeFault = 0, 0
	defer func() { m.ec2Fault, m.storeFault = e, s }()
	f()
}

func (m *model) ec2Faults(action string) fakeFault {
	if m.ec2Fault == 0 || m.rng.Float64() >= m.ec2Fault {
		return faultNone
	}
	switch m.rng.IntN(4) {
	case 0:
		return faultThrottle
	case 1:
		return faultFail
	case 2:
		return faultLate
	default:
		return faultDelayed
	}
}

func (m *model) storeFaults() error {
	if m.storeFault == 0 || m.rng.Float64() >= m.storeFault {
		return nil
	}
	if m.rng.IntN(3) == 0 {
		m.lostAnswers++
		return errStoreLate
	}
	return errors.New("fake store: etcd unavailable")
}

// live lists the agents of nodes whose instance runs, by name.
func (m *model) live() []*agentModel {
	var out []*agentModel
	for _, name := range sortedKeys(m.agents) {
		if !m.terminated[name] {
			out = append(out, m.agents[name])
		}
	}
	return out
}

func (m *model) anyAgent() *agentModel {
	l := m.live()
	if len(l) == 0 {
		return nil
	}
	return l[m.rng.IntN(len(l))]
}

// act does one random action.
func (m *model) act() {
	type action struct {
		name   string
		weight int
		do     func()
	}
	actions := []action{
		{"launch", 4, m.launch},
		{"register", 6, m.register},
		{"sync", 20, func() { m.onAgent(m.sync) }},
		{"pod-start", 18, func() { m.onAgent(m.podStart) }},
		{"pod-stop", 12, func() { m.onAgent(m.podStop) }},
		{"report", 14, func() { m.onAgent(m.report) }},
		{"step", 20, func() { m.onAgent(m.stepNode) }},
		{"release", 8, func() { m.onAgent(m.release) }},
		{"reconcile", 3, m.reconcile},
		{"instances", 2, m.instances},
		{"prewarm", 2, m.prewarm},
		{"drain", 1, func() { m.onAgent(m.drain) }},
		{"advance", 10, m.advance},
		{"faults", 3, m.faults},
		{"settle", 3, func() { m.note("settle late EC2 work"); m.ec2.settle(time.Time{}) }},
		{"terminate", 1, m.terminate},
		{"failover", 1, m.failover},
	}
	total := 0
	for _, a := range actions {
		total += a.weight
	}
	n := m.rng.IntN(total)
	for _, a := range actions {
		if n < a.weight {
			m.counts[a.name]++
			a.do()
			return
		}
		n -= a.weight
	}
}

func (m *model) onAgent(f func(*agentModel)) {
	if ag := m.anyAgent(); ag != nil {
		f(ag)
	}
}

func (m *model) launch() {
	if len(m.live())+len(m.pending) >= 8 {
		return
	}
	types := []string{"m5.large", "m5.xlarge", "t3.medium"}
	typ := types[m.rng.IntN(len(types))]
	subnet := modelSubnetA
	if m.rng.IntN(3) == 0 {
		subnet = modelSubnetB
	}
	id := m.ec2.runInstance(typ, subnet)
	if id == "" {
		m.note("launch in %s: the subnet is full", subnet)
		return
	}
	m.ec2.mu.Lock()
	in := m.ec2.instances[id]
	req := Registration{NodeName: in.dns, InstanceID: in.id, InstanceType: in.typ, AvailabilityZone: in.az, SubnetID: in.subnet, PrimaryIP: in.ip}
	for _, x := range m.ec2.enis {
		if x.Attachment != nil && x.Attachment.InstanceID == id && x.Attachment.DeviceIndex == 0 {
			req.PrimaryENI = x.ID
		}
	}
	if typ != "t3.medium" && m.rng.IntN(3) == 0 {
		// Policies match the instance's tags; the agent's labels say the same (and are shown only).
		in.tags = map[string]string{"mode": "prefix"}
		req.Labels = map[string]string{"mode": "prefix"}
	}
	m.ec2.mu.Unlock()
	m.pending = append(m.pending, req)
	m.note("launch %s (%s in %s, labels %v)", req.NodeName, typ, subnet, req.Labels)
}

func (m *model) register() {
	if len(m.pending) == 0 {
		return
	}
	i := m.rng.IntN(len(m.pending))
	if m.terminated[m.pending[i].NodeName] {
		m.pending = slices.Delete(m.pending, i, i+1)
		return
	}
	req := m.pending[i]
	ctx, cancel := context.WithTimeout(m.ctx, 5*time.Second)
	defer cancel()
	_, _, err := m.a.RegisterNode(ctx, req)
	m.note("register %s: %v", req.NodeName, err)
	if err != nil {
		return
	}
	m.pending = slices.Delete(m.pending, i, i+1)
	ag := &agentModel{node: req.NodeName, inUse: map[netip.Addr]bool{}, locked: map[string]bool{}}
	s, err := m.a.Subscribe(req.NodeName)
	if err != nil {
		m.t.Fatalf("subscribe %s: %v", req.NodeName, err)
	}
	ag.sub = s
	m.agents[req.NodeName] = ag
}

// sync takes in the agent's messages: the newest pool, then release proposals, each answered.
func (m *model) sync(ag *agentModel) {
	if ag.sub == nil {
		return
	}
	done, cancel := context.WithCancel(m.ctx)
	cancel()
	for {
		msg, err := ag.sub.Next(done)
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				m.note("sync %s: stream ended: %v", ag.node, err)
				ag.sub = nil
			}
			return
		}
		switch {
		case msg.Pool != nil:
			if ag.pool == nil || msg.Pool.Generation >= ag.pool.Generation {
				ag.pool = msg.Pool
				for item := range ag.locked {
					if st, ok := poolItemState(ag.pool, item); !ok || st == ledger.LeaseActive {
						delete(ag.locked, item) // back to ACTIVE (a cancelled proposal), or gone
					}
				}
			}
			m.note("sync %s: pool generation %d, %d active", ag.node, msg.Pool.Generation, len(usable(ag)))
		case msg.Proposal != nil:
			ack := ReleaseAck{ProposalID: msg.Proposal.ID}
			for _, it := range msg.Proposal.Items {
				if itemUsed(ag, it) {
					ack.Refused = append(ack.Refused, it)
				} else {
					ack.Confirmed = append(ack.Confirmed, it)
					ag.locked[it] = true
				}
			}
			m.counts["~proposals"]++
			m.counts["~confirmed"] += len(ack.Confirmed)
			err := m.a.AckRelease(m.ctx, ag.node, ack)
			m.note("sync %s: proposal %s: confirmed %v refused %v: %v", ag.node, ack.ProposalID, ack.Confirmed, ack.Refused, err)
		}
	}
}

func poolItemState(p *Pool, item string) (ledger.LeaseState, bool) {
	for _, e := range p.Node.ENIs {
		for _, ad := range e.Addresses {
			if ad.IP.String() == item {
				return ad.State, true
			}
		}
		for _, pf := range e.Prefixes {
			if pf.Prefix.String() == item {
				return pf.State, true
			}
		}
	}
	return "", false
}

// usable lists the addresses the agent may hand out: ACTIVE in its pool, not locked, not used.
func usable(ag *agentModel) []netip.Addr {
	if ag.pool == nil {
		return nil
	}
	var out []netip.Addr
	for _, e := range ag.pool.Node.ENIs {
		for _, ad := range e.Addresses {
			if ad.State == ledger.LeaseActive && !ag.locked[ad.IP.String()] && !ag.inUse[ad.IP] {
				out = append(out, ad.IP)
			}
		}
		for _, pf := range e.Prefixes {
			if pf.State != ledger.LeaseActive || ag.locked[pf.Prefix.String()] {
				continue
			}
			for a := pf.Prefix.Addr(); pf.Prefix.Contains(a); a = a.Next() {
				if !ag.inUse[a] {
					out = append(out, a)
				}
			}
		}
	}
	return out
}

func itemUsed(ag *agentModel, item string) bool {
	if p, err := netip.ParsePrefix(item); err == nil {
		for a := range ag.inUse {
			if p.Contains(a) {
				return true
			}
		}
		return false
	}
	a, err := netip.ParseAddr(item)
	return err == nil && ag.inUse[a]
}

// mayHandOut reports whether the agent may hand out the item (or an address of it): in use, or
// ACTIVE in its pool and not locked.
func mayHandOut(ag *agentModel, item string) bool {
	if itemUsed(ag, item) {
		return true
	}
	if ag.pool == nil || ag.locked[item] {
		return false
	}
	st, ok := poolItemState(ag.pool, item)
	return ok && st == ledger.LeaseActive
}

func (m *model) podStart(ag *agentModel) {
	free := usable(ag)
	if len(free) == 0 {
		ag.waiting++
		m.note("pod-start %s: no free address; %d waiting", ag.node, ag.waiting)
		return
	}
	ip := free[m.rng.IntN(len(free))]
	// ACTIVE, or RELEASE_PROPOSED when the store took a proposal whose commit the allocator
	// saw fail (the answer was lost): a proposal only releases what the agent confirms.
	if st := m.storeState(ag.node, ip); st != ledger.LeaseActive && st != ledger.LeaseReleaseProposed {
		m.violate("agent %s hands out %s, which the store leases to it as %q", ag.node, ip, st)
	}
	for _, other := range m.live() {
		if other != ag && other.inUse[ip] {
			m.violate("%s is used by pods on %s and %s", ip, other.node, ag.node)
		}
	}
	ag.inUse[ip] = true
	ag.adds++
	if ag.waiting > 0 {
		ag.waiting--
	}
	m.note("pod-start %s: %s", ag.node, ip)
}

func (m *model) podStop(ag *agentModel) {
	if len(ag.inUse) == 0 {
		return
	}
	var ips []netip.Addr
	for ip := range ag.inUse {
		ips = append(ips, ip)
	}
	sort.Slice(ips, func(i, j int) bool { return ips[i].Less(ips[j]) })
	ip := ips[m.rng.IntN(len(ips))]
	delete(ag.inUse, ip)
	m.note("pod-stop %s: %s", ag.node, ip)
}

func (m *model) report(ag *agentModel) {
	u := Usage{PodsWaiting: ag.waiting, AddsTotal: ag.adds, Free: len(usable(ag))}
	if ag.pool != nil {
		u.PoolGeneration = ag.pool.Generation
	}
	for _, ip := range sortedAddrs(ag.inUse) {
		u.InUse = append(u.InUse, PodAddress{IP: ip, ContainerID: "c-" + ip.String()})
	}
	err := m.a.ReportUsage(ag.node, u)
	m.note("report %s: %d in use, %d waiting: %v", ag.node, len(u.InUse), u.PodsWaiting, err)
}

func sortedAddrs(set map[netip.Addr]bool) []netip.Addr {
	out := make([]netip.Addr, 0, len(set))
	for a := range set {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

func (m *model) stepNode(ag *agentModel) {
	ns, ok := m.a.node(ag.node)
	if !ok {
		return
	}
	m.note("step %s", ag.node)
	m.a.retryUncommitted(m.ctx, ns)
	m.a.expireProposal(m.ctx, ns)
	m.a.supply(m.ctx, ns)
	m.a.maybePropose(m.ctx, ns)
}

func (m *model) release(ag *agentModel) {
	ns, ok := m.a.node(ag.node)
	if !ok {
		return
	}
	m.note("release lane %s", ag.node)
	m.a.releaseLane(m.ctx, ns)
}

func (m *model) reconcile() {
	pending, err := m.a.reconcileAll(m.ctx)
	m.note("reconcile: pending %v: %v", pending, err)
}

func (m *model) instances() {
	err := m.a.checkInstances(m.ctx)
	m.note("check instances: %v", err)
}

func (m *model) prewarm() {
	if m.rng.IntN(3) == 0 {
		for _, pw := range m.a.led.Prewarms() {
			_, err := m.a.CancelPrewarm(m.ctx, pw.ID)
			m.note("cancel pre-warm %s: %v", pw.ID, err)
			return
		}
	}
	if m.rng.IntN(2) == 0 {
		for _, pw := range m.a.led.Prewarms() {
			err := m.a.prewarmStep(m.ctx, pw.ID)
			m.note("pre-warm step %s: %v", pw.ID, err)
		}
		return
	}
	rec, err := m.a.Prewarm(m.ctx, PrewarmRequest{SubnetID: modelSubnetA, InstanceType: "m5.large", NodeCount: 1 + m.rng.IntN(2),
		AddressesPerNode: 1 + m.rng.IntN(4), Expiry: time.Duration(30+m.rng.IntN(120)) * time.Second})
	m.note("pre-warm %s: %v", rec.ID, err)
}

func (m *model) drain(ag *agentModel) {
	rec, ok := m.a.led.Node(ag.node)
	if !ok {
		return
	}
	err := m.a.Drain(m.ctx, ag.node, rec.Draining)
	m.note("drain %s (undo %v): %v", ag.node, rec.Draining, err)
}

func (m *model) advance() {
	d := time.Duration(m.rng.IntN(3000)) * time.Millisecond
	if m.rng.IntN(8) == 0 {
		d = time.Duration(10+m.rng.IntN(60)) * time.Second
	}
	m.clk.Advance(d)
	m.note("advance %s", d)
	// Work EC2 took in but did not answer in time lands within a few seconds or never.
	m.ec2.settle(m.clk.Now().Add(-lateBound))
}

func (m *model) faults() {
	levels := []float64{0, 0, 0.05, 0.2}
	m.ec2Fault = levels[m.rng.IntN(len(levels))]
	m.storeFault = levels[m.rng.IntN(len(levels))] / 2
	m.note("faults: EC2 %.2f, store %.2f", m.ec2Fault, m.storeFault)
}

func (m *model) terminate() {
	l := m.live()
	if len(l) < 3 {
		return
	}
	ag := l[m.rng.IntN(len(l))]
	rec, ok := m.a.led.Node(ag.node)
	if !ok {
		return
	}
	m.terminated[ag.node] = true
	m.ec2.terminate(rec.InstanceID)
	m.note("terminate %s (%s)", ag.node, rec.InstanceID)
}

func (m *model) failover() {
	// A new leader waits out the old one's session (seconds): the old leader's EC2 requests in
	// flight have landed by then.
	m.ec2.settle(time.Time{})
	m.st.depose()
	m.lead(false)
	m.note("failover: a new leader at revision %d", m.a.Revision())
	for _, ag := range m.live() {
		if ag.sub != nil {
			m.report(ag)
		}
	}
}

// storeState is the state in which the store leases the address to the node (itself or in a
// prefix), "" when it does not.
func (m *model) storeState(node string, ip netip.Addr) ledger.LeaseState {
	nodes, _, _ := m.st.records()
	for _, e := range nodes[node].ENIs {
		for _, ad := range e.Addresses {
			if ad.IP == ip {
				return ad.State
			}
		}
		for _, p := range e.Prefixes {
			if p.Prefix.Contains(ip) {
				return p.State
			}
		}
	}
	return ""
}

// checkUnassign runs (under the fake EC2's lock) for every address or prefix EC2 takes off an
// ENI: nothing an agent of a live node may hand out is released.
func (m *model) checkUnassign(eni, node, item string) {
	ag, ok := m.agents[node]
	if !ok || m.terminated[node] {
		return
	}
	if mayHandOut(ag, item) {
		m.violate("EC2 released %s from %s of node %s, which its agent may hand out (in use %v, locked %v)",
			item, eni, node, itemUsed(ag, item), ag.locked[item])
	}
}

// check verifies the invariants after a step.
func (m *model) check() {
	rec := diff.RecordsOf(m.st.records())
	for _, f := range diff.Diff(testCluster, rec, diff.EC2{ENIs: m.ec2.snapshot()}) {
		// A registration whose commit happened although the allocator saw it fail leaves the
		// store counting the instance's addresses as foreign in its subnet's next write, until
		// the agent registers again (a ledger built from the store gives them to the node:
		// node records win over foreign scans). It must be gone once the allocator converged.
		if f.Kind == diff.ForeignLeased && m.lostAnswers > 0 {
			continue
		}
		// EC2 gives the addresses of a terminated instance to new ones at once; the store keeps
		// the gone node's record until the instance check removes it.
		if f.Kind == diff.ForeignLeased && m.terminated[f.Node] {
			continue
		}
		if f.Twice() {
			m.violate("store against EC2: %s", f)
		}
	}
	for _, c := range m.a.led.Conflicts() {
		if c.Kind == ledger.ConflictDoubleUse || c.Kind == ledger.ConflictDoubleOwner {
			m.violate("ledger: %+v", c)
		}
	}
	for _, b := range m.a.led.Budgets(m.clk.Now()) {
		if b.Size != b.Reserved+b.Foreign+b.Held+b.PrewarmReserved+b.Free || b.Held != b.ENIPrimary+b.InUse+b.Idle {
			m.violate("the totals of %s do not add up: %+v", b.SubnetID, b)
		}
	}
}

// converge turns the faults off, lets the allocator work through what is left and checks
// that EC2 and the store agree.
func (m *model) converge() {
	m.ec2Fault, m.storeFault = 0, 0
	m.ec2.settle(time.Time{})
	for round := 0; round < 6; round++ {
		for range 2 * len(m.pending) {
			m.register()
		}
		for _, ag := range m.live() {
			m.sync(ag)
			m.report(ag)
		}
		m.instances()
		for _, ag := range m.live() {
			m.stepNode(ag)
			m.sync(ag)
			m.release(ag)
		}
		for _, pw := range m.a.led.Prewarms() {
			_ = m.a.prewarmStep(m.ctx, pw.ID)
		}
		m.reconcile()
		m.clk.Advance(15 * time.Second)
		m.reconcile()
		m.check()
	}
	for _, req := range m.pending {
		if m.terminated[req.NodeName] {
			continue
		}
		if _, _, err := m.a.RegisterNode(m.ctx, req); err != nil {
			m.violate("instance %s of a live node does not register after converging: %v", req.InstanceID, err)
		}
	}
	if len(m.violations) > 0 {
		m.t.Fatalf("seed %d, converging: invariants violated:\n  %s", m.seed, strings.Join(m.violations, "\n  "))
	}
	rec := diff.RecordsOf(m.st.records())
	if fs := diff.Diff(testCluster, rec, diff.EC2{ENIs: m.ec2.snapshot()}); len(fs) > 0 {
		var lines []string
		for _, f := range fs {
			lines = append(lines, f.String())
		}
		m.t.Fatalf("seed %d: after converging, EC2 and the store still differ:\n  %s", m.seed, strings.Join(lines, "\n  "))
	}
}
