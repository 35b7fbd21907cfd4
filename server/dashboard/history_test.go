package dashboard

import (
	"errors"
	"reflect"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/api"
)

// clock is an injected clock that moves only when told.
type clock struct{ t time.Time }

func (c *clock) now() time.Time                    { return c.t }
func (c *clock) advance(d time.Duration) time.Time { c.t = c.t.Add(d); return c.t }

func limiter(counts ...any) *ipledgerv1.LimiterState {
	st := &ipledgerv1.LimiterState{}
	for i := 0; i+2 < len(counts); i += 3 {
		st.Calls = append(st.Calls, &ipledgerv1.CallCount{Action: counts[i].(string), Outcome: counts[i+1].(string), Count: uint64(counts[i+2].(int))})
	}
	return st
}

type wantSample struct {
	seconds   float64
	state     string
	calls     map[string]uint64
	throttled uint64
	errors    uint64
}

func check(t *testing.T, h *history, want []wantSample) EC2 {
	t.Helper()
	var e EC2
	h.fill(&e)
	if len(e.Samples) != len(want) {
		t.Fatalf("%d samples, want %d: %+v", len(e.Samples), len(want), e.Samples)
	}
	for i, w := range want {
		s := e.Samples[i]
		if w.calls == nil {
			w.calls = map[string]uint64{}
		}
		var total uint64
		for _, n := range w.calls {
			total += n
		}
		if s.Seconds != w.seconds || s.State != w.state || !reflect.DeepEqual(s.Calls, w.calls) || s.Total != total ||
			s.Throttled != w.throttled || s.Errors != w.errors {
			t.Fatalf("sample %d = %+v, want %+v (total %d)", i, s, w, total)
		}
	}
	return e
}

func TestHistoryDeltas(t *testing.T) {
	c := &clock{t: time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)}
	h := newHistory(10, c.now())

	// Counters that existed before the sampler started count in the first interval.
	h.add(c.advance(5*time.Second), limiter("AssignPrivateIpAddresses", "ok", 3), nil)
	h.add(c.advance(5*time.Second), limiter(
		"AssignPrivateIpAddresses", "ok", 7,
		"AssignPrivateIpAddresses", "throttled", 2,
		"CreateNetworkInterface", "ok", 1,
		"CreateNetworkInterface", "InvalidParameterValue", 1), nil)
	// Nothing new: an empty interval, not a missing one.
	h.add(c.advance(5*time.Second), limiter(
		"AssignPrivateIpAddresses", "ok", 7,
		"AssignPrivateIpAddresses", "throttled", 2,
		"CreateNetworkInterface", "ok", 1,
		"CreateNetworkInterface", "InvalidParameterValue", 1), nil)
	// A late tick: the interval is as long as it really was.
	h.add(c.advance(7500*time.Millisecond), limiter(
		"AssignPrivateIpAddresses", "ok", 8,
		"AssignPrivateIpAddresses", "throttled", 2,
		"CreateNetworkInterface", "ok", 1,
		"CreateNetworkInterface", "InvalidParameterValue", 1), nil)

	e := check(t, h, []wantSample{
		{seconds: 5, state: StateLeader, calls: map[string]uint64{"AssignPrivateIpAddresses": 3}},
		{seconds: 5, state: StateLeader, calls: map[string]uint64{"AssignPrivateIpAddresses": 6, "CreateNetworkInterface": 2}, throttled: 2, errors: 1},
		{seconds: 5, state: StateLeader},
		{seconds: 7.5, state: StateLeader, calls: map[string]uint64{"AssignPrivateIpAddresses": 1}},
	})
	if want := []string{"AssignPrivateIpAddresses", "CreateNetworkInterface"}; !reflect.DeepEqual(e.Actions, want) {
		t.Fatalf("actions %v, want %v", e.Actions, want)
	}
	wantTotals := []CallCount{
		{"AssignPrivateIpAddresses", "ok", 8}, {"AssignPrivateIpAddresses", "throttled", 2},
		{"CreateNetworkInterface", "InvalidParameterValue", 1}, {"CreateNetworkInterface", "ok", 1},
	}
	if !reflect.DeepEqual(e.Totals, wantTotals) || e.ThrottledInHistory != 2 {
		t.Fatalf("totals %v throttled %d, want %v and 2", e.Totals, e.ThrottledInHistory, wantTotals)
	}
	if !e.Samples[3].Time.Equal(c.now()) {
		t.Fatalf("last sample at %s, want %s", e.Samples[3].Time, c.now())
	}
}

func TestHistoryCounterReset(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	h := newHistory(4, c.now())
	h.add(c.advance(time.Second), limiter("DescribeNetworkInterfaces", "ok", 40), nil)
	// A new leader process counts from zero again: 5 calls, not a negative number.
	h.add(c.advance(time.Second), limiter("DescribeNetworkInterfaces", "ok", 5), nil)
	h.add(c.advance(time.Second), limiter("DescribeNetworkInterfaces", "ok", 9), nil)
	check(t, h, []wantSample{
		{seconds: 1, state: StateLeader, calls: map[string]uint64{"DescribeNetworkInterfaces": 40}},
		{seconds: 1, state: StateLeader, calls: map[string]uint64{"DescribeNetworkInterfaces": 5}},
		{seconds: 1, state: StateLeader, calls: map[string]uint64{"DescribeNetworkInterfaces": 4}},
	})
}

func TestHistoryWrapsAround(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	h := newHistory(3, c.now())
	for i := 1; i <= 7; i++ {
		// i*i cumulative calls: deltas are 1, 3, 5, 7, 9, 11, 13.
		h.add(c.advance(5*time.Second), limiter("AttachNetworkInterface", "ok", i*i), nil)
	}
	e := check(t, h, []wantSample{
		{seconds: 5, state: StateLeader, calls: map[string]uint64{"AttachNetworkInterface": 9}},
		{seconds: 5, state: StateLeader, calls: map[string]uint64{"AttachNetworkInterface": 11}},
		{seconds: 5, state: StateLeader, calls: map[string]uint64{"AttachNetworkInterface": 13}},
	})
	if !e.Samples[0].Time.Equal(time.Unix(25, 0)) || !e.Samples[2].Time.Equal(time.Unix(35, 0)) {
		t.Fatalf("window %s..%s, want the last three samples", e.Samples[0].Time, e.Samples[2].Time)
	}
	if want := []CallCount{{"AttachNetworkInterface", "ok", 33}}; !reflect.DeepEqual(e.Totals, want) {
		t.Fatalf("totals %v, want only the window's calls %v", e.Totals, want)
	}
}

func TestHistoryStandbyAndFailures(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	h := newHistory(8, c.now())
	notLeader := api.NotLeader("10.0.0.7:7400")
	if !isNotLeader(notLeader) || leaderOf(notLeader) != "10.0.0.7:7400" {
		t.Fatalf("NOT_LEADER not recognised: %v", notLeader)
	}
	if isNotLeader(errors.New("dashboard test: broken")) {
		t.Fatal("a plain error taken for NOT_LEADER")
	}

	steps := []struct {
		st   *ipledgerv1.LimiterState
		err  error
		want string
	}{
		{nil, notLeader, StateStandby},
		{nil, api.NotLeader(""), StateStandby},
		// Promoted: calls made since the sampler started count once.
		{limiter("CreateNetworkInterface", "ok", 4), nil, StateLeader},
		{nil, errors.New("dashboard test: deadline exceeded"), StateUnavailable},
		// The failed read kept the counters: the next interval has the calls made during it.
		{limiter("CreateNetworkInterface", "ok", 10), nil, StateLeader},
	}
	for i, s := range steps {
		if got := h.add(c.advance(5*time.Second), s.st, s.err); got != s.want {
			t.Fatalf("step %d: state %s, want %s", i, got, s.want)
		}
	}
	check(t, h, []wantSample{
		{seconds: 5, state: StateStandby},
		{seconds: 5, state: StateStandby},
		{seconds: 5, state: StateLeader, calls: map[string]uint64{"CreateNetworkInterface": 4}},
		{seconds: 5, state: StateUnavailable},
		{seconds: 5, state: StateLeader, calls: map[string]uint64{"CreateNetworkInterface": 6}},
	})
}

func TestNewBoundsTheHistory(t *testing.T) {
	tests := []struct {
		name        string
		opts        Options
		wantEvery   time.Duration
		wantHistory time.Duration
	}{
		{"defaults", Options{}, 5 * time.Second, time.Hour},
		{"history shorter than an interval", Options{SampleEvery: time.Minute, History: time.Second}, time.Minute, time.Minute},
		{"history not a multiple", Options{SampleEvery: 4 * time.Second, History: 10 * time.Second}, 4 * time.Second, 12 * time.Second},
		{"too many samples", Options{SampleEvery: time.Millisecond, History: time.Hour}, time.Millisecond, MaxSamples * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := New(nil, tc.opts)
			if d.sampleEvery != tc.wantEvery || d.history != tc.wantHistory || len(d.hist.buf) != int(tc.wantHistory/tc.wantEvery) {
				t.Fatalf("every %s history %s (%d slots), want %s and %s", d.sampleEvery, d.history, len(d.hist.buf), tc.wantEvery, tc.wantHistory)
			}
		})
	}
}

func TestTotalPrefixes(t *testing.T) {
	tests := map[string]uint32{
		"192.168.0.0/19": 512, "10.0.0.0/24": 16, "10.0.0.0/28": 1, "10.0.0.0/29": 0, "2001:db8::/64": 0, "nonsense": 0,
	}
	for cidr, want := range tests {
		if got := totalPrefixes(cidr); got != want {
			t.Errorf("totalPrefixes(%s) = %d, want %d", cidr, got, want)
		}
	}
}
