package e2e_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/ipledger/ipledger/e2e/harness"
	"github.com/ipledger/ipledger/server/allocator"
)

// testInstancesTerminated terminates two instances in EC2 while their agents run, with pods and,
// on one of them, a secondary ENI ipledger created: the nodes are removed, every address they
// held returns to the subnet, no ENI of theirs is left, and their agents cannot bring them back.
func (rs *resilience) testInstancesTerminated(t *testing.T) {
	step := stopwatch(t)
	c := rs.c
	sim := c.Sim.Sim()
	base := rs.subnetInfo(t, subnetTerminate)
	insts := rs.launch(t, subnetTerminate, 2)
	a, b := rs.join(t, insts[0], roleDefault), rs.join(t, insts[1], roleWarm)
	a.Agent().WaitConnected(30*time.Second, 1)
	b.Agent().WaitConnected(30*time.Second, 3)
	// Seven pods and three warm addresses on b: more than the 9 secondary addresses of an
	// m5.large's primary ENI, so b gets a second ENI, which ipledger creates and tags.
	pods := map[*rsNode][]*harness.Pod{a: {a.pod("doomed"), a.pod("doomed")}}
	for range 7 {
		pods[b] = append(pods[b], b.pod("doomed"))
	}
	checkRuns(t, "pods before the termination", startBurst(pods, 5, time.Now().Add(30*time.Second)).wait())
	b.Agent().WaitView(30*time.Second, "a secondary ENI", func(v agentPoolView) bool { return len(v.ENIs) >= 2 })
	harness.Eventually(t, 30*time.Second, "EC2 and etcd to agree before the termination", func() error { return c.Invariants(t.Context()) })
	names := []string{a.Name(), b.Name()}
	enis := len(a.Agent().MustView().ENIs) + len(b.Agent().MustView().ENIs)
	held := rs.subnetInfo(t, subnetTerminate).InUse - base.InUse
	step("two nodes with %d addresses in the subnet (pods, warm pools, a secondary ENI)", held)

	terminated := time.Now()
	if err := sim.TerminateInstances(t.Context(), insts[0].ID, insts[1].ID); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "the terminated nodes to be removed", func() error {
		st, err := c.Store.Load(t.Context())
		if err != nil {
			return err
		}
		for _, n := range names {
			if _, ok := st.Nodes[n]; ok {
				return fmt.Errorf("etcd still has node %s", n)
			}
		}
		return nil
	})
	removed := time.Since(terminated)
	harness.Eventually(t, 30*time.Second, "their addresses and ENIs to be gone", func() error {
		snap := sim.Snapshot()
		for _, e := range snap.ENIs {
			if slices.Contains(names, e.Tags[allocator.TagNode]) {
				return fmt.Errorf("ENI %s of %s is still there (%s)", e.ID, e.Tags[allocator.TagNode], e.Status)
			}
			if e.Attachment != nil && (e.Attachment.InstanceID == insts[0].ID || e.Attachment.InstanceID == insts[1].ID) {
				return fmt.Errorf("ENI %s is still attached to terminated %s", e.ID, e.Attachment.InstanceID)
			}
		}
		if now := rs.subnetInfo(t, subnetTerminate).InUse; now != base.InUse {
			return fmt.Errorf("the subnet has %d addresses in use, %d before the instances started", now, base.InUse)
		}
		return nil
	})
	returned := time.Since(terminated)
	step("nodes removed after %s, every address back after %s", ms(removed), ms(returned))
	// The agents still run; their registrations must not bring the nodes back.
	for _, n := range []*rsNode{a, b} {
		n.Agent().WaitView(30*time.Second, "the server to refuse the terminated node", func(v agentPoolView) bool {
			return !v.Server.Connected && v.Server.LastErrorAt.After(terminated)
		})
	}
	st, err := c.Store.Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, ok := st.Nodes[n]; ok {
			t.Errorf("node %s came back after its instance was terminated", n)
		}
	}
	for _, n := range []*rsNode{a, b} {
		t.Logf("agent of terminated %s: %s", n.Name(), n.Agent().MustView().Server.LastError)
		n.Agent().Kill() // the machine is gone, and its agent with it
	}
	rs.figs.add("2 instances terminated under running agents (%d addresses, %d ENIs): nodes removed after %s, every address back in the subnet and no ENI left after %s",
		held, enis, ms(removed), ms(returned))
	rs.settle(t, "instances terminated")
}
