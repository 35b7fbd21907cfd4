package policy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

func m5large(t *testing.T, mode ledger.AddressMode) Shape {
	t.Helper()
	typ, ok := instancetypes.Lookup("m5.large")
	if !ok {
		t.Fatal("m5.large missing")
	}
	return ShapeOf(typ, mode)
}

// The VPC CNI-compatible static targets reproduce the seed documents' numbers.
func TestStaticTargetsMatchTheVPCCNI(t *testing.T) {
	sec := m5large(t, ledger.ModeSecondaryIP)
	pfx := m5large(t, ledger.ModePrefix)
	eni1 := Policy{Name: "a", WarmENITarget: U32(1)}
	min5 := Policy{Name: "b", MinimumIPTarget: U32(5)}
	warm2min10 := Policy{Name: "c", WarmIPTarget: U32(2), MinimumIPTarget: U32(10)}
	pfx1 := Policy{Name: "d", Mode: ledger.ModePrefix, WarmPrefixTarget: U32(1)}
	tests := []struct {
		name         string
		p            Policy
		shape        Shape
		inUse        int
		wantAddrs    int
		wantPrefixes int
	}{
		// WARM_ENI_TARGET=1: 18 secondaries (+2 ENI primaries = 20) with 0..9 pods.
		{"eni1 idle", eni1, sec, 0, 18, 0},
		{"eni1 9 pods", eni1, sec, 9, 18, 0},
		{"eni1 10 pods", eni1, sec, 10, 27, 0},
		{"eni1 at instance limit", eni1, sec, 27, 27, 0},
		// MINIMUM_IP_TARGET=5: 5 secondaries (+1 primary = 6) with no pods.
		{"min5 idle", min5, sec, 0, 5, 0},
		{"min5 7 pods", min5, sec, 7, 7, 0},
		{"warm2 min10 idle", warm2min10, sec, 0, 10, 0},
		{"warm2 min10 9 pods", warm2min10, sec, 9, 11, 0},
		{"prefix warm1 idle", pfx1, pfx, 0, 16, 1},
		{"prefix warm1 16 pods", pfx1, pfx, 16, 32, 2},
		{"prefix warm1 17 pods", pfx1, pfx, 17, 48, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Compute(tc.p, tc.shape, Inputs{InUse: tc.inUse}, time.Minute)
			if got.WantAddresses != tc.wantAddrs || got.WantPrefixes != tc.wantPrefixes {
				t.Fatalf("want %d addresses / %d prefixes, got %+v", tc.wantAddrs, tc.wantPrefixes, got)
			}
		})
	}
}

func TestAdaptiveTargets(t *testing.T) {
	sec := m5large(t, ledger.ModeSecondaryIP)
	def := Default()
	// Idle node: the floor.
	if got := Compute(def, sec, Inputs{}, time.Minute); got.WantAddresses != 1 || got.TargetFree != 1 {
		t.Fatalf("idle node: %+v", got)
	}
	// 2 pods/s and 3 s to refill, 1.5 headroom: 9 free.
	got := Compute(def, sec, Inputs{InUse: 4, StartRate: 2, RefillLatency: 3 * time.Second}, time.Minute)
	if got.TargetFree != 9 || got.WantAddresses != 13 {
		t.Fatalf("busy node: %+v", got)
	}
	// Capped at 16 free, and never above the instance limit (27).
	got = Compute(def, sec, Inputs{InUse: 20, StartRate: 50, RefillLatency: 10 * time.Second}, time.Minute)
	if got.WantAddresses != 27 {
		t.Fatalf("cap: %+v", got)
	}
	// Waiting pods count as in use.
	got = Compute(def, sec, Inputs{InUse: 2, Waiting: 3}, time.Minute)
	if got.WantAddresses != 6 {
		t.Fatalf("waiting: %+v", got)
	}
	// Waiting counts only up to the adaptive cap (16 by default; 4 here): a node cannot raise
	// its own pool by claiming pods wait, adaptive or static.
	big := m5xlarge4x(t)
	got = Compute(def, big, Inputs{InUse: 2, Waiting: 250}, time.Minute)
	if got.WantAddresses != 2+16+1 {
		t.Fatalf("250 waiting on the default policy: want %d addresses, %+v", 2+16+1, got)
	}
	static := Policy{Name: "s", WarmIPTarget: U32(2), AdaptiveCap: U32(4)}
	got = Compute(static, big, Inputs{InUse: 2, Waiting: 250}, time.Minute)
	if got.WantAddresses != 2+4+2 {
		t.Fatalf("250 waiting on a static policy with cap 4: want %d addresses, %+v", 2+4+2, got)
	}
	// Policy max_addresses caps everything.
	capped := Policy{Name: "x", MaxAddresses: U32(4), ReleaseDelaySeconds: U32(5)}
	got = Compute(capped, sec, Inputs{InUse: 3, Waiting: 4}, time.Minute)
	if got.WantAddresses != 4 || got.ReleaseDelay != 5*time.Second {
		t.Fatalf("max_addresses: %+v", got)
	}
}

func TestPolicyValidation(t *testing.T) {
	u := U32
	tests := []struct {
		name  string
		p     Policy
		field string
	}{
		{"bad name", Policy{Name: "Big_Name"}, "name"},
		{"unknown type", Policy{Name: "a", Selector: Selector{InstanceTypes: []string{"x9.huge"}}}, "instance_types"},
		{"bad label", Policy{Name: "a", Selector: Selector{Labels: map[string]string{"bad key!": "v"}}}, "selector.labels"},
		{"prefix target in ip mode", Policy{Name: "a", WarmPrefixTarget: u(1)}, "warm_prefix_target"},
		{"eni target in prefix mode", Policy{Name: "a", Mode: ledger.ModePrefix, WarmENITarget: u(1)}, "warm_eni_target"},
		{"static and adaptive", Policy{Name: "a", WarmIPTarget: u(1), AdaptiveFloor: u(2)}, "adaptive"},
		{"floor above cap", Policy{Name: "a", AdaptiveFloor: u(8), AdaptiveCap: u(4)}, "adaptive_floor"},
		{"huge target", Policy{Name: "a", WarmIPTarget: u(100000)}, "warm_ip_target"},
		{"zero max", Policy{Name: "a", MaxAddresses: u(0)}, "max_addresses"},
		{"window", Policy{Name: "a", AdaptiveWindowSeconds: u(1)}, "adaptive_window_seconds"},
		{"unknown mode", Policy{Name: "a", Mode: "ipv6"}, "mode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.p.Validate()
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("want invalid policy naming %q, got %v", tc.field, err)
			}
		})
	}
	if err := Default().Validate(); err != nil {
		t.Fatalf("default policy invalid: %v", err)
	}
}

func TestMatch(t *testing.T) {
	gpu := Policy{Name: "gpu", Order: 1, Selector: Selector{Labels: map[string]string{"pool": "gpu"}}}
	big := Policy{Name: "big", Order: 2, Selector: Selector{InstanceTypes: []string{"m5.24xlarge"}}}
	all := []Policy{big, gpu}
	if got := Match(all, map[string]string{"pool": "gpu"}, "m5.24xlarge"); got.Name != "gpu" {
		t.Fatalf("order: got %s", got.Name)
	}
	if got := Match(all, nil, "m5.24xlarge"); got.Name != "big" {
		t.Fatalf("type: got %s", got.Name)
	}
	if got := Match(all, nil, "m5.large"); got.Name != DefaultName || *got.AdaptiveFloor != 1 {
		t.Fatalf("default: got %v", got)
	}
	custom := Policy{Name: DefaultName, MinimumIPTarget: U32(3)}
	if got := Match(append(all, custom), nil, "m5.large"); got.MinimumIPTarget == nil || *got.MinimumIPTarget != 3 {
		t.Fatalf("replaced default not used: %v", got)
	}
}

func TestPolicyModeFallsBackOnXen(t *testing.T) {
	p := Policy{Name: "p", Mode: ledger.ModePrefix}
	xen, _ := instancetypes.Lookup("m4.large")
	nitro, _ := instancetypes.Lookup("m5.large")
	if m, msg := ModeFor(p, xen); m != ledger.ModeSecondaryIP || msg == "" {
		t.Fatalf("xen: %s %q", m, msg)
	}
	if m, _ := ModeFor(p, nitro); m != ledger.ModePrefix {
		t.Fatalf("nitro: %s", m)
	}
}

func TestAdaptiveFreeCoversBurstsAndNewNodes(t *testing.T) {
	def := Default()
	// A node that saw 5 pods start within one refill window keeps 5 free, though its mean rate
	// alone asks for 1.
	if got := AdaptiveFree(def, Inputs{StartRate: 0.05, RefillLatency: time.Second, PeakBurst: 5}); got != 5 {
		t.Fatalf("burst: %d, want 5", got)
	}
	// A new node expects what new nodes typically get.
	if got := AdaptiveFree(def, Inputs{StartPrior: 12}); got != 12 {
		t.Fatalf("start prior: %d, want 12", got)
	}
	// Both stay within the policy's cap.
	capped := Policy{Name: "c", AdaptiveCap: U32(4)}
	if got := AdaptiveFree(capped, Inputs{PeakBurst: 9, StartPrior: 12}); got != 4 {
		t.Fatalf("cap: %d, want 4", got)
	}
}

func TestStartPriorIsTheMedianOfRecentNodes(t *testing.T) {
	var p StartPrior
	if p.Prior() != 0 {
		t.Fatal("empty prior must be 0")
	}
	for _, n := range []int{12, 0, 12, 11, 40} {
		p.Add(n)
	}
	if got := p.Prior(); got != 12 {
		t.Fatalf("median: %d, want 12", got)
	}
	for i := 0; i < 40; i++ {
		p.Add(3)
	}
	if got := p.Prior(); got != 3 || len(p.samples) != 31 {
		t.Fatalf("after 40 new nodes with 3 pods: prior %d over %d samples", got, len(p.samples))
	}
}

// m5xlarge4x is a large node (m5.4xlarge: 8 ENIs x 29 addresses): its instance limit is far.
func m5xlarge4x(t *testing.T) Shape {
	t.Helper()
	typ, ok := instancetypes.Lookup("m5.4xlarge")
	if !ok {
		t.Fatal("m5.4xlarge unknown")
	}
	return ShapeOf(typ, ledger.ModeSecondaryIP)
}
