package clock

import (
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// recv waits (in real time) for a value on c.
func recv(t *testing.T, c <-chan time.Time, what string) time.Time {
	t.Helper()
	select {
	case v := <-c:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not fire", what)
		return time.Time{}
	}
}

func quiet(t *testing.T, c <-chan time.Time, what string) {
	t.Helper()
	select {
	case v := <-c:
		t.Fatalf("%s fired early, at %v", what, v)
	case <-time.After(20 * time.Millisecond):
	}
}

func TestScaledNowRunsFactorTimesFaster(t *testing.T) {
	base := clockwork.NewFakeClockAt(t0)
	c := Scaled(base, 30)
	if !c.Now().Equal(t0) {
		t.Fatalf("a new scaled clock reads %v, want its base's %v", c.Now(), t0)
	}
	base.Advance(time.Second)
	if got := c.Since(t0); got != 30*time.Second {
		t.Fatalf("after 1 s of base, %v passed on the scaled clock; want 30 s", got)
	}
	if got := c.Until(t0.Add(time.Minute)); got != 30*time.Second {
		t.Fatalf("Until = %v, want 30s", got)
	}
}

func TestScaledFactorOneIsTheBase(t *testing.T) {
	base := clockwork.NewFakeClockAt(t0)
	for _, f := range []float64{0, 0.5, 1} {
		if c := Scaled(base, f); c != Clock(base) {
			t.Fatalf("Scaled(base, %v) is not base", f)
		}
	}
}

func TestScaledTimerFiresAfterScaledDuration(t *testing.T) {
	base := clockwork.NewFakeClockAt(t0)
	c := Scaled(base, 10)
	tm := c.NewTimer(10 * time.Second) // 1 s of base
	base.Advance(900 * time.Millisecond)
	quiet(t, tm.Chan(), "timer")
	base.Advance(100 * time.Millisecond)
	if got := recv(t, tm.Chan(), "timer"); !got.Equal(t0.Add(10 * time.Second)) {
		t.Fatalf("timer sent %v, want the scaled clock's time %v", got, t0.Add(10*time.Second))
	}
	// Reset re-arms in scaled time; Stop prevents the firing.
	tm.Reset(20 * time.Second)
	if !tm.Stop() {
		t.Fatal("Stop of an armed timer returned false")
	}
	base.Advance(5 * time.Second)
	quiet(t, tm.Chan(), "stopped timer")
}

func TestScaledAfterFuncAndSleep(t *testing.T) {
	base := clockwork.NewFakeClockAt(t0)
	c := Scaled(base, 4)
	done := make(chan time.Time, 1)
	c.AfterFunc(4*time.Second, func() { done <- c.Now() })
	base.Advance(time.Second)
	if got := recv(t, done, "AfterFunc"); got.Before(t0.Add(4 * time.Second)) {
		t.Fatalf("AfterFunc ran at %v, before its 4 s", got)
	}
	woke := make(chan time.Time, 1)
	go func() { c.Sleep(8 * time.Second); woke <- c.Now() }()
	if err := base.BlockUntilContext(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	base.Advance(2 * time.Second)
	recv(t, woke, "Sleep")
}

func TestScaledTickerTicksUntilStopped(t *testing.T) {
	base := clockwork.NewFakeClockAt(t0)
	c := Scaled(base, 5)
	tk := c.NewTicker(5 * time.Second) // 1 s of base
	for i := 1; i <= 3; i++ {
		if err := base.BlockUntilContext(t.Context(), 1); err != nil {
			t.Fatal(err)
		}
		base.Advance(time.Second)
		got := recv(t, tk.Chan(), "tick")
		if want := t0.Add(time.Duration(i) * 5 * time.Second); got.Before(want) {
			t.Fatalf("tick %d at %v, before %v", i, got, want)
		}
	}
	tk.Reset(10 * time.Second)
	if err := base.BlockUntilContext(t.Context(), 1); err != nil {
		t.Fatal(err)
	}
	base.Advance(time.Second)
	quiet(t, tk.Chan(), "reset ticker")
	base.Advance(time.Second)
	recv(t, tk.Chan(), "reset ticker")
	tk.Stop()
	base.Advance(10 * time.Second)
	quiet(t, tk.Chan(), "stopped ticker")
}

func TestScaledRealClock(t *testing.T) {
	c := Scaled(Real(), 100)
	start := time.Now()
	<-c.After(time.Second) // 10 ms of wall time
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("1 s at factor 100 took %v of wall time", el)
	}
}
