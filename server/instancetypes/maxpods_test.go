package instancetypes

import (
	"errors"
	"testing"
)

// The expected values are what EKS's max-pods calculator (max-pods-calculator.sh, VPC CNI >=
// 1.9) prints for these types, and its --show-max-allowed, worked out by hand from AWS's
// limits: e.g. m5.large 3 x (10-1) + 2 = 29; with custom networking 2 x 9 + 2 = 20; prefix
// 3 x 9 x 16 + 2 = 434, capped at 110 (2 vCPUs).
func TestMaxPodsMatchesTheCalculator(t *testing.T) {
	tests := []struct {
		typ             string
		o               MaxPodsOptions
		enis, addrs     int
		allowed, recomm int
		vcpus, ceiling  int
		vcpusEstimated  bool
	}{
		{"m5.large", MaxPodsOptions{}, 3, 27, 29, 29, 2, 110, true},
		{"m5.large", MaxPodsOptions{CustomNetworking: true}, 2, 18, 20, 20, 2, 110, true},
		{"m5.large", MaxPodsOptions{Prefix: true}, 3, 432, 434, 110, 2, 110, true},
		{"m5.large", MaxPodsOptions{Prefix: true, CustomNetworking: true}, 2, 288, 290, 110, 2, 110, true},
		{"t3.medium", MaxPodsOptions{}, 3, 15, 17, 17, 2, 110, true},
		{"t3.micro", MaxPodsOptions{}, 2, 2, 4, 4, 2, 110, true},
		{"t3.small", MaxPodsOptions{}, 3, 9, 11, 11, 2, 110, true},
		{"m5.xlarge", MaxPodsOptions{}, 4, 56, 58, 58, 4, 110, true},
		{"m5.4xlarge", MaxPodsOptions{}, 8, 232, 234, 110, 16, 110, true},
		{"m5.8xlarge", MaxPodsOptions{}, 8, 232, 234, 234, 32, 250, true},
		{"c5.9xlarge", MaxPodsOptions{}, 8, 232, 234, 234, 36, 250, true},
		// The calculator caps IP mode too: 737 addresses allowed, 250 recommended.
		{"m5.24xlarge", MaxPodsOptions{}, 15, 735, 737, 250, 96, 250, true},
		{"m5.24xlarge", MaxPodsOptions{Prefix: true}, 15, 11760, 11762, 250, 96, 250, true},
		{"m5.metal", MaxPodsOptions{}, 15, 735, 737, 250, 96, 250, true},
		{"m7i.metal-24xl", MaxPodsOptions{Prefix: true}, 15, 11760, 11762, 250, 96, 250, true},
		{"m4.large", MaxPodsOptions{}, 2, 18, 20, 20, 2, 110, true},
		// A known vCPU count replaces the estimate.
		{"m5.4xlarge", MaxPodsOptions{VCPUs: 31}, 8, 232, 234, 234, 31, 250, false},
		// ipledger attaches ENIs on card 0 only: half of c6in.32xlarge's 8 (the calculator,
		// counting all 8, would say 394 allowed).
		{"c6in.32xlarge", MaxPodsOptions{}, 4, 196, 198, 198, 128, 250, true},
	}
	for _, tt := range tests {
		typ, ok := Lookup(tt.typ)
		if !ok {
			t.Fatalf("%s unknown", tt.typ)
		}
		got, err := typ.MaxPods(tt.o)
		if err != nil {
			t.Errorf("%s %+v: %v", tt.typ, tt.o, err)
			continue
		}
		want := MaxPods{Type: tt.typ, ENIs: tt.enis, PodAddresses: tt.addrs, MaxAllowed: tt.allowed, VCPUs: tt.vcpus,
			VCPUsEstimated: tt.vcpusEstimated, Ceiling: tt.ceiling, Recommended: tt.recomm}
		if got != want {
			t.Errorf("%s %+v:\n got  %+v\n want %+v", tt.typ, tt.o, got, want)
		}
	}
}

func TestMaxPodsRefusesWhatTheTypeCannotDo(t *testing.T) {
	m4, _ := Lookup("m4.large")
	if _, err := m4.MaxPods(MaxPodsOptions{Prefix: true}); !errors.Is(err, ErrNoPrefixes) {
		t.Errorf("prefix mode on Xen m4.large: %v, want ErrNoPrefixes", err)
	}
	one := Type{Name: "x1.tiny", MaxENIs: 1, IPv4PerENI: 4, Hypervisor: "nitro", NetworkCards: 1}
	if _, err := one.MaxPods(MaxPodsOptions{CustomNetworking: true}); !errors.Is(err, ErrNoPodENIs) {
		t.Errorf("custom networking with one ENI: %v, want ErrNoPodENIs", err)
	}
	if m, err := one.MaxPods(MaxPodsOptions{}); err != nil || m.Recommended != 5 {
		t.Errorf("one ENI of 4: %+v, %v, want 3 + 2 = 5", m, err)
	}
}

func TestEstimateVCPUs(t *testing.T) {
	for name, want := range map[string]int{
		"t3.nano": 2, "t2.micro": 1, "t3.medium": 2, "m6g.medium": 1, "a1.medium": 1, "m5.large": 2, "m5.xlarge": 4,
		"m5.2xlarge": 8, "c5.9xlarge": 36, "m5.24xlarge": 96, "m5.metal": 96, "m7i.metal-48xl": 192, "u-6tb1.56xlarge": 224,
		"x9.bogus": 0, "nodot": 0,
	} {
		if got := EstimateVCPUs(name); got != want {
			t.Errorf("EstimateVCPUs(%s) = %d, want %d", name, got, want)
		}
	}
	// Every embedded type gets an estimate except families that only come as metal.
	for _, typ := range All() {
		if EstimateVCPUs(typ.Name) == 0 && !typ.BareMetal {
			t.Errorf("%s: no vCPU estimate", typ.Name)
		}
	}
}
