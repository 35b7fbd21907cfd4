package store_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ipledger/ipledger/e2e/etcdcluster"
	"github.com/ipledger/ipledger/server/store"
)

// The e2e tests and Debian installs run etcd-server 3.4; our client is v3.7. Election, fenced
// commits, Load and Watch must work against it, also with a member down.
func TestCompatibilityWithEtcd34Cluster(t *testing.T) {
	if _, err := etcdcluster.FindBinary(""); errors.Is(err, etcdcluster.ErrNoBinary) {
		t.Skipf("skipping: %v", err)
	}
	cluster, err := etcdcluster.Start(ctxTimeout(t, 60*time.Second), etcdcluster.Config{
		Dir:    t.TempDir(),
		Stdout: t.Output(), // members' warnings, shown when the test fails
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatalf("start etcd cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := cluster.Stop(); err != nil {
			t.Errorf("stop etcd cluster: %v", err)
		}
	})
	eps := cluster.Endpoints()
	a := openStore(t, eps, "compat", 0)
	bLog, bLogged := newCountingLogger(t)
	b := openStoreLog(t, eps, "compat", 0, bLog)

	resp, err := a.Client().Status(ctxTimeout(t, 5*time.Second), eps[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd server version %s", resp.Version)

	la := campaign(t, a, addr(1))
	st, err := b.Load(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	watchCtx, watchCancel := context.WithCancel(t.Context())
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- b.Watch(watchCtx, st.Revision, func(e store.Event) error {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, string(e.Type)+" "+e.Name)
			return nil
		})
	}()
	defer func() {
		watchCancel()
		if err := <-watchDone; !errors.Is(err, context.Canceled) {
			t.Errorf("watch: %v", err)
		}
	}()
	resB := campaignAsync(t, t.Context(), b, addr(2))
	expectNoResult(t, resB, 300*time.Millisecond)

	node, subnet, policy, prewarm := sampleRecords()
	if _, err := la.Commit(ctxTimeout(t, 5*time.Second), store.PutNode(node), store.PutSubnet(subnet), store.PutPolicy(policy), store.PutPrewarm(prewarm)); err != nil {
		t.Fatalf("commit on etcd 3.4: %v", err)
	}

	// Depose A behind its back; B takes over, A's writes fail and change nothing.
	kv, err := b.Client().Get(ctxTimeout(t, 5*time.Second), la.Key())
	if err != nil || len(kv.Kvs) != 1 {
		t.Fatalf("get election key: %v", err)
	}
	if _, err := b.Client().Revoke(ctxTimeout(t, 5*time.Second), clientv3.LeaseID(kv.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	lb := expectResult(t, resB, 10*time.Second)
	if _, err := la.Commit(ctxTimeout(t, 5*time.Second), store.DeleteNode(node.Name)); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("deposed leader's commit = %v, want ErrNotLeader", err)
	}
	waitClosed(t, la.Done(), 10*time.Second, "deposed leader's Done")
	if err := b.WaitForRevision(ctxTimeout(t, 10*time.Second), lb.WonRevision()); err != nil {
		t.Fatalf("wait for won revision: %v", err)
	}
	mu.Lock()
	got := append([]string(nil), seen...)
	mu.Unlock()
	want := []string{"node " + node.Name, "subnet " + subnet.ID, "policy " + policy.Name, "prewarm " + prewarm.ID}
	if len(got) != len(want) {
		t.Fatalf("standby watch saw %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("standby watch saw %v, want %v", got, want)
		}
	}
	if leader, err := a.Leader(ctxTimeout(t, 5*time.Second)); err != nil || leader != addr(2) {
		t.Fatalf("leader = %q, %v; want %q", leader, err, addr(2))
	}

	// A member down: the new leader still commits, the standby still loads.
	if err := cluster.Kill(0); err != nil {
		t.Fatal(err)
	}
	// A proposal in flight through a dying raft leader times out (etcd's ~7 s request timeout,
	// ErrUnavailable); once the survivors have elected a leader, commits go through.
	if err := cluster.WaitHealthy(ctxTimeout(t, 20*time.Second)); err != nil {
		t.Fatalf("cluster with one member down: %v", err)
	}
	if _, err := lb.Commit(ctxTimeout(t, 10*time.Second), store.DeleteNode(node.Name)); err != nil {
		t.Fatalf("commit with one member down: %v", err)
	}
	st, err = a.Load(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatalf("load with one member down: %v", err)
	}
	if len(st.Nodes) != 0 || len(st.Subnets) != 1 || len(st.Policies) != 1 || len(st.Prewarms) != 1 {
		t.Fatalf("state after commits on etcd 3.4: %+v", st)
	}

	// Quorum lost: reads and writes fail within their deadlines; the standby's watch is
	// cancelled by the leaderless member and keeps resuming.
	if err := cluster.Kill(1); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := a.Health(ctxTimeout(t, 2*time.Second)); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("health without quorum = %v, want ErrUnavailable", err)
	}
	if _, err := lb.Commit(ctxTimeout(t, 2*time.Second), store.DeleteSubnet(subnet.ID)); !errors.Is(err, store.ErrUnavailable) && !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("commit without quorum = %v, want ErrUnavailable (or ErrNotLeader once the session timed out)", err)
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("health and commit without quorum took %s with 2 s deadlines", d)
	}
	deadline := time.Now().Add(20 * time.Second)
	for bLogged("etcd watch interrupted; resuming") == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the standby's watch was never interrupted by the leaderless member")
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Quorum back: a new leadership commits and the standby's watch, running all along, sees it.
	for _, i := range []int{0, 1} {
		if err := cluster.Restart(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := cluster.WaitHealthy(ctxTimeout(t, 30*time.Second)); err != nil {
		t.Fatalf("after quorum returned: %v", err)
	}
	_ = lb.Resign(ctxTimeout(t, 10*time.Second)) // its session may have timed out meanwhile
	la2 := campaign(t, a, addr(3))
	if _, err := la2.Commit(ctxTimeout(t, 10*time.Second), store.PutNode(node)); err != nil {
		t.Fatalf("commit after quorum returned: %v", err)
	}
	if err := b.WaitForRevision(ctxTimeout(t, 10*time.Second), la2.WonRevision()); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := append([]string(nil), seen...)
		mu.Unlock()
		if len(got) >= len(want)+2 && got[len(got)-1] == "node "+node.Name {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("standby watch did not deliver the commit after recovery; saw %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
