package ec2gw

import (
	"context"
	"errors"
	"math"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/ipledger/ipledger/internal/clock"
	"github.com/jonboulle/clockwork"
)

// manualClock is a clock that moves only when the test advances it; timers due by then run
// synchronously inside Advance (clockwork's fake clock runs them in goroutines, which these
// tests would have to poll for).
type manualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer
}

type manualTimer struct {
	c       *manualClock
	at      time.Time
	f       func()
	ch      chan time.Time // NewTimer's
	stopped bool
}

func newManualClock() *manualClock {
	return &manualClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

var _ clockwork.Clock = (*manualClock)(nil)

func (c *manualClock) AfterFunc(d time.Duration, f func()) clockwork.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &manualTimer{c: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (c *manualClock) NewTimer(d time.Duration) clockwork.Timer {
	ch := make(chan time.Time, 1)
	t := c.AfterFunc(d, func() {
		select {
		case ch <- c.Now():
		default:
		}
	}).(*manualTimer)
	t.ch = ch
	return t
}

func (c *manualClock) After(d time.Duration) <-chan time.Time { return c.NewTimer(d).Chan() }
func (c *manualClock) Sleep(d time.Duration)                  { <-c.After(d) }
func (c *manualClock) Since(t time.Time) time.Duration        { return c.Now().Sub(t) }
func (c *manualClock) Until(t time.Time) time.Duration        { return t.Sub(c.Now()) }
func (c *manualClock) NewTicker(time.Duration) clockwork.Ticker {
	panic("manualClock: the limiter uses no tickers")
}

func (t *manualTimer) Chan() <-chan time.Time { return t.ch }

func (t *manualTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}

func (t *manualTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := !t.stopped
	t.at, t.stopped = t.c.now.Add(d), false
	if !was {
		t.c.timers = append(t.c.timers, t)
	}
	return was
}

// Advance moves time forward by d in steps of at most step, running due timers at each step.
func (c *manualClock) Advance(d, step time.Duration) {
	for d > 0 {
		s := min(d, step)
		d -= s
		c.mu.Lock()
		c.now = c.now.Add(s)
		var due []*manualTimer
		kept := c.timers[:0]
		for _, t := range c.timers {
			switch {
			case t.stopped:
			case !t.at.After(c.now):
				t.stopped = true
				due = append(due, t)
			default:
				kept = append(kept, t)
			}
		}
		c.timers = kept
		c.mu.Unlock()
		sort.Slice(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
		for _, t := range due {
			t.f()
		}
	}
}

func isGranted(w *waiter) bool {
	select {
	case <-w.ready:
		return w.err == nil
	default:
		return false
	}
}

func countGranted(ws []*waiter) int {
	n := 0
	for _, w := range ws {
		if isGranted(w) {
			n++
		}
	}
	return n
}

// advanceAnswering advances the clock in steps; after each step the calls granted so far end.
func advanceAnswering(clk *manualClock, l *limiter, ws []*waiter, d, step time.Duration) {
	for d > 0 {
		s := min(d, step)
		d -= s
		clk.Advance(s, s)
		finish(l, ws...)
	}
}

// finish ends the calls of every granted waiter (their answers came).
func finish(l *limiter, ws ...*waiter) {
	for _, w := range ws {
		if isGranted(w) {
			l.done(w)
		}
	}
}

func oneBucket(capacity int, refill float64) []BucketConfig {
	return []BucketConfig{{Name: "b", Capacity: capacity, RefillPerSecond: refill, Actions: []string{"A"}}}
}

func TestLimiterStartsFullThenPaces(t *testing.T) {
	tests := []struct {
		name      string
		capacity  int
		refill    float64
		timeScale float64
		wantFirst int // granted at once: capacity minus the reserve (one second of refill)
	}{
		{"eni bucket", 100, 5, 1, 95},
		{"eni bucket time-scaled", 100, 5, 50, 95}, // the reserve is not time-scaled
		{"describe bucket time-scaled", 100, 20, 50, 80},
		{"tags bucket", 100, 10, 1, 90},
		{"mutating bucket", 50, 5, 1, 45},
		{"cidr bucket", 5, 1, 1, 4},
		{"tiny bucket", 2, 1, 1, 2}, // reserve capped at a quarter of the capacity (0)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := newManualClock()
			l := newLimiter(clock.Scaled(clk, tc.timeScale), oneBucket(tc.capacity, tc.refill))
			var ws []*waiter
			for range tc.wantFirst + 20 {
				ws = append(ws, l.enqueue("A", PriorityWarmRefill, 0))
			}
			if got := countGranted(ws); got != tc.wantFirst {
				t.Fatalf("granted at once = %d, want %d", got, tc.wantFirst)
			}
			finish(l, ws...) // the burst's answers came
			pace := tc.refill * tc.timeScale * paceFactor
			// Just before 10 tokens have refilled at the paced rate, 9 more are granted; just after, 10.
			tenth := time.Duration(10 / pace * float64(time.Second))
			advanceAnswering(clk, l, ws, tenth-tenth/100, tenth/50)
			if got := countGranted(ws) - tc.wantFirst; got != 9 {
				t.Fatalf("granted after %v = %d, want 9", tenth-tenth/100, got)
			}
			advanceAnswering(clk, l, ws, tenth/50, tenth/50)
			if got := countGranted(ws) - tc.wantFirst; got != 10 {
				t.Fatalf("granted after %v = %d, want 10", tenth+tenth/100, got)
			}
			// Grants are in FIFO order within one priority.
			for i, w := range ws {
				if want := i < tc.wantFirst+10; isGranted(w) != want {
					t.Fatalf("waiter %d granted = %v, want %v", i, isGranted(w), want)
				}
			}
		})
	}
}

func TestLimiterServesHigherPriorityFirst(t *testing.T) {
	clk := newManualClock()
	l := newLimiter(clk, oneBucket(1, 10)) // one token, then one per ~103 ms
	first := l.enqueue("A", PriorityReconcile, 0)
	if !isGranted(first) {
		t.Fatal("first waiter not granted from a full bucket")
	}
	l.done(first)
	type entry struct {
		name string
		p    Priority
	}
	order := []entry{
		{"rec1", PriorityReconcile}, {"rec2", PriorityReconcile}, {"rel1", PriorityRelease},
		{"pod1", PriorityPodWaiting}, {"rec3", PriorityReconcile}, {"node1", PriorityNodeStart},
		{"pod2", PriorityPodWaiting},
	}
	ws := map[string]*waiter{}
	for _, e := range order {
		ws[e.name] = l.enqueue("A", e.p, 0)
	}
	st := l.state()
	if st.Queue[PriorityReconcile] != 3 || st.Queue[PriorityPodWaiting] != 2 || st.Queue[PriorityNodeStart] != 1 {
		t.Fatalf("queue lengths = %v", st.Queue)
	}
	want := []string{"pod1", "pod2", "node1", "rel1", "rec1", "rec2", "rec3"}
	var got []string
	for range 100 {
		clk.Advance(10*time.Millisecond, 10*time.Millisecond)
		for _, w := range ws {
			finish(l, w) // each call is answered within 10 ms
		}
		for _, name := range want {
			if isGranted(ws[name]) && !contains(got, name) {
				got = append(got, name)
			}
		}
		if len(got) == len(want) {
			break
		}
	}
	if !equal(got, want) {
		t.Fatalf("grant order = %v, want %v", got, want)
	}
}

func TestLimiterLowerPriorityNeverTakesAWaitedToken(t *testing.T) {
	clk := newManualClock()
	l := newLimiter(clk, oneBucket(1, 1))
	l.done(l.enqueue("A", PriorityPodWaiting, 0)) // takes the only token
	pod := l.enqueue("A", PriorityPodWaiting, 0)
	clk.Advance(500*time.Millisecond, 100*time.Millisecond) // half a token
	rec := l.enqueue("A", PriorityReconcile, 0)
	if isGranted(pod) || isGranted(rec) {
		t.Fatal("granted before a token refilled")
	}
	clk.Advance(600*time.Millisecond, 100*time.Millisecond) // one token (paced 0.97/s) by now
	if !isGranted(pod) || isGranted(rec) {
		t.Fatalf("after one token: pod granted %v (want true), reconcile granted %v (want false)", isGranted(pod), isGranted(rec))
	}
}

func TestLimiterCancelRemovesWaiter(t *testing.T) {
	clk := newManualClock()
	l := newLimiter(clk, oneBucket(1, 1))
	l.done(l.enqueue("A", PriorityPodWaiting, 0))
	a := l.enqueue("A", PriorityPodWaiting, 0)
	b := l.enqueue("A", PriorityRelease, 0)

	ctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error, 1)
	go func() { errc <- l.wait(ctx, a) }()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("wait after cancel = %v, want context.Canceled", err)
	}
	if st := l.state(); st.Queue[PriorityPodWaiting] != 0 || st.Queue[PriorityRelease] != 1 {
		t.Fatalf("queue after cancel = %v, want only the release waiter", st.Queue)
	}
	clk.Advance(1100*time.Millisecond, 100*time.Millisecond)
	if !isGranted(b) {
		t.Fatal("the next waiter did not get the token the canceled one left")
	}
	if isGranted(a) {
		t.Fatal("the canceled waiter was granted")
	}
	l.done(b)

	// A waiter canceled after its grant gives the token back.
	c := l.enqueue("A", PriorityPodWaiting, 0)
	clk.Advance(1100*time.Millisecond, 100*time.Millisecond)
	if !isGranted(c) {
		t.Fatal("waiter c not granted")
	}
	before := l.state().Buckets[0].Tokens
	l.refund(c)
	if got, want := l.state().Buckets[0].Tokens, math.Min(1, before+1); math.Abs(got-want) > 1e-9 {
		t.Fatalf("tokens after refund = %v, want %v", got, want)
	}
}

func TestLimiterCountsCallsInFlight(t *testing.T) {
	clk := newManualClock()
	l := newLimiter(clk, oneBucket(8, 1)) // reserve 1: 7 usable, then ~1 per second
	var ws []*waiter
	for range 9 {
		ws = append(ws, l.enqueue("A", PriorityPodWaiting, 0))
	}
	if got := countGranted(ws); got != 7 {
		t.Fatalf("granted at once = %d, want 7", got)
	}
	// No answer yet: all 7 may still be on their way to an EC2 bucket that sits full, so ours
	// does not refill, however long it takes.
	clk.Advance(10*time.Second, 100*time.Millisecond)
	if got := countGranted(ws); got != 7 {
		t.Fatalf("granted with every call in flight = %d, want 7", got)
	}
	if st := l.state(); st.Buckets[0].Tokens > 1e-9 {
		t.Fatalf("tokens with every call in flight = %v, want 0", st.Buckets[0].Tokens)
	}
	// Each answer makes room for one token, refilled at the pace from then on.
	l.done(ws[0])
	l.done(ws[0]) // a second done of the same call changes nothing
	if got := countGranted(ws); got != 7 {
		t.Fatalf("granted right after an answer = %d, want 7 (the token still has to refill)", got)
	}
	clk.Advance(1100*time.Millisecond, 100*time.Millisecond)
	if got := countGranted(ws); got != 8 {
		t.Fatalf("granted a paced token after the answer = %d, want 8", got)
	}
	// An unused token given back leaves the flight too, and goes to the waiter still queued.
	l.refund(ws[7])
	l.done(ws[7]) // no effect after the refund
	if !isGranted(ws[8]) {
		t.Fatalf("the queued waiter did not get the refunded token")
	}
	if st := l.state(); st.Buckets[0].Tokens > 0.2 {
		t.Fatalf("tokens after the refund went to the next waiter = %v, want about 0", st.Buckets[0].Tokens)
	}
}

func TestLimiterSetPriority(t *testing.T) {
	clk := newManualClock()
	l := newLimiter(clk, oneBucket(1, 1))
	l.done(l.enqueue("A", PriorityPodWaiting, 0))
	a := l.enqueue("A", PriorityWarmRefill, 0)
	b := l.enqueue("A", PriorityReconcile, 0)
	l.setPriority(b, PriorityPodWaiting)
	clk.Advance(1100*time.Millisecond, 100*time.Millisecond)
	if !isGranted(b) || isGranted(a) {
		t.Fatalf("after raising b: b granted %v, a granted %v; want b first", isGranted(b), isGranted(a))
	}
}

func TestLimiterBackoffAIMD(t *testing.T) {
	clk := newManualClock()
	const rate, ts = 20.0, 2.0
	l := newLimiter(clock.Scaled(clk, ts), oneBucket(100, rate))
	full := rate // per second of the scaled clock
	bs := func() BucketState { return l.state().Buckets[0] }
	near := func(got, want float64) bool { return math.Abs(got-want) < want*1e-6+1e-9 }

	if got := bs().EffectiveRefillPerSecond; !near(got, full*paceFactor) {
		t.Fatalf("initial rate = %v, want %v", got, full*paceFactor)
	}
	cut, _, _ := l.throttledKey("A", "A")
	if !cut {
		t.Fatal("first throttle did not cut the rate")
	}
	if got := bs(); !near(got.EffectiveRefillPerSecond, full/2*paceFactor) || got.Tokens > 1e-9 {
		t.Fatalf("after throttle: rate %v tokens %v, want %v and 0", got.EffectiveRefillPerSecond, got.Tokens, full/2*paceFactor)
	}
	// A second throttle within the decrease interval (1 s / time scale) drains but does not cut.
	clk.Advance(100*time.Millisecond, 100*time.Millisecond)
	if cut, _, _ := l.throttledKey("A", "A"); cut {
		t.Fatal("second throttle within the interval cut the rate again")
	}
	if got := bs().Tokens; got > 1e-9 {
		t.Fatalf("tokens after second throttle = %v, want 0", got)
	}
	// Repeated throttles, each after the interval, cut down to the 10% floor and no further.
	for range 10 {
		clk.Advance(time.Second/ts, time.Second/ts)
		l.throttledKey("A", "A")
	}
	if got := bs().EffectiveRefillPerSecond; !near(got, full*minRateFraction*paceFactor) {
		t.Fatalf("rate after many throttles = %v, want the floor %v", got, full*minRateFraction*paceFactor)
	}
	// Recovery is linear: full range in recoveryTime / time scale.
	half := time.Duration(float64(recoveryTime) / ts * 0.45) // 10% + 45% = 55%
	clk.Advance(half, 50*time.Millisecond)
	if got := bs().EffectiveRefillPerSecond; !near(got, full*0.55*paceFactor) {
		t.Fatalf("rate after %v of recovery = %v, want %v", half, got, full*0.55*paceFactor)
	}
	clk.Advance(recoveryTime, time.Second)
	if got := bs().EffectiveRefillPerSecond; !near(got, full*paceFactor) {
		t.Fatalf("rate after full recovery = %v, want %v", got, full*paceFactor)
	}
	st := l.state()
	if st.ThrottledTotal != 12 || len(st.RecentThrottles) != 12 {
		t.Fatalf("throttle records: total %d, recent %d; want 12 and 12", st.ThrottledTotal, len(st.RecentThrottles))
	}
}

func TestLimiterBackoffSlowsGrants(t *testing.T) {
	clk := newManualClock()
	l := newLimiter(clk, oneBucket(10, 10))
	var ws []*waiter
	for range 40 {
		ws = append(ws, l.enqueue("A", PriorityWarmRefill, 0))
	}
	base := countGranted(ws)
	finish(l, ws...)
	l.throttledKey("A", "A") // rate 5/s (x0.97), recovering
	clk.Advance(time.Second, 10*time.Millisecond)
	got := countGranted(ws) - base
	// The integral of the rate over the second: from 5 to 5+10/30, about 5.17 x 0.97 = 5.01.
	if got < 4 || got > 5 {
		t.Fatalf("grants in the second after a throttle = %d, want 4..5 (half rate)", got)
	}
}

func TestLimiterEstimate(t *testing.T) {
	clk := newManualClock()
	l := newLimiter(clk, oneBucket(1, 10))
	if got := l.estimate("A", PriorityReconcile); got != 0 {
		t.Fatalf("estimate with a token available = %v, want 0", got)
	}
	l.done(l.enqueue("A", PriorityReconcile, 0))
	for range 4 {
		l.enqueue("A", PriorityReconcile, 0)
	}
	l.enqueue("A", PriorityPodWaiting, 0)
	per := time.Duration(math.Round(float64(time.Second) / (10 * paceFactor)))
	tests := []struct {
		p    Priority
		want time.Duration // tokens needed x time per token
	}{
		{PriorityPodWaiting, 2 * per},
		{PriorityNodeStart, 2 * per},
		{PriorityReconcile, 6 * per},
	}
	for _, tc := range tests {
		if got := l.estimate("A", tc.p); got < tc.want-time.Millisecond || got > tc.want+time.Millisecond {
			t.Errorf("estimate(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
}

func TestLimiterCloseFailsWaiters(t *testing.T) {
	clk := newManualClock()
	l := newLimiter(clk, oneBucket(1, 1))
	_ = l.enqueue("A", PriorityPodWaiting, 0)
	w := l.enqueue("A", PriorityPodWaiting, 0)
	l.close()
	if err := l.wait(t.Context(), w); !errors.Is(err, ErrClosed) {
		t.Fatalf("wait after close = %v, want ErrClosed", err)
	}
	if err := l.wait(t.Context(), l.enqueue("A", PriorityPodWaiting, 0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("enqueue after close = %v, want ErrClosed", err)
	}
}

func TestLimiterFallbackBucket(t *testing.T) {
	clk := newManualClock()
	l := newLimiter(clk, []BucketConfig{
		{Name: "own", Capacity: 10, RefillPerSecond: 1, Actions: []string{"A"}},
		{Name: "rest", Capacity: 5, RefillPerSecond: 1, Actions: []string{FallbackAction}},
	})
	if b := l.bucketFor("A"); b == nil || b.name != "own" {
		t.Fatalf("bucket of A = %v, want own", b)
	}
	if b := l.bucketFor("Other"); b == nil || b.name != "rest" {
		t.Fatalf("bucket of Other = %v, want rest", b)
	}
}

// TestLimiterRealClockConcurrent exercises the real timer path with many goroutines: every waiter
// is served exactly once and the pace holds.
func TestLimiterRealClockConcurrent(t *testing.T) {
	l := newLimiter(realClock(), oneBucket(10, 200)) // reserve 10, capped at 2: 8 at once, then ~194/s
	t.Cleanup(l.close)
	const n = 60
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		p := priorities[i%len(priorities)]
		wg.Go(func() {
			w := l.enqueue("A", p, 0)
			err := l.wait(t.Context(), w)
			l.done(w)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
	}
	floor := time.Duration(math.Round(float64(n-8) / (200 * paceFactor) * float64(time.Second)))
	if el := time.Since(start); el < floor-5*time.Millisecond {
		t.Fatalf("%d grants took %v, faster than the bucket allows (%v)", n, el, floor)
	}
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// After drain (a new leader taking over an account another leader may have just used up) the
// limiter grants nothing at once and then paces from empty.
func TestLimiterDrainStartsFromEmpty(t *testing.T) {
	clk := newManualClock()
	l := newLimiter(clk, oneBucket(100, 5))
	l.drain()
	var ws []*waiter
	for range 10 {
		ws = append(ws, l.enqueue("A", PriorityPodWaiting, 0))
	}
	if got := countGranted(ws); got != 0 {
		t.Fatalf("granted right after drain: %d, want 0", got)
	}
	pace := 5 * paceFactor
	two := time.Duration(2 / pace * float64(time.Second))
	advanceAnswering(clk, l, ws, two+two/100, two/50)
	if got := countGranted(ws); got != 2 {
		t.Fatalf("granted two tokens' time after drain: %d, want 2", got)
	}
}
