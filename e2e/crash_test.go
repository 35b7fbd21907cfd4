package e2e_test

import (
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
)

// TestAgentCrash kills -9 the agent process between a pod's ADD and DEL and restarts it on the
// same checkpoint: the pod keeps its address (CHECK passes, the server still leases it, no other
// pod gets it) and DEL returns it. Then it kills the plugin mid-ADD, once while the agent waits
// for an address (nothing leaks) and once after the agent answered (the address leaks), and CNI
// GC with the runtime's valid attachments returns what leaked.
func TestAgentCrash(t *testing.T) {
	harness.RequireNodeNamespaces(t)
	s := harness.StartDev(t, nil)
	admin := harness.Admin(t, s.GRPCAddr())
	sim := s.Sim().Sim()
	inst := harness.Running(sim)[0]
	n := harness.NewNode(t, s.Sim(), inst, s.GRPCAddr())
	ag := n.StartAgent()
	ag.WaitConnected(20*time.Second, 1)

	survivor := n.NewPod("survivor")
	ip1 := n.Add(survivor)
	waitServerPods(t, admin, n.Name(), map[string]string{ip1.String(): survivor.ContainerID})

	ag.Kill()
	// While the agent is down, ADD fails with "try again later" and changes nothing.
	down := n.NewPod("while-down")
	before := n.NetState()
	e := n.Plugin("ADD", down, "1.1.0").CNIError(t)
	if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "agent unreachable") {
		t.Errorf("ADD with the agent down: code %d %q, want 11 saying the agent is unreachable", e.Code, e.Msg)
	}
	if d := harness.DiffNetState(before, n.NetState()); d != "" {
		t.Errorf("a failed ADD changed the node namespace:\n%s", d)
	}
	if got := harness.PodLinks(t, down); len(got) != 0 {
		t.Errorf("a failed ADD left links in the pod: %v", got)
	}

	ag = n.StartAgent()
	v := ag.WaitConnected(20*time.Second, 0)
	if !slices.ContainsFunc(v.Pods, func(p agentPod) bool { return p.ContainerID == survivor.ContainerID && p.IP == ip1.String() }) {
		t.Fatalf("restarted agent lost %s of %s: pods %+v", ip1, survivor.Name, v.Pods)
	}
	n.Plugin("CHECK", survivor, "1.1.0").MustSucceed(t, "CHECK after the agent restarted")
	if leased, err := harness.LeasedTo(t.Context(), s.Store(), n.Name()); err != nil || !slices.Contains(leased, ip1.String()) {
		t.Fatalf("the server leases %v (%v) to %s, want %s among them", leased, err, n.Name(), ip1)
	}
	// Other pods get other addresses, and reach the survivor.
	second, third := n.NewPod("second"), n.NewPod("third")
	ip2, ip3 := n.Add(second), n.Add(third)
	if ip2 == ip1 || ip3 == ip1 || ip2 == ip3 {
		t.Fatalf("addresses after the restart: survivor %s, second %s, third %s", ip1, ip2, ip3)
	}
	if err := nstest.Ping(second.NS, ip1); err != nil {
		t.Errorf("second -> survivor after the restart: %v", err)
	}
	waitServerPods(t, admin, n.Name(), map[string]string{ip1.String(): survivor.ContainerID, ip2.String(): second.ContainerID, ip3.String(): third.ContainerID})
	n.Del(survivor)
	v = ag.WaitView(5*time.Second, "the survivor's address back", func(v agent.PoolView) bool {
		return !slices.ContainsFunc(v.Pods, func(p agentPod) bool { return p.ContainerID == survivor.ContainerID })
	})
	if !slices.ContainsFunc(v.Cooling, func(c coolingAddr) bool { return c.IP == ip1.String() }) {
		t.Errorf("%s is not cooling down after DEL: %+v", ip1, v.Cooling)
	}

	// The plugin killed mid-ADD. EC2 refuses every assignment, so the pool runs dry and ADD waits.
	sim.SetFault("AssignPrivateIpAddresses", ec2sim.Fault{Code: "InternalError", Probability: 1})
	live := []*harness.Pod{second, third}
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; ; i++ {
		v := ag.MustView()
		if time.Now().After(deadline) {
			t.Fatalf("the pool does not run dry: %+v", v.Counts)
		}
		if v.Counts.Free > 0 {
			p := n.NewPod(fmt.Sprintf("drain-%d", i))
			n.Add(p)
			live = append(live, p)
			continue
		}
		if len(v.Cooling) == 0 && v.Waiting == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond) // the survivor's address is cooling down: poll
	}
	// waitingAdd starts an ADD and returns once the agent waits for an address for it. An ADD
	// that got an address after all (one the server had in flight) joins the live pods and
	// another is started.
	waitingAdd := func(name string) (*harness.Pod, *exec.Cmd) {
		t.Helper()
		for attempt := range 5 {
			p := n.NewPod(fmt.Sprintf("%s-%d", name, attempt))
			cmd := startPlugin(t, n, "ADD", p)
			servertest.WaitFor(t, 10*time.Second, name+"'s ADD to wait or finish", func() bool {
				return ag.MustView().Waiting == 1 || pluginExited(cmd)
			})
			if !pluginExited(cmd) {
				return p, cmd
			}
			if !cmd.ProcessState.Success() {
				t.Fatalf("ADD of %s failed while the pool ran dry", p.Name)
			}
			live = append(live, p)
		}
		t.Fatalf("no ADD of %s waited in 5 attempts", name)
		return nil, nil
	}

	// Killed while the agent waits: the wait ends and nothing is assigned.
	ghost, ghostCmd := waitingAdd("ghost")
	killPlugin(t, ghostCmd)
	ag.WaitView(10*time.Second, "the wait to end", func(v agent.PoolView) bool { return v.Waiting == 0 })

	// Stopped while the agent waits, killed after the agent answered: the address leaks.
	victim, victimCmd := waitingAdd("victim")
	if err := victimCmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	sim.ClearFaults()
	v = ag.WaitView(15*time.Second, "the agent to answer the victim's ADD", func(v agent.PoolView) bool {
		return slices.ContainsFunc(v.Pods, func(p agentPod) bool { return p.ContainerID == victim.ContainerID })
	})
	killPlugin(t, victimCmd)
	var leaked string
	for _, p := range v.Pods {
		if p.ContainerID == victim.ContainerID {
			leaked = p.IP
		}
		if p.ContainerID == ghost.ContainerID {
			t.Errorf("the ghost's ADD, killed while waiting, holds %s", p.IP)
		}
	}
	if _, err := n.H.LinkByName(victim.HostVeth()); err == nil {
		t.Fatalf("the victim's veth exists: the plugin was not stopped before wiring the pod")
	}

	// GC with the runtime's valid attachments returns the leaked address, and only it.
	n.GC(live...).MustSucceed(t, "GC")
	v = ag.MustView()
	var holders []string
	for _, p := range v.Pods {
		holders = append(holders, p.ContainerID)
		if p.IP == leaked {
			t.Errorf("GC kept the leaked %s (held by %s)", leaked, p.ContainerID)
		}
	}
	for _, p := range live {
		if !slices.Contains(holders, p.ContainerID) {
			t.Errorf("GC released %s, a valid attachment", p.Name)
		}
		n.Plugin("CHECK", p, "1.1.0").MustSucceed(t, "CHECK of "+p.Name+" after GC")
	}
	waitServerPodCount(t, admin, n.Name(), len(live))
	for _, p := range live {
		n.Del(p)
	}
	ag.WaitView(5*time.Second, "no pods", func(v agent.PoolView) bool { return len(v.Pods) == 0 })
	if r := n.PodRules(); len(r) != 0 {
		t.Errorf("pod rules left: %+v", r)
	}
	harness.Eventually(t, 10*time.Second, "EC2 and etcd to agree", func() error {
		return servertest.ConsistentMidRelease(t.Context(), sim, s.Store(), "dev")
	})
	_ = netip.Addr{}
}
