package policy

import (
	"math"
	"testing"
	"time"
)

func TestRateTracker(t *testing.T) {
	var r RateTracker
	t0 := time.Unix(1000, 0)
	window := time.Minute
	r.Observe(t0, 0, window)
	if got := r.Rate(t0, 10*time.Second); got != 0 {
		t.Fatalf("one sample: %v", got)
	}
	// 30 pods in 10 s.
	r.Observe(t0.Add(10*time.Second), 30, window)
	if got := r.Rate(t0.Add(10*time.Second), 10*time.Second); math.Abs(got-3) > 1e-9 {
		t.Fatalf("rate: %v", got)
	}
	// A burst reported within 1 s is measured over minSpan, not as 30/s.
	var b RateTracker
	b.Observe(t0, 0, window)
	b.Observe(t0.Add(time.Second), 30, window)
	if got := b.Rate(t0.Add(time.Second), 10*time.Second); math.Abs(got-3) > 1e-9 {
		t.Fatalf("burst: %v", got)
	}
	// Old samples leave the window; a quiet node goes back to 0.
	r.Observe(t0.Add(5*time.Minute), 30, window)
	r.Observe(t0.Add(6*time.Minute), 30, window)
	if got := r.Rate(t0.Add(6*time.Minute), 10*time.Second); got != 0 {
		t.Fatalf("quiet: %v", got)
	}
	// Agent restart: counter goes back.
	r.Observe(t0.Add(7*time.Minute), 2, window)
	if len(r.samples) != 1 {
		t.Fatalf("reset: %d samples", len(r.samples))
	}
}

func TestTrendForecast(t *testing.T) {
	tr := NewTrend(time.Hour)
	t0 := time.Unix(0, 0)
	for i := 0; i <= 10; i++ {
		tr.Add(t0.Add(time.Duration(i)*time.Minute), 100+6*i) // 6 per minute = 360 per hour
	}
	slope, span, ok := tr.PerHour()
	if !ok || math.Abs(slope-360) > 1e-6 || span != 10*time.Minute {
		t.Fatalf("slope %v span %v ok %v", slope, span, ok)
	}
	d, ok := TimeToExhaustion(720, slope)
	if !ok || d != 2*time.Hour {
		t.Fatalf("eta %v %v", d, ok)
	}
	if _, ok := TimeToExhaustion(720, -5); ok {
		t.Fatal("shrinking subnet must not run out")
	}
	short := NewTrend(time.Hour)
	short.Add(t0, 1)
	short.Add(t0.Add(time.Second), 2)
	if _, _, ok := short.PerHour(); ok {
		t.Fatal("too little history must give no slope")
	}
	// Window drops old samples.
	tr.Add(t0.Add(3*time.Hour), 100)
	if len(tr.samples) != 1 {
		t.Fatalf("window: %d samples", len(tr.samples))
	}
}

func TestRateTrackerPeak(t *testing.T) {
	var r RateTracker
	t0 := time.Unix(1000, 0)
	window := 5 * time.Minute
	// Steady: one pod every 20 s.
	for i := 0; i <= 6; i++ {
		r.Observe(t0.Add(time.Duration(i)*20*time.Second), uint64(i), window)
	}
	if got := r.Peak(2*time.Second, time.Time{}); got != 1 {
		t.Fatalf("steady: peak %d, want 1", got)
	}
	// A wave: 8 pods reported over 1 s in two reports.
	r.Observe(t0.Add(125*time.Second), 10, window)
	r.Observe(t0.Add(126*time.Second), 14, window)
	if got := r.Peak(2*time.Second, time.Time{}); got != 8 {
		t.Fatalf("wave: peak %d, want 8", got)
	}
	// The wave leaves the window after five minutes.
	for i := 0; i < 30; i++ {
		r.Observe(t0.Add(127*time.Second+time.Duration(i)*20*time.Second), 14+uint64(i), window)
	}
	if got := r.Peak(2*time.Second, time.Time{}); got != 1 {
		t.Fatalf("after the window: peak %d, want 1", got)
	}
}

func TestRateTrackerPeakLeavesOutTheFirstMinute(t *testing.T) {
	var r RateTracker
	t0 := time.Unix(1000, 0)
	// The node is filled with 24 pods in its first seconds, then one more later.
	r.Observe(t0, 0, 5*time.Minute)
	r.Observe(t0.Add(time.Second), 24, 5*time.Minute)
	r.Observe(t0.Add(90*time.Second), 25, 5*time.Minute)
	if got := r.Peak(2*time.Second, time.Time{}); got != 24 {
		t.Fatalf("with the first minute: %d", got)
	}
	if got := r.Peak(2*time.Second, t0.Add(time.Minute)); got != 1 {
		t.Fatalf("without the first minute: %d, want 1", got)
	}
}
