package bench

import (
	"context"
	"time"
)

// simClock maps wall time to simulated time: simulated = wall x F since the trace started.
type simClock struct {
	start time.Time
	f     float64
}

func newClock(f float64) *simClock { return &simClock{start: time.Now(), f: f} }

// Now is the simulated time since the start.
func (c *simClock) Now() time.Duration { return time.Duration(float64(time.Since(c.start)) * c.f) }

// Seconds is Now in seconds.
func (c *simClock) Seconds() float64 { return c.Now().Seconds() }

// Real converts a simulated duration to wall time.
func (c *simClock) Real(d time.Duration) time.Duration { return time.Duration(float64(d) / c.f) }

// Sim converts a wall duration to simulated time.
func (c *simClock) Sim(d time.Duration) time.Duration { return time.Duration(float64(d) * c.f) }

// Sleep waits for a simulated duration or until ctx ends (false then).
func (c *simClock) Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(c.Real(d))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// SleepUntil waits until the simulated time reaches at.
func (c *simClock) SleepUntil(ctx context.Context, at time.Duration) bool {
	if d := at - c.Now(); d > 0 {
		return c.Sleep(ctx, d)
	}
	return ctx.Err() == nil
}
