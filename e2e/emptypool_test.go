package e2e_test

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/e2e/harness"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
)

// tinySubnet is a /28 (11 usable addresses) with eight instances: their primary addresses leave
// three for pods.
const tinySubnet = `
vpc: {cidr: 10.20.0.0/16}
subnets:
  - {cidr: 10.20.0.0/28, availability_zone: eu-west-1a}
instances:
  - {type: m5.large, subnet: 10.20.0.0/28, count: 8, name: tiny}
`

// TestEmptyPool: with the pool at its floor, several ADDs at once all succeed while the server
// assigns more (some of them wait); when the subnet is exhausted, ADD fails with CNI code 11 and
// a message naming the exhaustion, and changes nothing.
func TestEmptyPool(t *testing.T) {
	harness.RequireNodeNamespaces(t)
	scenario := filepath.Join(t.TempDir(), "tiny.yaml")
	if err := os.WriteFile(scenario, []byte(tinySubnet), 0o644); err != nil {
		t.Fatal(err)
	}
	s := harness.StartDev(t, func(c *config.Config) { c.SimScenario = scenario })
	sim := s.Sim().Sim()
	// Assignments take a moment, so ADDs that find the pool empty really wait.
	sim.SetFault("AssignPrivateIpAddresses", ec2sim.Fault{Latency: 300 * time.Millisecond})
	inst := harness.Running(sim)[0]
	n := harness.NewNode(t, s.Sim(), inst, s.GRPCAddr())
	ag := n.StartAgentInProcess(nil)
	v := ag.WaitConnected(20*time.Second, 1)
	if v.Counts.Free != 1 {
		t.Fatalf("pool at its floor has %d free, want 1", v.Counts.Free)
	}

	// Three ADDs at once, one free address: all succeed.
	pods := []*harness.Pod{n.NewPod("burst-0"), n.NewPod("burst-1"), n.NewPod("burst-2")}
	results := make([]harness.Result, len(pods))
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() { results[i] = n.Plugin("ADD", p, "1.1.0") })
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, r := range results {
		ip := r.MustSucceed(t, "ADD "+pods[i].Name).IP(t)
		if seen[ip.String()] {
			t.Fatalf("two pods got %s", ip)
		}
		seen[ip.String()] = true
	}
	if waited := histogramCount(t, ag.InProcess().Gatherer(), "ipledger_agent_add_duration_seconds", "true"); waited < 1 {
		t.Errorf("%v ADDs waited for the allocator, want at least one", waited)
	}
	for _, p := range pods {
		n.Plugin("CHECK", p, "1.1.0").MustSucceed(t, "CHECK "+p.Name)
	}

	// The subnet has nothing left: ADD waits, then fails with 11 naming the exhaustion.
	before := n.NetState()
	late := n.NewPod("late")
	start := time.Now()
	e := n.Plugin("ADD", late, "1.1.0", `"addTimeout":"4s"`).CNIError(t)
	took := time.Since(start)
	if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "subnet exhausted") || !strings.Contains(e.Msg, "SUBNET_EXHAUSTED") {
		t.Errorf("ADD in an exhausted subnet: code %d %q (%s), want 11 naming the subnet exhaustion", e.Code, e.Msg, e.Details)
	}
	if took > 6*time.Second {
		t.Errorf("ADD in an exhausted subnet took %v, want it within its 4 s addTimeout", took)
	}
	if d := harness.DiffNetState(before, n.NetState()); d != "" {
		t.Errorf("a failed ADD changed the node namespace:\n%s", d)
	}
	if got := harness.PodLinks(t, late); len(got) != 0 {
		t.Errorf("a failed ADD left links in the pod: %v", got)
	}
	v = ag.MustView()
	if len(v.Pods) != len(pods) || v.Waiting != 0 {
		t.Errorf("after the failed ADD the agent holds %d pods and %d wait, want %d and 0", len(v.Pods), v.Waiting, len(pods))
	}
	if got := counter(t, ag.InProcess().Gatherer(), "ipledger_agent_add_failures_total", "SUBNET_EXHAUSTED"); got != 1 {
		t.Errorf("add failures for SUBNET_EXHAUSTED = %v, want 1", got)
	}

	// A pod going away makes room again.
	n.Del(pods[0])
	ag.WaitView(10*time.Second, "the address back after its cooldown", func(v agent.PoolView) bool { return v.Counts.Free >= 1 })
	n.Add(late)
	for _, p := range append(pods[1:], late) {
		n.Del(p)
	}
	if err := servertest.ConsistentMidRelease(t.Context(), sim, s.Store(), "dev"); err != nil {
		t.Error(err)
	}
}
