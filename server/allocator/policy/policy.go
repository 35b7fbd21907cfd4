package policy

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"regexp"
	"slices"
	"sort"
	"time"

	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

// DefaultName is the built-in policy that applies when no other matches. An admin may replace
// it under the same name.
const DefaultName = "default"

// Adaptive policy defaults.
const (
	DefaultAdaptiveFloor    = 1
	DefaultAdaptiveCap      = 16
	defaultAdaptiveWindow   = 300 // seconds
	defaultAdaptiveHeadroom = 150 // percent
)

// ErrInvalid is wrapped by every policy validation error.
var ErrInvalid = errors.New("allocator: invalid policy")

// Policy is a node group policy: which nodes it selects, their address mode, and either static
// targets (the Amazon VPC CNI's WARM_IP_TARGET, MINIMUM_IP_TARGET, WARM_ENI_TARGET,
// WARM_PREFIX_TARGET) or the adaptive target's bounds. A nil optional field is unset.
type Policy struct {
	Name     string
	Order    int32
	Selector Selector
	// Mode is ledger.ModeSecondaryIP or ledger.ModePrefix ("" means secondary IPs).
	Mode ledger.AddressMode

	WarmIPTarget, MinimumIPTarget, WarmENITarget, WarmPrefixTarget, MaxAddresses *uint32

	AdaptiveFloor, AdaptiveCap, AdaptiveWindowSeconds, AdaptiveHeadroomPercent *uint32

	ReleaseDelaySeconds *uint32
}

// Selector picks nodes by labels (all must match) and instance types (any, when given).
type Selector struct {
	Labels        map[string]string
	InstanceTypes []string
}

// U32 returns a pointer to v, for the optional fields of a Policy.
func U32(v uint32) *uint32 { return &v }

// Default returns the built-in adaptive policy.
func Default() Policy {
	return Policy{
		Name: DefaultName, Order: math.MaxInt32, Mode: ledger.ModeSecondaryIP,
		AdaptiveFloor: U32(DefaultAdaptiveFloor), AdaptiveCap: U32(DefaultAdaptiveCap),
	}
}

// Normalized is p with its mode set (secondary IPs when unset) and its selector's maps and
// lists copied, so the stored value shares nothing with the caller's.
func (p Policy) Normalized() Policy {
	if p.Mode == "" {
		p.Mode = ledger.ModeSecondaryIP
	}
	p.Selector.Labels = maps.Clone(p.Selector.Labels)
	p.Selector.InstanceTypes = slices.Clone(p.Selector.InstanceTypes)
	return p
}

// Equal reports whether two policies say the same.
func (p Policy) Equal(q Policy) bool {
	eq := func(a, b *uint32) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	return p.Name == q.Name && p.Order == q.Order && p.Mode == q.Mode &&
		maps.Equal(p.Selector.Labels, q.Selector.Labels) && slices.Equal(p.Selector.InstanceTypes, q.Selector.InstanceTypes) &&
		eq(p.WarmIPTarget, q.WarmIPTarget) && eq(p.MinimumIPTarget, q.MinimumIPTarget) && eq(p.WarmENITarget, q.WarmENITarget) &&
		eq(p.WarmPrefixTarget, q.WarmPrefixTarget) && eq(p.MaxAddresses, q.MaxAddresses) &&
		eq(p.AdaptiveFloor, q.AdaptiveFloor) && eq(p.AdaptiveCap, q.AdaptiveCap) &&
		eq(p.AdaptiveWindowSeconds, q.AdaptiveWindowSeconds) && eq(p.AdaptiveHeadroomPercent, q.AdaptiveHeadroomPercent) &&
		eq(p.ReleaseDelaySeconds, q.ReleaseDelaySeconds)
}

var (
	nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	// LabelKeyRE and LabelValueRE are Kubernetes' label syntax.
	LabelKeyRE   = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	LabelValueRE = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)
)

// Invalid is a validation error of a policy field (it wraps ErrInvalid).
func Invalid(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, field, fmt.Sprintf(format, args...))
}

// Validate checks a policy and returns an error naming the bad field.
func (p Policy) Validate() error {
	bad := Invalid
	if !nameRE.MatchString(p.Name) {
		return bad("name", "%q must be a DNS-1123 label", p.Name)
	}
	for k, v := range p.Selector.Labels {
		if !LabelKeyRE.MatchString(k) {
			return bad("selector.labels", "%q is not a valid label key", k)
		}
		if !LabelValueRE.MatchString(v) {
			return bad("selector.labels", "%q is not a valid label value for %q", v, k)
		}
	}
	for _, t := range p.Selector.InstanceTypes {
		if _, ok := instancetypes.Lookup(t); !ok {
			return bad("selector.instance_types", "unknown instance type %q", t)
		}
	}
	switch p.Mode {
	case "", ledger.ModeSecondaryIP, ledger.ModePrefix:
	default:
		return bad("mode", "unknown mode %q", p.Mode)
	}
	prefix := p.Mode == ledger.ModePrefix
	const maxTarget = 4096
	for _, f := range []struct {
		name string
		v    *uint32
	}{
		{"warm_ip_target", p.WarmIPTarget}, {"minimum_ip_target", p.MinimumIPTarget}, {"warm_eni_target", p.WarmENITarget},
		{"warm_prefix_target", p.WarmPrefixTarget}, {"max_addresses", p.MaxAddresses}, {"adaptive_floor", p.AdaptiveFloor},
		{"adaptive_cap", p.AdaptiveCap},
	} {
		if f.v != nil && *f.v > maxTarget {
			return bad(f.name, "%d is more than %d", *f.v, maxTarget)
		}
	}
	if p.WarmENITarget != nil && *p.WarmENITarget > 15 {
		return bad("warm_eni_target", "%d is more ENIs than any instance type attaches", *p.WarmENITarget)
	}
	if p.WarmPrefixTarget != nil && !prefix {
		return bad("warm_prefix_target", "only applies in prefix mode (mode: ADDRESS_MODE_PREFIX)")
	}
	if p.WarmENITarget != nil && prefix {
		return bad("warm_eni_target", "does not apply in prefix mode; use warm_prefix_target")
	}
	if p.MaxAddresses != nil && *p.MaxAddresses == 0 {
		return bad("max_addresses", "0 would give the node no pod addresses; leave it unset for the instance limit")
	}
	adaptive := p.AdaptiveFloor != nil || p.AdaptiveCap != nil || p.AdaptiveWindowSeconds != nil || p.AdaptiveHeadroomPercent != nil
	if p.static() && adaptive {
		return bad("adaptive_*", "adaptive settings have no effect when static targets (warm_*/minimum_ip_target) are set; use one or the other")
	}
	floor, cap := p.adaptiveBounds()
	if floor > cap {
		return bad("adaptive_floor", "floor %d is above cap %d", floor, cap)
	}
	if w := p.AdaptiveWindowSeconds; w != nil && (*w < 10 || *w > 3600) {
		return bad("adaptive_window_seconds", "%d is outside 10..3600", *w)
	}
	if h := p.AdaptiveHeadroomPercent; h != nil && (*h < 100 || *h > 1000) {
		return bad("adaptive_headroom_percent", "%d is outside 100..1000", *h)
	}
	if d := p.ReleaseDelaySeconds; d != nil && *d > 86400 {
		return bad("release_delay_seconds", "%d is more than a day", *d)
	}
	return nil
}

func (p Policy) static() bool {
	return p.WarmIPTarget != nil || p.MinimumIPTarget != nil || p.WarmENITarget != nil || p.WarmPrefixTarget != nil
}

func (p Policy) adaptiveBounds() (floor, cap int) {
	floor, cap = DefaultAdaptiveFloor, DefaultAdaptiveCap
	if p.AdaptiveFloor != nil {
		floor = int(*p.AdaptiveFloor)
	}
	if p.AdaptiveCap != nil {
		cap = int(*p.AdaptiveCap)
	}
	return floor, cap
}

// Sort orders policies as matching reads them: by order, then name.
func Sort(ps []Policy) {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Order != ps[j].Order {
			return ps[i].Order < ps[j].Order
		}
		return ps[i].Name < ps[j].Name
	})
}

// List is every policy of set (by name) with the built-in default when set has none, sorted.
func List(set map[string]Policy) []Policy {
	out := make([]Policy, 0, len(set)+1)
	for _, p := range set {
		out = append(out, p)
	}
	if _, ok := set[DefaultName]; !ok {
		out = append(out, Default())
	}
	Sort(out)
	return out
}

// Match returns the policy for a node: the first (by order, then name) whose selector matches,
// else the default. policies may include a replacement "default".
func Match(policies []Policy, labels map[string]string, instanceType string) Policy {
	sorted := slices.Clone(policies)
	Sort(sorted)
	var def *Policy
	for i, p := range sorted {
		if p.Name == DefaultName {
			def = &sorted[i]
			continue
		}
		if p.Selector.Matches(labels, instanceType) {
			return p
		}
	}
	if def != nil {
		return *def
	}
	return Default()
}

// Matches reports whether a node with these labels and instance type is selected.
func (s Selector) Matches(labels map[string]string, instanceType string) bool {
	for k, v := range s.Labels {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return len(s.InstanceTypes) == 0 || slices.Contains(s.InstanceTypes, instanceType)
}

// ModeFor returns the address mode a policy gives a node of the given type: prefix mode only
// where the type supports it (else secondary IPs, with a message saying why).
func ModeFor(p Policy, t instancetypes.Type) (ledger.AddressMode, string) {
	if p.Mode == ledger.ModePrefix {
		if t.PrefixDelegation() {
			return ledger.ModePrefix, ""
		}
		return ledger.ModeSecondaryIP, fmt.Sprintf("policy %s asks for prefix mode but %s is not Nitro-based; using secondary IPs", p.Name, t.Name)
	}
	return ledger.ModeSecondaryIP, ""
}

// Shape is what a node's instance type allows.
type Shape struct {
	// SlotsPerENI is IPv4 per ENI minus the ENI's primary: secondary addresses, or prefixes.
	SlotsPerENI int
	MaxENIs     int
	Prefix      bool
}

// ShapeOf returns the shape of an instance type in a mode (a type unknown to the table, the
// zero Type, holds one slot on one ENI).
func ShapeOf(t instancetypes.Type, mode ledger.AddressMode) Shape {
	if t.Name == "" {
		return Shape{SlotsPerENI: 1, MaxENIs: 1, Prefix: mode == ledger.ModePrefix}
	}
	return Shape{SlotsPerENI: t.IPv4PerENI - 1, MaxENIs: t.MaxENIs, Prefix: mode == ledger.ModePrefix}
}

// MaxAddresses is the most pod addresses the shape holds.
func (s Shape) MaxAddresses() int {
	n := s.SlotsPerENI * s.MaxENIs
	if s.Prefix {
		n *= 16
	}
	return n
}

// Inputs is what the allocator knows about a node right now.
type Inputs struct {
	InUse   int // addresses pods use (agent report)
	Waiting int // pods waiting for an address
	// StartRate is pods started per second over the policy window.
	StartRate float64
	// RefillLatency is how long a new address takes to arrive now (limiter queue + EC2 call).
	RefillLatency time.Duration
	// PeakBurst is the most pods the node started within one refill window recently.
	PeakBurst int
	// StartPrior, for a node in its first minute, is how many pods new nodes of the cluster
	// typically start in theirs (learned by the allocator).
	StartPrior int
	// Draining: the node gets nothing beyond what its pods use.
	Draining bool
}

// Targets is what a node should hold.
type Targets struct {
	// WantAddresses is the number of pod addresses the node should lease (a prefix counts 16).
	WantAddresses int
	// WantPrefixes is the number of /28 prefixes the node should lease (prefix mode).
	WantPrefixes int
	// TargetFree is the free addresses the target leaves on the node (reported to agents).
	TargetFree int
	// Max is the most pod addresses the node may hold.
	Max int
	// ReleaseDelay is how long surplus must last before it is released.
	ReleaseDelay time.Duration
}

// Want is the target in the node's unit: prefixes in prefix mode, else addresses.
func (t Targets) Want(prefix bool) int {
	if prefix {
		return t.WantPrefixes
	}
	return t.WantAddresses
}

// Compute applies a policy. With static targets it follows the Amazon VPC CNI's meaning of
// WARM_IP_TARGET, MINIMUM_IP_TARGET, WARM_ENI_TARGET and WARM_PREFIX_TARGET; otherwise the
// adaptive rule keeps clamp(ceil(start rate x refill latency x headroom), floor, cap) free.
// Pods waiting count as in use. A draining node's target is what its pods use, released at once.
func Compute(p Policy, shape Shape, in Inputs, defaultReleaseDelay time.Duration) Targets {
	t := Targets{Max: shape.MaxAddresses(), ReleaseDelay: defaultReleaseDelay}
	if p.MaxAddresses != nil && int(*p.MaxAddresses) < t.Max {
		t.Max = int(*p.MaxAddresses)
	}
	if p.ReleaseDelaySeconds != nil {
		t.ReleaseDelay = time.Duration(*p.ReleaseDelaySeconds) * time.Second
	}
	if in.Draining {
		t.TargetFree, t.ReleaseDelay = 0, 0
		t.WantAddresses = in.InUse
		if shape.Prefix {
			t.WantPrefixes = CeilDiv(in.InUse, 16)
			t.WantAddresses = t.WantPrefixes * 16
		}
		return t
	}
	// Pods waiting count as in use, but only up to the adaptive cap: what waits is what the
	// agent says (its report, its RequestAddresses counts), and a node must not raise its own
	// pool past the cap by asking. Real pods beyond it are served as the first ones take theirs.
	_, waitCap := p.adaptiveBounds()
	used := in.InUse + min(in.Waiting, waitCap)
	var want int // addresses
	switch {
	case p.WarmIPTarget != nil || p.MinimumIPTarget != nil:
		want = max(used+int(deref(p.WarmIPTarget)), int(deref(p.MinimumIPTarget)))
	case shape.Prefix && p.WarmPrefixTarget != nil:
		// ipamd keeps WARM_PREFIX_TARGET x 16 addresses available.
		want = used + 16*int(*p.WarmPrefixTarget)
	case !shape.Prefix && p.WarmENITarget != nil:
		// WARM_ENI_TARGET keeps that many whole ENIs with no pods beyond the ENIs pods fill
		// (the primary ENI counts as filled), allocating whole ENIs: an m5.large holds 2 x 9
		// secondary addresses with 0 to 9 pods, 3 x 9 with 10 to 18.
		enis := max(1, CeilDiv(used, shape.SlotsPerENI)) + int(*p.WarmENITarget)
		enis = min(enis, shape.MaxENIs)
		want = enis * shape.SlotsPerENI
	default:
		want = used + AdaptiveFree(p, in)
	}
	want = min(max(want, used), t.Max)
	t.TargetFree = max(want-in.InUse, 0)
	if shape.Prefix {
		t.WantPrefixes = CeilDiv(want, 16)
		t.WantAddresses = t.WantPrefixes * 16
	} else {
		t.WantAddresses = want
	}
	return t
}

func deref(v *uint32) uint32 {
	if v == nil {
		return 0
	}
	return *v
}

// AdaptiveFree is the adaptive rule's free target for the node: enough for the pods expected
// to start while a refill is on its way — the mean rate times the refill latency (with
// headroom), or the largest burst the node saw within one refill window, whichever is more; a
// node in its first minute expects what new nodes of the cluster typically get — clamped to
// the policy's floor and cap.
func AdaptiveFree(p Policy, in Inputs) int {
	floor, cap := p.adaptiveBounds()
	headroom := float64(defaultAdaptiveHeadroom) / 100
	if p.AdaptiveHeadroomPercent != nil {
		headroom = float64(*p.AdaptiveHeadroomPercent) / 100
	}
	need := int(math.Ceil(in.StartRate * in.RefillLatency.Seconds() * headroom))
	need = max(need, in.PeakBurst, in.StartPrior)
	return min(max(need, floor), cap)
}

// AdaptiveWindow is the window over which a node's pod start rate is measured.
func AdaptiveWindow(p Policy) time.Duration {
	if p.AdaptiveWindowSeconds != nil {
		return time.Duration(*p.AdaptiveWindowSeconds) * time.Second
	}
	return defaultAdaptiveWindow * time.Second
}

// CeilDiv is a/b rounded up (0 when b <= 0).
func CeilDiv(a, b int) int {
	if b <= 0 {
		return 0
	}
	return (a + b - 1) / b
}
