package policy

import (
	"math"
	"time"
)

// Trend keeps a subnet's held-address samples within a window and fits their slope by least
// squares. Not safe for concurrent use.
type Trend struct {
	samples []trendSample
	window  time.Duration
}

type trendSample struct {
	at   time.Time
	held float64
}

// NewTrend keeps window of samples.
func NewTrend(window time.Duration) *Trend { return &Trend{window: window} }

// Add records the subnet's held addresses at now.
func (t *Trend) Add(now time.Time, held int) {
	t.samples = append(t.samples, trendSample{now, float64(held)})
	cut := 0
	for cut < len(t.samples) && now.Sub(t.samples[cut].at) > t.window {
		cut++
	}
	t.samples = t.samples[cut:]
}

// PerHour returns the slope of held addresses per hour and the span it was measured over.
// Fewer than three samples or less than a minute of history give no slope.
func (t *Trend) PerHour() (slope float64, span time.Duration, ok bool) {
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

// Forecast is one subnet's exhaustion forecast.
type Forecast struct {
	HeldPerHour float64
	// TimeToExhaustion is set (OK true) when the headroom runs out at the trend.
	TimeToExhaustion time.Duration
	OK               bool
	Window           time.Duration
}

// Forecast is the trend's slope and, when it grows, the time until headroom is used up.
func (t *Trend) Forecast(headroom int) Forecast {
	slope, span, ok := t.PerHour()
	if !ok {
		return Forecast{Window: span}
	}
	out := Forecast{HeldPerHour: slope, Window: span}
	out.TimeToExhaustion, out.OK = TimeToExhaustion(headroom, slope)
	return out
}

// TimeToExhaustion is how long the headroom lasts at the slope; false when it does not run out
// (within ten years).
func TimeToExhaustion(headroom int, slopePerHour float64) (time.Duration, bool) {
	if slopePerHour <= 0 {
		return 0, false
	}
	hours := float64(headroom) / slopePerHour
	if hours > 24*365*10 {
		return 0, false
	}
	return time.Duration(math.Round(hours * float64(time.Hour))), true
}
