package ctl

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestLaunchHintCommand: launch-hint against a dev server, in every output form, and its
// usage errors. The default policy with 4 expected pods wants 4 in use + 4 free on an m5.large
// (9 on the primary interface); a policy that is not there is NOT_FOUND (exit 1).
func TestLaunchHintCommand(t *testing.T) {
	s := startDev(t)
	addr := s.GRPCAddr()

	r := mustCtl(t, 0, addr, "launch-hint", "--policy", "default", "--instance-type", "m5.large", "--expected-pods", "4", "-o", "json")
	var d LaunchHintDoc
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if d.SecondaryPrivateIPAddressCount != 8 || d.IPv4PrefixCount != 0 || d.Mode != "secondary_ip" || d.InterfaceLimit != 9 || d.Capped || d.Karpenter != KarpenterNote {
		t.Fatalf("hint: %+v", d)
	}
	// Capped at the interface: 20 expected pods want 36, cut to the type's 27 (3 ENIs x 9); its primary takes 9.
	r = mustCtl(t, 0, addr, "launch-hint", "--policy", "default", "--instance-type", "m5.large", "--expected-pods", "20", "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatal(err)
	}
	if d.SecondaryPrivateIPAddressCount != 9 || !d.Capped || d.Want != 27 {
		t.Fatalf("capped hint: %+v", d)
	}

	r = mustCtl(t, 0, addr, "launch-hint", "--policy", "default", "--instance-type", "m5.large", "--expected-pods", "4", "-o", "launch-template", "--security-group", "sg-0123456789abcdef0")
	var lt struct {
		NetworkInterfaces []map[string]any
	}
	if err := json.Unmarshal([]byte(r.stdout), &lt); err != nil {
		t.Fatalf("launch template: %v\n%s", err, r.stdout)
	}
	if len(lt.NetworkInterfaces) != 1 || lt.NetworkInterfaces[0]["SecondaryPrivateIpAddressCount"] != float64(8) ||
		lt.NetworkInterfaces[0]["DeviceIndex"] != float64(0) || lt.NetworkInterfaces[0]["Groups"].([]any)[0] != "sg-0123456789abcdef0" {
		t.Fatalf("launch template: %s", r.stdout)
	}
	for format, want := range map[string]string{
		"cli":       "SecondaryPrivateIpAddressCount=8,Groups=[NODE_SECURITY_GROUP_ID]",
		"eksctl":    "instanceType: m5.large",
		"terraform": "ipv4_address_count    = 8",
		"table":     "8 secondary address(es) on the primary interface",
		"yaml":      "secondary_private_ip_address_count: 8",
	} {
		r = mustCtl(t, 0, addr, "launch-hint", "--policy", "default", "--instance-type", "m5.large", "--expected-pods", "4", "-o", format)
		if !strings.Contains(r.stdout, want) {
			t.Errorf("-o %s lacks %q:\n%s", format, want, r.stdout)
		}
	}

	r = mustCtl(t, 1, addr, "launch-hint", "--policy", "nope", "--instance-type", "m5.large")
	if !strings.Contains(r.stderr, "nope") {
		t.Fatalf("unknown policy: %s", r)
	}
	for _, args := range [][]string{
		{"launch-hint", "--instance-type", "m5.large"},
		{"launch-hint", "--policy", "default"},
		{"launch-hint", "--policy", "default", "--instance-type", "m5.larg"},
		{"launch-hint", "--policy", "default", "--instance-type", "m5.large", "--expected-pods", "-3"},
		{"launch-hint", "--policy", "default", "--instance-type", "m5.large", "--security-group", "default"},
		{"launch-hint", "--policy", "default", "--instance-type", "m5.large", "-o", "html"},
		{"nodes", "-o", "terraform"},
	} {
		mustCtl(t, 2, addr, args...)
	}
}
