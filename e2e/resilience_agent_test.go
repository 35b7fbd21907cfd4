package e2e_test

import (
	"encoding/json"
	"fmt"
	"maps"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/ipledger/ipledger/e2e/harness"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// waitPluginExit waits until a plugin started with startPlugin has exited and returns its CNI
// error (nil when it succeeded).
func waitPluginExit(t *testing.T, c *exec.Cmd, stdout *[]byte, d time.Duration) *types.Error {
	t.Helper()
	done, ok := plugins.Load(c)
	if !ok {
		t.Fatal("not a plugin started with startPlugin")
	}
	select {
	case <-done.(chan struct{}):
	case <-time.After(d):
		t.Fatalf("the plugin did not exit within %v", d)
	}
	if c.ProcessState.Success() {
		return nil
	}
	var e types.Error
	if err := json.Unmarshal(*stdout, &e); err != nil || e.Code == 0 {
		t.Fatalf("the plugin failed (%v) without a CNI error: %q", c.ProcessState, *stdout)
	}
	return &e
}

// testAgentKilledMidAdd kills -9 an agent while three ADDs wait for addresses (EC2 is slow, the
// node keeps no free address): the plugins fail with code 11, and after the agent restarts
// nothing is lost or leaked. The running pod keeps its address, the failed sandboxes' DEL and
// the runtime's GC leave exactly the running pods, the checkpoint survives another crash, and
// the sandboxes started again get addresses nobody else holds.
func (rs *resilience) testAgentKilledMidAdd(t *testing.T) {
	step := stopwatch(t)
	sim := rs.c.Sim.Sim()
	n := rs.join(t, rs.launch(t, subnetAgent, 1)[0], roleProbe)
	n.Agent().WaitView(30*time.Second, "connected with no free address", func(v agentPoolView) bool {
		return v.Server.Connected && v.Counts.Free == 0
	})
	keep := n.pod("keep")
	kr := startPod(n, keep, time.Now().Add(30*time.Second))
	if kr.err != nil {
		t.Fatalf("first pod: %s", kr)
	}
	step("a pod runs with %s; the pool has no free address", kr.ip)

	// EC2 assigns slowly, so the ADDs are still waiting when the agent dies.
	sim.SetFault("AssignPrivateIpAddresses", ec2sim.Fault{Latency: 3 * time.Second})
	defer sim.ClearFaults()
	var waiting []*harness.Pod
	var cmds []*exec.Cmd
	var outs []*[]byte
	for i := range 3 {
		p := n.pod(fmt.Sprintf("mid-add-%d", i))
		c := startPluginCapturing(t, n.Node, "ADD", p)
		waiting, cmds, outs = append(waiting, p), append(cmds, c.cmd), append(outs, c.stdout)
	}
	n.Agent().WaitView(10*time.Second, "three ADDs waiting", func(v agentPoolView) bool { return v.Waiting == len(waiting) })
	n.Agent().Kill()
	step("agent killed with %d ADDs waiting", len(waiting))
	for i, c := range cmds {
		e := waitPluginExit(t, c, outs[i], 15*time.Second)
		if e == nil || e.Code != types.ErrTryAgainLater {
			t.Errorf("ADD of %s when its agent died: %+v, want CNI code 11", waiting[i].Name, e)
		}
	}
	sim.ClearFaults()

	n.restartAgent()
	v := n.Agent().WaitConnected(30*time.Second, 0)
	step("agent restarted: pods %v", podIPs(v))
	if got := podIPs(v); got[kr.ip.String()] != keep.ContainerID {
		t.Fatalf("after the crash the agent lost the running pod %s (%s): pods %v", keep.Name, kr.ip, got)
	}
	// The runtime tears the failed sandboxes down, then collects garbage with what it runs.
	for _, p := range waiting {
		n.plugin("DEL", p).MustSucceed(t, "DEL of a sandbox whose ADD failed")
		if links := harness.PodLinks(t, p); len(links) != 0 {
			t.Errorf("the failed ADD of %s left links in the pod: %v", p.Name, links)
		}
	}
	n.GC(keep).MustSucceed(t, "GC")
	v = n.Agent().MustView()
	if want := map[string]string{kr.ip.String(): keep.ContainerID}; !maps.Equal(podIPs(v), want) {
		t.Errorf("after DEL and GC the agent holds %v, want only %v", podIPs(v), want)
	}
	// The checkpoint holds exactly that: crash again and look.
	n.Agent().Kill()
	n.restartAgent()
	v = n.Agent().WaitConnected(30*time.Second, 0)
	if want := map[string]string{kr.ip.String(): keep.ContainerID}; !maps.Equal(podIPs(v), want) {
		t.Errorf("after a second crash the checkpoint gives %v, want %v", podIPs(v), want)
	}
	// The sandboxes are started again: each gets an address of its own.
	var runs []*podRun
	for _, p := range waiting {
		runs = append(runs, startPod(n, p, time.Now().Add(30*time.Second)))
	}
	runs = append(runs, kr)
	checkRuns(t, "sandboxes started again", runs)
	n.RT.Run("check", keep).MustSucceed(t, "CHECK of the pod that ran all along")
	step("sandboxes started again")
	rs.settle(t, "agent killed mid-ADD")
}

// capturedPlugin is a plugin started in the background whose stdout is kept.
type capturedPlugin struct {
	cmd    *exec.Cmd
	stdout *[]byte
}

// startPluginCapturing is startPlugin with the plugin's stdout kept (filled once it exited).
func startPluginCapturing(t *testing.T, n *harness.Node, cmd string, p *harness.Pod) capturedPlugin {
	t.Helper()
	c := n.PluginCmd(n.Env(cmd, p), n.Conf("1.1.0"))
	out := new([]byte)
	w := &captureWriter{b: out}
	c.Stdout = w
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
	return capturedPlugin{cmd: c, stdout: out}
}

type captureWriter struct{ b *[]byte }

func (w *captureWriter) Write(p []byte) (int, error) {
	*w.b = append(*w.b, p...)
	return len(p), nil
}

// testStaleCheckpoint restarts an agent on an old copy of its checkpoint after the pool moved
// on: pods were added and deleted, a drain released every free address and new ones were
// leased. The agent must take the server's pool, keep every address still in use (including
// those of pods started after the copy was made), hand no address out twice, and the runtime's
// GC must drop the pod that was deleted after the copy.
func (rs *resilience) testStaleCheckpoint(t *testing.T) {
	step := stopwatch(t)
	n := rs.join(t, rs.launch(t, subnetAgent, 1)[0], roleWarm)
	n.Agent().WaitConnected(30*time.Second, 3)
	deadline := time.Now().Add(60 * time.Second)
	start := func(name string) *podRun {
		t.Helper()
		r := startPod(n, n.pod(name), deadline)
		if r.err != nil {
			t.Fatalf("pod %s: %s", name, r)
		}
		return r
	}
	p1, p2 := start("before-1"), start("before-2")
	stale := harness.CopyCheckpoint(t, n.Checkpoint)
	staleView := n.Agent().MustView()
	step("checkpoint copied: generation %d, pods %v, pool %d addresses", staleView.Generation, podIPs(staleView), len(poolIPs(staleView)))

	// The pool moves on.
	p3, p4 := start("after-1"), start("after-2")
	n.RT.Run("del", p1.pod).MustSucceed(t, "DEL "+p1.pod.Name)
	live := []*podRun{p2, p3, p4}
	liveIPs := map[string]string{}
	for _, r := range live {
		liveIPs[r.ip.String()] = r.pod.ContainerID
	}
	if res := harness.Ctl(t, rs.someReplica(t), "drain", n.Name()); res.Exit != 0 {
		t.Fatalf("drain:\n%s", res)
	}
	n.Agent().WaitView(30*time.Second, "the drain to release every free address", func(v agentPoolView) bool {
		return v.Draining && maps.Equal(podIPs(v), liveIPs) && len(poolIPs(v)) == len(liveIPs)
	})
	if res := harness.Ctl(t, rs.someReplica(t), "drain", "--undo", n.Name()); res.Exit != 0 {
		t.Fatalf("drain --undo:\n%s", res)
	}
	moved := n.Agent().WaitConnected(30*time.Second, 3)
	var released []string
	for ip := range poolIPs(staleView) {
		if !poolIPs(moved)[ip] {
			released = append(released, ip)
		}
	}
	slices.Sort(released)
	if len(released) == 0 {
		t.Fatalf("no address of the old checkpoint was released (old pool %v, now %v)", poolIPs(staleView), poolIPs(moved))
	}
	step("pool moved on: generation %d; released since the copy: %v; pods %v", moved.Generation, released, podIPs(moved))

	// Crash, and the old checkpoint comes back.
	n.Agent().Kill()
	stale.Put(t, n.Checkpoint)
	n.restartAgent()
	v := n.Agent().WaitView(30*time.Second, "the server's pool", func(v agentPoolView) bool {
		return v.Server.Connected && v.Generation >= moved.Generation
	})
	step("agent restarted on the old checkpoint: generation %d, pods %v", v.Generation, podIPs(v))
	for _, ip := range released {
		if poolIPs(v)[ip] {
			t.Errorf("after the restart the pool still holds %s, released since the copy", ip)
		}
	}
	inUse := podIPs(v)
	for _, r := range live {
		if inUse[r.ip.String()] != r.pod.ContainerID {
			t.Errorf("after the restart on an old checkpoint the agent does not count %s as used by %s (running since before the restart): pods %v",
				r.ip, r.pod.Name, inUse)
		}
		if res := n.RT.Run("check", r.pod); res.Err != nil {
			t.Errorf("CHECK of %s (%s) after the restart: %v: %s", r.pod.Name, r.ip, res.Err, stderrLine(string(res.Stderr)))
		}
	}
	// New pods: none may get an address a running pod holds.
	var fresh []*podRun
	for i := range 4 {
		r := start(fmt.Sprintf("fresh-%d", i))
		if c, ok := liveIPs[r.ip.String()]; ok {
			t.Errorf("new pod %s got %s, which running pod %s holds: an address handed out twice", r.pod.Name, r.ip, c)
		}
		fresh = append(fresh, r)
	}
	checkRuns(t, "pods after the restart", append(append([]*podRun(nil), live...), fresh...))
	// The runtime's GC drops what the old checkpoint still had for the pod deleted after the copy.
	valid := []*harness.Pod{}
	for _, r := range append(append([]*podRun(nil), live...), fresh...) {
		valid = append(valid, r.pod)
	}
	n.GC(valid...).MustSucceed(t, "GC")
	v = n.Agent().MustView()
	if _, ok := podIPs(v)[p1.ip.String()]; ok && podIPs(v)[p1.ip.String()] == p1.pod.ContainerID {
		t.Errorf("after GC the agent still gives %s to %s, deleted before the restart", p1.ip, p1.pod.Name)
	}
	step("GC done: pods %v", podIPs(v))
	rs.settle(t, "agent restarted on a stale checkpoint")
}
