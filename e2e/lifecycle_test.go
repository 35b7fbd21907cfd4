package e2e_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
)

// TestPodLifecycle runs a real agent (in-process, node networking in its node namespace)
// against a real --dev server, and the real plugin binary as the runtime would: discovery
// through the simulator's IMDS, registration, the pool filling, ADD/CHECK/STATUS/DEL, two pods
// pinging each other through their host veths, usage reaching the server, and the surplus
// after the DELs proposed, confirmed by the agent and unassigned on EC2.
func TestPodLifecycle(t *testing.T) {
	nstest.GuardRootNS(t, "eni", "sim-")
	s := harness.StartDev(t, nil)
	admin := harness.Admin(t, s.GRPCAddr())
	inst := harness.Running(s.Sim().Sim())[0]
	n := harness.NewNode(t, s.Sim(), inst, s.GRPCAddr())
	ag := n.StartAgentInProcess(nil)

	v := ag.WaitConnected(20*time.Second, 1)
	if v.Instance.InstanceID != inst.ID || v.Instance.ENIID != inst.PrimaryENI || v.NodeName != inst.PrivateDNSName {
		t.Fatalf("agent discovered %+v as node %q, want instance %s (ENI %s) as %s", v.Instance, v.NodeName, inst.ID, inst.PrimaryENI, inst.PrivateDNSName)
	}
	if len(v.ENIs) != 1 || v.ENIs[0].ID != inst.PrimaryENI {
		t.Fatalf("pool ENIs %+v, want the primary ENI %s", v.ENIs, inst.PrimaryENI)
	}
	// The primary ENI's stand-in link exists in the node namespace, and nothing of ours in the
	// test's own namespace (GuardRootNS checks that at the end).
	if _, err := n.H.LinkByName(netconf.SimulatedLinkName(inst.PrimaryENI)); err != nil {
		t.Errorf("simulated link of the primary ENI: %v", err)
	}

	a, b := n.NewPod("pod-a"), n.NewPod("pod-b")
	addA := n.Plugin("ADD", a, "1.1.0").MustSucceed(t, "ADD pod-a")
	ipA := addA.IP(t)
	addB := n.Plugin("ADD", b, "1.0.0").MustSucceed(t, "ADD pod-b")
	ipB := addB.IP(t)
	if ipA == ipB {
		t.Fatalf("both pods got %s", ipA)
	}
	leased := harness.PoolAddresses(mustNode(t, admin, n.Name()).GetPool(), 0)
	for _, ip := range []netip.Addr{ipA, ipB} {
		if _, ok := leased[ip.String()]; !ok {
			t.Errorf("pod address %s is not leased to %s", ip, n.Name())
		}
	}
	// Again: ADD of a known attachment returns the same address.
	if again := n.Plugin("ADD", a, "1.1.0").MustSucceed(t, "ADD pod-a again").IP(t); again != ipA {
		t.Errorf("second ADD of pod-a returned %s, want %s", again, ipA)
	}

	n.Plugin("CHECK", a, "1.1.0", `"prevResult":`+string(addA.Stdout)).MustSucceed(t, "CHECK pod-a")
	n.Plugin("CHECK", b, "1.0.0", `"prevResult":`+string(addB.Stdout)).MustSucceed(t, "CHECK pod-b")
	n.RunPlugin(n.Env("STATUS", nil), n.Conf("1.1.0")).MustSucceed(t, "STATUS")
	if err := harness.Ping(a, ipB); err != nil {
		t.Errorf("pod-a -> pod-b: %v", err)
	}
	if err := harness.Ping(b, ipA); err != nil {
		t.Errorf("pod-b -> pod-a: %v", err)
	}

	// Usage reaches the server: both pods in use on the node.
	harness.Eventually(t, 10*time.Second, "the server to see both pods", func() error {
		d := mustNode(t, admin, n.Name())
		var got []string
		for _, p := range d.GetPods() {
			got = append(got, p.GetIp()+"="+p.GetContainerId())
		}
		slices.Sort(got)
		want := []string{ipA.String() + "=" + a.ContainerID, ipB.String() + "=" + b.ContainerID}
		slices.Sort(want)
		if d.GetSummary().GetInUse() != 2 || !slices.Equal(got, want) {
			return fmt.Errorf("in use %d, pods %v; want %v", d.GetSummary().GetInUse(), got, want)
		}
		return nil
	})
	peak := ec2Secondaries(t, s.Sim().Sim(), inst.PrimaryENI)
	if len(peak) < 2 {
		t.Fatalf("EC2 has %v on the primary ENI, want both pods' addresses", peak)
	}

	for _, p := range []*harness.Pod{a, b} {
		for range 2 { // idempotent
			n.Del(p)
		}
		if _, err := n.H.LinkByName(p.HostVeth()); err == nil {
			t.Errorf("host veth of %s survived DEL", p.Name)
		}
	}
	if r := n.PodRules(); len(r) != 0 {
		t.Errorf("pod rules left after DEL: %+v", r)
	}

	// The surplus is proposed, confirmed by the agent once the addresses cooled down, and
	// unassigned on EC2; the agent's pool and EC2 agree afterwards.
	harness.Eventually(t, 20*time.Second, "the surplus to leave EC2", func() error {
		now := ec2Secondaries(t, s.Sim().Sim(), inst.PrimaryENI)
		if len(now) >= len(peak) {
			return fmt.Errorf("EC2 still has %v (peak %v)", now, peak)
		}
		v, err := ag.View()
		if err != nil {
			return err
		}
		var pool []string
		for _, e := range v.ENIs {
			for _, ad := range e.Addresses {
				pool = append(pool, ad.IP)
			}
		}
		slices.Sort(pool)
		if !slices.Equal(pool, now) {
			return fmt.Errorf("agent pool %v, EC2 %v", pool, now)
		}
		return nil
	})
	if got := counter(t, ag.InProcess().Gatherer(), "ipledger_agent_release_acks_total", "confirmed"); got < 1 {
		t.Errorf("the agent confirmed %v release items, want at least 1", got)
	}
	if err := harness.Consistent(t.Context(), s.Sim().Sim(), s.Store(), "dev"); err != nil {
		t.Error(err)
	}
	if err := harness.BudgetsAddUp(t.Context(), admin); err != nil {
		t.Error(err)
	}
}
