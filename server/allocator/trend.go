package allocator

import (
	"math"
	"time"
)

// rateTracker measures a node's pod start rate from the agent's monotonic adds counter.
type rateTracker struct {
	samples []rateSample // oldest first, within the window
}

type rateSample struct {
	at   time.Time
	adds uint64
}

// observe records the counter. A counter that goes backwards (agent restart) starts afresh.
func (r *rateTracker) observe(now time.Time, adds uint64, window time.Duration) {
	if n := len(r.samples); n > 0 && adds < r.samples[n-1].adds {
		r.samples = r.samples[:0]
	}
	r.samples = append(r.samples, rateSample{now, adds})
	cut := 0
	for cut < len(r.samples)-1 && now.Sub(r.samples[cut+1].at) >= window {
		cut++
	}
	r.samples = r.samples[cut:]
}

// rate returns pod starts per second over the window, measured over at least minSpan so a
// single burst of reports does not read as an infinite rate.
func (r *rateTracker) rate(now time.Time, minSpan time.Duration) float64 {
	if len(r.samples) < 2 {
		return 0
	}
	first, last := r.samples[0], r.samples[len(r.samples)-1]
	span := now.Sub(first.at)
	if span < minSpan {
		span = minSpan
	}
	return float64(last.adds-first.adds) / span.Seconds()
}

// peak returns the most pod starts seen within any span-long stretch of the window after
// since: the burst the node's warm pool must absorb while a refill is on its way. (A node's
// first minute, when it is filled with its first pods, is left out: the start prior covers it.)
func (r *rateTracker) peak(span time.Duration, since time.Time) int {
	best := uint64(0)
	j := 0
	for i := range r.samples {
		if r.samples[i].at.Before(since) {
			j = i + 1
			continue
		}
		for r.samples[i].at.Sub(r.samples[j].at) > span {
			j++
		}
		// Starts reported at sample i since the sample before the stretch began (that sample
		// is only the counter's baseline, so it may lie before since).
		from := j
		if from > 0 {
			from--
		}
		if d := r.samples[i].adds - r.samples[from].adds; d > best && from < i {
			best = d
		}
	}
	return int(best)
}

// trend keeps a subnet's held-address samples and forecasts exhaustion by least squares.
type trend struct {
	samples []trendSample
	window  time.Duration
}

type trendSample struct {
	at   time.Time
	held float64
}

func newTrend(window time.Duration) *trend { return &trend{window: window} }

func (t *trend) add(now time.Time, held int) {
	t.samples = append(t.samples, trendSample{now, float64(held)})
	cut := 0
	for cut < len(t.samples) && now.Sub(t.samples[cut].at) > t.window {
		cut++
	}
	t.samples = t.samples[cut:]
}

// perHour returns the slope of held addresses per hour and the span it was measured over.
// Fewer than three samples or less than a minute of history give no slope.
func (t *trend) perHour() (slope float64, span time.Duration, ok bool) {
	n := len(t.samples)
	if n < 3 {
		return 0, 0, false
	}
	span = t.samples[n-1].at.Sub(t.samples[0].at)
	if span < time.Minute {
		return 0, span, false
	}
	t0 := t.samples[0].at
	var sx, sy, sxx, sxy float64
	for _, s := range t.samples {
		x := s.at.Sub(t0).Hours()
		sx += x
		sy += s.held
		sxx += x * x
		sxy += x * s.held
	}
	fn := float64(n)
	den := fn*sxx - sx*sx
	if den == 0 {
		return 0, span, false
	}
	return (fn*sxy - sx*sy) / den, span, true
}

// timeToExhaustion is how long the headroom lasts at the slope; false when it does not run out.
func timeToExhaustion(headroom int, slopePerHour float64) (time.Duration, bool) {
	if slopePerHour <= 0 {
		return 0, false
	}
	hours := float64(headroom) / slopePerHour
	if hours > 24*365*10 {
		return 0, false
	}
	return time.Duration(math.Round(hours * float64(time.Hour))), true
}
