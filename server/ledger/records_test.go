package ledger

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNewCooldown(t *testing.T) {
	for _, tc := range []struct {
		in, want time.Duration
	}{{0, DefaultReleaseCooldown}, {5 * time.Second, 5 * time.Second}, {-1, 0}} {
		if got := New(Options{ReleaseCooldown: tc.in}).cooldown; got != tc.want {
			t.Errorf("cooldown for %v = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestPutSubnetFresh(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/24"))
	b := mustBudget(t, l, "s1", t0)
	want := Budget{SubnetID: "s1", AvailabilityZone: "us-east-1a", CIDR: pfx("10.0.0.0/24"), Size: 256, Reserved: 5,
		Free: 251, FreePrefixes: 14, Headroom: 251}
	if b != want {
		t.Fatalf("budget = %+v\nwant %+v", b, want)
	}
	for _, a := range ips("10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.255") {
		if info, ok := l.OwnerOf(a); !ok || info.Kind != OwnerReserved || info.SubnetID != "s1" {
			t.Errorf("OwnerOf(%v) = %+v, %v; want reserved", a, info, ok)
		}
	}
	if info, ok := l.OwnerOf(ip("10.0.0.4")); ok || info.Kind != OwnerFree || info.SubnetID != "s1" {
		t.Errorf("OwnerOf(.4) = %+v, %v; want free in s1", info, ok)
	}
	if _, ok := l.OwnerOf(ip("10.0.1.4")); ok {
		t.Errorf("OwnerOf(address in no subnet) reported an owner")
	}
	if info, ok := l.OwnerOf(ip("::ffff:10.0.0.9")); ok || info.SubnetID != "" {
		t.Errorf("OwnerOf(IPv4-mapped IPv6) = %+v, %v", info, ok)
	}
	if _, err := l.Budget("nope", t0); err == nil {
		t.Errorf("Budget of an unknown subnet: no error")
	} else {
		wantErr(t, err, ErrUnknownSubnet)
	}
	if _, ok := l.Subnet("nope"); ok {
		t.Errorf("Subnet found an unknown subnet")
	}
	// The smallest and largest sizes AWS allows.
	mustPutSubnet(t, l, subnetRec("small", "10.1.0.0/28"))
	mustPutSubnet(t, l, subnetRec("big", "10.2.0.0/16"))
	if b := mustBudget(t, l, "small", t0); b.Free != 11 || b.FreePrefixes != 0 {
		t.Errorf("/28 budget = %+v", b)
	}
	if b := mustBudget(t, l, "big", t0); b.Free != 65531 || b.FreePrefixes != 4094 {
		t.Errorf("/16 budget = %+v", b)
	}
	if got := l.Subnets(); len(got) != 3 || got[0].ID != "big" || got[2].ID != "small" {
		t.Errorf("Subnets() not sorted by id: %v", got)
	}
}

func TestPutSubnetErrors(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/24"))
	mustPutNode(t, l, nodeRec("a", "s1", "10.0.0.10"))
	mod := func(f func(*SubnetRecord)) SubnetRecord {
		r := subnetRec("s2", "10.0.1.0/24")
		f(&r)
		return r
	}
	for _, tc := range []struct {
		name string
		rec  SubnetRecord
		want error
	}{
		{"no id", mod(func(r *SubnetRecord) { r.ID = "" }), ErrInvalid},
		{"ipv6", mod(func(r *SubnetRecord) { r.CIDR = pfx("2001:db8::/64") }), ErrInvalid},
		{"no cidr", mod(func(r *SubnetRecord) { r.CIDR = netip.Prefix{} }), ErrInvalid},
		{"host bits", mod(func(r *SubnetRecord) { r.CIDR = pfx("10.0.1.1/24") }), ErrInvalid},
		{"too big", mod(func(r *SubnetRecord) { r.CIDR = pfx("10.2.0.0/15") }), ErrInvalid},
		{"too small", mod(func(r *SubnetRecord) { r.CIDR = pfx("10.0.1.0/29") }), ErrInvalid},
		{"negative max held", mod(func(r *SubnetRecord) { r.MaxHeld = -1 }), ErrInvalid},
		{"negative keep free", mod(func(r *SubnetRecord) { r.KeepFree = -1 }), ErrInvalid},
		{"foreign outside", mod(func(r *SubnetRecord) { r.Foreign = []AddrRange{{ip("10.0.1.9"), ip("10.0.2.1")}} }), ErrInvalid},
		{"foreign reversed", mod(func(r *SubnetRecord) { r.Foreign = []AddrRange{{ip("10.0.1.9"), ip("10.0.1.8")}} }), ErrInvalid},
		{"foreign ipv6", mod(func(r *SubnetRecord) { r.Foreign = []AddrRange{{ip("::1"), ip("::2")}} }), ErrInvalid},
		{"overlaps s1", mod(func(r *SubnetRecord) { r.CIDR = pfx("10.0.0.128/25") }), ErrConflict},
		{"contains s1", mod(func(r *SubnetRecord) { r.CIDR = pfx("10.0.0.0/16") }), ErrConflict},
		{"s1 cidr change in use", func() SubnetRecord { r := subnetRec("s1", "10.0.0.0/23"); return r }(), ErrInUse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snap(l, t0)
			wantErr(t, l.PutSubnet(tc.rec), tc.want)
			assertUnchanged(t, before, l, t0)
			assertInvariants(t, l)
		})
	}
}

func TestPutSubnetReplace(t *testing.T) {
	l := New(Options{})
	rec := subnetRec("s1", "10.0.0.0/24")
	rec.Foreign = []AddrRange{{ip("10.0.0.10"), ip("10.0.0.12")}, {ip("10.0.0.0"), ip("10.0.0.5")}}
	rec.ForeignScannedAt = t0
	mustPutSubnet(t, l, rec)
	// The reserved .0-.3 are not foreign; .4, .5 and .10-.12 are.
	if b := mustBudget(t, l, "s1", t0); b.Foreign != 5 || b.Free != 246 {
		t.Fatalf("budget = %+v, want foreign 5 free 246", b)
	}
	if info, ok := l.OwnerOf(ip("10.0.0.11")); !ok || info.Kind != OwnerForeign || info.Marked {
		t.Fatalf("OwnerOf(.11) = %+v", info)
	}
	mustPutNode(t, l, withAddrs(nodeRec("a", "s1", "10.0.0.20"), 0, "10.0.0.21"))
	l.MarkForeign("s1", ips("10.0.0.30"))
	assertInvariants(t, l)

	// A scan that lists the node's address: accepted, the node keeps it, the overlap is reported.
	rec.Foreign = []AddrRange{{ip("10.0.0.21"), ip("10.0.0.22")}}
	mustPutSubnet(t, l, rec)
	if b := mustBudget(t, l, "s1", t0); b.Foreign != 2 || b.Held != 2 {
		t.Fatalf("budget = %+v, want foreign 2 (.22 and the marked .30) held 2", b)
	}
	if info, _ := l.OwnerOf(ip("10.0.0.21")); info.Kind != OwnerLeased || info.Node != "a" || !info.Foreign {
		t.Fatalf("OwnerOf(.21) = %+v, want leased to a with a foreign claim", info)
	}
	c := l.Conflicts()
	if len(c) != 1 || c[0].Kind != ConflictForeignOverlap || c[0].Node != "a" || c[0].Address != "10.0.0.21" || c[0].ENI != "eni-a" {
		t.Fatalf("conflicts = %+v", c)
	}
	if info, _ := l.OwnerOf(ip("10.0.0.10")); info.Kind != OwnerFree {
		t.Fatalf(".10 should be free after the new scan: %+v", info)
	}

	// A budget change with the same scan keeps MarkForeign's addresses; a later scan drops them.
	rec.MaxHeld, rec.KeepFree = 100, 10
	mustPutSubnet(t, l, rec)
	if info, _ := l.OwnerOf(ip("10.0.0.30")); info.Kind != OwnerForeign || !info.Marked {
		t.Fatalf("marked address lost by a budget change: %+v", info)
	}
	if b := mustBudget(t, l, "s1", t0); b.MaxHeld != 100 || b.KeepFree != 10 {
		t.Fatalf("budget settings not applied: %+v", b)
	}
	rec.ForeignScannedAt = t0.Add(time.Minute)
	rec.Foreign = nil
	mustPutSubnet(t, l, rec)
	if info, _ := l.OwnerOf(ip("10.0.0.30")); info.Kind != OwnerFree {
		t.Fatalf("marked address kept after a fresh scan: %+v", info)
	}
	if c := l.Conflicts(); len(c) != 0 {
		t.Fatalf("conflicts after clean scan: %+v", c)
	}

	// An unused subnet may change its CIDR.
	mustPutSubnet(t, l, subnetRec("s2", "10.0.1.0/24"))
	mustPutSubnet(t, l, subnetRec("s2", "10.0.2.0/25"))
	if b := mustBudget(t, l, "s2", t0); b.Size != 128 || b.CIDR != pfx("10.0.2.0/25") {
		t.Fatalf("s2 after CIDR change: %+v", b)
	}
	if _, ok := l.OwnerOf(ip("10.0.1.9")); ok {
		t.Fatalf("old CIDR still known")
	}
}

func TestDeleteSubnet(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/24"))
	mustPutSubnet(t, l, subnetRec("s2", "10.0.1.0/24"))
	mustPutSubnet(t, l, subnetRec("s3", "10.0.2.0/24"))
	mustPutSubnet(t, l, subnetRec("s4", "10.0.3.0/24"))
	mustPutNode(t, l, nodeRec("a", "s1", "10.0.0.10"))
	// Node b lives in s4 but has an ENI in s2.
	b := nodeRec("b", "s4", "10.0.3.10")
	b.ENIs = append(b.ENIs, ENIRecord{ID: "eni-b2", SubnetID: "s2", PrimaryIP: ip("10.0.1.10")})
	mustPutNode(t, l, b)
	if err := l.PutPrewarm(PrewarmRecord{ID: "p1", SubnetID: "s3", State: PrewarmPending, NodeCount: 1}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   string
		want error
	}{{"s1", ErrInUse}, {"s2", ErrInUse}, {"s3", ErrInUse}, {"s4", ErrInUse}, {"nope", ErrUnknownSubnet}} {
		before := snap(l, t0)
		wantErr(t, l.DeleteSubnet(tc.id), tc.want)
		assertUnchanged(t, before, l, t0)
	}
	l.DeleteNode("a")
	wantErr(t, l.DeleteSubnet("s1"), nil)
	if _, ok := l.Subnet("s1"); ok {
		t.Fatal("s1 still there")
	}
	assertInvariants(t, l)
}

// fixture: s1 10.0.0.0/24 and s2 10.0.1.0/24; node a (primary .10, leases .11 .12 and
// 10.0.0.32/28); node b (primary .90) with .50 pending; pre-warm p1 with ENI eni-p1 (primary
// .60, address .61); .70 marked foreign; .80 foreign by scan.
func fixture(t *testing.T) *Ledger {
	t.Helper()
	l := New(Options{})
	s1 := subnetRec("s1", "10.0.0.0/24")
	s1.Foreign = []AddrRange{{ip("10.0.0.80"), ip("10.0.0.80")}}
	mustPutSubnet(t, l, s1)
	mustPutSubnet(t, l, subnetRec("s2", "10.0.1.0/24"))
	a := withPrefixes(withAddrs(nodeRec("a", "s1", "10.0.0.10"), 0, "10.0.0.11", "10.0.0.12"), 0, "10.0.0.32/28")
	mustPutNode(t, l, a)
	mustPutNode(t, l, nodeRec("b", "s1", "10.0.0.90"))
	wantErr(t, l.ReserveSpecific("s1", ips("10.0.0.50"), nil, Owner{Node: "b", ENI: "eni-b"}), nil)
	p1 := PrewarmRecord{ID: "p1", SubnetID: "s1", State: PrewarmReady, NodeCount: 1, AddressesPerNode: 1,
		ENIs: []PrewarmENI{{ID: "eni-p1", State: PrewarmENIReady, ClientToken: "tok", PrimaryIP: ip("10.0.0.60"), Addresses: ips("10.0.0.61")}}}
	wantErr(t, l.PutPrewarm(p1), nil)
	l.MarkForeign("s1", ips("10.0.0.70"))
	assertInvariants(t, l)
	return l
}

func TestPutNodeErrors(t *testing.T) {
	l := fixture(t)
	c := func(f func(r *NodeRecord)) NodeRecord {
		r := nodeRec("c", "s1", "10.0.0.100")
		f(&r)
		return r
	}
	addr := func(a string) NodeRecord {
		return c(func(r *NodeRecord) { *r = withAddrs(*r, 0, a) })
	}
	for _, tc := range []struct {
		name    string
		rec     NodeRecord
		want    error
		wantMsg string
	}{
		{"no name", c(func(r *NodeRecord) { r.Name = "" }), ErrInvalid, "without name"},
		{"no instance", c(func(r *NodeRecord) { r.InstanceID = "" }), ErrInvalid, "no instance"},
		{"no subnet", c(func(r *NodeRecord) { r.SubnetID = "" }), ErrInvalid, "no subnet"},
		{"bad mode", c(func(r *NodeRecord) { r.Mode = "ipvlan" }), ErrInvalid, "mode"},
		{"eni without id", c(func(r *NodeRecord) { r.ENIs[0].ID = "" }), ErrInvalid, "ENI record"},
		{"eni without primary", c(func(r *NodeRecord) { r.ENIs[0].PrimaryIP = netip.Addr{} }), ErrInvalid, "ENI record"},
		{"unknown subnet", c(func(r *NodeRecord) { r.ENIs[0].SubnetID = "s9" }), ErrUnknownSubnet, "s9"},
		{"primary outside subnet", c(func(r *NodeRecord) { r.ENIs[0].PrimaryIP = ip("10.0.1.5") }), ErrInvalid, "10.0.1.5"},
		{"ipv6 address", addr("2001:db8::1"), ErrInvalid, "2001:db8::1"},
		{"reserved address", addr("10.0.0.255"), ErrInvalid, "reserved"},
		{"address twice", c(func(r *NodeRecord) { *r = withAddrs(*r, 0, "10.0.0.101", "10.0.0.101") }), ErrInvalid, "twice"},
		{"address is own primary", addr("10.0.0.100"), ErrInvalid, "twice"},
		{"address inside own prefix", c(func(r *NodeRecord) { *r = withPrefixes(withAddrs(*r, 0, "10.0.0.113"), 0, "10.0.0.112/28") }), ErrInvalid, "twice"},
		{"unaligned prefix", c(func(r *NodeRecord) { *r = withPrefixes(*r, 0, "10.0.0.120/28") }), ErrInvalid, "aligned"},
		{"prefix not /28", c(func(r *NodeRecord) { *r = withPrefixes(*r, 0, "10.0.0.128/27") }), ErrInvalid, "aligned"},
		{"prefix outside subnet", c(func(r *NodeRecord) { *r = withPrefixes(*r, 0, "10.0.1.128/28") }), ErrInvalid, "outside"},
		{"unknown lease state", c(func(r *NodeRecord) {
			r.ENIs[0].Addresses = []LeasedAddress{{IP: ip("10.0.0.101"), State: "gone"}}
		}), ErrInvalid, "lease state"},
		{"unknown prefix state", c(func(r *NodeRecord) {
			r.ENIs[0].Prefixes = []LeasedPrefix{{Prefix: pfx("10.0.0.112/28")}}
		}), ErrInvalid, "lease state"},
		{"eni twice", c(func(r *NodeRecord) {
			r.ENIs = append(r.ENIs, ENIRecord{ID: "eni-c", SubnetID: "s1", PrimaryIP: ip("10.0.0.101")})
		}), ErrInvalid, "twice"},
		{"instance of a", c(func(r *NodeRecord) { r.InstanceID = "i-a" }), ErrConflict, "node a"},
		{"eni of a", c(func(r *NodeRecord) { r.ENIs[0].ID = "eni-a" }), ErrConflict, "node a"},
		{"lease of a", addr("10.0.0.11"), ErrConflict, "node a (lease on eni-a)"},
		{"primary of a", c(func(r *NodeRecord) { r.ENIs[0].PrimaryIP = ip("10.0.0.10") }), ErrConflict, "node a (primary"},
		{"inside a's prefix", addr("10.0.0.33"), ErrConflict, "node a"},
		{"prefix over a's lease", c(func(r *NodeRecord) { *r = withPrefixes(*r, 0, "10.0.0.0/28") }), ErrInvalid, "reserved"},
		{"prefix over a's prefix", c(func(r *NodeRecord) { *r = withPrefixes(*r, 0, "10.0.0.32/28") }), ErrConflict, "node a"},
		{"pending for b", addr("10.0.0.50"), ErrConflict, "node b (pending)"},
		{"pre-warm address on another ENI", addr("10.0.0.61"), ErrConflict, "pre-warm p1"},
		{"marked foreign", addr("10.0.0.70"), ErrConflict, "foreign"},
		{"a takes b's pending", func() NodeRecord {
			r := withAddrs(nodeRec("a", "s1", "10.0.0.10"), 0, "10.0.0.50")
			return r
		}(), ErrConflict, "node b (pending)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snap(l, t0)
			checkErr := l.CheckNode(tc.rec)
			assertUnchanged(t, before, l, t0)
			err := l.PutNode(tc.rec)
			wantErr(t, err, tc.want)
			if checkErr == nil || checkErr.Error() != err.Error() {
				t.Errorf("CheckNode said %v, PutNode %v", checkErr, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
			assertUnchanged(t, before, l, t0)
			assertInvariants(t, l)
		})
	}
}

func TestPutNodeAccepts(t *testing.T) {
	l := fixture(t)

	// b commits its pending .50.
	b := withAddrs(nodeRec("b", "s1", "10.0.0.90"), 0, "10.0.0.50")
	before := snap(l, t0)
	wantErr(t, l.CheckNode(b), nil)
	assertUnchanged(t, before, l, t0)
	mustPutNode(t, l, b)
	if info, _ := l.OwnerOf(ip("10.0.0.50")); info.Kind != OwnerLeased || info.Node != "b" || info.ENI != "eni-b" || info.State != LeaseActive {
		t.Fatalf("OwnerOf(.50) = %+v", info)
	}
	if nc, _ := l.NodeCounts("b"); nc.Pending != 0 || nc.Leased != 1 {
		t.Fatalf("counts of b = %+v", nc)
	}

	// A new ENI whose primary and addresses were reserved with ENI "" (not created yet).
	got, err := l.ReserveAddresses("s2", 3, Owner{Node: "b"}, t0)
	wantErr(t, err, nil)
	b.ENIs = append(b.ENIs, ENIRecord{ID: "eni-b2", SubnetID: "s2", PrimaryIP: got[0], DeviceIndex: 1, Managed: true,
		Addresses: []LeasedAddress{{IP: got[1], State: LeaseActive}, {IP: got[2], State: LeaseActive}}})
	mustPutNode(t, l, b)
	if bs := mustBudget(t, l, "s2", t0); bs.Held != 3 || bs.ENIPrimary != 1 || bs.Pending != 0 || bs.Idle != 2 {
		t.Fatalf("s2 budget = %+v", bs)
	}

	// An address only the foreign scan lists is accepted and reported.
	c := withAddrs(nodeRec("c", "s1", "10.0.0.100"), 0, "10.0.0.80")
	mustPutNode(t, l, c)
	if cs := l.Conflicts(); !slices.ContainsFunc(cs, func(x Conflict) bool {
		return x.Kind == ConflictForeignOverlap && x.Node == "c" && x.Address == "10.0.0.80"
	}) {
		t.Fatalf("no foreign-overlap conflict for .80: %+v", cs)
	}

	// Replacing a record frees what it no longer lists (without cooling).
	a := withAddrs(nodeRec("a", "s1", "10.0.0.10"), 0, "10.0.0.11")
	mustPutNode(t, l, a)
	for _, x := range ips("10.0.0.12", "10.0.0.32", "10.0.0.47") {
		if info, ok := l.OwnerOf(x); ok || !info.CoolingUntil.IsZero() {
			t.Fatalf("OwnerOf(%v) after replace = %+v, want free", x, info)
		}
	}
	// The same record again is a no-op.
	before = snap(l, t0)
	mustPutNode(t, l, a)
	assertUnchanged(t, before, l, t0)
}

func TestPrewarmHandoff(t *testing.T) {
	for _, order := range []string{"prewarm-updated-first", "node-deleted-first"} {
		t.Run(order, func(t *testing.T) {
			l := fixture(t)
			before := mustBudget(t, l, "s1", t0)
			// Node c attaches the pre-warm ENI: same ENI id, so its addresses pass to c.
			c := nodeRec("c", "s1", "10.0.0.100")
			c.ENIs = append(c.ENIs, ENIRecord{ID: "eni-p1", SubnetID: "s1", PrimaryIP: ip("10.0.0.60"), DeviceIndex: 1, Managed: true,
				Addresses: []LeasedAddress{{IP: ip("10.0.0.61"), State: LeaseActive}}})
			mustPutNode(t, l, c)
			if info, _ := l.OwnerOf(ip("10.0.0.60")); info.Kind != OwnerENIPrimary || info.Node != "c" || info.ENI != "eni-p1" {
				t.Fatalf("OwnerOf(.60) = %+v", info)
			}
			after := mustBudget(t, l, "s1", t0)
			if after.Held != before.Held+3 || after.PrewarmReserved != before.PrewarmReserved-2 || after.Free != before.Free-1 {
				t.Fatalf("budget before %+v after %+v", before, after)
			}
			p1, _ := l.Prewarm("p1")
			switch order {
			case "prewarm-updated-first":
				p1.ENIs[0].State, p1.ENIs[0].NodeName, p1.State = PrewarmENIAttached, "c", PrewarmConsumed
				wantErr(t, l.PutPrewarm(p1), nil)
				assertInvariants(t, l)
				l.DeleteNode("c")
				assertInvariants(t, l)
				if info, ok := l.OwnerOf(ip("10.0.0.60")); ok {
					t.Fatalf("attached ENI's address not freed with the node: %+v", info)
				}
			case "node-deleted-first":
				l.DeleteNode("c")
				assertInvariants(t, l)
				if info, _ := l.OwnerOf(ip("10.0.0.61")); info.Kind != OwnerPrewarm || info.Prewarm != "p1" {
					t.Fatalf("address did not return to the reservation: %+v", info)
				}
				if got := mustBudget(t, l, "s1", t0); got != before {
					t.Fatalf("budget after the node went: %+v, want %+v", got, before)
				}
			}
			if cs := l.Conflicts(); slices.ContainsFunc(cs, func(x Conflict) bool { return x.Kind == ConflictDoubleOwner }) {
				t.Fatalf("unexpected double owner: %+v", cs)
			}
		})
	}
}

func TestDoubleOwnerReported(t *testing.T) {
	l := fixture(t)
	c := nodeRec("c", "s1", "10.0.0.100")
	c.ENIs = append(c.ENIs, ENIRecord{ID: "eni-p1", SubnetID: "s1", PrimaryIP: ip("10.0.0.60"),
		Addresses: []LeasedAddress{{IP: ip("10.0.0.61"), State: LeaseActive}}})
	mustPutNode(t, l, c)
	// c lets go of the pre-warm ENI but keeps its address on its primary ENI: the reservation,
	// which still lists the ENI as ready, gets .60 back but .61 is c's.
	mustPutNode(t, l, withAddrs(nodeRec("c", "s1", "10.0.0.100"), 0, "10.0.0.61"))
	cs := l.Conflicts()
	i := slices.IndexFunc(cs, func(x Conflict) bool { return x.Kind == ConflictDoubleOwner })
	if i < 0 || cs[i].Address != "10.0.0.61" || cs[i].Node != "c" || !strings.Contains(cs[i].OtherOwner, "p1") {
		t.Fatalf("conflicts = %+v", cs)
	}
	if info, _ := l.OwnerOf(ip("10.0.0.60")); info.Kind != OwnerPrewarm {
		t.Fatalf("OwnerOf(.60) = %+v", info)
	}
}

func TestDeleteNode(t *testing.T) {
	l := fixture(t)
	l.Released("s1", ips("10.0.0.11"), nil, t0)
	l.SetUsage("b", ips("10.0.0.50"))
	l.DeleteNode("b")
	assertInvariants(t, l)
	if info, ok := l.OwnerOf(ip("10.0.0.50")); ok {
		t.Fatalf("b's pending survived: %+v", info)
	}
	if u := l.Usage("b"); u != nil {
		t.Fatalf("usage survived: %v", u)
	}
	// The instance id and ENI id are free for a new node.
	mustPutNode(t, l, func() NodeRecord {
		r := nodeRec("b2", "s1", "10.0.0.90")
		r.InstanceID, r.ENIs[0].ID = "i-b", "eni-b"
		return r
	}())

	l.DeleteNode("a")
	assertInvariants(t, l)
	for _, x := range ips("10.0.0.10", "10.0.0.11", "10.0.0.32", "10.0.0.47") {
		if info, ok := l.OwnerOf(x); ok || !info.CoolingUntil.IsZero() {
			t.Fatalf("OwnerOf(%v) = %+v, want free and not cooling", x, info)
		}
	}
	if _, ok := l.Node("a"); ok {
		t.Fatal("node a still there")
	}
	before := snap(l, t0)
	l.DeleteNode("nope")
	assertUnchanged(t, before, l, t0)
}

func TestNodeLookupsCopy(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/24"))
	in := withAddrs(nodeRec("z", "s1", "10.0.0.10"), 0, "10.0.0.11")
	in.Labels = map[string]string{"k": "v"}
	in.Proposal = &ReleaseProposal{ID: "r1", Items: []string{"10.0.0.11"}}
	mustPutNode(t, l, in)
	mustPutNode(t, l, nodeRec("a", "s1", "10.0.0.20"))
	in.Labels["k"] = "changed"
	in.ENIs[0].Addresses[0].State = LeaseReleasing
	in.Proposal.Items[0] = "x"

	got, ok := l.Node("z")
	if !ok || got.Labels["k"] != "v" || got.ENIs[0].Addresses[0].State != LeaseActive || got.Proposal.Items[0] != "10.0.0.11" {
		t.Fatalf("ledger shares memory with the caller's record: %+v", got)
	}
	got.ENIs[0].Addresses[0].IP = ip("10.0.0.99")
	again, _ := l.Node("z")
	if again.ENIs[0].Addresses[0].IP != ip("10.0.0.11") {
		t.Fatal("returned record shares memory with the ledger")
	}
	if byInst, ok := l.NodeByInstance("i-z"); !ok || byInst.Name != "z" {
		t.Fatalf("NodeByInstance = %v, %v", byInst.Name, ok)
	}
	if _, ok := l.NodeByInstance("i-nope"); ok {
		t.Fatal("NodeByInstance found an unknown instance")
	}
	if _, ok := l.Node("nope"); ok {
		t.Fatal("Node found an unknown node")
	}
	if ns := l.Nodes(); len(ns) != 2 || ns[0].Name != "a" || ns[1].Name != "z" {
		t.Fatalf("Nodes() not sorted: %v", ns)
	}
}

func TestPutPrewarmErrors(t *testing.T) {
	l := fixture(t)
	p := func(f func(r *PrewarmRecord)) PrewarmRecord {
		r := PrewarmRecord{ID: "p2", SubnetID: "s1", State: PrewarmPending, NodeCount: 2, AddressesPerNode: 3,
			ENIs: []PrewarmENI{{ID: "eni-p2", State: PrewarmENIReady, PrimaryIP: ip("10.0.0.150"), Addresses: ips("10.0.0.151")}}}
		f(&r)
		return r
	}
	for _, tc := range []struct {
		name string
		rec  PrewarmRecord
		want error
	}{
		{"no id", p(func(r *PrewarmRecord) { r.ID = "" }), ErrInvalid},
		{"bad state", p(func(r *PrewarmRecord) { r.State = "warm" }), ErrInvalid},
		{"negative count", p(func(r *PrewarmRecord) { r.NodeCount = -1 }), ErrInvalid},
		{"bad eni state", p(func(r *PrewarmRecord) { r.ENIs[0].State = "" }), ErrInvalid},
		{"unknown subnet", p(func(r *PrewarmRecord) { r.SubnetID = "s9" }), ErrUnknownSubnet},
		{"address outside", p(func(r *PrewarmRecord) { r.ENIs[0].Addresses = ips("10.0.1.5") }), ErrInvalid},
		{"reserved address", p(func(r *PrewarmRecord) { r.ENIs[0].Addresses = ips("10.0.0.1") }), ErrInvalid},
		{"address twice", p(func(r *PrewarmRecord) { r.ENIs[0].Addresses = ips("10.0.0.150") }), ErrInvalid},
		{"eni twice", p(func(r *PrewarmRecord) { r.ENIs = append(r.ENIs, PrewarmENI{ID: "eni-p2", State: PrewarmENICreating}) }), ErrInvalid},
		{"eni of p1", p(func(r *PrewarmRecord) { r.ENIs[0].ID = "eni-p1" }), ErrConflict},
		{"leased to a", p(func(r *PrewarmRecord) { r.ENIs[0].Addresses = ips("10.0.0.11") }), ErrConflict},
		{"p1's address", p(func(r *PrewarmRecord) { r.ENIs[0].Addresses = ips("10.0.0.61") }), ErrConflict},
		{"pending for b", p(func(r *PrewarmRecord) { r.ENIs[0].Addresses = ips("10.0.0.50") }), ErrConflict},
		{"marked foreign", p(func(r *PrewarmRecord) { r.ENIs[0].Addresses = ips("10.0.0.70") }), ErrConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snap(l, t0)
			wantErr(t, l.CheckPrewarm(tc.rec), tc.want)
			wantErr(t, l.PutPrewarm(tc.rec), tc.want)
			assertUnchanged(t, before, l, t0)
		})
	}
	// An attached ENI claims nothing, so its addresses are not checked against owners.
	wantErr(t, l.PutPrewarm(p(func(r *PrewarmRecord) {
		r.ENIs[0].State, r.ENIs[0].Addresses, r.ENIs[0].NodeName = PrewarmENIAttached, ips("10.0.0.11"), "a"
	})), nil)
	assertInvariants(t, l)
}

func TestPrewarmBudget(t *testing.T) {
	l := New(Options{})
	rec := subnetRec("s1", "10.0.0.0/24")
	rec.MaxHeld = 20
	mustPutSubnet(t, l, rec)
	mustPutNode(t, l, nodeRec("a", "s1", "10.0.0.10"))
	p := PrewarmRecord{ID: "p1", SubnetID: "s1", State: PrewarmPending, NodeCount: 3, AddressesPerNode: 4, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	wantErr(t, l.PutPrewarm(p), nil)
	assertInvariants(t, l)
	b := mustBudget(t, l, "s1", t0)
	if b.PrewarmReserved != 15 || b.Free != 251-1-15 || b.Headroom != 20-16 {
		t.Fatalf("budget with reservation = %+v", b)
	}
	// The node may not take more than the headroom...
	_, err := l.ReserveAddresses("s1", 5, Owner{Node: "a"}, t0)
	wantErr(t, err, ErrBudgetExhausted)
	// ...but the reservation's own number covers its addresses.
	got, err := l.ReserveAddresses("s1", 5, Owner{Prewarm: "p1"}, t0)
	wantErr(t, err, nil)
	assertInvariants(t, l)
	if b2 := mustBudget(t, l, "s1", t0); b2.PrewarmReserved != 15 || b2.Pending != 5 || b2.Headroom != 4 {
		t.Fatalf("budget after pre-warm reserve = %+v", b2)
	}
	// The ENI is created: pending becomes the pre-warm's addresses; the total stays.
	p.State = PrewarmReady
	p.ENIs = []PrewarmENI{{ID: "eni-p1", State: PrewarmENIReady, ClientToken: "t1", PrimaryIP: got[0], Addresses: got[1:]}}
	wantErr(t, l.PutPrewarm(p), nil)
	assertInvariants(t, l)
	if b3 := mustBudget(t, l, "s1", t0); b3.PrewarmReserved != 15 || b3.Pending != 0 || b3.Free != b.Free {
		t.Fatalf("budget after ENI = %+v", b3)
	}
	if info, _ := l.OwnerOf(got[0]); info.Kind != OwnerPrewarm || info.Prewarm != "p1" || info.ENI != "eni-p1" {
		t.Fatalf("OwnerOf(pre-warm primary) = %+v", info)
	}
	// Attached to a node: that slot is consumed; the rest stays reserved as a number.
	p.ENIs[0].State, p.ENIs[0].NodeName = PrewarmENIAttached, "a"
	wantErr(t, l.PutPrewarm(p), nil)
	assertInvariants(t, l)
	if b4 := mustBudget(t, l, "s1", t0); b4.PrewarmReserved != 10 {
		t.Fatalf("budget after attach = %+v", b4)
	}
	// Expired: nothing held as a number, but a not attached ENI's addresses stay until it is deleted.
	p.State = PrewarmExpired
	p.ENIs[0].State = PrewarmENIDeleting
	wantErr(t, l.PutPrewarm(p), nil)
	if b5 := mustBudget(t, l, "s1", t0); b5.PrewarmReserved != 5 {
		t.Fatalf("budget after expiry = %+v", b5)
	}
	_, err = l.ReserveAddresses("s1", 1, Owner{Prewarm: "p1"}, t0)
	wantErr(t, err, nil)
	l.DeletePrewarm("p1")
	assertInvariants(t, l)
	if b6 := mustBudget(t, l, "s1", t0); b6.PrewarmReserved != 0 || b6.Pending != 0 || b6.Free != 250 {
		t.Fatalf("budget after delete = %+v", b6)
	}
	if _, ok := l.Prewarm("p1"); ok {
		t.Fatal("p1 still there")
	}
	before := snap(l, t0)
	l.DeletePrewarm("p1")
	assertUnchanged(t, before, l, t0)
}

func TestPrewarmVirtualCappedAtFree(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/28"))
	wantErr(t, l.PutPrewarm(PrewarmRecord{ID: "p1", SubnetID: "s1", State: PrewarmPending, NodeCount: 10, AddressesPerNode: 10}), nil)
	assertInvariants(t, l)
	if b := mustBudget(t, l, "s1", t0); b.PrewarmReserved != 11 || b.Free != 0 || b.Headroom != 0 {
		t.Fatalf("budget = %+v", b)
	}
	if ps := l.Prewarms(); len(ps) != 1 || ps[0].ID != "p1" {
		t.Fatalf("Prewarms() = %v", ps)
	}
}

// A foreign scan older than the node that holds an address is not a conflict (the node
// registered after the scan; its record wins until the next scan), a newer scan is, and so is
// an address EC2 refused (MarkForeign) whatever the times.
func TestForeignScanOlderThanTheNodeIsNoConflict(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		scanned  time.Time
		mark     bool
		conflict bool
	}{
		{"scan before the node", t0.Add(-time.Second), false, false},
		{"scan at the node's registration", t0, false, false},
		{"scan after the node", t0.Add(time.Second), false, true},
		{"refused by EC2", t0.Add(-time.Second), true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := New(Options{})
			s := subnetRec("s1", "10.0.0.0/24")
			s.Foreign = []AddrRange{{First: ip("10.0.0.10"), Last: ip("10.0.0.11")}}
			s.ForeignScannedAt = tc.scanned
			mustPutSubnet(t, l, s)
			n := withAddrs(nodeRec("a", "s1", "10.0.0.10"), 0, "10.0.0.11")
			n.RegisteredAt = t0
			mustPutNode(t, l, n)
			if tc.mark {
				l.MarkForeign("s1", ips("10.0.0.11"))
			}
			got := l.Conflicts()
			if tc.conflict != (len(got) > 0) {
				t.Fatalf("conflicts %+v; want a conflict: %v", got, tc.conflict)
			}
			for _, c := range got {
				if c.Kind != ConflictForeignOverlap || c.Node != "a" {
					t.Fatalf("unexpected conflict %+v", c)
				}
			}
			assertInvariants(t, l)
		})
	}
}
