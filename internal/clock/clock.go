// Package clock owns ipledger's one notion of time for the server: the real clock, and a scaled
// clock on which time passes a fixed factor faster than on the clock below it (for a run against
// an EC2 simulator sped up by --time-scale). Every component that measures or waits on policy
// time (the allocator, the EC2 gateway's limiter, the admin API's reads) takes a Clock; none
// divides its own constants by a time scale.
//
// It never decides deadlines of I/O: those are contexts, in real time.
package clock

import (
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// Clock is the time source components take (clockwork's interface; clockwork.NewFakeClock is the
// one for tests).
type Clock = clockwork.Clock

// Real is the wall clock.
func Real() Clock { return clockwork.NewRealClock() }

// Scaled returns a clock on which time passes factor times faster than on base: Now moves
// factor seconds per second of base from the moment Scaled is called (when it equals base's
// Now), and a timer of d fires after d/factor of base. A factor of 1 or less returns base.
//
// Times of two scaled clocks created at different moments differ by (moment apart) x
// (factor-1); a time-scaled run keeps its time-stamped decisions within one process.
func Scaled(base Clock, factor float64) Clock {
	if factor <= 1 {
		return base
	}
	return &scaled{base: base, factor: factor, anchor: base.Now()}
}

type scaled struct {
	base   Clock
	factor float64
	anchor time.Time
}

var _ Clock = (*scaled)(nil)

// below is how long d of this clock lasts on the base clock (at least 1 ns when d > 0).
func (s *scaled) below(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return max(time.Duration(float64(d)/s.factor), 1)
}

func (s *scaled) Now() time.Time {
	return s.anchor.Add(time.Duration(float64(s.base.Since(s.anchor)) * s.factor))
}

func (s *scaled) Since(t time.Time) time.Duration { return s.Now().Sub(t) }

func (s *scaled) Until(t time.Time) time.Duration { return t.Sub(s.Now()) }

func (s *scaled) Sleep(d time.Duration) { s.base.Sleep(s.below(d)) }

func (s *scaled) After(d time.Duration) <-chan time.Time { return s.NewTimer(d).Chan() }

// NewTimer sends this clock's time on its channel when it fires.
func (s *scaled) NewTimer(d time.Duration) clockwork.Timer {
	t := &timer{c: make(chan time.Time, 1), s: s}
	t.t = s.base.AfterFunc(s.below(d), t.fire)
	return t
}

func (s *scaled) AfterFunc(d time.Duration, f func()) clockwork.Timer {
	return &funcTimer{t: s.base.AfterFunc(s.below(d), f), s: s}
}

// NewTicker ticks every d of this clock; like time.Ticker, it drops ticks a slow reader misses.
func (s *scaled) NewTicker(d time.Duration) clockwork.Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	t := &ticker{c: make(chan time.Time, 1), s: s, period: s.below(d)}
	t.mu.Lock()
	t.t = s.base.AfterFunc(t.period, t.fire)
	t.mu.Unlock()
	return t
}

type timer struct {
	c chan time.Time
	s *scaled
	t clockwork.Timer
}

func (t *timer) fire() {
	select {
	case t.c <- t.s.Now():
	default:
	}
}

func (t *timer) Chan() <-chan time.Time     { return t.c }
func (t *timer) Reset(d time.Duration) bool { return t.t.Reset(t.s.below(d)) }
func (t *timer) Stop() bool                 { return t.t.Stop() }

type funcTimer struct {
	t clockwork.Timer
	s *scaled
}

// Chan is nil, as time.AfterFunc's timer has no channel.
func (t *funcTimer) Chan() <-chan time.Time     { return nil }
func (t *funcTimer) Reset(d time.Duration) bool { return t.t.Reset(t.s.below(d)) }
func (t *funcTimer) Stop() bool                 { return t.t.Stop() }

type ticker struct {
	c chan time.Time
	s *scaled

	mu      sync.Mutex
	period  time.Duration // on the base clock
	t       clockwork.Timer
	stopped bool
}

func (t *ticker) fire() {
	select {
	case t.c <- t.s.Now():
	default:
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.stopped {
		t.t.Reset(t.period)
	}
}

func (t *ticker) Chan() <-chan time.Time { return t.c }

func (t *ticker) Reset(d time.Duration) {
	if d <= 0 {
		panic("clock: non-positive interval for Ticker.Reset")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.period, t.stopped = t.s.below(d), false
	t.t.Stop()
	t.t.Reset(t.period)
}

func (t *ticker) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	t.t.Stop()
}
