package ec2sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"time"
)

// Profile names.
const (
	// ProfileInstant answers at once (the simulator's default): only injected faults add latency.
	ProfileInstant = "instant"
	// ProfileRealistic is EC2's clock as published (EC2.md, "Latency and consistency").
	ProfileRealistic = "realistic"
)

// ErrUnknownProfile is returned for a profile name the simulator does not know.
var ErrUnknownProfile = errors.New("ec2sim: unknown ec2 profile")

// ProfileNames lists the profiles by name.
func ProfileNames() []string { return []string{ProfileInstant, ProfileRealistic} }

// z99 is the standard normal's 99th percentile: a lognormal with median m and 99th percentile
// q has sigma = ln(q/m) / z99.
const z99 = 2.3263478740408408

// Dist is a latency distribution: lognormal with median P50 and 99th percentile P99, and
// optionally a slow tail: with probability TailShare the sample is instead uniform between
// TailMin and TailMax. The zero value is no latency. Samples of the lognormal are capped at
// 10 x P99 so one draw cannot stall a run.
type Dist struct {
	P50       time.Duration
	P99       time.Duration
	TailShare float64
	TailMin   time.Duration
	TailMax   time.Duration
}

// Sample draws one duration (before time scaling) from r.
func (d Dist) Sample(r *rand.Rand) time.Duration {
	if d.TailShare > 0 && r.Float64() < d.TailShare {
		return d.TailMin + time.Duration(r.Float64()*float64(d.TailMax-d.TailMin))
	}
	if d.P50 <= 0 {
		return 0
	}
	if d.P99 <= d.P50 {
		return d.P50
	}
	sigma := math.Log(float64(d.P99)/float64(d.P50)) / z99
	v := float64(d.P50) * math.Exp(sigma*r.NormFloat64())
	return time.Duration(min(v, 10*float64(d.P99)))
}

func (d Dist) validate() error {
	switch {
	case d.P50 < 0 || d.P99 < 0:
		return errors.New("p50 and p99 must not be negative")
	case d.P99 != 0 && d.P99 < d.P50:
		return fmt.Errorf("p99 %v is below p50 %v", d.P99, d.P50)
	case d.P50 > 10*time.Minute || d.P99 > 10*time.Minute:
		return errors.New("p50 and p99 must be at most 10m")
	case d.TailShare < 0 || d.TailShare > 1:
		return fmt.Errorf("tail share %v must be between 0 and 1", d.TailShare)
	case d.TailShare > 0 && (d.TailMin < 0 || d.TailMax < d.TailMin || d.TailMax > 10*time.Minute):
		return fmt.Errorf("tail %v..%v must be an interval within 0..10m", d.TailMin, d.TailMax)
	}
	return nil
}

// Lag is how long Describe calls lag behind a mutation of an ENI: with probability Share a lag
// drawn from an exponential distribution with mean Mean, capped at Cap (0: no cap); otherwise
// none. The zero value is no lag.
type Lag struct {
	Share float64
	Mean  time.Duration
	Cap   time.Duration
}

// Sample draws one lag (before time scaling) from r.
func (l Lag) Sample(r *rand.Rand) time.Duration {
	if l.Share <= 0 || l.Mean <= 0 || r.Float64() >= l.Share {
		return 0
	}
	v := time.Duration(r.ExpFloat64() * float64(l.Mean))
	if l.Cap > 0 {
		v = min(v, l.Cap)
	}
	return v
}

func (l Lag) validate() error {
	switch {
	case l.Share < 0 || l.Share > 1:
		return fmt.Errorf("share %v must be between 0 and 1", l.Share)
	case l.Mean < 0 || l.Cap < 0 || l.Mean > 10*time.Minute || l.Cap > time.Hour:
		return errors.New("mean must be within 0..10m and cap within 0..1h")
	}
	return nil
}

// Profile is the simulator's clock of EC2: how long each action takes, how long an attached ENI
// takes to become usable and a detach to complete, and how far Describe lags behind mutations.
// Every duration is divided by Config.TimeScale; every draw comes from a seeded stream of its
// own (one per action and per kind of delay), so a seed and a request sequence give the same
// delays. Injected faults add their latency on top. The zero value is ProfileInstant.
type Profile struct {
	// Name is reported by the control API ("instant", "realistic", or a caller's name).
	Name string
	// Calls is the latency of a call per action, from its arrival to its answer; an action
	// missing from the map answers at once. A mutation takes effect when its latency has passed,
	// just before the answer (AttachNetworkInterface and DetachNetworkInterface: at once, with an
	// attaching / detaching phase); an error the action itself finds comes after the same
	// latency.
	Calls map[string]Dist
	// Refused is the latency of a request refused before the action runs: throttled
	// (RequestLimitExceeded), denied, malformed, DryRun, an injected failure "before", and the
	// checks of AttachNetworkInterface and DetachNetworkInterface.
	Refused Dist
	// DescribePerItem is added to a Describe call for every item it returns (an unfiltered
	// describe of a large account grows with its result).
	DescribePerItem time.Duration
	// AttachUsable is how long after AttachNetworkInterface returns the attachment stays
	// `attaching`: the ENI is not listed in the instance's IMDS network/interfaces/macs/ until it
	// is `attached`, as the device is not visible to the OS.
	AttachUsable Dist
	// DetachComplete is how long after DetachNetworkInterface arrives the detach completes (never
	// before the call answers): until then the attachment is `detaching`, the instance keeps the
	// ENI and its device index, and DeleteNetworkInterface fails with InvalidParameterValue.
	DetachComplete Dist
	// DescribeLag: after a mutation of an ENI (create, attach, detach, delete, assign, unassign,
	// modify, tags, and termination of its instance), DescribeNetworkInterfaces and
	// DescribeInstances show the ENI as it was before the mutation until the lag has passed.
	DescribeLag Lag
}

// InstantProfile is today's simulator: every answer at once, no describe lag.
func InstantProfile() Profile { return Profile{Name: ProfileInstant} }

// RealisticProfile is EC2's clock as published (EC2.md, "Latency and consistency"; medians rest
// on samples, tails are estimates). Rows the table does not give are the simulator's choice:
// CreateTags / DeleteTags and the CIDR reservation actions like ModifyNetworkInterfaceAttribute,
// DescribeInstanceTypes like the other describes, RunInstances 1 s / 3 s and
// TerminateInstances 500 ms / 2 s (the call only; instances are running as soon as RunInstances
// answers), and 1 ms per item returned by a describe.
func RealisticProfile() Profile {
	ms := time.Millisecond
	assign := Dist{P50: 350 * ms, P99: 1500 * ms}
	modify := Dist{P50: 300 * ms, P99: time.Second}
	describe := Dist{P50: 150 * ms, P99: 400 * ms}
	return Profile{
		Name: ProfileRealistic,
		Calls: map[string]Dist{
			"AssignPrivateIpAddresses":        assign,
			"UnassignPrivateIpAddresses":      assign,
			"ModifyNetworkInterfaceAttribute": modify,
			"CreateNetworkInterface":          {P50: 500 * ms, P99: 2 * time.Second},
			"AttachNetworkInterface":          {P50: 700 * ms, P99: 2 * time.Second},
			"DetachNetworkInterface":          {P50: 400 * ms, P99: 1500 * ms},
			"DeleteNetworkInterface":          {P50: 300 * ms, P99: 1500 * ms},
			"DescribeNetworkInterfaces":       describe,
			"DescribeSubnets":                 describe,
			"DescribeInstances":               describe,
			"DescribeInstanceTypes":           describe,
			"CreateTags":                      modify,
			"DeleteTags":                      modify,
			"CreateSubnetCidrReservation":     modify,
			"DeleteSubnetCidrReservation":     modify,
			"RunInstances":                    {P50: time.Second, P99: 3 * time.Second},
			"TerminateInstances":              {P50: 500 * ms, P99: 2 * time.Second},
		},
		Refused:         Dist{P50: 5 * ms, P99: 50 * ms},
		DescribePerItem: ms,
		AttachUsable:    Dist{P50: 300 * ms, P99: 3 * time.Second, TailShare: 0.01, TailMin: 10 * time.Second, TailMax: 150 * time.Second},
		DetachComplete:  Dist{P50: 2 * time.Second, P99: 30 * time.Second},
		DescribeLag:     Lag{Share: 0.1, Mean: time.Second, Cap: time.Minute},
	}
}

// ProfileByName returns a profile by name ("" is instant).
func ProfileByName(name string) (Profile, error) {
	switch name {
	case "", ProfileInstant:
		return InstantProfile(), nil
	case ProfileRealistic:
		return RealisticProfile(), nil
	}
	return Profile{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownProfile, name, strings.Join(ProfileNames(), ", "))
}

// Validate reports the first problem of the profile.
func (p Profile) Validate() error {
	actionsSorted := make([]string, 0, len(p.Calls))
	for a := range p.Calls {
		actionsSorted = append(actionsSorted, a)
	}
	sort.Strings(actionsSorted)
	for _, a := range actionsSorted {
		if _, ok := actions[a]; !ok {
			return fmt.Errorf("ec2sim: profile %q: %q is not a simulated action", p.Name, a)
		}
		if err := p.Calls[a].validate(); err != nil {
			return fmt.Errorf("ec2sim: profile %q: calls.%s: %w", p.Name, a, err)
		}
	}
	for _, c := range []struct {
		name string
		d    Dist
	}{{"refused", p.Refused}, {"attach_usable", p.AttachUsable}, {"detach_complete", p.DetachComplete}} {
		if err := c.d.validate(); err != nil {
			return fmt.Errorf("ec2sim: profile %q: %s: %w", p.Name, c.name, err)
		}
	}
	if p.DescribePerItem < 0 || p.DescribePerItem > time.Second {
		return fmt.Errorf("ec2sim: profile %q: describe_per_item %v must be within 0..1s", p.Name, p.DescribePerItem)
	}
	if err := p.DescribeLag.validate(); err != nil {
		return fmt.Errorf("ec2sim: profile %q: describe_lag: %w", p.Name, err)
	}
	return nil
}

func (p Profile) clone() Profile {
	p.Calls = maps.Clone(p.Calls)
	return p
}

// JSON shapes of a profile (control API): durations as Go duration strings.

type distJSON struct {
	P50       Duration `json:"p50,omitempty"`
	P99       Duration `json:"p99,omitempty"`
	TailShare float64  `json:"tail_share,omitempty"`
	TailMin   Duration `json:"tail_min,omitempty"`
	TailMax   Duration `json:"tail_max,omitempty"`
}

type lagJSON struct {
	Share float64  `json:"share,omitempty"`
	Mean  Duration `json:"mean,omitempty"`
	Cap   Duration `json:"cap,omitempty"`
}

type profileJSON struct {
	Name            string              `json:"name"`
	Calls           map[string]distJSON `json:"calls,omitempty"`
	Refused         distJSON            `json:"refused,omitzero"`
	DescribePerItem Duration            `json:"describe_per_item,omitempty"`
	AttachUsable    distJSON            `json:"attach_usable,omitzero"`
	DetachComplete  distJSON            `json:"detach_complete,omitzero"`
	DescribeLag     lagJSON             `json:"describe_lag,omitzero"`
}

func toDistJSON(d Dist) distJSON {
	return distJSON{Duration(d.P50), Duration(d.P99), d.TailShare, Duration(d.TailMin), Duration(d.TailMax)}
}

func (j distJSON) dist() Dist {
	return Dist{time.Duration(j.P50), time.Duration(j.P99), j.TailShare, time.Duration(j.TailMin), time.Duration(j.TailMax)}
}

// MarshalJSON writes {"name","calls":{"Action":{"p50","p99"}},"refused","describe_per_item",
// "attach_usable","detach_complete","describe_lag":{"share","mean","cap"}}.
func (p Profile) MarshalJSON() ([]byte, error) {
	j := profileJSON{
		Name: p.Name, Refused: toDistJSON(p.Refused), DescribePerItem: Duration(p.DescribePerItem),
		AttachUsable: toDistJSON(p.AttachUsable), DetachComplete: toDistJSON(p.DetachComplete),
		DescribeLag: lagJSON{p.DescribeLag.Share, Duration(p.DescribeLag.Mean), Duration(p.DescribeLag.Cap)},
	}
	if len(p.Calls) > 0 {
		j.Calls = map[string]distJSON{}
		for a, d := range p.Calls {
			j.Calls[a] = toDistJSON(d)
		}
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads the shape MarshalJSON writes (unknown fields are errors).
func (p *Profile) UnmarshalJSON(b []byte) error {
	var j profileJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	*p = Profile{
		Name: j.Name, Refused: j.Refused.dist(), DescribePerItem: time.Duration(j.DescribePerItem),
		AttachUsable: j.AttachUsable.dist(), DetachComplete: j.DetachComplete.dist(),
		DescribeLag: Lag{j.DescribeLag.Share, time.Duration(j.DescribeLag.Mean), time.Duration(j.DescribeLag.Cap)},
	}
	if len(j.Calls) > 0 {
		p.Calls = map[string]Dist{}
		for a, d := range j.Calls {
			p.Calls[a] = d.dist()
		}
	}
	return nil
}

// Streams of the sampler: each kind of delay, and each action's call latency, draws from its
// own seeded source, so the n-th Assign of a run gets the same latency whatever other calls
// came in between.
const (
	streamRefused        = "refused"
	streamAttachUsable   = "attach-usable"
	streamDetachComplete = "detach-complete"
	streamDescribeLag    = "describe-lag"
	streamCallPrefix     = "call:"
)

// sampler holds the seeded sources of the profile's delays.
type sampler struct {
	mu   sync.Mutex
	seed uint64
	rngs map[string]*rand.Rand
}

func newSampler(seed uint64) *sampler { return &sampler{seed: seed, rngs: map[string]*rand.Rand{}} }

// streamSource is the seeded source of one stream.
func streamSource(seed uint64, stream string) *rand.Rand {
	h := fnv.New64a()
	_, _ = h.Write([]byte(stream))
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// draw runs f on the stream's source.
func (s *sampler) draw(stream string, f func(*rand.Rand) time.Duration) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.rngs[stream]
	if !ok {
		r = streamSource(s.seed, stream)
		s.rngs[stream] = r
	}
	return f(r)
}

func (s *sampler) dist(stream string, d Dist) time.Duration {
	if d == (Dist{}) {
		return 0
	}
	return s.draw(stream, d.Sample)
}
