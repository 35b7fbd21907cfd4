package store_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/store"
)

// One embedded etcd serves the tests that do not stop it; each test uses its own cluster name,
// so they do not see each other's keys.
var shared struct {
	once      sync.Once
	dir       string
	etcd      *store.Embedded
	endpoints []string
	err       error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.etcd != nil {
		_ = shared.etcd.Close()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

// sharedEndpoints starts the shared embedded etcd on first use.
func sharedEndpoints(t *testing.T) []string {
	t.Helper()
	shared.once.Do(func() {
		shared.dir, shared.err = os.MkdirTemp("", "ipledger-store-test-")
		if shared.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), 60*time.Second)
		defer cancel()
		shared.etcd, shared.err = store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: shared.dir})
		if shared.err == nil {
			shared.endpoints = shared.etcd.Endpoints()
		}
	})
	if shared.err != nil {
		t.Fatalf("start shared embedded etcd: %v", shared.err)
	}
	return shared.endpoints
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// countingHandler counts records by message, passing them on.
type countingHandler struct {
	slog.Handler
	mu     *sync.Mutex
	counts map[string]int
}

func newCountingLogger(t *testing.T) (*slog.Logger, func(msg string) int) {
	h := countingHandler{Handler: testLogger(t).Handler(), mu: new(sync.Mutex), counts: map[string]int{}}
	return slog.New(h), func(msg string) int {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.counts[msg]
	}
}

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	h.counts[r.Message]++
	h.mu.Unlock()
	return h.Handler.Handle(ctx, r)
}

func (h countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.Handler = h.Handler.WithAttrs(as)
	return h
}

func (h countingHandler) WithGroup(name string) slog.Handler {
	h.Handler = h.Handler.WithGroup(name)
	return h
}

// runClusters names each test run's clusters apart: the shared etcd outlives a run, so with
// -count=2 a second run of a test would otherwise find the first run's records.
var (
	runClusters   sync.Map // "<*testing.T>/<name>" -> cluster name of that run
	runClusterSeq atomic.Int64
)

// runCluster returns the cluster name this run of t uses for name (the same for every store
// the run opens with it).
func runCluster(t *testing.T, name string) string {
	key := fmt.Sprintf("%p/%s", t, name)
	v, _ := runClusters.LoadOrStore(key, fmt.Sprintf("%s-%d", name, runClusterSeq.Add(1)))
	return v.(string)
}

// openStore opens a store on endpoints for cluster, closed when the test ends.
func openStore(t *testing.T, endpoints []string, cluster string, ttl time.Duration) *store.Store {
	t.Helper()
	return openStoreLog(t, endpoints, cluster, ttl, testLogger(t))
}

func openStoreLog(t *testing.T, endpoints []string, cluster string, ttl time.Duration, log *slog.Logger) *store.Store {
	t.Helper()
	cluster = runCluster(t, cluster)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := store.Open(ctx, store.Config{
		Endpoints:   endpoints,
		ClusterName: cluster,
		DialTimeout: 5 * time.Second,
		SessionTTL:  ttl,
		Logger:      log,
	})
	if err != nil {
		t.Fatalf("open store %s: %v", cluster, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s
}

// campaign wins the election or fails the test.
func campaign(t *testing.T, s *store.Store, addr string) *store.Leadership {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	l, err := s.Campaign(ctx, addr)
	if err != nil {
		t.Fatalf("campaign %s: %v", addr, err)
	}
	return l
}

// ctxTimeout is a context for one step of a test.
func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// waitClosed fails the test unless ch is closed within d.
func waitClosed(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("%s: not within %s", what, d)
	}
}

func addr(i int) string { return fmt.Sprintf("10.1.0.%d:7443", i) }
