package instancetypes

import "testing"

func TestEmbeddedDataLoads(t *testing.T) {
	if err := Err(); err != nil {
		t.Fatal(err)
	}
	if got := len(All()); got != 1391 {
		t.Fatalf("want 1391 instance types, got %d", got)
	}
}

func TestLimitsOfKnownTypes(t *testing.T) {
	tests := []struct {
		name       string
		enis, ips  int
		prefix     bool
		maxPodsIP  int
		maxPodsPfx int
	}{
		// The seed documents' numbers: m5.large 3x10, 29 pods in IP mode, 110 in prefix mode.
		{"m5.large", 3, 10, true, 29, 110},
		{"t3.small", 3, 4, true, 11, 110},
		{"m5.xlarge", 4, 15, true, 58, 110},
		{"m5.24xlarge", 15, 50, true, 737, 250},
		{"m4.large", 2, 10, false, 20, 110},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			typ, ok := Lookup(tc.name)
			if !ok {
				t.Fatalf("%s not found", tc.name)
			}
			if typ.MaxENIs != tc.enis || typ.IPv4PerENI != tc.ips {
				t.Fatalf("%s: got %dx%d, want %dx%d", tc.name, typ.MaxENIs, typ.IPv4PerENI, tc.enis, tc.ips)
			}
			if typ.PrefixDelegation() != tc.prefix {
				t.Fatalf("%s: prefix delegation %v, want %v", tc.name, typ.PrefixDelegation(), tc.prefix)
			}
			if got, err := typ.MaxPods(MaxPodsOptions{}); err != nil || got.MaxAllowed != tc.maxPodsIP {
				t.Errorf("max pods IP mode: got %+v, %v, want %d", got, err, tc.maxPodsIP)
			}
			if tc.prefix {
				if got, err := typ.MaxPods(MaxPodsOptions{Prefix: true}); err != nil || got.Recommended != tc.maxPodsPfx {
					t.Errorf("max pods prefix mode: got %+v, %v, want %d", got, err, tc.maxPodsPfx)
				}
			}
		})
	}
	if _, ok := Lookup("x9.nonexistent"); ok {
		t.Fatal("unknown type found")
	}
}
