package api

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"

	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Defaults of a StreamGuard.
const (
	// DefaultMaxStreamsPerCaller: an agent holds one Sync stream, two while it reconnects.
	DefaultMaxStreamsPerCaller = 8
	// DefaultHelloTimeout: an agent sends its hello as soon as the stream is open.
	DefaultHelloTimeout = 10 * time.Second
	// DefaultFloodRate is the rate of dropped messages (over the node's limit) at which a Sync
	// stream is ended: below it, messages over the limit are dropped and the stream goes on.
	DefaultFloodRate = 1000
)

// StreamGuard bounds Sync streams before and after they name their node: how many one caller
// may hold open at once, how long a stream may stay silent before its hello, and the flood of
// messages over the node's limit that ends a stream. Without it, 20,000 streams that never sent
// a hello held 20,000 goroutines and 210 MB. Safe for concurrent use.
type StreamGuard struct {
	// MaxPerCaller bounds the open Sync streams of one caller: its certificate identity with
	// mutual TLS, its connection on plaintext (where nothing says who is calling).
	MaxPerCaller int
	// HelloTimeout ends a stream whose first message has not come within it.
	HelloTimeout time.Duration
	// FloodRate is the rate (per second, and the burst) of dropped messages that ends a stream.
	FloodRate float64
	// OnRefused, when set, hears of every stream refused or ended by the guard.
	OnRefused func(why string)

	mu   sync.Mutex
	open map[string]int
}

// NewStreamGuard returns a guard with the defaults.
func NewStreamGuard() *StreamGuard {
	return &StreamGuard{MaxPerCaller: DefaultMaxStreamsPerCaller, HelloTimeout: DefaultHelloTimeout, FloodRate: DefaultFloodRate}
}

func (g *StreamGuard) refused(why string) {
	if g.OnRefused != nil {
		g.OnRefused(why)
	}
}

// callerKey names who holds a stream: the mTLS identity, else the peer's address and port.
func callerKey(ctx context.Context) string {
	if id, ok := mtls.IdentityFrom(ctx); ok && !id.IsZero() {
		return id.String()
	}
	if id, err := mtls.PeerIdentity(ctx); err == nil {
		return id.String()
	}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return "conn:" + p.Addr.String()
	}
	return "unknown"
}

// acquire counts a new stream of the caller, or refuses it when the caller has MaxPerCaller.
func (g *StreamGuard) acquire(ctx context.Context) (release func(), err error) {
	if g == nil || g.MaxPerCaller <= 0 {
		return func() {}, nil
	}
	key := callerKey(ctx)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open == nil {
		g.open = map[string]int{}
	}
	if n := g.open[key]; n >= g.MaxPerCaller {
		g.refused("too_many_streams")
		return nil, withInfo(codes.ResourceExhausted,
			fmt.Sprintf("%s already holds %d Sync streams, at most %d; close one first", key, n, g.MaxPerCaller),
			ipledgerv1.Reason_RATE_LIMITED, map[string]string{"caller": key, "max_streams": strconv.Itoa(g.MaxPerCaller)})
	}
	g.open[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			if g.open[key]--; g.open[key] <= 0 {
				delete(g.open, key)
			}
		})
	}, nil
}

// Open is the number of open streams a caller holds (for tests).
func (g *StreamGuard) Open(ctx context.Context) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open[callerKey(ctx)]
}

// recvHello waits for a stream's first message, at most HelloTimeout.
func (g *StreamGuard) recvHello(stream ipledgerv1.NodeService_SyncServer) (*ipledgerv1.SyncRequest, error) {
	timeout := DefaultHelloTimeout
	if g != nil && g.HelloTimeout > 0 {
		timeout = g.HelloTimeout
	}
	type recv struct {
		msg *ipledgerv1.SyncRequest
		err error
	}
	got := make(chan recv, 1)
	go func() {
		// Ends when the message comes or, after the timeout, when the handler has returned
		// and gRPC cancelled the stream.
		m, err := stream.Recv()
		got <- recv{m, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-got:
		return r.msg, r.err
	case <-t.C:
		if g != nil {
			g.refused("no_hello")
		}
		return nil, withInfo(codes.DeadlineExceeded,
			fmt.Sprintf("no SyncHello within %v of opening the Sync stream", timeout),
			ipledgerv1.Reason_INVALID_ARGUMENT, map[string]string{"field": "hello"})
	}
}

// floodLimiter is a stream's budget of messages dropped over the node's limit.
func (g *StreamGuard) floodLimiter() *rate.Limiter {
	r := float64(DefaultFloodRate)
	if g != nil && g.FloodRate > 0 {
		r = g.FloodRate
	}
	return rate.NewLimiter(rate.Limit(r), int(r))
}
