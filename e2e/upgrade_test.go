package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/store"
)

// The previous release the upgrade test starts from: ipledger 0.1.0, main as of this commit
// (CHANGELOG.md, "[0.1.0]"; docs/deploy.md, "Upgrade and rollback"). It wrote no meta record
// (the etcd layout it wrote is schema 1 without one) and stamped its version into
// server.Version.
const (
	previousCommit  = "117a7bd59c6f83df7b5f1c08ab9dd296b55feb73"
	previousVersion = "v0.1.0"
	previousStamp   = "-X github.com/ipledger/ipledger/server.Version=" + previousVersion
)

// TestUpgradeFromPreviousRelease builds ipledger 0.1.0 from the repository's own history and
// runs it as in production: a real 3-member etcd, three ipledger-server processes, agents on
// three nodes with pods. Then it upgrades as docs/deploy.md says: the servers replica by
// replica (SIGTERM, the new binary started in its place; standbys first, the leader last),
// the agents connected throughout; then the agents one by one (stopped, the new plugin put in
// place, the new agent started on the old agent's checkpoint). Pods start before, during and
// after each step. Every pod keeps its address, no address has two owners at any time (the
// watchdog), EC2, etcd and the agents agree after each step and `ipledgerctl check` is clean;
// at the end the meta record carries the new binary's schema and version.
//
// The downgrade guard: with a meta record of a newer schema than the binary's (written by the
// test, as a newer release would), every replica that wins the election refuses to lead, says
// so in the words docs/deploy.md quotes and exits 1; with the meta back, a replica leads again.
func TestUpgradeFromPreviousRelease(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: builds the previous release, starts etcd, three servers and agents")
	}
	nstest.RequireIPNetns(t)
	nstest.GuardRootNS(t, "eni", "sim-")
	step := stopwatch(t)
	prev := harness.PreviousRelease(t, previousCommit, previousVersion, previousStamp)
	step("previous release %s (%s): ready in %s (built: %v)", prev.Version, prev.Commit[:12], ms(prev.Took), prev.Built)
	newServer, newCommit := harness.Binary(t, "ipledger-server"), os.Getenv("IPLEDGER_COMMIT")

	c := harness.StartProcCluster(t, harness.ProcClusterConfig{Name: "upgrade", ServerBinary: prev.Server})
	rs := &resilience{c: c}
	rs.figs.name = "upgrade.txt"
	defer rs.figs.report(t)
	ctx := t.Context()
	leader := c.WaitLeader(30*time.Second, nil)
	if st, err := c.Status(ctx, leader.Index); err != nil || st.GetVersion() != prev.Version || st.GetCommit() != "" {
		t.Fatalf("the leader should run %s (which reports no commit): status %v, %v", prev.Version, st, err)
	}
	for _, p := range rolePolicies() {
		if _, err := c.LeaderAdmin().SetPolicy(ctx, &ipledgerv1.SetPolicyRequest{Policy: p}); err != nil {
			t.Fatalf("set policy %s on %s: %v", p.GetName(), prev.Version, err)
		}
	}
	rs.watch(t)
	step("cluster of %s up: 3 etcd members, 3 servers", prev.Version)

	// Nodes of the probe role keep no free address, so every pod start is an allocation by
	// whichever server leads. 0.1.0 matched policies against the labels agents report, this
	// release against the instance's EC2 tags: the nodes carry both (CHANGELOG.md, upgrade
	// notes).
	insts := rs.launch(t, subnetAgent, 3)
	var nodes []*rsNode
	for _, inst := range insts {
		nodes = append(nodes, rs.joinWith(t, inst, roleProbe, nodeOpts{
			agentArgs: []string{"--node-labels", "e2e-role=" + roleProbe},
			agentBin:  prev.Agent, pluginDir: prev.PluginDir,
		}))
	}
	running := map[string]*podRun{}
	started := map[string]int{} // pod starts per phase
	start := func(n *rsNode, phase string) *podRun {
		t.Helper()
		pr := startPod(n, n.pod(phase), time.Now().Add(60*time.Second))
		if pr.err != nil {
			t.Fatalf("%s: %s", phase, pr)
		}
		record(t, running, pr)
		started[phase]++
		return pr
	}
	for _, n := range nodes {
		n.Agent().WaitConnected(30*time.Second, 0)
		start(n, "old")
		start(n, "old")
	}
	rs.settle(t, "on "+prev.Version)
	if _, found, _, err := c.Store.Meta(ctx); err != nil || found {
		t.Fatalf("%s should have written no meta record: found %v, %v", prev.Version, found, err)
	}
	step("%d pods on %s", len(running), prev.Version)
	kept := func(what string) {
		t.Helper()
		for ip, pr := range running {
			v, err := pr.node.Agent().View()
			if err != nil {
				t.Errorf("%s: agent of %s: %v", what, pr.node.Name(), err)
				continue
			}
			if id, ok := podIPs(v)[ip]; !ok || id != pr.pod.ContainerID {
				t.Errorf("%s: pod %s on %s lost %s (the agent has it for %q)", what, pr.pod.Name, pr.node.Name(), ip, id)
			}
		}
	}

	// The servers, replica by replica: standbys first, the leader last.
	leader = c.WaitLeader(20*time.Second, nil)
	order := []*harness.ServerProc{}
	for _, r := range c.Replicas {
		if r != leader {
			order = append(order, r)
		}
	}
	order = append(order, leader)
	for i, r := range order {
		isLeader := r == leader
		var during chan *podRun
		if isLeader {
			// A pod starts while the leader goes: it waits or retries until the new one serves.
			during = make(chan *podRun, 1)
			n := nodes[i%len(nodes)]
			p := n.pod("during-leader")
			go func() { during <- startPod(n, p, time.Now().Add(60*time.Second)) }()
		}
		runs := r.Runs()
		r.SetBinary(newServer)
		stoppedAt := time.Now()
		if _, err := r.Terminate(); err != nil {
			t.Fatal(err)
		}
		harness.Eventually(t, 30*time.Second, fmt.Sprintf("replica %d to run the new binary and be ready", r.Index), func() error {
			if r.Runs() == runs || r.PID() == 0 {
				return errors.New("not started again yet")
			}
			return r.Ready(ctx)
		})
		back := time.Since(stoppedAt)
		if isLeader {
			var led *harness.ServerProc
			harness.Eventually(t, 30*time.Second, "a replica of the new release to lead", func() error {
				led = c.Leader(ctx)
				if led == nil {
					return errors.New("no leader")
				}
				st, err := c.Status(ctx, led.Index)
				if err != nil {
					return err
				}
				if st.GetCommit() == "" || (newCommit != "" && st.GetCommit() != newCommit) {
					return fmt.Errorf("replica %d leads with version %q commit %q", led.Index, st.GetVersion(), st.GetCommit())
				}
				return nil
			})
			pr := <-during
			if pr.err != nil {
				t.Fatalf("a pod started while the leader was replaced: %s", pr)
			}
			record(t, running, pr)
			started["during-leader"]++
			rs.figs.add("leader (replica %d) replaced: replica %d of the new release leads; ready again %s after SIGTERM; a pod started meanwhile got %s in %s (%d attempts)",
				r.Index, led.Index, ms(back), pr.ip, ms(pr.done.Sub(pr.began)), pr.attempts)
		} else {
			rs.figs.add("standby (replica %d) replaced: ready again %s after SIGTERM", r.Index, ms(back))
		}
		for _, n := range nodes {
			start(n, fmt.Sprintf("server-%d-new", r.Index))
		}
		rs.settle(t, fmt.Sprintf("replica %d replaced", r.Index))
		kept(fmt.Sprintf("replica %d replaced", r.Index))
		step("replica %d (%s) runs the new binary", r.Index, map[bool]string{true: "the leader", false: "a standby"}[isLeader])
	}
	for _, n := range nodes {
		if n.Agent().Exited() {
			t.Fatalf("the agent of %s (%s) exited while the servers were replaced:\n%s", n.Name(), prev.Version, n.Agent().Log())
		}
	}

	// The agents, one by one: stopped (SIGTERM), the new plugin in place, the new agent started
	// on the old agent's checkpoint. Pods start on the other nodes meanwhile.
	format := func(n *rsNode) (int, error) {
		b, err := os.ReadFile(n.Checkpoint)
		if err != nil {
			return 0, err
		}
		var cp struct {
			Format int `json:"format"`
		}
		if err := json.Unmarshal(b, &cp); err != nil {
			return 0, fmt.Errorf("checkpoint of %s: %w", n.Name(), err)
		}
		return cp.Format, nil
	}
	for i, n := range nodes {
		// The agent of 0.1.0 wrote checkpoint format 1; this release reads it and writes 2.
		if f, err := format(n); err != nil || f != 1 {
			t.Fatalf("the %s agent of %s wrote checkpoint format %d (%v), want 1", prev.Version, n.Name(), f, err)
		}
		stoppedAt := time.Now()
		if err := n.Agent().Stop(); err != nil {
			t.Fatalf("stop the %s agent of %s: %v", prev.Version, n.Name(), err)
		}
		n.UseBinaries("", "")
		other := nodes[(i+1)%len(nodes)]
		start(other, "during-agent")
		n.restartAgent()
		n.Agent().WaitConnected(30*time.Second, 0)
		back := time.Since(stoppedAt)
		kept(fmt.Sprintf("agent of %s replaced", n.Name()))
		start(n, "agent-new")
		harness.Eventually(t, 20*time.Second, "the new agent of "+n.Name()+" to write checkpoint format 2", func() error {
			if f, err := format(n); err != nil || f != 2 {
				return fmt.Errorf("format %d (%v)", f, err)
			}
			return nil
		})
		rs.figs.add("agent of %s replaced: connected again %s after SIGTERM", n.Name(), ms(back))
	}
	rs.settle(t, "agents replaced")
	kept("after the upgrade")
	for _, n := range nodes {
		start(n, "after")
	}
	rs.settle(t, "after the upgrade")
	kept("after the upgrade's pods")
	m, found, _, err := c.Store.Meta(ctx)
	if err != nil || !found {
		t.Fatalf("after the upgrade the meta record should exist: found %v, %v", found, err)
	}
	leader = c.WaitLeader(20*time.Second, nil)
	st, err := c.Status(ctx, leader.Index)
	if err != nil {
		t.Fatal(err)
	}
	if m.Schema != store.SchemaVersion || m.WrittenBy != st.GetVersion() || m.Recovering {
		t.Errorf("meta after the upgrade is %+v; want schema %d written by %s, not recovering", m, store.SchemaVersion, st.GetVersion())
	}
	step("upgrade done: %d pods, each kept its address; meta schema %d written by %s", len(running), m.Schema, m.WrittenBy)
	rs.figs.add("upgrade from %s (%s): %d pods started before, during and after (%v), each kept its address; meta schema %d by %s",
		prev.Version, prev.Commit[:12], len(running), started, m.Schema, m.WrittenBy)

	// The downgrade guard. SchemaVersion is the same in both releases, so the newer schema is
	// written by the test, as the release that introduces schema 2 would.
	metaKey := "/ipledger/" + c.Name + "/meta"
	cli := c.Store.Client()
	resp, err := cli.Get(ctx, metaKey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read %s: %v (%d keys)", metaKey, err, len(resp.Kvs))
	}
	original := string(resp.Kvs[0].Value)
	newer := m
	newer.Schema, newer.WrittenBy = store.SchemaVersion+1, "v9.9.9-upgrade-test"
	b, _ := json.Marshal(newer)
	if _, err := cli.Put(ctx, metaKey, string(b)); err != nil {
		t.Fatal(err)
	}
	refusal := fmt.Sprintf("etcd holds schema %d, written by a newer ipledger (ipledger %s); this binary reads schema %d at most",
		newer.Schema, newer.WrittenBy, store.SchemaVersion)
	exits := map[int]int{}
	for _, r := range c.Replicas {
		exits[r.Index] = len(r.Exits())
	}
	if _, err := leader.Terminate(); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 60*time.Second, "every replica to refuse the newer schema", func() error {
		var missing []string
		for _, r := range c.Replicas {
			log, err := os.ReadFile(r.LogPath)
			if err != nil {
				return err
			}
			// The exit's own line: "ipledger-server: replica: store: etcd holds a newer
			// schema: etcd holds schema 2, ... at most: run the newer release, or restore ...".
			refused := false
			for _, line := range strings.Split(string(log), "\n") {
				refused = refused || (strings.HasPrefix(line, "ipledger-server: ") && strings.Contains(line, refusal) &&
					strings.Contains(line, "restore the etcd snapshot taken before the upgrade"))
			}
			exited := false
			for _, e := range r.Exits()[exits[r.Index]:] {
				exited = exited || e == "exit status 1"
			}
			if !refused || !exited {
				missing = append(missing, fmt.Sprintf("replica %d (refused %v, exited 1 %v)", r.Index, refused, exited))
			}
		}
		if len(missing) > 0 {
			return errors.New(strings.Join(missing, ", "))
		}
		return nil
	})
	if l := c.Leader(ctx); l != nil {
		t.Errorf("replica %d leads a newer schema than its own", l.Index)
	}
	for _, n := range nodes {
		if n.Agent().Exited() {
			t.Errorf("the agent of %s exited while no replica would lead", n.Name())
		}
	}
	kept("while no replica leads")
	if _, err := cli.Put(ctx, metaKey, original); err != nil {
		t.Fatal(err)
	}
	c.WaitLeader(60*time.Second, nil)
	for _, n := range nodes {
		start(n, "after-guard")
	}
	rs.settle(t, "after the schema guard")
	kept("at the end")
	rs.figs.add("newer schema in etcd: every replica refused to lead and exited 1; with the meta back a replica led again")
}

// record adds a started pod to running, failing the test when its address is a running pod's.
func record(t *testing.T, running map[string]*podRun, pr *podRun) {
	t.Helper()
	if old, ok := running[pr.ip.String()]; ok {
		t.Fatalf("%s got %s, which pod %s on %s uses", pr.pod.Name, pr.ip, old.pod.Name, old.node.Name())
	}
	running[pr.ip.String()] = pr
}
