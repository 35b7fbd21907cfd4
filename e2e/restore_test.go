package e2e_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// TestRestoredSnapshotLeasesNothingTwice takes a backup (`ipledgerctl backup`), then lets the
// cluster move on: pods start that need new addresses, a node joins, a pod ends and its
// address is released. etcd is then restored from the old backup (`etcdctl snapshot restore`
// on every member: a new etcd cluster with the old records). The leader sees a meta record of
// another etcd cluster, reconciles against EC2 before it serves, and the agents register or
// sync again: every running pod keeps its address, leased to its node; the node the backup does
// not know is adopted; new pods get addresses no running pod uses; nothing leaks and
// `ipledgerctl check` is clean.
func TestRestoredSnapshotLeasesNothingTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: starts etcd, two servers and agents")
	}
	nstest.RequireIPNetns(t)
	nstest.GuardRootNS(t, "eni", "sim-")
	c := harness.StartProcCluster(t, harness.ProcClusterConfig{Name: "restore", Replicas: 2})
	rs := &resilience{c: c}
	rs.figs.name = "restore.txt"
	for _, p := range rolePolicies() {
		if _, err := c.LeaderAdmin().SetPolicy(t.Context(), &ipledgerv1.SetPolicyRequest{Policy: p}); err != nil {
			t.Fatalf("set policy %s: %v", p.GetName(), err)
		}
	}
	rs.watch(t)
	defer rs.figs.report(t)

	// Nodes keep no free address (warm_ip_target 0): every pod start after the backup is an
	// allocation the backup does not know.
	insts := rs.launch(t, subnetEtcd, 3)
	n1, n2 := rs.join(t, insts[0], roleProbe), rs.join(t, insts[1], roleProbe)
	running := map[string]*podRun{}
	start := func(n *rsNode, prefix string) *podRun {
		t.Helper()
		pr := startPod(n, n.pod(prefix), time.Now().Add(60*time.Second))
		if pr.err != nil {
			t.Fatalf("%s: %s", prefix, pr)
		}
		if old, ok := running[pr.ip.String()]; ok {
			t.Fatalf("%s got %s, which pod %s on %s uses", pr.pod.Name, pr.ip, old.pod.Name, old.node.Name())
		}
		running[pr.ip.String()] = pr
		return pr
	}
	for _, n := range []*rsNode{n1, n2} {
		n.Agent().WaitConnected(30*time.Second, 0)
		start(n, "before")
		start(n, "before")
	}
	rs.settle(t, "before the backup")
	backup := filepath.Join(t.TempDir(), "ipledger.db")
	if r := harness.Ctl(t, rs.someReplica(t), "backup", "-f", backup); r.Exit != 0 {
		t.Fatalf("ipledgerctl backup: %s", r)
	}

	// The cluster moves on: three allocations on n1, a node that joins, a pod that ends.
	for range 3 {
		start(n1, "after-backup")
	}
	n3 := rs.join(t, insts[2], roleProbe)
	n3.Agent().WaitConnected(30*time.Second, 0)
	start(n3, "after-backup")
	var ended *podRun
	for _, pr := range running {
		if pr.node == n2 {
			ended = pr
			break
		}
	}
	if r := n2.RT.Run("del", ended.pod); r.Err != nil {
		t.Fatalf("DEL %s: %v", ended.pod.Name, r.Err)
	}
	delete(running, ended.ip.String())
	rs.settle(t, "after the backup")

	// etcd is restored from the backup.
	restoredAt := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	if err := c.Etcd.Restore(ctx, backup); err != nil {
		t.Fatal(err)
	}
	leader := c.WaitLeader(60*time.Second, nil)
	ledAt := time.Now()
	// A pod starts at once: it waits for the reconciliation, not for the test.
	first := start(n1, "after-restore")
	rs.settle(t, "after the restore")
	// The leader it elected saw the restore and reconciled before it served.
	if log, err := os.ReadFile(leader.LogPath); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(string(log), "etcd was restored from a snapshot") {
		t.Errorf("replica %d leads after the restore without having reconciled first; its log:\n%s", leader.Index, log)
	}

	// Every running pod kept its address; new pods get others.
	for ip, pr := range running {
		if _, ok := podIPs(pr.node.Agent().MustView())[ip]; !ok {
			t.Errorf("pod %s on %s lost %s in the restore", pr.pod.Name, pr.node.Name(), ip)
		}
	}
	for _, n := range []*rsNode{n2, n3} {
		start(n, "after-restore")
	}
	rs.settle(t, "after the pods of after the restore")
	rs.figs.add("etcd restored from a backup older than %d pod starts, a node join and a release: replica %d led %s after the restore began; first new pod served %s after it; %d running pods kept their addresses",
		4, leader.Index, ms(ledAt.Sub(restoredAt)), ms(first.done.Sub(restoredAt)), len(running)-3)
}
