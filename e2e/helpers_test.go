package e2e_test

import (
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/agent/pool"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2sim"
)

func mustNode(t *testing.T, admin ipledgerv1.AdminServiceClient, name string) *ipledgerv1.NodeDetail {
	t.Helper()
	d, err := admin.GetNode(t.Context(), &ipledgerv1.GetNodeRequest{NodeName: name})
	if err != nil {
		t.Fatalf("GetNode %s: %v", name, err)
	}
	return d
}

// ec2Secondaries lists the secondary addresses EC2 has on an ENI, sorted.
func ec2Secondaries(t *testing.T, sim *ec2sim.Sim, id string) []string {
	t.Helper()
	e, ok := sim.Snapshot().ENI(id)
	if !ok {
		t.Fatalf("ENI %s is not in the simulator", id)
	}
	out := slices.Clone(e.SecondaryIPs)
	slices.Sort(out)
	return out
}

// counter reads a counter of a registry by its one label value ("" for a counter without
// labels; 0 when absent).
func counter(t *testing.T, g prometheus.Gatherer, name, label string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label == "" && len(m.GetLabel()) == 0 {
				return m.GetCounter().GetValue()
			}
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

type ec2simInstance = ec2sim.InstanceInfo

// viewAddresses lists every address of an agent's pool, sorted.
func viewAddresses(v agent.PoolView) []string {
	var out []string
	for _, e := range v.ENIs {
		for _, ad := range e.Addresses {
			out = append(out, ad.IP)
		}
	}
	slices.Sort(out)
	return out
}

// waitServerPods waits until the server's view of the node's pods is want (address -> container).
func waitServerPods(t *testing.T, admin ipledgerv1.AdminServiceClient, node string, want map[string]string) {
	t.Helper()
	harness.Eventually(t, 10*time.Second, "the server to see the node's pods", func() error {
		d := mustNode(t, admin, node)
		got := map[string]string{}
		for _, p := range d.GetPods() {
			got[p.GetIp()] = p.GetContainerId()
		}
		if int(d.GetSummary().GetInUse()) != len(want) || !maps.Equal(got, want) {
			return fmt.Errorf("in use %d, pods %v; want %v", d.GetSummary().GetInUse(), got, want)
		}
		return nil
	})
}

type (
	agentPod    = pool.PodSnapshot
	coolingAddr = pool.CoolSnapshot
)

// startPlugin starts the plugin for a pod (CNI 1.1.0) without waiting for it; it is killed in
// t.Cleanup if still running.
func startPlugin(t *testing.T, n *harness.Node, cmd string, p *harness.Pod) *exec.Cmd {
	t.Helper()
	c := n.PluginCmd(n.Env(cmd, p), n.Conf("1.1.0"))
	if err := harness.Start(c); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = c.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = c.Process.Kill()
		<-done
	})
	plugins.Store(c, done)
	return c
}

// plugins maps a started plugin to the channel closed when it exits.
var plugins sync.Map

// killPlugin sends SIGKILL to a started plugin and waits until it is gone.
func killPlugin(t *testing.T, c *exec.Cmd) {
	t.Helper()
	if err := c.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	done, _ := plugins.Load(c)
	select {
	case <-done.(chan struct{}):
	case <-time.After(5 * time.Second):
		t.Fatal("the killed plugin did not exit")
	}
}

// waitServerPodCount waits until the server counts want pods in use on the node.
func waitServerPodCount(t *testing.T, admin ipledgerv1.AdminServiceClient, node string, want int) {
	t.Helper()
	harness.Eventually(t, 10*time.Second, "the server's pod count", func() error {
		if got := mustNode(t, admin, node).GetSummary().GetInUse(); int(got) != want {
			return fmt.Errorf("in use %d, want %d", got, want)
		}
		return nil
	})
}

// histogramCount reads the sample count of a histogram of a registry by its one label value.
func histogramCount(t *testing.T, g prometheus.Gatherer, name, label string) uint64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}

// pluginExited reports whether a plugin started by startPlugin has exited (its ProcessState is
// then set).
func pluginExited(c *exec.Cmd) bool {
	done, ok := plugins.Load(c)
	if !ok {
		return false
	}
	select {
	case <-done.(chan struct{}):
		return true
	default:
		return false
	}
}
