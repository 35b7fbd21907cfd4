package api

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// maxLimiterEntries bounds the limiter's table; past it, unknown names share one bucket. With
// mutual TLS the names are certificate identities; on plaintext anything a client sends.
const maxLimiterEntries = 1 << 16

// sweepEvery is the least time between sweeps of idle entries.
const sweepEvery = 10 * time.Second

// NodeLimiter gives every node its own token bucket, so that one broken agent cannot take the
// server's attention from the others. The server has two: one for NodeService's unary calls
// (its interceptor), one for Sync streams and their messages (NodeServer). A call over the limit
// is answered at once with RESOURCE_EXHAUSTED / RATE_LIMITED (it never waits, so it holds
// nothing). Safe for concurrent use.
type NodeLimiter struct {
	limit rate.Limit
	burst int
	now   func() time.Time
	// OnLimited, when set, hears of every refusal (method: "RegisterNode", "Sync", ...).
	OnLimited func(method string)

	mu        sync.Mutex
	nodes     map[string]*limiterEntry
	overflow  *rate.Limiter
	lastSweep time.Time
}

type limiterEntry struct {
	lim  *rate.Limiter
	last time.Time
}

// NewNodeLimiter returns a limiter of perSecond requests with burst for each node.
func NewNodeLimiter(perSecond float64, burst int) *NodeLimiter {
	return &NodeLimiter{
		limit: rate.Limit(perSecond), burst: burst, now: time.Now,
		nodes: map[string]*limiterEntry{}, overflow: rate.NewLimiter(rate.Limit(perSecond), burst),
	}
}

// Allow takes a token of node's bucket; false when it has none.
func (l *NodeLimiter) Allow(node string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.nodes[node]
	if !ok {
		l.sweepLocked(now, len(l.nodes) >= maxLimiterEntries)
		if len(l.nodes) >= maxLimiterEntries {
			return l.overflow.AllowN(now, 1)
		}
		e = &limiterEntry{lim: rate.NewLimiter(l.limit, l.burst)}
		l.nodes[node] = e
	}
	e.last = now
	return e.lim.AllowN(now, 1)
}

// sweepLocked drops entries idle long enough for their bucket to be full again (forgetting
// them changes nothing).
func (l *NodeLimiter) sweepLocked(now time.Time, force bool) {
	if !force && now.Sub(l.lastSweep) < sweepEvery {
		return
	}
	l.lastSweep = now
	refill := time.Duration(float64(l.burst) / float64(l.limit) * float64(time.Second))
	for k, e := range l.nodes {
		if now.Sub(e.last) > refill {
			delete(l.nodes, k)
		}
	}
}

// Tracked is the number of nodes with a bucket (for tests).
func (l *NodeLimiter) Tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.nodes)
}

// Burst is the bucket size.
func (l *NodeLimiter) Burst() int { return l.burst }

// Dropped reports a message dropped over the limit (to OnLimited).
func (l *NodeLimiter) Dropped(method string) {
	if l.OnLimited != nil {
		l.OnLimited(method)
	}
}

// Refuse is the answer to a call or stream over node's limit.
func (l *NodeLimiter) Refuse(node, method string) error {
	l.Dropped(method)
	return withInfo(codes.ResourceExhausted,
		fmt.Sprintf("node %s sends more than %g requests per second (burst %d): %s refused; retry later", node, float64(l.limit), l.burst, method),
		ipledgerv1.Reason_RATE_LIMITED, map[string]string{
			"node": node, "limit_per_second": strconv.FormatFloat(float64(l.limit), 'g', -1, 64), "burst": strconv.Itoa(l.burst),
		})
}

// UnaryServerInterceptor limits NodeService's unary calls per node (NodeKey); other services
// pass. It runs after authentication, so with mutual TLS a caller spends only its own tokens.
func (l *NodeLimiter) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		service, method := splitMethod(info.FullMethod)
		if service != nodeService {
			return handler(ctx, req)
		}
		if node := NodeKey(ctx, req); node != "" && !l.Allow(node) {
			return nil, l.Refuse(node, method)
		}
		return handler(ctx, req)
	}
}
