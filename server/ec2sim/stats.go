package ec2sim

import "sync"

// Stats counts Query API calls per action. Control API requests are not counted.
type Stats struct {
	Calls map[string]ActionStats `json:"calls"`
}

// ActionStats is one action's counters. Errors counts every error response by code,
// RequestLimitExceeded included; Throttled repeats the RequestLimitExceeded count.
type ActionStats struct {
	Calls     int            `json:"calls"`
	Throttled int            `json:"throttled"`
	Errors    map[string]int `json:"errors,omitempty"`
}

// Total sums the counters of every action.
func (st Stats) Total() ActionStats {
	var t ActionStats
	t.Errors = map[string]int{}
	for _, a := range st.Calls {
		t.Calls += a.Calls
		t.Throttled += a.Throttled
		for c, n := range a.Errors {
			t.Errors[c] += n
		}
	}
	return t
}

type stats struct {
	mu sync.Mutex
	m  map[string]*ActionStats
}

func newStats() *stats { return &stats{m: map[string]*ActionStats{}} }

func (s *stats) get(action string) *ActionStats {
	a, ok := s.m[action]
	if !ok {
		a = &ActionStats{Errors: map[string]int{}}
		s.m[action] = a
	}
	return a
}

func (s *stats) call(action string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.get(action).Calls++
}

func (s *stats) fail(action, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.get(action)
	a.Errors[code]++
	if code == "RequestLimitExceeded" {
		a.Throttled++
	}
}

func (s *stats) snapshot() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := Stats{Calls: make(map[string]ActionStats, len(s.m))}
	for k, v := range s.m {
		c := *v
		c.Errors = make(map[string]int, len(v.Errors))
		for code, n := range v.Errors {
			c.Errors[code] = n
		}
		out.Calls[k] = c
	}
	return out
}
