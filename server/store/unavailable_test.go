package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/store"
)

// etcd stops under a leader: Health and Commit fail within their deadlines, the leadership ends
// after the TTL; etcd comes back on the same address with its data: the store recovers.
func TestEtcdStoppedThenRestarted(t *testing.T) {
	dir := t.TempDir()
	e, err := store.StartEmbedded(ctxTimeout(t, 60*time.Second), store.EmbeddedConfig{Dir: dir, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	eps := e.Endpoints()
	if len(eps) != 1 {
		t.Fatalf("endpoints %v", eps)
	}
	s := openStore(t, eps, "outage", time.Second)
	l := campaign(t, s, addr(1))
	node, _, _, _ := sampleRecords()
	if _, err := l.Commit(ctxTimeout(t, 5*time.Second), store.PutNode(node)); err != nil {
		t.Fatal(err)
	}

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = s.Health(ctxTimeout(t, 500*time.Millisecond))
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("health with etcd stopped = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("health took %s with a 500ms deadline", d)
	}
	start = time.Now()
	_, err = l.Commit(ctxTimeout(t, time.Second), store.DeleteNode(node.Name))
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("commit with etcd stopped = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("commit took %s with a 1s deadline", d)
	}
	// The session lease (TTL 1 s) cannot be kept alive: the leadership ends.
	waitClosed(t, l.Done(), 10*time.Second, "Done after etcd stopped")

	// Restart on the same address and data directory.
	addrPort := eps[0][len("http://"):]
	e2, err := store.StartEmbedded(ctxTimeout(t, 60*time.Second), store.EmbeddedConfig{Dir: dir, ClientAddr: addrPort, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("restart embedded etcd on %s: %v", addrPort, err)
	}
	t.Cleanup(func() { _ = e2.Close() })
	deadline := time.Now().Add(15 * time.Second)
	for s.Health(ctxTimeout(t, time.Second)) != nil {
		if time.Now().After(deadline) {
			t.Fatal("store did not reconnect to the restarted etcd")
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, err := s.Load(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Nodes[node.Name]; !ok {
		t.Fatal("record written before the restart is gone")
	}
	// The old leadership is dead for good; a new campaign wins.
	if _, err := l.Commit(ctxTimeout(t, 5*time.Second), store.DeleteNode(node.Name)); !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("commit of the expired leadership = %v, want ErrNotLeader", err)
	}
	l2 := campaign(t, s, addr(1))
	if _, err := l2.Commit(ctxTimeout(t, 5*time.Second), store.DeleteNode(node.Name)); err != nil {
		t.Fatal(err)
	}
}

func TestStartEmbeddedRefusesNonLoopback(t *testing.T) {
	for _, a := range []string{"0.0.0.0:0", "10.0.0.1:2379", "localhost:0", "nonsense"} {
		_, err := store.StartEmbedded(t.Context(), store.EmbeddedConfig{Dir: t.TempDir(), ClientAddr: a})
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("StartEmbedded(%q) = %v, want ErrInvalid", a, err)
		}
	}
	if _, err := store.StartEmbedded(t.Context(), store.EmbeddedConfig{}); !errors.Is(err, store.ErrInvalid) {
		t.Errorf("StartEmbedded without a directory = %v, want ErrInvalid", err)
	}
}
