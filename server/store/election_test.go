package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ipledger/ipledger/server/store"
)

type campaignResult struct {
	l   *store.Leadership
	err error
}

// campaignAsync campaigns on a goroutine the test waits for.
func campaignAsync(t *testing.T, ctx context.Context, s *store.Store, addr string) <-chan campaignResult {
	ch := make(chan campaignResult, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l, err := s.Campaign(ctx, addr)
		ch <- campaignResult{l, err}
	}()
	t.Cleanup(func() { <-done })
	return ch
}

// expectNoResult asserts that a campaign is still blocked after d.
func expectNoResult(t *testing.T, ch <-chan campaignResult, d time.Duration) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("second candidate returned while the first leads: %+v", r)
	case <-time.After(d):
	}
}

func expectResult(t *testing.T, ch <-chan campaignResult, d time.Duration) *store.Leadership {
	t.Helper()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("campaign: %v", r.err)
		}
		return r.l
	case <-time.After(d):
		t.Fatalf("campaign did not win within %s", d)
	}
	return nil
}

// nextLeader reads from an ObserveLeader channel until it reports want.
func nextLeader(t *testing.T, ch <-chan string, want string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case got, ok := <-ch:
			if !ok {
				t.Fatalf("observe channel closed while waiting for %q", want)
			}
			if got == want {
				return
			}
		case <-deadline:
			t.Fatalf("observer never reported leader %q", want)
		}
	}
}

func TestElectionOneLeaderThenFailover(t *testing.T) {
	eps := sharedEndpoints(t)
	a := openStore(t, eps, "election", 0)
	b := openStore(t, eps, "election", 0)

	if _, err := a.Leader(ctxTimeout(t, 5*time.Second)); !errors.Is(err, store.ErrNoLeader) {
		t.Fatalf("leader before any campaign = %v, want ErrNoLeader", err)
	}
	obsCtx, obsCancel := context.WithCancel(t.Context())
	defer obsCancel()
	observed := b.ObserveLeader(obsCtx)
	nextLeader(t, observed, "")

	la := campaign(t, a, addr(1))
	if la.Key() == "" || la.Revision() <= 0 {
		t.Fatalf("leadership key %q revision %d", la.Key(), la.Revision())
	}
	if got, err := b.Leader(ctxTimeout(t, 5*time.Second)); err != nil || got != addr(1) {
		t.Fatalf("leader = %q, %v; want %q", got, err, addr(1))
	}
	nextLeader(t, observed, addr(1))

	// B is a hot standby: it loads the state and follows it.
	st, err := b.Load(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	standbyNodes := map[string]bool{}
	watchCtx, watchCancel := context.WithCancel(t.Context())
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- b.Watch(watchCtx, st.Revision, func(e store.Event) error {
			mu.Lock()
			defer mu.Unlock()
			if e.Type == store.RecordNode {
				standbyNodes[e.Name] = !e.Deleted
			}
			return nil
		})
	}()
	defer func() {
		watchCancel()
		if err := <-watchDone; !errors.Is(err, context.Canceled) {
			t.Errorf("standby watch: %v", err)
		}
	}()

	resB := campaignAsync(t, t.Context(), b, addr(2))
	expectNoResult(t, resB, 500*time.Millisecond)

	// The leader writes; the standby catches up to its revision.
	node, _, _, _ := sampleRecords()
	rev, err := la.Commit(ctxTimeout(t, 5*time.Second), store.PutNode(node))
	if err != nil {
		t.Fatal(err)
	}

	if err := la.Resign(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatalf("resign: %v", err)
	}
	waitClosed(t, la.Done(), time.Second, "Done after Resign")
	if _, err := la.Commit(ctxTimeout(t, 5*time.Second), store.DeleteNode(node.Name)); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("commit after resign = %v, want ErrNotLeader", err)
	}
	lb := expectResult(t, resB, 5*time.Second)
	// B queued before A's write: its fence revision is older, the revision it won at is newer.
	if lb.Revision() >= rev || lb.WonRevision() <= rev {
		t.Fatalf("new leader: fence revision %d, won at %d; old leader wrote at %d", lb.Revision(), lb.WonRevision(), rev)
	}
	nextLeader(t, observed, addr(2))

	// The new leader holds every write of the previous one once its watch has caught up.
	if err := b.WaitForRevision(ctxTimeout(t, 5*time.Second), lb.WonRevision()); err != nil {
		t.Fatalf("wait for the won revision: %v", err)
	}
	mu.Lock()
	held := standbyNodes[node.Name]
	mu.Unlock()
	if !held {
		t.Fatalf("new leader's watch does not hold the old leader's write after WaitForRevision")
	}
	if _, err := lb.Commit(ctxTimeout(t, 5*time.Second), store.DeleteNode(node.Name)); err != nil {
		t.Fatalf("new leader commit: %v", err)
	}
	if err := lb.Resign(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	nextLeader(t, observed, "")
}

// A deposed leader keeps its Leadership object; its writes must fail and change nothing.
func TestDeposedLeaderCannotWrite(t *testing.T) {
	eps := sharedEndpoints(t)
	a := openStore(t, eps, "fence", 0)
	b := openStore(t, eps, "fence", 0)
	la := campaign(t, a, addr(1))
	resB := campaignAsync(t, t.Context(), b, addr(2))
	expectNoResult(t, resB, 300*time.Millisecond)

	// Revoke the leader's lease behind its back (as if it had expired during a long pause).
	resp, err := b.Client().Get(ctxTimeout(t, 5*time.Second), la.Key())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get election key: %v", err)
	}
	if _, err := b.Client().Revoke(ctxTimeout(t, 5*time.Second), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	lb := expectResult(t, resB, 5*time.Second)

	node, subnet, _, _ := sampleRecords()
	before, err := lb.Commit(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	_, err = la.Commit(ctxTimeout(t, 5*time.Second), store.PutNode(node), store.PutSubnet(subnet))
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("deposed leader's commit = %v, want ErrNotLeader", err)
	}
	st, err := b.Load(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if st.Revision != before || len(st.Nodes) != 0 || len(st.Subnets) != 0 {
		t.Fatalf("deposed leader's commit wrote something: revision %d (was %d), %d nodes, %d subnets", st.Revision, before, len(st.Nodes), len(st.Subnets))
	}
	waitClosed(t, la.Done(), 10*time.Second, "deposed leader's Done")
	select {
	case <-lb.Done():
		t.Fatal("new leader's Done closed")
	default:
	}
	if _, err := lb.Commit(ctxTimeout(t, 5*time.Second), store.PutNode(node)); err != nil {
		t.Fatalf("new leader commit: %v", err)
	}
	// Resigning the lost leadership is harmless and does not touch the new leader.
	if err := la.Resign(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatalf("resign of a lost leadership: %v", err)
	}
	if got, err := a.Leader(ctxTimeout(t, 5*time.Second)); err != nil || got != addr(2) {
		t.Fatalf("leader = %q, %v; want %q", got, err, addr(2))
	}
}

func TestCampaignCancelled(t *testing.T) {
	eps := sharedEndpoints(t)
	a := openStore(t, eps, "cancel", 0)
	b := openStore(t, eps, "cancel", 0)
	la := campaign(t, a, addr(1))
	ctx, cancel := context.WithCancel(t.Context())
	resB := campaignAsync(t, ctx, b, addr(2))
	expectNoResult(t, resB, 200*time.Millisecond)
	cancel()
	select {
	case r := <-resB:
		if !errors.Is(r.err, context.Canceled) || r.l != nil {
			t.Fatalf("cancelled campaign = %+v, want context.Canceled", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled campaign did not return")
	}
	// The cancelled candidate left no key behind: after the leader resigns nobody leads.
	if err := la.Resign(ctxTimeout(t, 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := a.Leader(ctxTimeout(t, 5*time.Second))
		if errors.Is(err, store.ErrNoLeader) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leader after resign and cancelled campaign: %v, want ErrNoLeader", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := a.Campaign(ctxTimeout(t, 5*time.Second), ""); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("campaign with empty address = %v, want ErrInvalid", err)
	}
}

func TestCommitRefusesTooManyOps(t *testing.T) {
	s := openStore(t, sharedEndpoints(t), "manyops", 0)
	l := campaign(t, s, addr(1))
	var ops []store.Op
	for i := range store.MaxOpsPerCommit + 1 {
		ops = append(ops, store.DeleteNode(fmt.Sprintf("n%d", i)))
	}
	if _, err := l.Commit(ctxTimeout(t, 5*time.Second), ops...); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("commit of %d ops = %v, want ErrInvalid", len(ops), err)
	}
	if _, err := l.Commit(ctxTimeout(t, 5*time.Second), ops[:store.MaxOpsPerCommit]...); err != nil {
		t.Fatalf("commit of %d ops: %v", store.MaxOpsPerCommit, err)
	}
}

func TestObserveLeaderEnds(t *testing.T) {
	eps := sharedEndpoints(t)
	s := openStore(t, eps, "observe", 0)
	ctx, cancel := context.WithCancel(t.Context())
	ch := s.ObserveLeader(ctx)
	nextLeader(t, ch, "")
	cancel()
	select {
	case _, ok := <-ch:
		if ok {
			// A value raced the cancellation; the channel must still close.
			if _, ok := <-ch; ok {
				t.Fatal("observe channel still open after cancel")
			}
		}
	case <-time.After(5 * time.Second):
		t.Fatal("observe channel not closed after cancel")
	}
	// Closing the store ends observers too.
	s2 := openStore(t, eps, "observe", 0)
	ch2 := s2.ObserveLeader(t.Context())
	nextLeader(t, ch2, "")
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-ch2:
		if ok {
			t.Fatal("observer sent a value after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("observe channel not closed by Close")
	}
}

// A standby that knows the leader's process is gone deposes it: the next candidate leads at
// once, the deposed leadership ends, and deposing a key that changed does nothing.
func TestDeposeHandsLeadershipOn(t *testing.T) {
	eps := sharedEndpoints(t)
	a := openStore(t, eps, "depose", 0)
	b := openStore(t, eps, "depose", 0)
	la := campaign(t, a, addr(1))
	resB := campaignAsync(t, t.Context(), b, addr(2))
	expectNoResult(t, resB, 200*time.Millisecond)
	cands, err := b.Candidates(ctxTimeout(t, 5*time.Second))
	if err != nil || len(cands) != 2 || cands[0].Key != la.Key() || cands[0].Advertise != addr(1) || cands[1].Advertise != addr(2) {
		t.Fatalf("candidates %+v, %v; want the leader then the standby", cands, err)
	}
	stale := cands[0]
	stale.Lease++
	if err := b.Depose(ctxTimeout(t, 5*time.Second), stale); err != nil {
		t.Fatal(err)
	}
	expectNoResult(t, resB, 200*time.Millisecond) // a key with another lease is left alone
	if err := b.Depose(ctxTimeout(t, 5*time.Second), cands[0]); err != nil {
		t.Fatal(err)
	}
	expectResult(t, resB, 5*time.Second)
	waitClosed(t, la.Done(), 10*time.Second, "deposed leader's Done")
}
