package allocator

import (
	"errors"
	"strings"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
	"google.golang.org/protobuf/proto"
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
	eni1 := &ipledgerv1.NodePolicy{Name: "a", WarmEniTarget: proto.Uint32(1)}
	min5 := &ipledgerv1.NodePolicy{Name: "b", MinimumIpTarget: proto.Uint32(5)}
	warm2min10 := &ipledgerv1.NodePolicy{Name: "c", WarmIpTarget: proto.Uint32(2), MinimumIpTarget: proto.Uint32(10)}
	pfx1 := &ipledgerv1.NodePolicy{Name: "d", Mode: ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX, WarmPrefixTarget: proto.Uint32(1)}
	tests := []struct {
		name         string
		p            *ipledgerv1.NodePolicy
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
			got := ComputeTargets(tc.p, tc.shape, Inputs{InUse: tc.inUse}, time.Minute)
			if got.WantAddresses != tc.wantAddrs || got.WantPrefixes != tc.wantPrefixes {
				t.Fatalf("want %d addresses / %d prefixes, got %+v", tc.wantAddrs, tc.wantPrefixes, got)
			}
		})
	}
}

func TestAdaptiveTargets(t *testing.T) {
	sec := m5large(t, ledger.ModeSecondaryIP)
	def := DefaultPolicy()
	// Idle node: the floor.
	if got := ComputeTargets(def, sec, Inputs{}, time.Minute); got.WantAddresses != 1 || got.TargetFree != 1 {
		t.Fatalf("idle node: %+v", got)
	}
	// 2 pods/s and 3 s to refill, 1.5 headroom: 9 free.
	got := ComputeTargets(def, sec, Inputs{InUse: 4, StartRate: 2, RefillLatency: 3 * time.Second}, time.Minute)
	if got.TargetFree != 9 || got.WantAddresses != 13 {
		t.Fatalf("busy node: %+v", got)
	}
	// Capped at 16 free, and never above the instance limit (27).
	got = ComputeTargets(def, sec, Inputs{InUse: 20, StartRate: 50, RefillLatency: 10 * time.Second}, time.Minute)
	if got.WantAddresses != 27 {
		t.Fatalf("cap: %+v", got)
	}
	// Waiting pods count as in use.
	got = ComputeTargets(def, sec, Inputs{InUse: 2, Waiting: 3}, time.Minute)
	if got.WantAddresses != 6 {
		t.Fatalf("waiting: %+v", got)
	}
	// Policy max_addresses caps everything.
	capped := &ipledgerv1.NodePolicy{Name: "x", MaxAddresses: proto.Uint32(4), ReleaseDelaySeconds: proto.Uint32(5)}
	got = ComputeTargets(capped, sec, Inputs{InUse: 3, Waiting: 4}, time.Minute)
	if got.WantAddresses != 4 || got.ReleaseDelay != 5*time.Second {
		t.Fatalf("max_addresses: %+v", got)
	}
}

func TestPolicyValidation(t *testing.T) {
	u := proto.Uint32
	tests := []struct {
		name  string
		p     *ipledgerv1.NodePolicy
		field string
	}{
		{"nil", nil, "policy"},
		{"bad name", &ipledgerv1.NodePolicy{Name: "Big_Name"}, "name"},
		{"unknown type", &ipledgerv1.NodePolicy{Name: "a", Selector: &ipledgerv1.NodeSelector{InstanceTypes: []string{"x9.huge"}}}, "instance_types"},
		{"bad label", &ipledgerv1.NodePolicy{Name: "a", Selector: &ipledgerv1.NodeSelector{Labels: map[string]string{"bad key!": "v"}}}, "selector.labels"},
		{"prefix target in ip mode", &ipledgerv1.NodePolicy{Name: "a", WarmPrefixTarget: u(1)}, "warm_prefix_target"},
		{"eni target in prefix mode", &ipledgerv1.NodePolicy{Name: "a", Mode: ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX, WarmEniTarget: u(1)}, "warm_eni_target"},
		{"static and adaptive", &ipledgerv1.NodePolicy{Name: "a", WarmIpTarget: u(1), AdaptiveFloor: u(2)}, "adaptive"},
		{"floor above cap", &ipledgerv1.NodePolicy{Name: "a", AdaptiveFloor: u(8), AdaptiveCap: u(4)}, "adaptive_floor"},
		{"huge target", &ipledgerv1.NodePolicy{Name: "a", WarmIpTarget: u(100000)}, "warm_ip_target"},
		{"zero max", &ipledgerv1.NodePolicy{Name: "a", MaxAddresses: u(0)}, "max_addresses"},
		{"window", &ipledgerv1.NodePolicy{Name: "a", AdaptiveWindowSeconds: u(1)}, "adaptive_window_seconds"},
		{"unknown mode", &ipledgerv1.NodePolicy{Name: "a", Mode: 7}, "mode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidatePolicy(tc.p)
			if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("want invalid policy naming %q, got %v", tc.field, err)
			}
		})
	}
	if err := ValidatePolicy(DefaultPolicy()); err != nil {
		t.Fatalf("default policy invalid: %v", err)
	}
}

func TestMatchPolicy(t *testing.T) {
	gpu := &ipledgerv1.NodePolicy{Name: "gpu", Order: 1, Selector: &ipledgerv1.NodeSelector{Labels: map[string]string{"pool": "gpu"}}}
	big := &ipledgerv1.NodePolicy{Name: "big", Order: 2, Selector: &ipledgerv1.NodeSelector{InstanceTypes: []string{"m5.24xlarge"}}}
	all := []*ipledgerv1.NodePolicy{big, gpu}
	if got := MatchPolicy(all, map[string]string{"pool": "gpu"}, "m5.24xlarge"); got.GetName() != "gpu" {
		t.Fatalf("order: got %s", got.GetName())
	}
	if got := MatchPolicy(all, nil, "m5.24xlarge"); got.GetName() != "big" {
		t.Fatalf("type: got %s", got.GetName())
	}
	if got := MatchPolicy(all, nil, "m5.large"); got.GetName() != DefaultPolicyName || got.GetAdaptiveFloor() != 1 {
		t.Fatalf("default: got %v", got)
	}
	custom := &ipledgerv1.NodePolicy{Name: DefaultPolicyName, MinimumIpTarget: proto.Uint32(3)}
	if got := MatchPolicy(append(all, custom), nil, "m5.large"); got.GetMinimumIpTarget() != 3 {
		t.Fatalf("replaced default not used: %v", got)
	}
}

func TestPolicyModeFallsBackOnXen(t *testing.T) {
	p := &ipledgerv1.NodePolicy{Name: "p", Mode: ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX}
	xen, _ := instancetypes.Lookup("m4.large")
	nitro, _ := instancetypes.Lookup("m5.large")
	if m, msg := PolicyMode(p, xen); m != ledger.ModeSecondaryIP || msg == "" {
		t.Fatalf("xen: %s %q", m, msg)
	}
	if m, _ := PolicyMode(p, nitro); m != ledger.ModePrefix {
		t.Fatalf("nitro: %s", m)
	}
}

func TestAdaptiveFreeCoversBurstsAndNewNodes(t *testing.T) {
	def := DefaultPolicy()
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
	capped := &ipledgerv1.NodePolicy{Name: "c", AdaptiveCap: proto.Uint32(4)}
	if got := AdaptiveFree(capped, Inputs{PeakBurst: 9, StartPrior: 12}); got != 4 {
		t.Fatalf("cap: %d, want 4", got)
	}
}

func TestStartPriorIsTheMedianOfRecentNodes(t *testing.T) {
	var p startPrior
	if p.prior() != 0 {
		t.Fatal("empty prior must be 0")
	}
	for _, n := range []int{12, 0, 12, 11, 40} {
		p.add(n)
	}
	if got := p.prior(); got != 12 {
		t.Fatalf("median: %d, want 12", got)
	}
	for i := 0; i < 40; i++ {
		p.add(3)
	}
	if got := p.prior(); got != 3 || len(p.samples) != 31 {
		t.Fatalf("after 40 new nodes with 3 pods: prior %d over %d samples", got, len(p.samples))
	}
}
