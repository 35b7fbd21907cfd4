package allocator

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ledger"
)

// fakeCluster is an in-memory Cluster: pods bound to nodes, and the signals it was sent.
type fakeCluster struct {
	mu      sync.Mutex
	pods    map[string][]PodRef // node -> pods
	signals map[string][]WaitReason
	counts  map[string]int
	fn      func(ClusterEvent)
	// unsynced: the caches have not synced (PodExists does not know).
	unsynced bool
}

func newFakeCluster() *fakeCluster {
	return &fakeCluster{pods: map[string][]PodRef{}, signals: map[string][]WaitReason{}, counts: map[string]int{}}
}

func (c *fakeCluster) bind(node string, n int, at time.Time) []PodRef {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []PodRef
	for i := range n {
		p := PodRef{Namespace: "default", Name: fmt.Sprintf("p%d-%d", len(c.pods[node]), i), UID: fmt.Sprintf("uid-%s-%d-%d", node, len(c.pods[node]), i), BoundAt: at}
		out = append(out, p)
	}
	c.pods[node] = append(c.pods[node], out...)
	return out
}

func (c *fakeCluster) deleteAll(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.pods, node)
}

func (c *fakeCluster) BoundPods(node string) []PodRef {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]PodRef(nil), c.pods[node]...)
}

func (c *fakeCluster) PodExists(node, namespace, name, uid string) (bool, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unsynced {
		return false, false
	}
	for n, ps := range c.pods {
		for _, p := range ps {
			if p.UID == uid || (n == node && p.Namespace == namespace && p.Name == name) {
				return true, true
			}
		}
	}
	return false, true
}

func (c *fakeCluster) Watch(fn func(ClusterEvent)) func() {
	c.mu.Lock()
	c.fn = fn
	c.mu.Unlock()
	return func() {}
}

func (c *fakeCluster) PodsWaiting(node string, pods []PodRef, reason WaitReason, _ string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.signals[node] = append(c.signals[node], reason)
	c.counts[node] = len(pods)
}

// Pods bound to a node count as its demand at once: one supply pass assigns for all of them,
// before any CNI ADD; served pods (in the agent's report) stop counting, and so do deleted ones.
// With the lookahead off the same binding changes nothing.
func TestLookaheadAssignsForBoundPods(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("lookahead=%v", on), func(t *testing.T) {
			kc := newFakeCluster()
			e := newEnv(t, func(c *Config) { c.Cluster, c.Lookahead = kc, on })
			node := e.register("m5.large", subnetA)
			e.usage(node)
			e.step(node)
			base := len(e.active(node))
			if base < 1 || base > 2 {
				t.Fatalf("an idle node holds %d addresses; want 1 or 2", base)
			}
			pods := kc.bind(node, 6, e.clk.Now())
			assigns := e.ec2.callCount("AssignPrivateIpAddresses")
			e.step(node)
			assigns = e.ec2.callCount("AssignPrivateIpAddresses") - assigns
			got := len(e.active(node))
			if on && got < 6+1 {
				t.Fatalf("lookahead on: %d addresses after 6 pods were bound; want at least 7 (6 and one spare)", got)
			}
			if !on && got != base {
				t.Fatalf("lookahead off: %d addresses after binding; want %d (nothing before ADD)", got, base)
			}
			if !on {
				return
			}
			if assigns != 1 {
				t.Fatalf("%d assign calls for the bound pods; want them in one batch", assigns)
			}
			// The agent serves them: they are in use now, and demand does not double.
			act := e.active(node)
			u := Usage{}
			for i, p := range pods {
				u.InUse = append(u.InUse, PodAddress{IP: act[i], ContainerID: "c" + p.UID, PodNamespace: p.Namespace, PodName: p.Name, PodUID: p.UID})
			}
			if err := e.a.ReportUsage(node, u); err != nil {
				t.Fatal(err)
			}
			if w := e.a.BoundWaiting(node); len(w) != 0 {
				t.Fatalf("bound-but-waiting pods after all were served: %v", w)
			}
			before := len(e.active(node))
			e.step(node)
			if after := len(e.active(node)); after > before+1 {
				t.Fatalf("%d addresses after the served report (from %d): served pods were counted twice", after, before)
			}
		})
	}
}

// Bound pods that stay without an address past the grace are signalled with the reason; the
// signal clears when none waits.
func TestWaitingPodsAreSignalled(t *testing.T) {
	kc := newFakeCluster()
	e := newEnv(t, func(c *Config) { c.Cluster, c.Lookahead = kc, false })
	node := e.register("m5.large", subnetA)
	e.usage(node)
	e.step(node)
	kc.bind(node, 3, e.clk.Now())
	e.clk.Advance(waitSignalAfter + time.Second)
	if err := e.a.Drain(e.ctx, node, false); err != nil {
		t.Fatal(err)
	}
	e.step(node)
	kc.mu.Lock()
	sig, n := kc.signals[node], kc.counts[node]
	kc.mu.Unlock()
	if len(sig) == 0 || sig[len(sig)-1] != WaitNodeDraining || n != 3 {
		t.Fatalf("signals %v with %d pods; want %s for 3 pods", sig, n, WaitNodeDraining)
	}
	kc.deleteAll(node)
	e.step(node)
	kc.mu.Lock()
	n = kc.counts[node]
	kc.mu.Unlock()
	if n != 0 {
		t.Fatalf("signal still names %d pods after they were deleted", n)
	}
}

// A Node deleted in the API drains its lease at once.
func TestNodeDeletedDrains(t *testing.T) {
	kc := newFakeCluster()
	e := newEnv(t, func(c *Config) { c.Cluster, c.Lookahead = kc, true })
	node := e.register("m5.large", subnetA)
	e.usage(node)
	e.step(node)
	e.a.clusterEvent(e.ctx, ClusterEvent{Node: node, NodeDeleted: true})
	if !e.record(node).Draining {
		t.Fatal("a node deleted in Kubernetes is not draining")
	}
}

// An instance announced by Kubernetes (a NodeClaim's) is registered and supplied before its
// agent registers; the agent's registration then finds it.
func TestPreregisterSuppliesBeforeTheAgent(t *testing.T) {
	kc := newFakeCluster()
	e := newEnv(t, func(c *Config) { c.Cluster, c.Lookahead = kc, true })
	req := e.instance("m5.large", subnetA)
	name, err := e.a.Preregister(e.ctx, req.InstanceID)
	if err != nil {
		t.Fatal(err)
	}
	if name != req.NodeName {
		t.Fatalf("pre-registered as %q; want the private DNS name %q", name, req.NodeName)
	}
	e.step(name)
	if len(e.active(name)) == 0 {
		t.Fatal("no address on the pre-registered node before its agent registers")
	}
	req.Labels = map[string]string{"a": "b"}
	if _, _, err := e.a.RegisterNode(e.ctx, req); err != nil {
		t.Fatalf("the agent's registration after pre-registration: %v", err)
	}
	if _, err := e.a.Preregister(e.ctx, "i-00000000000000099"); err == nil {
		t.Fatal("an unknown instance was pre-registered")
	}
}

// staleNamed reads what the subscription has queued and returns the stale pods it names (nil:
// none within a short wait).
func staleNamed(t *testing.T, s *Subscription) []string {
	t.Helper()
	var out []string
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		m, err := s.Next(ctx)
		cancel()
		if err != nil {
			return out
		}
		if m.StalePods != nil {
			out = append(out, m.StalePods...)
		}
	}
}

// A pod the agent reports holding an address that the API deleted is named to the agent only
// after the grace, and only while the API lacks it; pods the API has are never named, and a
// pod still reported is named again only after another grace.
func TestStalePodsNamedAfterGrace(t *testing.T) {
	kc := newFakeCluster()
	const grace = time.Minute
	e := newEnv(t, func(c *Config) { c.Cluster, c.Lookahead, c.StalePodGrace = kc, true, grace })
	node := e.register("m5.large", subnetA)
	kept := kc.bind(node, 1, e.clk.Now())[0]
	e.usage(node)
	e.step(node)
	act := e.active(node)
	if len(act) < 1 {
		t.Fatal("no address on the node")
	}
	sub, err := e.a.Subscribe(node)
	if err != nil {
		t.Fatal(err)
	}
	defer e.a.Unsubscribe(sub)
	staleNamed(t, sub)
	gone := PodAddress{IP: act[0], ContainerID: "c-gone", PodNamespace: "default", PodName: "gone", PodUID: "uid-gone"}
	live := PodAddress{IP: act[0].Next(), ContainerID: "c-live", PodNamespace: kept.Namespace, PodName: kept.Name, PodUID: kept.UID}
	static := PodAddress{IP: act[0].Next().Next(), ContainerID: "c-static", PodNamespace: kept.Namespace, PodName: kept.Name, PodUID: "kubelet-uid"}
	if err := e.a.ReportUsage(node, Usage{InUse: []PodAddress{gone, live, static}}); err != nil {
		t.Fatal(err)
	}
	check := func() []string {
		if err := e.a.checkStalePods(e.ctx); err != nil {
			t.Fatal(err)
		}
		return staleNamed(t, sub)
	}
	if got := check(); got != nil {
		t.Fatalf("named %v as soon as the API lacked it; want nothing before the grace", got)
	}
	e.clk.Advance(grace / 2)
	if got := check(); got != nil {
		t.Fatalf("named %v within the grace", got)
	}
	e.clk.Advance(grace / 2)
	if got := check(); len(got) != 1 || got[0] != "uid-gone" {
		t.Fatalf("named %v after the grace; want [uid-gone] (the live pod and the static pod by name are the API's)", got)
	}
	e.clk.Advance(grace / 2)
	if got := check(); got != nil {
		t.Fatalf("named %v again within a grace of the last time", got)
	}
	e.clk.Advance(grace / 2)
	if got := check(); len(got) != 1 {
		t.Fatalf("named %v a grace after the last time while still reported; want it again", got)
	}
	// The agent gave it back: not reported, forgotten; reported again later, the grace restarts.
	if err := e.a.ReportUsage(node, Usage{InUse: []PodAddress{live}}); err != nil {
		t.Fatal(err)
	}
	check()
	if err := e.a.ReportUsage(node, Usage{InUse: []PodAddress{gone, live}}); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(2 * grace)
	if got := check(); got != nil {
		t.Fatalf("named %v at once after it came back; the grace restarts", got)
	}
}

// Before the Cluster's caches sync nothing is named, however long the pods seem missing.
func TestStalePodsWaitForSyncedCaches(t *testing.T) {
	kc := newFakeCluster()
	kc.unsynced = true
	e := newEnv(t, func(c *Config) { c.Cluster, c.StalePodGrace = kc, time.Second })
	node := e.register("m5.large", subnetA)
	e.usage(node)
	e.step(node)
	sub, err := e.a.Subscribe(node)
	if err != nil {
		t.Fatal(err)
	}
	defer e.a.Unsubscribe(sub)
	staleNamed(t, sub)
	act := e.active(node)
	if err := e.a.ReportUsage(node, Usage{InUse: []PodAddress{{IP: act[0], ContainerID: "c", PodNamespace: "d", PodName: "x", PodUID: "u"}}}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_ = e.a.checkStalePods(e.ctx)
		e.clk.Advance(time.Minute)
	}
	if got := staleNamed(t, sub); got != nil {
		t.Fatalf("named %v before the caches synced", got)
	}
}

// Instances EC2 lists as pending with the cluster's instance tag are registered from that
// description, named as their agents will name them, and supplied before their agents
// register; running ones (their agents register them), pending ones without the tag and
// registered ones are left alone. The agent's registration then finds its node.
func TestDiscoverPendingInstances(t *testing.T) {
	const tag = "kubernetes.io/cluster/test"
	e := newEnv(t, func(c *Config) { c.PendingTag, c.NodeNames = tag, NodeNamesInstanceID })
	launch := func(state string, tags map[string]string) Registration {
		req := e.instance("m5.large", subnetA)
		e.ec2.mu.Lock()
		e.ec2.instances[req.InstanceID].state, e.ec2.instances[req.InstanceID].tags = state, tags
		e.ec2.mu.Unlock()
		return req
	}
	pending := launch("pending", map[string]string{tag: "owned"})
	running := launch("running", map[string]string{tag: "owned"})
	untagged := launch("pending", map[string]string{"other": "x"})
	calls := e.ec2.callCount("DescribeInstances")
	if err := e.a.discoverPending(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.a.wg.Wait()
	if n := e.ec2.callCount("DescribeInstances") - calls; n != 1 {
		t.Fatalf("discovery made %d DescribeInstances calls; want 1 (the filtered one, reused for the registration)", n)
	}
	rec, ok := e.a.led.NodeByInstance(pending.InstanceID)
	if !ok || rec.Name != pending.InstanceID {
		t.Fatalf("pending tagged instance registered as %+v (%v); want the node named %s", rec, ok, pending.InstanceID)
	}
	for _, other := range []Registration{running, untagged} {
		if _, ok := e.a.led.NodeByInstance(other.InstanceID); ok {
			t.Fatalf("instance %s was pre-registered; only pending ones with the tag are", other.InstanceID)
		}
	}
	e.step(rec.Name)
	if len(e.active(rec.Name)) == 0 {
		t.Fatal("no address on the discovered node before its agent registers")
	}
	before := e.active(rec.Name)
	pending.NodeName = pending.InstanceID
	pool, _, err := e.a.RegisterNode(e.ctx, pending)
	if err != nil {
		t.Fatalf("the agent's registration after discovery: %v", err)
	}
	var leased []netip.Addr
	for _, en := range pool.Node.ENIs {
		for _, ad := range en.Addresses {
			if ad.State == ledger.LeaseActive {
				leased = append(leased, ad.IP)
			}
		}
	}
	slices.SortFunc(leased, netip.Addr.Compare)
	if !slices.Equal(leased, before) {
		t.Fatalf("the agent's pool leases %v; the node had %v before it registered", leased, before)
	}
	// A second round finds the node registered and describes once more, registering nothing.
	if err := e.a.discoverPending(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.a.wg.Wait()
	if n := len(e.a.led.Nodes()); n != 1 {
		t.Fatalf("%d nodes after a second round; want 1", n)
	}
}

// With the lookahead, pods seen bound long enough before their ADD (longer than a refill takes)
// need no free stock: the adaptive target stays at the floor after a burst of them, where
// without the lookahead the same burst raises it to the burst's size. A lead shorter than the
// refill latency keeps the share 1 - lead/latency of the burst.
func TestLookaheadLeadShrinksTheAdaptiveTarget(t *testing.T) {
	target := func(on bool, lead time.Duration) int {
		t.Helper()
		kc := newFakeCluster()
		e := newEnv(t, func(c *Config) { c.Cluster, c.Lookahead = kc, on })
		node := e.register("m5.xlarge", subnetA)
		e.usage(node)
		e.step(node)
		// Past the node's first minute (whose starts the start prior covers), a baseline.
		e.clk.Advance(2 * policy.StartWindow)
		e.usage(node)
		pods := kc.bind(node, 12, e.clk.Now())
		e.step(node)
		e.clk.Advance(lead)
		u := Usage{AddsTotal: 12}
		for i, p := range pods {
			u.InUse = append(u.InUse, PodAddress{IP: netip.AddrFrom4([4]byte{10, 0, 0, byte(200 + i)}), ContainerID: "c" + p.UID,
				PodNamespace: p.Namespace, PodName: p.Name, PodUID: p.UID})
		}
		if err := e.a.ReportUsage(node, u); err != nil {
			t.Fatal(err)
		}
		rt, ok := e.a.Runtime(node)
		if !ok {
			t.Fatal("no runtime")
		}
		return rt.Targets.TargetFree
	}
	// fakeEC2's refill latency estimate is 100 ms.
	if off := target(false, 2*time.Second); off < 12 {
		t.Fatalf("without the lookahead, the target after a burst of 12 is %d; want at least 12", off)
	}
	if on := target(true, 2*time.Second); on != 1 {
		t.Fatalf("with pods seen bound 2 s before their ADD, the target is %d; want the floor, 1", on)
	}
	if short := target(true, 50*time.Millisecond); short < 6 || short >= 12 {
		t.Fatalf("with a lead of half the refill latency, the target is %d; want about half the burst (6..11)", short)
	}
}

func TestLeadSamplesLow(t *testing.T) {
	var l leadSamples
	for i := range minLeadSamples - 1 {
		l.add(time.Duration(i) * time.Second)
	}
	if _, ok := l.low(); ok {
		t.Fatal("a low lead before enough samples")
	}
	for i := range 200 {
		l.add(time.Duration(i%100) * time.Millisecond)
	}
	if d, ok := l.low(); !ok || d < 10*time.Millisecond || d > 15*time.Millisecond {
		t.Fatalf("10th percentile of 0..99 ms (the last 128 samples) = %v, %v", d, ok)
	}
}
