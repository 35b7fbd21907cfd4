package allocator

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
	"google.golang.org/protobuf/proto"
)

// DefaultPolicyName is the built-in policy that applies when no other matches. An admin may
// replace it with SetPolicy under the same name.
const DefaultPolicyName = "default"

// Adaptive policy defaults.
const (
	defaultAdaptiveFloor    = 1
	defaultAdaptiveCap      = 16
	defaultAdaptiveWindow   = 300 // seconds
	defaultAdaptiveHeadroom = 150 // percent
)

// ErrInvalidPolicy is wrapped by every policy validation error.
var ErrInvalidPolicy = errors.New("allocator: invalid policy")

// DefaultPolicy returns the built-in adaptive policy.
func DefaultPolicy() *ipledgerv1.NodePolicy {
	return &ipledgerv1.NodePolicy{
		Name:          DefaultPolicyName,
		Order:         math.MaxInt32,
		Selector:      &ipledgerv1.NodeSelector{},
		Mode:          ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP,
		AdaptiveFloor: proto.Uint32(defaultAdaptiveFloor),
		AdaptiveCap:   proto.Uint32(defaultAdaptiveCap),
	}
}

var (
	policyNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	labelKeyRE   = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	labelValueRE = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$`)
)

// ValidatePolicy checks a policy and returns an error naming the bad field.
func ValidatePolicy(p *ipledgerv1.NodePolicy) error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidPolicy, field, fmt.Sprintf(format, args...))
	}
	if p == nil {
		return bad("policy", "missing")
	}
	if !policyNameRE.MatchString(p.GetName()) {
		return bad("name", "%q must be a DNS-1123 label", p.GetName())
	}
	for k, v := range p.GetSelector().GetLabels() {
		if !labelKeyRE.MatchString(k) {
			return bad("selector.labels", "%q is not a valid label key", k)
		}
		if !labelValueRE.MatchString(v) {
			return bad("selector.labels", "%q is not a valid label value for %q", v, k)
		}
	}
	for _, t := range p.GetSelector().GetInstanceTypes() {
		if _, ok := instancetypes.Lookup(t); !ok {
			return bad("selector.instance_types", "unknown instance type %q", t)
		}
	}
	switch p.GetMode() {
	case ipledgerv1.AddressMode_ADDRESS_MODE_UNSPECIFIED, ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP, ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX:
	default:
		return bad("mode", "unknown mode %d", p.GetMode())
	}
	prefix := p.GetMode() == ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX
	const maxTarget = 4096
	for name, v := range map[string]*uint32{
		"warm_ip_target": p.WarmIpTarget, "minimum_ip_target": p.MinimumIpTarget, "warm_eni_target": p.WarmEniTarget,
		"warm_prefix_target": p.WarmPrefixTarget, "max_addresses": p.MaxAddresses, "adaptive_floor": p.AdaptiveFloor, "adaptive_cap": p.AdaptiveCap,
	} {
		if v != nil && *v > maxTarget {
			return bad(name, "%d is more than %d", *v, maxTarget)
		}
	}
	if p.WarmEniTarget != nil && *p.WarmEniTarget > 15 {
		return bad("warm_eni_target", "%d is more ENIs than any instance type attaches", *p.WarmEniTarget)
	}
	if p.WarmPrefixTarget != nil && !prefix {
		return bad("warm_prefix_target", "only applies in prefix mode (mode: ADDRESS_MODE_PREFIX)")
	}
	if p.WarmEniTarget != nil && prefix {
		return bad("warm_eni_target", "does not apply in prefix mode; use warm_prefix_target")
	}
	if p.MaxAddresses != nil && *p.MaxAddresses == 0 {
		return bad("max_addresses", "0 would give the node no pod addresses; leave it unset for the instance limit")
	}
	static := hasStatic(p)
	adaptive := p.AdaptiveFloor != nil || p.AdaptiveCap != nil || p.AdaptiveWindowSeconds != nil || p.AdaptiveHeadroomPercent != nil
	if static && adaptive {
		return bad("adaptive_*", "adaptive settings have no effect when static targets (warm_*/minimum_ip_target) are set; use one or the other")
	}
	floor, cap := adaptiveBounds(p)
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

func hasStatic(p *ipledgerv1.NodePolicy) bool {
	return p.WarmIpTarget != nil || p.MinimumIpTarget != nil || p.WarmEniTarget != nil || p.WarmPrefixTarget != nil
}

func adaptiveBounds(p *ipledgerv1.NodePolicy) (floor, cap int) {
	floor, cap = defaultAdaptiveFloor, defaultAdaptiveCap
	if p.AdaptiveFloor != nil {
		floor = int(*p.AdaptiveFloor)
	}
	if p.AdaptiveCap != nil {
		cap = int(*p.AdaptiveCap)
	}
	return floor, cap
}

// MatchPolicy returns the policy for a node: the first (by order, then name) whose selector
// matches, else the default. policies may include a replacement "default".
func MatchPolicy(policies []*ipledgerv1.NodePolicy, labels map[string]string, instanceType string) *ipledgerv1.NodePolicy {
	sorted := append([]*ipledgerv1.NodePolicy(nil), policies...)
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].GetOrder() != sorted[j].GetOrder() {
			return sorted[i].GetOrder() < sorted[j].GetOrder()
		}
		return sorted[i].GetName() < sorted[j].GetName()
	})
	var def *ipledgerv1.NodePolicy
	for _, p := range sorted {
		if p.GetName() == DefaultPolicyName {
			def = p
			continue
		}
		if selectorMatches(p.GetSelector(), labels, instanceType) {
			return p
		}
	}
	if def != nil {
		return def
	}
	return DefaultPolicy()
}

func selectorMatches(s *ipledgerv1.NodeSelector, labels map[string]string, instanceType string) bool {
	for k, v := range s.GetLabels() {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	if types := s.GetInstanceTypes(); len(types) > 0 {
		for _, t := range types {
			if t == instanceType {
				return true
			}
		}
		return false
	}
	return true
}

// Shape is what a node's instance type allows.
type Shape struct {
	// SlotsPerENI is IPv4 per ENI minus the ENI's primary: secondary addresses, or prefixes.
	SlotsPerENI int
	MaxENIs     int
	Prefix      bool
}

// ShapeOf returns the shape of an instance type in a mode.
func ShapeOf(t instancetypes.Type, mode ledger.AddressMode) Shape {
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
}

// Targets is what a node should hold.
type Targets struct {
	// WantAddresses is the number of pod addresses the node should lease (secondary-IP mode).
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

// ComputeTargets applies a policy. With static targets it follows the Amazon VPC CNI's
// meaning of WARM_IP_TARGET, MINIMUM_IP_TARGET, WARM_ENI_TARGET and WARM_PREFIX_TARGET; otherwise
// the adaptive rule keeps clamp(ceil(start rate x refill latency x headroom), floor, cap) free.
// Pods waiting count as in use.
func ComputeTargets(p *ipledgerv1.NodePolicy, shape Shape, in Inputs, defaultReleaseDelay time.Duration) Targets {
	t := Targets{Max: shape.MaxAddresses(), ReleaseDelay: defaultReleaseDelay}
	if p.MaxAddresses != nil && int(*p.MaxAddresses) < t.Max {
		t.Max = int(*p.MaxAddresses)
	}
	if p.ReleaseDelaySeconds != nil {
		t.ReleaseDelay = time.Duration(*p.ReleaseDelaySeconds) * time.Second
	}
	used := in.InUse + in.Waiting
	var want int // addresses
	switch {
	case p.WarmIpTarget != nil || p.MinimumIpTarget != nil:
		want = max(used+int(p.GetWarmIpTarget()), int(p.GetMinimumIpTarget()))
	case shape.Prefix && p.WarmPrefixTarget != nil:
		// ipamd keeps WARM_PREFIX_TARGET x 16 addresses available.
		want = used + 16*int(*p.WarmPrefixTarget)
	case !shape.Prefix && p.WarmEniTarget != nil:
		// WARM_ENI_TARGET keeps that many whole ENIs with no pods beyond the ENIs pods fill
		// (the primary ENI counts as filled), allocating whole ENIs: an m5.large holds 2 x 9
		// secondary addresses with 0 to 9 pods, 3 x 9 with 10 to 18.
		enis := max(1, ceilDiv(used, shape.SlotsPerENI)) + int(*p.WarmEniTarget)
		enis = min(enis, shape.MaxENIs)
		want = enis * shape.SlotsPerENI
	default:
		want = used + AdaptiveFree(p, in)
	}
	want = min(max(want, used), t.Max)
	t.TargetFree = max(want-in.InUse, 0)
	if shape.Prefix {
		t.WantPrefixes = ceilDiv(want, 16)
		t.WantAddresses = t.WantPrefixes * 16
	} else {
		t.WantAddresses = want
	}
	return t
}

// AdaptiveFree is the adaptive rule's free target for the node: enough for the pods expected
// to start while a refill is on its way — the mean rate times the refill latency (with
// headroom), or the largest burst the node saw within one refill window, whichever is more; a
// node in its first minute expects what new nodes of the cluster typically get — clamped to
// the policy's floor and cap.
func AdaptiveFree(p *ipledgerv1.NodePolicy, in Inputs) int {
	floor, cap := adaptiveBounds(p)
	headroom := float64(defaultAdaptiveHeadroom) / 100
	if p.AdaptiveHeadroomPercent != nil {
		headroom = float64(*p.AdaptiveHeadroomPercent) / 100
	}
	need := int(math.Ceil(in.StartRate * in.RefillLatency.Seconds() * headroom))
	need = max(need, in.PeakBurst, in.StartPrior)
	return min(max(need, floor), cap)
}

// AdaptiveWindow is the window over which a node's pod start rate is measured.
func AdaptiveWindow(p *ipledgerv1.NodePolicy) time.Duration {
	if p.AdaptiveWindowSeconds != nil {
		return time.Duration(*p.AdaptiveWindowSeconds) * time.Second
	}
	return defaultAdaptiveWindow * time.Second
}

// PolicyMode returns the address mode a policy gives a node of the given type: prefix mode
// only where the type supports it.
func PolicyMode(p *ipledgerv1.NodePolicy, t instancetypes.Type) (ledger.AddressMode, string) {
	if p.GetMode() == ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX {
		if t.PrefixDelegation() {
			return ledger.ModePrefix, ""
		}
		return ledger.ModeSecondaryIP, fmt.Sprintf("policy %s asks for prefix mode but %s is not Nitro-based; using secondary IPs", p.GetName(), t.Name)
	}
	return ledger.ModeSecondaryIP, ""
}

func ceilDiv(a, b int) int {
	if b <= 0 {
		return 0
	}
	return (a + b - 1) / b
}
