package e2e_test

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/servertest"
)

// TestPodLifecycle runs real agents (in-process, node networking in their node namespaces)
// against a real --dev server, with the real plugin binary and cnitool as the runtime.
func TestPodLifecycle(t *testing.T) {
	harness.RequireNodeNamespaces(t)
	s := harness.StartDev(t, nil)
	insts := harness.Running(s.Sim().Sim())
	t.Run("plugin and cnitool", func(t *testing.T) { testPluginAndCNITool(t, s, insts[0]) })
	t.Run("pod on a secondary ENI", func(t *testing.T) { testSecondaryENI(t, s, insts[1]) })
	if err := servertest.ConsistentMidRelease(t.Context(), s.Sim().Sim(), s.Store(), "dev"); err != nil {
		t.Error(err)
	}
	if err := harness.BudgetsAddUp(t.Context(), harness.Admin(t, s.GRPCAddr())); err != nil {
		t.Error(err)
	}
}

// testPluginAndCNITool: discovery through the simulator's IMDS, registration, the pool filling;
// ADD, CHECK, STATUS, DEL through the plugin and ADD, CHECK, STATUS, DEL, GC through cnitool;
// pods pinging each other through their host veths; usage reaching the server; and the surplus
// after the DELs proposed, confirmed by the agent and unassigned on EC2.
func testPluginAndCNITool(t *testing.T, s *server.Server, inst ec2simInstance) {
	admin := harness.Admin(t, s.GRPCAddr())
	n := harness.NewNode(t, s.Sim(), inst, s.GRPCAddr())
	ag := n.StartAgentInProcess(nil)

	v := ag.WaitConnected(20*time.Second, 1)
	if v.Instance.InstanceID != inst.ID || v.Instance.ENIID != inst.PrimaryENI || v.NodeName != inst.PrivateDNSName {
		t.Fatalf("agent discovered %+v as node %q, want instance %s (ENI %s) as %s", v.Instance, v.NodeName, inst.ID, inst.PrimaryENI, inst.PrivateDNSName)
	}
	if len(v.ENIs) != 1 || v.ENIs[0].ID != inst.PrimaryENI {
		t.Fatalf("pool ENIs %+v, want the primary ENI %s", v.ENIs, inst.PrimaryENI)
	}
	if _, err := n.H.LinkByName(netconf.SimulatedLinkName(inst.PrimaryENI)); err != nil {
		t.Errorf("simulated link of the primary ENI in the node namespace: %v", err)
	}

	// Through the plugin binary.
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
	n.Plugin("CHECK", a, "1.1.0", `"prevResult":`+string(addA.Stdout)).MustSucceed(t, "CHECK pod-a")
	n.Plugin("CHECK", b, "1.0.0", `"prevResult":`+string(addB.Stdout)).MustSucceed(t, "CHECK pod-b")
	n.RunPlugin(n.Env("STATUS", nil), n.Conf("1.1.0")).MustSucceed(t, "STATUS")
	if err := nstest.Ping(a.NS, ipB); err != nil {
		t.Errorf("pod-a -> pod-b: %v", err)
	}
	if err := nstest.Ping(b.NS, ipA); err != nil {
		t.Errorf("pod-b -> pod-a: %v", err)
	}
	// A repeated ADD (a runtime retrying) returns the same address and keeps the pod working.
	if again := n.Plugin("ADD", a, "1.1.0").MustSucceed(t, "ADD pod-a again").IP(t); again != ipA {
		t.Errorf("second ADD of pod-a returned %s, want %s", again, ipA)
	}
	n.Plugin("CHECK", a, "1.1.0").MustSucceed(t, "CHECK pod-a after the second ADD")

	// Usage reaches the server: both pods in use on the node.
	waitServerPods(t, admin, n.Name(), map[string]string{ipA.String(): a.ContainerID, ipB.String(): b.ContainerID})

	// Through cnitool.
	rt := n.NewRuntime("1.1.0")
	c, d := n.CNIToolPod("tool-c"), n.CNIToolPod("tool-d")
	ipC := rt.Run("add", c).MustSucceed(t, "cnitool add tool-c").IP(t)
	ipD := rt.Run("add", d).MustSucceed(t, "cnitool add tool-d").IP(t)
	for _, p := range []*harness.Pod{c, d} {
		rt.Run("check", p).MustSucceed(t, "cnitool check "+p.Name)
	}
	rt.Run("status", c).MustSucceed(t, "cnitool status")
	if err := nstest.Ping(c.NS, ipD); err != nil {
		t.Errorf("tool-c -> tool-d: %v", err)
	}
	if err := nstest.Ping(d.NS, ipA); err != nil {
		t.Errorf("tool-d -> pod-a: %v", err)
	}
	waitServerPods(t, admin, n.Name(), map[string]string{ipA.String(): a.ContainerID, ipB.String(): b.ContainerID,
		ipC.String(): c.ContainerID, ipD.String(): d.ContainerID})
	peak := ec2Secondaries(t, s.Sim().Sim(), inst.PrimaryENI)
	if len(peak) < 4 {
		t.Fatalf("EC2 has %v on the primary ENI, want at least the 4 pods' addresses", peak)
	}

	for range 2 { // DEL is idempotent
		rt.Run("del", c).MustSucceed(t, "cnitool del tool-c")
	}
	// cnitool gc passes no valid attachments: libcni DELs what it cached (tool-d) and the
	// plugin's GC hands the agent an empty list, which takes back pod-a and pod-b too (they were
	// added by the plugin directly, unknown to libcni) and removes their veths.
	rt.Run("gc", c).MustSucceed(t, "cnitool gc")
	ag.WaitView(5*time.Second, "no pods", func(v agent.PoolView) bool { return len(v.Pods) == 0 })
	for _, p := range []*harness.Pod{a, b, c, d} {
		if _, err := n.H.LinkByName(p.HostVeth()); err == nil {
			t.Errorf("host veth of %s survived", p.Name)
		}
	}
	if r := n.PodRules(); len(r) != 0 {
		t.Errorf("pod rules left: %+v", r)
	}
	// DEL after GC is still fine.
	n.Del(a)
	n.Del(b)

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
		if pool := viewAddresses(v); !slices.Equal(pool, now) {
			return fmt.Errorf("agent pool %v, EC2 %v", pool, now)
		}
		return nil
	})
	if got := counter(t, ag.InProcess().Gatherer(), "ipledger_agent_release_acks_total", "confirmed"); got < 1 {
		t.Errorf("the agent confirmed %v release items, want at least 1", got)
	}
}

// testSecondaryENI: a policy of 12 addresses gives an m5.large a second ENI (9 secondaries fit
// on the first); the agent brings its link up with its route table; a pod whose address is on
// it gets the `from <ip> lookup <table>` rule and reaches a pod on the primary ENI.
func testSecondaryENI(t *testing.T, s *server.Server, inst ec2simInstance) {
	admin := harness.Admin(t, s.GRPCAddr())
	const label = "ipledger.io/e2e-policy"
	if _, err := admin.SetPolicy(t.Context(), &ipledgerv1.SetPolicyRequest{Policy: &ipledgerv1.NodePolicy{
		Name: "min12", Order: 1, Selector: &ipledgerv1.NodeSelector{Labels: map[string]string{label: "min12"}},
		MinimumIpTarget: proto.Uint32(12),
	}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Sim().Sim().TagInstance(t.Context(), inst.ID, map[string]string{label: "min12"}); err != nil {
		t.Fatal(err)
	}
	n := harness.NewNode(t, s.Sim(), inst, s.GRPCAddr())
	ag := n.StartAgentInProcess(func(c *agent.Config) { c.Labels = map[string]string{label: "min12"} })
	v := ag.WaitView(20*time.Second, "12 free addresses on two ENIs", func(v agent.PoolView) bool {
		return v.Counts.Free == 12 && len(v.ENIs) == 2
	})
	second := v.ENIs[1]
	if second.DeviceIndex != 1 || len(second.Addresses) == 0 {
		t.Fatalf("second ENI %+v, want device 1 with addresses", second)
	}
	table := netconf.TableForDevice(1)
	link := netconf.SimulatedLinkName(second.ID)
	sub := netip.MustParsePrefix(second.SubnetCIDR)
	gw := sub.Addr().Next()
	harness.Eventually(t, 10*time.Second, "the second ENI's route table", func() error {
		want := []string{sub.String() + " dev " + link, "default via " + gw.String() + " dev " + link}
		slices.Sort(want)
		if got := n.TableRoutes(table); !slices.Equal(got, want) {
			return fmt.Errorf("table %d: %q, want %q", table, got, want)
		}
		return nil
	})
	l, err := n.H.LinkByName(link)
	if err != nil {
		t.Fatalf("link of the second ENI: %v", err)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("link %s of the second ENI is down", link)
	}
	onSecond := map[string]bool{}
	for _, ad := range second.Addresses {
		onSecond[ad.IP] = true
	}

	// Pods fill the lowest device index first (the primary ENI): add pods until there is one on
	// each ENI.
	var first, other *harness.Pod
	var ipFirst, ipOther netip.Addr
	for i := 0; i < 12 && (first == nil || other == nil); i++ {
		p := n.NewPod(fmt.Sprintf("eni-pod-%d", i))
		ip := n.Add(p)
		switch {
		case onSecond[ip.String()] && other == nil:
			other, ipOther = p, ip
		case !onSecond[ip.String()] && first == nil:
			first, ipFirst = p, ip
		}
	}
	if first == nil || other == nil {
		t.Fatalf("12 pods did not get addresses on both ENIs (second ENI: %v)", onSecond)
	}
	t.Logf("pod %s on the primary ENI, pod %s on %s (table %d)", ipFirst, ipOther, second.ID, table)
	want := netconf.PodRoute{IP: ipOther, HostVeth: other.HostVeth(), Table: table}
	if rules := n.PodRules(); !slices.Contains(rules, want) {
		t.Errorf("pod rules %+v, want %+v (`from %s lookup %d`)", rules, want, ipOther, table)
	}
	n.Plugin("CHECK", other, "1.1.0").MustSucceed(t, "CHECK of the pod on the second ENI")
	if err := nstest.Ping(other.NS, ipFirst); err != nil {
		t.Errorf("pod on the second ENI -> pod on the primary: %v", err)
	}
	if err := nstest.Ping(first.NS, ipOther); err != nil {
		t.Errorf("pod on the primary ENI -> pod on the second: %v", err)
	}
	if rules := n.PodRules(); !slices.Contains(rules, netconf.PodRoute{IP: ipFirst, HostVeth: first.HostVeth(), Table: netconf.MainTable}) {
		t.Errorf("pod rules %+v, want only `to %s lookup main` for the pod on the primary ENI", rules, ipFirst)
	}
	// The server sees the pod on the second ENI's address in use.
	harness.Eventually(t, 10*time.Second, "the server to see the pod on the second ENI", func() error {
		for _, p := range mustNode(t, admin, n.Name()).GetPods() {
			if p.GetIp() == ipOther.String() && p.GetContainerId() == other.ContainerID {
				return nil
			}
		}
		return fmt.Errorf("%s is not in use on the server", ipOther)
	})
	n.Del(other)
	if rules := n.PodRules(); slices.ContainsFunc(rules, func(r netconf.PodRoute) bool { return r.IP == ipOther }) {
		t.Errorf("rules of %s left after DEL: %+v", ipOther, rules)
	}
}
