package serverconn

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/agent/internal/rpcerr"
	"github.com/ipledger/ipledger/agent/pool"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// poolHandler is the agent's handler in its simplest form: the real pool.
type poolHandler struct{ p *pool.Pool }

func (h poolHandler) ApplyPool(np *ipledgerv1.NodePool, force bool) error {
	_, err := h.p.Apply(np, force)
	return err
}
func (h poolHandler) AnswerRelease(p *ipledgerv1.ReleaseProposal) (*ipledgerv1.ReleaseAck, error) {
	return h.p.Answer(p)
}
func (h poolHandler) Usage() *ipledgerv1.UsageReport { return h.p.Usage() }
func (h poolHandler) KnownGeneration() uint64        { return h.p.Generation() }
func (h poolHandler) StalePods([]string)             {}
func (h poolHandler) RestorePods(pods []*ipledgerv1.PodAddress) {
	_, _ = h.p.Restore(pods)
}

var _ Handler = poolHandler{}

func newHandler(t *testing.T) poolHandler {
	t.Helper()
	p, err := pool.Open(pool.Config{CheckpointPath: filepath.Join(t.TempDir(), "cp.json")})
	if err != nil {
		t.Fatal(err)
	}
	return poolHandler{p}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func testConfig(t *testing.T, servers ...string) Config {
	return Config{
		Servers:    servers,
		Identity:   Identity{NodeName: "node-a", InstanceID: "i-1"},
		Handler:    newHandler(t),
		BackoffMin: 10 * time.Millisecond,
		BackoffMax: 50 * time.Millisecond,
	}
}

func TestNewValidates(t *testing.T) {
	good := testConfig(t, "127.0.0.1:1")
	tests := []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no servers", func(c *Config) { c.Servers = nil }, "no server"},
		{"empty server", func(c *Config) { c.Servers = []string{"127.0.0.1:1", ""} }, "no server"},
		{"no handler", func(c *Config) { c.Handler = nil }, "no handler"},
		{"no node", func(c *Config) { c.Identity.NodeName = "" }, "node name"},
		{"no instance", func(c *Config) { c.Identity.InstanceID = "" }, "instance id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.edit(&cfg)
			if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want an error about %q", err, tc.want)
			}
		})
	}
	if _, err := New(good); err != nil {
		t.Fatalf("New(good): %v", err)
	}
}

func TestBackoff(t *testing.T) {
	b := newBackoff(100*time.Millisecond, time.Second)
	caps := []time.Duration{100, 200, 400, 800, 1000, 1000, 1000}
	for i, c := range caps {
		c *= time.Millisecond
		for range 50 {
			b2 := *b
			d := b2.NextBackOff()
			if d < c/2 || d > c {
				t.Fatalf("attempt %d: wait %v outside [%v, %v]", i, d, c/2, c)
			}
		}
		b.NextBackOff()
	}
	b.Reset()
	if d := b.NextBackOff(); d < 50*time.Millisecond || d > 100*time.Millisecond {
		t.Fatalf("after Reset: %v", d)
	}
}

func TestNoteErrorFollowsTheServer(t *testing.T) {
	notLeader := func(leader string) error {
		meta := map[string]string{}
		if leader != "" {
			meta["leader"] = leader
		}
		return rpcerr.New(codes.Unavailable, ipledgerv1.Reason_NOT_LEADER, "not the leader", meta)
	}
	tests := []struct {
		name           string
		err            error
		wantTarget     string
		wantRedirect   bool
		wantRegistered bool
	}{
		{"not leader names the leader", notLeader("10.9.9.9:7000"), "10.9.9.9:7000", true, true},
		{"not leader without a leader", notLeader(""), "b:1", false, true},
		{"unreachable", status.Error(codes.Unavailable, "connection refused"), "b:1", false, true},
		{"unknown node", rpcerr.New(codes.NotFound, ipledgerv1.Reason_UNKNOWN_NODE, "who?", nil), "a:1", false, false},
		{"capacity", rpcerr.New(codes.ResourceExhausted, ipledgerv1.Reason_SUBNET_EXHAUSTED, "full", nil), "a:1", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(testConfig(t, "a:1", "b:1"))
			if err != nil {
				t.Fatal(err)
			}
			c.st.Registered = true
			c.forceNext = false
			if got := c.noteError("test", tc.err); got != tc.wantRedirect {
				t.Fatalf("redirected = %v", got)
			}
			st := c.State()
			if st.Target != tc.wantTarget || st.Registered != tc.wantRegistered || st.LastError == "" {
				t.Fatalf("state %+v, want target %s registered %v and an error", st, tc.wantTarget, tc.wantRegistered)
			}
			if !tc.wantRegistered && !c.forceNext {
				t.Fatal("re-registration after UNKNOWN_NODE must apply its pool whatever its generation")
			}
		})
	}
	// From a leader outside the list, an unreachable server sends us back to the list.
	c, _ := New(testConfig(t, "a:1", "b:1"))
	c.noteError("x", notLeader("l:1"))
	c.noteError("x", status.Error(codes.Unavailable, "refused"))
	if got := c.State().Target; got != "a:1" {
		t.Fatalf("after leader failed: target %s, want a:1", got)
	}
	c.noteError("x", status.Error(codes.Unavailable, "refused"))
	c.noteError("x", status.Error(codes.Unavailable, "refused"))
	if got := c.State().Target; got != "a:1" {
		t.Fatalf("rotation: target %s, want a:1 after two more failures", got)
	}
}

func TestRunAgainstUnreachableServers(t *testing.T) {
	a, b := deadAddr(t), deadAddr(t)
	c, err := New(testConfig(t, a, b))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()

	// It keeps trying both addresses.
	seen := map[string]bool{}
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < 2 || c.State().LastError == "" {
		if time.Now().After(deadline) {
			t.Fatalf("state %+v, targets seen %v", c.State(), seen)
		}
		seen[c.State().Target] = true
		time.Sleep(5 * time.Millisecond)
	}
	st := c.State()
	if st.Registered || st.Connected {
		t.Fatalf("state %+v: registered or connected without a server", st)
	}

	// A pod waiting now learns the server is unreachable, at once.
	rctx, rcancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer rcancel()
	start := time.Now()
	err = c.RequestAddresses(rctx, 3)
	if r, _ := rpcerr.Info(err); r != ipledgerv1.Reason_SERVER_UNREACHABLE || status.Code(err) != codes.Unavailable {
		t.Fatalf("RequestAddresses: %v, want UNAVAILABLE/SERVER_UNREACHABLE", err)
	}
	if time.Since(start) > time.Second {
		t.Fatalf("RequestAddresses took %v", time.Since(start))
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, _, err := c.client(); err == nil {
		t.Fatal("connections not closed after Run")
	}
	if err := c.RequestAddresses(t.Context(), 1); err == nil {
		t.Fatal("RequestAddresses after Run succeeded")
	}
}
