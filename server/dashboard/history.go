package dashboard

import (
	"sort"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/api"
)

// States of the EC2 section and of each sample.
const (
	StateLeader      = "leader"
	StateStandby     = "standby"
	StateUnavailable = "unavailable"
)

// Outcomes the gateway counts besides EC2 error codes.
const (
	outcomeOK        = "ok"
	outcomeThrottled = "throttled"
)

type callKey struct{ action, outcome string }

// interval is one sample of the history: the calls made since the previous sample.
type interval struct {
	end    time.Time
	length time.Duration
	state  string
	calls  map[callKey]uint64
}

// history keeps the last len(buf) intervals in a ring buffer and the cumulative counters of the
// last successful read to difference the next one against. Not safe for concurrent use.
type history struct {
	buf   []interval
	next  int // index the next interval is written to
	count int // intervals held (at most len(buf))

	last   map[callKey]uint64 // cumulative counters at the last successful read
	lastAt time.Time          // time of the last sample (of any state)
}

// newHistory holds capacity intervals; counters are taken to be zero at start.
func newHistory(capacity int, start time.Time) *history {
	if capacity < 1 {
		capacity = 1
	}
	return &history{buf: make([]interval, capacity), last: map[callKey]uint64{}, lastAt: start}
}

// add records the result of one GetLimiter read at time at: the differences of the counters
// when it succeeded, a standby interval when it answered NOT_LEADER, an unavailable interval
// otherwise. A failed read keeps the previous counters, so the next successful one counts every
// call made in between. It returns the interval's state.
func (h *history) add(at time.Time, st *ipledgerv1.LimiterState, err error) string {
	iv := interval{end: at, length: at.Sub(h.lastAt), calls: map[callKey]uint64{}}
	if iv.length < 0 {
		iv.length = 0
	}
	h.lastAt = at
	switch {
	case err == nil:
		iv.state = StateLeader
		cur := make(map[callKey]uint64, len(st.GetCalls()))
		for _, c := range st.GetCalls() {
			k := callKey{c.GetAction(), c.GetOutcome()}
			cur[k] += c.GetCount()
		}
		for k, n := range cur {
			prev := h.last[k]
			d := n - prev
			if n < prev { // the counter was reset: it counts from zero
				d = n
			}
			if d > 0 {
				iv.calls[k] = d
			}
		}
		h.last = cur
	case isNotLeader(err):
		iv.state = StateStandby
	default:
		iv.state = StateUnavailable
	}
	h.buf[h.next] = iv
	h.next = (h.next + 1) % len(h.buf)
	if h.count < len(h.buf) {
		h.count++
	}
	return iv.state
}

// intervals returns the held intervals, oldest first.
func (h *history) intervals() []interval {
	out := make([]interval, 0, h.count)
	start := (h.next - h.count + len(h.buf)) % len(h.buf)
	for i := range h.count {
		out = append(out, h.buf[(start+i)%len(h.buf)])
	}
	return out
}

// fill writes the history into the EC2 section of the document.
func (h *history) fill(e *EC2) {
	actions := map[string]bool{}
	totals := map[callKey]uint64{}
	e.Samples = make([]Sample, 0, h.count)
	for _, iv := range h.intervals() {
		s := Sample{Time: iv.end.UTC(), Seconds: iv.length.Seconds(), State: iv.state, Calls: map[string]uint64{}}
		for k, n := range iv.calls {
			actions[k.action] = true
			totals[k] += n
			s.Calls[k.action] += n
			s.Total += n
			switch k.outcome {
			case outcomeOK:
			case outcomeThrottled:
				s.Throttled += n
			default:
				s.Errors += n
			}
		}
		e.ThrottledInHistory += s.Throttled
		e.Samples = append(e.Samples, s)
	}
	e.Actions = make([]string, 0, len(actions))
	for a := range actions {
		e.Actions = append(e.Actions, a)
	}
	sort.Strings(e.Actions)
	e.Totals = make([]CallCount, 0, len(totals))
	for k, n := range totals {
		e.Totals = append(e.Totals, CallCount{Action: k.action, Outcome: k.outcome, Count: n})
	}
	sort.Slice(e.Totals, func(i, j int) bool {
		if e.Totals[i].Action != e.Totals[j].Action {
			return e.Totals[i].Action < e.Totals[j].Action
		}
		return e.Totals[i].Outcome < e.Totals[j].Outcome
	})
}

// isNotLeader reports whether err is a standby's NOT_LEADER answer.
func isNotLeader(err error) bool {
	r, _ := api.ReasonOf(err)
	return r == ipledgerv1.Reason_NOT_LEADER.String()
}

// leaderOf returns the leader's address a NOT_LEADER answer names ("" when none).
func leaderOf(err error) string {
	_, md := api.ReasonOf(err)
	return md["leader"]
}
