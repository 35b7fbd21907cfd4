package ec2gw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/ipledger/ipledger/internal/clock"
)

const (
	// retryBase and retryMax bound the backoff between retries of 5xx answers (clock time).
	// Throttled calls need none: the limiter paces them after cutting the bucket's rate.
	retryBase = 100 * time.Millisecond
	retryMax  = 5 * time.Second
	// latencySeed is the call latency EstimateWait assumes for an action before its first call.
	latencySeed = 100 * time.Millisecond
	// latencyAlpha is the weight of the newest call in the latency EWMA.
	latencyAlpha = 0.2
	// maxIdleConns keeps connections to EC2 open across bursts (the SDK keeps 10 per host).
	maxIdleConns = 256
)

// Gateway is the allocator's one way to EC2. It is safe for concurrent use.
type Gateway struct {
	cfg     Config
	clk     clock.Clock
	log     *slog.Logger
	client  *ec2.Client
	lim     *limiter
	metrics *metrics
	coal    *coalescer

	ctx    context.Context // the gateway's lifetime: coalesced calls run under it
	cancel context.CancelFunc
	wg     sync.WaitGroup // coalesced calls in flight

	statsMu sync.Mutex
	calls   map[[2]string]uint64     // {action, outcome} -> count
	latency map[string]time.Duration // action -> EWMA of call duration
}

// New validates cfg and builds a gateway with an EC2 client whose own retries and retry rate
// limiting are off. ctx bounds loading the AWS configuration; the gateway lives until Close.
func New(ctx context.Context, cfg Config) (*Gateway, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Buckets == nil {
		cfg.Buckets = DefaultBuckets()
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(cfg.Region),
		config.WithHTTPClient(newHTTPClient()),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = 1
				o.RateLimiter = ratelimit.None
			})
		}),
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("ec2gw: load aws config: %w", err)
	}
	client := ec2.NewFromConfig(awsCfg, func(o *ec2.Options) {
		o.HTTPClient = bufferBodies{next: awsCfg.HTTPClient}
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	clk := cfg.Clock
	if clk == nil {
		clk = realClock()
	}
	g := &Gateway{
		cfg:     cfg,
		clk:     clk,
		log:     log,
		client:  client,
		lim:     newLimiter(clk, cfg.Buckets),
		calls:   map[[2]string]uint64{},
		latency: map[string]time.Duration{},
	}
	g.coal = newCoalescer(g)
	g.ctx, g.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if g.metrics, err = newMetrics(cfg.Registerer, g); err != nil {
		g.cancel()
		return nil, err
	}
	return g, nil
}

// Close fails every waiting call with ErrClosed, waits for coalesced calls in flight and
// unregisters the metrics. Calls after Close fail with ErrClosed.
func (g *Gateway) Close() {
	g.coal.close()
	g.lim.close()
	g.cancel()
	g.wg.Wait()
	g.metrics.unregister()
}

// callSpec describes one EC2 call for the limiter, metrics and logs.
type callSpec struct {
	action string   // EC2 action
	key    string   // limiter key (action, or action + UnfilteredSuffix)
	prio   Priority //
	eni    string   // for logs, when the call concerns one ENI
	subnet string   // for logs, when the call concerns one subnet
}

// call runs fn (one SDK call) through the limiter; every attempt waits for a token. first,
// when not nil, is a token already granted for the first attempt. Throttled calls are retried
// (EC2 did nothing). A 5xx or transport failure is retried only where a repeat cannot do the
// work twice (retrySafe): describes, creates carrying a ClientToken, tags, attribute changes,
// deletes; a mutation that is not retried, or whose retries ran out, returns Unknown.
func (g *Gateway) call(ctx context.Context, s callSpec, first *waiter, fn func(context.Context) error) error {
	if s.key == "" {
		s.key = s.action
	}
	maxRetries := g.cfg.maxRetries()
	var (
		seq  uint64
		last *APIError
		// unknown: an earlier attempt of this mutation failed in a way that may have done it.
		unknown bool
	)
	for attempt := 0; ; attempt++ {
		w := first
		if attempt > 0 || w == nil {
			w = g.lim.enqueue(s.key, s.prio, seq)
			if err := g.lim.wait(ctx, w); err != nil {
				return g.waitFailed(s, last, err)
			}
		}
		seq = w.seq
		if w.b != nil {
			g.metrics.observeWait(w.b.name, s.prio, w.waited)
		}
		start := g.clk.Now()
		err := fn(ctx)
		d := g.clk.Since(start)
		g.lim.done(w)
		ae := classify(s.action, err)
		outcome := outcomeOK
		if ae != nil {
			outcome = ae.Outcome()
		}
		g.record(s.action, outcome, d)
		if ae == nil {
			g.logCall(slog.LevelDebug, s, outcome, d, attempt)
			return nil
		}
		last = ae
		switch {
		case ae.Kind == ErrThrottled:
			cut, rate, bucket := g.lim.throttledKey(s.key, s.action)
			g.log.Info("ec2 throttled", "action", s.action, "bucket", bucket, "priority", s.prio.String(),
				"attempt", attempt, "rate_cut", cut, "refill_per_second", rate)
			if attempt >= maxRetries || ctx.Err() != nil {
				return ae
			}
		case ae.Kind == ErrNotFound && unknown && idempotentDelete(s.action):
			// An earlier attempt's outcome was unknown: it deleted what this one cannot find.
			g.logCall(slog.LevelDebug, s, outcome, d, attempt)
			return nil
		case ae.Kind == ErrUnavailable && mutating(s.action):
			// EC2 may have done the work: a repeat is safe only for calls it cannot do twice.
			unknown = true
			ae.Unknown = true
			g.logCall(slog.LevelInfo, s, outcome, d, attempt)
			if !retrySafe(s.action) || outcome == "canceled" || attempt >= maxRetries || ctx.Err() != nil {
				return ae
			}
			if err := g.sleep(ctx, g.backoff(attempt)); err != nil {
				ae.Err = errors.Join(ae.Err, err)
				return ae
			}
		case ae.Kind == ErrUnavailable && outcome != "canceled":
			g.logCall(slog.LevelInfo, s, outcome, d, attempt)
			if attempt >= maxRetries || ctx.Err() != nil {
				return ae
			}
			if err := g.sleep(ctx, g.backoff(attempt)); err != nil {
				ae.Err = errors.Join(ae.Err, err)
				return ae
			}
		default:
			g.logCall(slog.LevelDebug, s, outcome, d, attempt)
			if unknown {
				// An earlier attempt may have done the work this one was refused for.
				ae.Unknown = true
			}
			return ae
		}
	}
}

// mutating reports whether an action changes EC2's state.
func mutating(action string) bool { return !strings.HasPrefix(action, "Describe") }

// retrySafe reports whether a mutation may be repeated after a failure that may have carried
// it out: the repeat either does nothing new (tags, attributes, a create with the same
// ClientToken) or fails in a way call understands (a delete finding nothing). Assign, Unassign,
// Attach and Detach are not: a repeat of an explicit Assign that EC2 carried out would come back
// as InvalidIPAddress.InUse, read as someone else holding the address; a repeat of an Attach as
// a second attachment or a device index in use.
func retrySafe(action string) bool {
	switch action {
	case ActionCreateNetworkInterface, ActionDeleteNetworkInterface, ActionModifyNetworkInterfaceAttribute,
		ActionCreateTags:
		return true
	}
	return false
}

// idempotentDelete reports actions whose NotFound after an attempt of unknown outcome means
// that attempt did the work.
func idempotentDelete(action string) bool { return action == ActionDeleteNetworkInterface }

// waitFailed is the error of a call whose limiter wait ended without a token.
func (g *Gateway) waitFailed(s callSpec, last *APIError, err error) error {
	if errors.Is(err, ErrClosed) {
		return &APIError{Action: s.action, Message: "gateway closed", Kind: ErrClosed, Err: err}
	}
	if last != nil {
		last.Err = errors.Join(last.Err, err)
		return last
	}
	return &APIError{Action: s.action, Message: "context ended while waiting for the limiter",
		Kind: ErrThrottled, Err: err}
}

func (g *Gateway) logCall(level slog.Level, s callSpec, outcome string, d time.Duration, attempt int) {
	if !g.log.Enabled(g.ctx, level) {
		return
	}
	attrs := []any{"action", s.action, "priority", s.prio.String(), "outcome", outcome,
		"duration", d, "attempt", attempt}
	if s.eni != "" {
		attrs = append(attrs, "eni", s.eni)
	}
	if s.subnet != "" {
		attrs = append(attrs, "subnet", s.subnet)
	}
	g.log.Log(g.ctx, level, "ec2 call", attrs...)
}

// backoff is the pause before retry attempt+1 of a 5xx: exponential with jitter, clock time.
func (g *Gateway) backoff(attempt int) time.Duration {
	d := retryBase << min(attempt, 10)
	d = min(d, retryMax)
	return time.Duration(float64(d) * (0.5 + rand.Float64()/2))
}

func (g *Gateway) sleep(ctx context.Context, d time.Duration) error {
	t := g.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.Chan():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-g.ctx.Done():
		return ErrClosed
	}
}

// record counts a call and feeds the latency EWMA (only calls EC2 answered).
func (g *Gateway) record(action, outcome string, d time.Duration) {
	g.metrics.observeCall(action, outcome, d)
	g.statsMu.Lock()
	defer g.statsMu.Unlock()
	g.calls[[2]string{action, outcome}]++
	if outcome == "transport" || outcome == "canceled" {
		return
	}
	if prev, ok := g.latency[action]; ok {
		g.latency[action] = time.Duration(latencyAlpha*float64(d) + (1-latencyAlpha)*float64(prev))
	} else {
		g.latency[action] = d
	}
}

// EstimateWait is the expected time until a new call of action at priority p completes: the
// tokens needed by the calls queued ahead of it (priority p or better) and by itself at the
// bucket's current pace, plus the action's recent call latency (EWMA). action is an EC2 action
// name or a limiter key ("DescribeInstances:unfiltered").
func (g *Gateway) EstimateWait(action string, p Priority) time.Duration {
	wait := g.lim.estimate(action, p)
	g.statsMu.Lock()
	lat, ok := g.latency[strings.TrimSuffix(action, UnfilteredSuffix)]
	g.statsMu.Unlock()
	if !ok {
		lat = latencySeed
	}
	return wait + lat
}

// AssumeDrained tells the limiter that the account's EC2 buckets may be empty right now — a
// new leader takes over from one that may have just used them up — so it starts pacing from empty
// instead of from full, and the first calls of a takeover are not throttled.
func (g *Gateway) AssumeDrained() { g.lim.drain() }

// LimiterState snapshots the limiter's buckets, queues, recent throttles and call counts.
func (g *Gateway) LimiterState() LimiterState {
	st := g.lim.state()
	g.statsMu.Lock()
	for k, n := range g.calls {
		st.Calls = append(st.Calls, CallCount{Action: k[0], Outcome: k[1], Count: n})
	}
	g.statsMu.Unlock()
	sort.Slice(st.Calls, func(i, j int) bool {
		if st.Calls[i].Action != st.Calls[j].Action {
			return st.Calls[i].Action < st.Calls[j].Action
		}
		return st.Calls[i].Outcome < st.Calls[j].Outcome
	})
	return st
}
