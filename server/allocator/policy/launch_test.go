package policy

import (
	"strings"
	"testing"

	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

func mustType(t *testing.T, name string) instancetypes.Type {
	t.Helper()
	typ, ok := instancetypes.Lookup(name)
	if !ok {
		t.Fatalf("unknown type %s", name)
	}
	return typ
}

func hasText(list []string, s string) bool {
	for _, x := range list {
		if strings.Contains(x, s) {
			return true
		}
	}
	return false
}

func TestComputeLaunchHint(t *testing.T) {
	m5x := mustType(t, "m5.xlarge") // 15 per ENI: 14 on the primary
	roomy := []LaunchSubnet{{ID: "subnet-a", Free: 4000, FreeBlocks: 240}}
	adaptive := Default()

	// Adaptive: 6 first-minute starts want 6 in use + 6 free.
	h := ComputeLaunchHint(LaunchInputs{Policy: adaptive, Type: m5x, FirstMinute: 6, Observed: 9, Subnets: roomy})
	if h.SecondaryAddresses != 12 || h.Prefixes != 0 || h.Mode != ledger.ModeSecondaryIP || h.Capped || h.PreferPrefixes || len(h.Warnings) != 0 {
		t.Fatalf("adaptive: %+v", h)
	}
	// Nothing observed: the floor (1 free) for an empty node, and the reason says so.
	h = ComputeLaunchHint(LaunchInputs{Policy: adaptive, Type: m5x, Subnets: roomy})
	if h.SecondaryAddresses != 1 || !hasText(h.Reasons, "no new node") {
		t.Fatalf("unobserved: %+v", h)
	}
	// Static: warm_ip_target 3 + minimum 10 with 4 pods: max(4+3, 10).
	static := Policy{Name: "s", Mode: ledger.ModeSecondaryIP, WarmIPTarget: U32(3), MinimumIPTarget: U32(10)}
	if h = ComputeLaunchHint(LaunchInputs{Policy: static, Type: m5x, FirstMinute: 4, Subnets: roomy}); h.SecondaryAddresses != 10 {
		t.Fatalf("static: %+v", h)
	}
	// Cut to the primary interface: 13 pods want 26.
	if h = ComputeLaunchHint(LaunchInputs{Policy: adaptive, Type: m5x, FirstMinute: 13, Subnets: roomy}); h.SecondaryAddresses != 14 || !h.Capped || h.Want != 26 || !hasText(h.Warnings, "another ENI") {
		t.Fatalf("capped: %+v", h)
	}
	// A prefix policy: prefixes, rounded up.
	pfx := Policy{Name: "p", Mode: ledger.ModePrefix, AdaptiveFloor: U32(1), AdaptiveCap: U32(16)}
	if h = ComputeLaunchHint(LaunchInputs{Policy: pfx, Type: m5x, FirstMinute: 10, Subnets: roomy}); h.Prefixes != 2 || h.SecondaryAddresses != 0 || h.PodAddresses != 32 || h.Mode != ledger.ModePrefix || h.PreferPrefixes {
		t.Fatalf("prefix policy: %+v", h)
	}
	// Subnets shared with prefix-mode nodes: a secondary policy on Nitro gets prefixes, and why.
	shared := []LaunchSubnet{{ID: "subnet-a", Free: 4000, FreeBlocks: 240, PrefixNodes: 3}}
	h = ComputeLaunchHint(LaunchInputs{Policy: adaptive, Type: m5x, FirstMinute: 6, Subnets: shared})
	if h.Prefixes != 1 || h.SecondaryAddresses != 0 || !h.PreferPrefixes || h.Mode != ledger.ModePrefix || !hasText(h.Warnings, "3 prefix-mode node(s)") || !hasText(h.Warnings, "at random") {
		t.Fatalf("shared: %+v", h)
	}
	// Whole blocks scarce (fewer than 8, or under a quarter of the free space): prefixes too,
	// with the warning that launches fail once the blocks are gone.
	for _, sub := range []LaunchSubnet{{ID: "subnet-b", Free: 500, FreeBlocks: 5}, {ID: "subnet-c", Free: 4000, FreeBlocks: 40}} {
		h = ComputeLaunchHint(LaunchInputs{Policy: adaptive, Type: m5x, FirstMinute: 6, Subnets: []LaunchSubnet{sub}})
		if !h.PreferPrefixes || h.Prefixes != 1 || !hasText(h.Warnings, "scarce") || !hasText(h.Warnings, "InsufficientFreeAddressesInSubnet") {
			t.Fatalf("scarce %+v: %+v", sub, h)
		}
	}
	// A Xen type cannot take prefixes: addresses, with the warning.
	xen := mustType(t, "m4.xlarge")
	h = ComputeLaunchHint(LaunchInputs{Policy: adaptive, Type: xen, FirstMinute: 6, Subnets: shared})
	if h.PreferPrefixes || h.Prefixes != 0 || h.SecondaryAddresses != 12 || !hasText(h.Warnings, "not Nitro-based") {
		t.Fatalf("xen: %+v", h)
	}
	// warm_eni_target still costs each node its warm ENI; a selector without the type is named.
	eni := Policy{Name: "e", Mode: ledger.ModeSecondaryIP, WarmENITarget: U32(1), Selector: Selector{InstanceTypes: []string{"m5.large"}}}
	h = ComputeLaunchHint(LaunchInputs{Policy: eni, Type: m5x, FirstMinute: 2, Subnets: roomy})
	if !hasText(h.Warnings, "warm_eni_target") || !hasText(h.Warnings, "selects instance types m5.large") {
		t.Fatalf("warm ENI: %+v", h)
	}
}

func TestModeForLaunch(t *testing.T) {
	m5, xen := mustType(t, "m5.large"), mustType(t, "m4.large")
	sec, pfx := Default(), Policy{Name: "p", Mode: ledger.ModePrefix}
	for _, c := range []struct {
		p         Policy
		t         instancetypes.Type
		ips, pfxs int
		want      ledger.AddressMode
		msg       bool
	}{
		{sec, m5, 0, 0, ledger.ModeSecondaryIP, false},
		{pfx, m5, 0, 0, ledger.ModePrefix, false},
		{sec, m5, 3, 0, ledger.ModeSecondaryIP, false},
		{pfx, m5, 3, 0, ledger.ModeSecondaryIP, true},
		{sec, m5, 0, 1, ledger.ModePrefix, true},
		{pfx, m5, 0, 1, ledger.ModePrefix, false},
		{sec, xen, 0, 1, ledger.ModeSecondaryIP, false},
		{pfx, m5, 2, 1, ledger.ModePrefix, false},
	} {
		got, msg := ModeForLaunch(c.p, c.t, c.ips, c.pfxs)
		if got != c.want || (msg != "") != c.msg {
			t.Errorf("ModeForLaunch(%s, %s, %d, %d) = %s, %q; want %s (message %v)", c.p.Name, c.t.Name, c.ips, c.pfxs, got, msg, c.want, c.msg)
		}
	}
}
