package policy

import (
	"slices"
	"time"
)

// Time constants of the adaptive policy (in the allocator's clock time):
//   - StartWindow: a new node's first minute, whose pod starts teach the cluster's start prior;
//   - RateMinSpan: a start rate is measured over at least this long, so one report of a burst
//     does not read as an endless rate;
//   - BurstSpan: a node's warm pool covers the burst seen within this span plus twice the
//     refill latency: from a pod taking the last free address until the refill lands (the
//     report, the EC2 call, the commit, the push), with margin.
const (
	StartWindow = time.Minute
	RateMinSpan = 10 * time.Second
	BurstSpan   = 2 * time.Second
)

// RateTracker measures a node's pod start rate from the agent's monotonic adds counter. The
// zero value is ready; it is not safe for concurrent use.
type RateTracker struct {
	samples []rateSample // oldest first, within the window
}

type rateSample struct {
	at   time.Time
	adds uint64
}

// Observe records the counter. A counter that goes backwards (agent restart) starts afresh.
func (r *RateTracker) Observe(now time.Time, adds uint64, window time.Duration) {
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

// Rate returns pod starts per second over the window, measured over at least minSpan so a
// single burst of reports does not read as an infinite rate.
func (r *RateTracker) Rate(now time.Time, minSpan time.Duration) float64 {
	if len(r.samples) < 2 {
		return 0
	}
	first, last := r.samples[0], r.samples[len(r.samples)-1]
	span := max(now.Sub(first.at), minSpan)
	return float64(last.adds-first.adds) / span.Seconds()
}

// Peak returns the most pod starts seen within any span-long stretch of the window after
// since: the burst the node's warm pool must absorb while a refill is on its way. (A node's
// first minute, when it is filled with its first pods, is left out: the start prior covers it.)
func (r *RateTracker) Peak(span time.Duration, since time.Time) int {
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

// StartPrior learns how many pods new nodes start in their first minute: the median of the
// last few nodes, so a cluster whose new nodes each get twelve pods gives the next new node
// twelve addresses at once (one EC2 call) instead of one and a refill. The zero value is ready;
// it is not safe for concurrent use.
type StartPrior struct {
	samples []int
}

const priorSamples = 31

// Add records one new node's pod starts in its first minute.
func (p *StartPrior) Add(n int) {
	p.samples = append(p.samples, n)
	if len(p.samples) > priorSamples {
		p.samples = p.samples[len(p.samples)-priorSamples:]
	}
}

// Len is how many nodes are recorded.
func (p *StartPrior) Len() int { return len(p.samples) }

// Prior is the median of the recorded nodes (0 before the first).
func (p *StartPrior) Prior() int {
	if len(p.samples) == 0 {
		return 0
	}
	s := slices.Clone(p.samples)
	slices.Sort(s)
	return s[len(s)/2]
}
