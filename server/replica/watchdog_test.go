package replica

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/store"
)

// fakeElection is an election queue the test controls, recording depositions.
type fakeElection struct {
	mu      sync.Mutex
	cands   []store.Candidate
	deposed []string
}

func (f *fakeElection) Candidates(context.Context) ([]store.Candidate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]store.Candidate(nil), f.cands...), nil
}

func (f *fakeElection) Depose(_ context.Context, c store.Candidate) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deposed = append(f.deposed, c.Key)
	if len(f.cands) > 0 && f.cands[0].Key == c.Key {
		f.cands = f.cands[1:]
	}
	return nil
}

func (f *fakeElection) depositions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.deposed...)
}

func runWatchdog(t *testing.T, f *fakeElection, self string) {
	t.Helper()
	r := New(Config{Advertise: self})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); r.watchLeader(ctx, f, 10*time.Millisecond) }()
	t.Cleanup(func() { cancel(); <-done })
}

func waitDeposed(t *testing.T, f *fakeElection, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, k := range f.depositions() {
			if k == want {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s not deposed; deposed %v", want, f.depositions())
}

// A leader whose process died (its port refuses connections, after the standby had reached
// it) is deposed; one that answers is not.
func TestWatchdogDeposesALeaderWhosePortCloses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	addr := ln.Addr().String()
	f := &fakeElection{cands: []store.Candidate{{Key: "e/leader", Lease: 1, Advertise: addr}, {Key: "e/me", Lease: 2, Advertise: "127.0.0.1:1"}}}
	runWatchdog(t, f, "127.0.0.1:1")
	time.Sleep(100 * time.Millisecond) // ten probes of a live leader: nothing may happen
	if d := f.depositions(); len(d) != 0 {
		t.Fatalf("a live leader was deposed: %v", d)
	}
	_ = ln.Close() // the leader's process dies: its port refuses connections
	waitDeposed(t, f, "e/leader")
}

// A leader never reached (its address may be wrong, or unreachable from here) is left to its
// session's TTL, even when its port refuses.
func TestWatchdogNeedsToHaveReachedTheLeader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	f := &fakeElection{cands: []store.Candidate{{Key: "e/leader", Lease: 1, Advertise: addr}}}
	runWatchdog(t, f, "127.0.0.1:1")
	time.Sleep(150 * time.Millisecond)
	if d := f.depositions(); len(d) != 0 {
		t.Fatalf("a leader never reached was deposed: %v", d)
	}
}

// A newer candidate at the leader's own address means the leader's process was restarted
// there: the old key is deposed at once.
func TestWatchdogDeposesALeaderRestartedAtItsAddress(t *testing.T) {
	f := &fakeElection{cands: []store.Candidate{
		{Key: "e/old", Lease: 1, Advertise: "127.0.0.1:7400"},
		{Key: "e/me", Lease: 2, Advertise: "127.0.0.1:7401"},
		{Key: "e/restarted", Lease: 3, Advertise: "127.0.0.1:7400"},
	}}
	runWatchdog(t, f, "127.0.0.1:7401")
	waitDeposed(t, f, "e/old")
	if d := f.depositions(); len(d) != 1 {
		t.Fatalf("deposed %v, want only the old key", d)
	}
}
