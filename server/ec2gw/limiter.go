package ec2gw

import (
	"container/heap"
	"context"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/ipledger/ipledger/internal/clock"
	"github.com/jonboulle/clockwork"
)

// Limiter tuning. The pace, the reserve and the in-flight accounting keep a client that is alone
// on the account from ever being throttled; the backoff constants shape the reaction to someone
// else sharing it.
//
// Why in-flight accounting: a request reaches EC2 some time after it got its token, and not all
// equally late. While requests are on their way EC2's bucket may sit full and lose refill that
// ours counted (at the start of a burst, or when the machine stalls); the requests then arrive
// together. So a bucket never holds more than its usable capacity minus the calls in flight
// (granted, not yet answered): tokens + in flight <= usable <= EC2's capacity, and EC2's level,
// which refills at least as fast as ours, stays at or above tokens + in flight.
const (
	// paceFactor: the limiter refills at this fraction of the configured rate, a margin for the
	// clocks of EC2 and ours not agreeing exactly (elapsed / floor stays near 1/paceFactor).
	paceFactor = 0.97
	// reserveTime: a bucket keeps this much of its configured refill (at least 1 token, at most
	// a quarter of its capacity) out of its usable capacity, for an EC2 that adds its tokens once
	// a second rather than continuously. It costs about one second per burst at real scale.
	reserveTime = time.Second
	// minRateFraction: backoff never lowers a bucket's rate below this fraction of its
	// configured rate.
	minRateFraction = 0.1
	// decreaseInterval: at most one halving per bucket per interval (of the clock), so that a
	// batch of in-flight calls throttled together counts as one signal.
	decreaseInterval = time.Second
	// recoveryTime: after backoff the rate grows linearly, from zero to the configured rate in
	// this time (of the clock): from the 10% floor back to full in 27 s.
	recoveryTime = 30 * time.Second
	// recentThrottles: how many throttle events LimiterState keeps.
	recentThrottles = 32
	// epsilon absorbs floating-point error in token arithmetic.
	epsilon = 1e-9
)

// limiter holds one token bucket per configured bucket, each with a priority queue of waiters.
// Tokens are granted by whoever changes the state (a new waiter, a cancellation, the timer set
// for the next token): the highest-priority, earliest waiter of a bucket gets the next token,
// and no waiter is granted while a better one of the same bucket waits.
type limiter struct {
	clk clock.Clock

	mu        sync.Mutex
	buckets   []*bucket
	byKey     map[string]*bucket
	fallback  *bucket
	seq       uint64
	timer     clockwork.Timer
	closed    bool
	throttles []ThrottleEvent // ring, newest last
	throttled uint64
}

type bucket struct {
	name     string
	actions  []string
	capacity float64 // configured
	usable   float64 // capacity minus the reserve: the most tokens + in-flight calls
	rate     float64 // configured refill, tokens per second of the clock
	eff      float64 // current refill after backoff, <= rate
	tokens   float64
	last     time.Time // tokens and eff are as of last
	lastCut  time.Time
	queue    waitQueue
	inflight int // granted calls not yet answered
}

// waiter is one request for a token.
type waiter struct {
	b        *bucket
	prio     Priority
	seq      uint64
	index    int // in b.queue; -1 when not queued
	ready    chan struct{}
	granted  bool
	inflight bool  // granted and counted in b.inflight until done or refunded
	err      error // set when the limiter closed before a grant
	enqueued time.Time
	waited   time.Duration
}

func newLimiter(clk clock.Clock, cfgs []BucketConfig) *limiter {
	l := &limiter{clk: clk, byKey: map[string]*bucket{}}
	now := clk.Now()
	for _, c := range cfgs {
		rate := c.RefillPerSecond
		reserve := math.Max(1, math.Ceil(c.RefillPerSecond*reserveTime.Seconds()))
		reserve = math.Min(reserve, math.Floor(float64(c.Capacity)/4))
		b := &bucket{
			name:     c.Name,
			actions:  append([]string(nil), c.Actions...),
			capacity: float64(c.Capacity),
			usable:   float64(c.Capacity) - reserve,
			rate:     rate,
			eff:      rate,
			last:     now,
		}
		b.tokens = b.usable
		l.buckets = append(l.buckets, b)
		for _, a := range c.Actions {
			if a == FallbackAction {
				l.fallback = b
				continue
			}
			l.byKey[a] = b
		}
	}
	return l
}

// drain empties every bucket as of now; they refill at their pace from here.
func (l *limiter) drain() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clk.Now()
	for _, b := range l.buckets {
		b.refill(now, l.recoverySlope(b))
		b.tokens = 0
	}
}

// bucketFor returns the bucket that serves a limiter key, or nil.
func (l *limiter) bucketFor(key string) *bucket {
	if b, ok := l.byKey[key]; ok {
		return b
	}
	return l.fallback
}

// pace is the rate at which the bucket actually refills now (backoff and margin applied).
func (b *bucket) pace() float64 { return b.eff * paceFactor }

// limit is the most tokens the bucket may hold now.
func (b *bucket) limit() float64 { return b.usable - float64(b.inflight) }

// refill brings tokens and the recovering rate up to now.
func (b *bucket) refill(now time.Time, slope float64) {
	dt := now.Sub(b.last).Seconds()
	if dt <= 0 {
		return
	}
	b.last = now
	var added float64 // integral of eff over dt
	if b.eff < b.rate && slope > 0 {
		t1 := (b.rate - b.eff) / slope // time until fully recovered
		if dt < t1 {
			e1 := b.eff + slope*dt
			added = (b.eff + e1) / 2 * dt
			b.eff = e1
		} else {
			added = (b.eff+b.rate)/2*t1 + b.rate*(dt-t1)
			b.eff = b.rate
		}
	} else {
		added = b.eff * dt
	}
	b.tokens = math.Max(b.tokens, math.Min(b.limit(), b.tokens+added*paceFactor))
}

// take gives w a token (the caller checked there is one); the call is in flight until done.
func (b *bucket) take(w *waiter, now time.Time) {
	b.tokens--
	b.inflight++
	w.inflight = true
	w.granted = true
	w.waited = now.Sub(w.enqueued)
	close(w.ready)
}

// timeFor is how long until the bucket holds n tokens at its current pace (answers of calls in
// flight may be needed too; they are not predicted).
func (b *bucket) timeFor(n float64) time.Duration {
	need := n - b.tokens
	if need <= epsilon {
		return 0
	}
	return time.Duration(math.Ceil(need / b.pace() * float64(time.Second)))
}

// recoverySlope is how fast a backed-off rate grows, in tokens per second per second.
func (l *limiter) recoverySlope(b *bucket) float64 {
	return b.rate / recoveryTime.Seconds()
}

// enqueue asks for a token of key's bucket at priority p. seq orders waiters of one priority
// (0 = a new, last place; a retry passes its first seq to keep its place). The waiter may be
// granted at once; otherwise wait or cancel it.
func (l *limiter) enqueue(key string, p Priority, seq uint64) *waiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clk.Now()
	if seq == 0 {
		l.seq++
		seq = l.seq
	}
	w := &waiter{prio: p, seq: seq, index: -1, ready: make(chan struct{}), enqueued: now}
	if l.closed {
		w.err = ErrClosed
		close(w.ready)
		return w
	}
	b := l.bucketFor(key)
	if b == nil { // Validate makes every gateway key resolve; an unknown key is not limited.
		w.granted = true
		close(w.ready)
		return w
	}
	w.b = b
	b.refill(now, l.recoverySlope(b))
	if b.queue.Len() == 0 && b.tokens >= 1-epsilon {
		b.take(w, now)
		return w
	}
	heap.Push(&b.queue, w)
	l.dispatchLocked(now)
	return w
}

// wait blocks until w is granted (nil), the limiter closes (ErrClosed) or ctx ends (its error;
// the waiter is removed, and a token granted meanwhile is given back).
func (l *limiter) wait(ctx context.Context, w *waiter) error {
	select {
	case <-w.ready:
		return w.err
	case <-ctx.Done():
		l.cancel(w)
		return ctx.Err()
	}
}

// cancel withdraws w: removed from its queue, or its token given back if it was granted and its
// call not made.
func (l *limiter) cancel(w *waiter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.b == nil {
		return
	}
	now := l.clk.Now()
	switch {
	case w.index >= 0:
		heap.Remove(&w.b.queue, w.index)
	case w.granted:
		w.granted = false
		w.b.refill(now, l.recoverySlope(w.b))
		if w.inflight {
			w.inflight = false
			w.b.inflight--
		}
		w.b.tokens = math.Min(w.b.limit(), w.b.tokens+1)
	}
	l.dispatchLocked(now)
}

// refund gives back a granted token that was not used for a call.
func (l *limiter) refund(w *waiter) { l.cancel(w) }

// done reports that the call w was granted for has ended (answered or not): it no longer
// counts as in flight.
func (l *limiter) done(w *waiter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if w.b == nil || !w.inflight {
		return
	}
	now := l.clk.Now()
	w.b.refill(now, l.recoverySlope(w.b)) // up to now under the old limit
	w.inflight = false
	w.b.inflight--
	l.dispatchLocked(now)
}

// setPriority moves a still-queued waiter to priority p (coalesced calls take the best priority
// of their members).
func (l *limiter) setPriority(w *waiter, p Priority) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w.prio = p
	if w.b != nil && w.index >= 0 {
		heap.Fix(&w.b.queue, w.index)
	}
}

// dispatchLocked grants every token that is available and arms the timer for the next one.
func (l *limiter) dispatchLocked(now time.Time) {
	if l.closed {
		return
	}
	next := time.Duration(-1)
	for _, b := range l.buckets {
		if b.queue.Len() == 0 {
			continue
		}
		b.refill(now, l.recoverySlope(b))
		for b.queue.Len() > 0 && b.tokens >= 1-epsilon {
			b.take(heap.Pop(&b.queue).(*waiter), now)
		}
		// With too many calls in flight only an answer (done) makes room; no timer then.
		if b.queue.Len() > 0 && b.limit() >= 1-epsilon {
			if d := b.timeFor(1); next < 0 || d < next {
				next = d
			}
		}
	}
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if next >= 0 {
		l.timer = l.clk.AfterFunc(next, l.onTimer)
	}
}

func (l *limiter) onTimer() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dispatchLocked(l.clk.Now())
}

// throttledKey records a RequestLimitExceeded for key's bucket: the bucket's tokens are drained
// and its rate halved (at most once per decreaseInterval, never below minRateFraction). It
// reports whether the rate was cut and the rate now (tokens per second).
func (l *limiter) throttledKey(key, action string) (cut bool, rate float64, name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clk.Now()
	l.throttled++
	l.throttles = append(l.throttles, ThrottleEvent{Time: now, Action: action})
	if len(l.throttles) > recentThrottles {
		l.throttles = append(l.throttles[:0], l.throttles[len(l.throttles)-recentThrottles:]...)
	}
	b := l.bucketFor(key)
	if b == nil {
		return false, 0, ""
	}
	b.refill(now, l.recoverySlope(b))
	if b.lastCut.IsZero() || now.Sub(b.lastCut) >= decreaseInterval {
		b.eff = math.Max(b.eff/2, b.rate*minRateFraction)
		b.lastCut = now
		cut = true
	}
	b.tokens = math.Min(b.tokens, 0)
	l.dispatchLocked(now)
	return cut, b.pace(), b.name
}

// estimate is how long until a new waiter of key at priority p would be granted: the waiters
// ahead of it (priority p or better) and itself need tokens at the current pace.
func (l *limiter) estimate(key string, p Priority) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketFor(key)
	if b == nil {
		return 0
	}
	now := l.clk.Now()
	b.refill(now, l.recoverySlope(b))
	ahead := 0
	for _, w := range b.queue {
		if w.prio <= p {
			ahead++
		}
	}
	return b.timeFor(float64(ahead + 1))
}

// close fails every waiter with ErrClosed and stops the timer.
func (l *limiter) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	for _, b := range l.buckets {
		for b.queue.Len() > 0 {
			w := heap.Pop(&b.queue).(*waiter)
			w.err = ErrClosed
			close(w.ready)
		}
	}
}

// state snapshots the buckets, queue lengths and throttle history.
func (l *limiter) state() LimiterState {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clk.Now()
	st := LimiterState{Queue: map[Priority]int{}, ThrottledTotal: l.throttled}
	for _, p := range priorities {
		st.Queue[p] = 0
	}
	for _, b := range l.buckets {
		b.refill(now, l.recoverySlope(b))
		st.Buckets = append(st.Buckets, BucketState{
			Name:                     b.name,
			Capacity:                 int(b.capacity),
			RefillPerSecond:          b.rate,
			EffectiveRefillPerSecond: b.pace(),
			Tokens:                   b.tokens,
			Actions:                  append([]string(nil), b.actions...),
		})
		for _, w := range b.queue {
			st.Queue[w.prio]++
		}
	}
	st.RecentThrottles = append([]ThrottleEvent(nil), l.throttles...)
	sort.Slice(st.Buckets, func(i, j int) bool { return st.Buckets[i].Name < st.Buckets[j].Name })
	return st
}

// waitQueue is a heap of waiters: best priority first, then lowest seq (FIFO).
type waitQueue []*waiter

func (q waitQueue) Len() int { return len(q) }
func (q waitQueue) Less(i, j int) bool {
	if q[i].prio != q[j].prio {
		return q[i].prio < q[j].prio
	}
	return q[i].seq < q[j].seq
}
func (q waitQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index = i
	q[j].index = j
}
func (q *waitQueue) Push(x any) {
	w := x.(*waiter)
	w.index = len(*q)
	*q = append(*q, w)
}
func (q *waitQueue) Pop() any {
	old := *q
	n := len(old)
	w := old[n-1]
	old[n-1] = nil
	w.index = -1
	*q = old[:n-1]
	return w
}
