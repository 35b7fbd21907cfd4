package ledger

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// brokenBlocks lists the /28 blocks of a subnet with at least one address not free.
func brokenBlocks(t *testing.T, l *Ledger, id string) []int {
	t.Helper()
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []int
	for b, o := range l.subnets[id].occ {
		if o > 0 {
			out = append(out, b)
		}
	}
	return out
}

func addrRange(first string, n int) []netip.Addr {
	a := ip(first)
	out := make([]netip.Addr, n)
	for i := range out {
		out[i] = a
		a = a.Next()
	}
	return out
}

func TestReserveErrors(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/24"))
	mustPutSubnet(t, l, subnetRec("s2", "10.0.1.0/24"))
	capped := subnetRec("capped", "10.0.2.0/24")
	capped.MaxHeld = 4
	mustPutSubnet(t, l, capped)
	keep := subnetRec("keep", "10.0.3.0/28")
	keep.KeepFree = 9
	mustPutSubnet(t, l, keep)
	mustPutSubnet(t, l, subnetRec("tiny", "10.0.4.0/28"))
	mustPutNode(t, l, nodeRec("a", "s1", "10.0.0.4"))
	wantErr(t, l.PutPrewarm(PrewarmRecord{ID: "p1", SubnetID: "s2", State: PrewarmPending, NodeCount: 1, AddressesPerNode: 1}), nil)
	// Fragment s2: one address taken in every block.
	frag := nodeRec("f", "s2", "10.0.1.4")
	for b := 1; b < 16; b++ {
		frag = withAddrs(frag, 0, addrOf(u32(ip("10.0.1.0"))+uint32(b*16)).String())
	}
	mustPutNode(t, l, frag)
	l.Released("tiny", addrRange("10.0.4.4", 11), nil, t0)

	a := Owner{Node: "a"}
	addrs := func(subnet string, n int, o Owner) func() error {
		return func() error { _, err := l.ReserveAddresses(subnet, n, o, t0); return err }
	}
	prefixes := func(subnet string, n int, o Owner) func() error {
		return func() error { _, err := l.ReservePrefixes(subnet, n, o, t0); return err }
	}
	for _, tc := range []struct {
		name    string
		call    func() error
		want    error
		wantMsg string
	}{
		{"zero addresses", addrs("s1", 0, a), ErrInvalid, ""},
		{"zero prefixes", prefixes("s1", 0, a), ErrInvalid, ""},
		{"no owner", addrs("s1", 1, Owner{}), ErrInvalid, "exactly one"},
		{"two owners", addrs("s1", 1, Owner{Node: "a", Prewarm: "p1"}), ErrInvalid, "exactly one"},
		{"unknown subnet", addrs("nope", 1, a), ErrUnknownSubnet, "nope"},
		{"unknown node", addrs("s1", 1, Owner{Node: "zz"}), ErrUnknownNode, "zz"},
		{"unknown pre-warm", prefixes("s1", 1, Owner{Prewarm: "zz"}), ErrUnknownPrewarm, "zz"},
		{"pre-warm in another subnet", addrs("s1", 1, Owner{Prewarm: "p1"}), ErrInvalid, "s2"},
		{"exhausted", addrs("s1", 251, a), ErrSubnetExhausted, "250 placeable"},
		{"all cooling", addrs("tiny", 1, a), ErrSubnetExhausted, "11 more cooling"},
		{"prefix exhausted", prefixes("tiny", 1, a), ErrSubnetExhausted, ""},
		{"prefix fragmented", prefixes("s2", 1, a), ErrNoFreePrefixBlock, "0 whole"},
		{"two prefixes, one block", prefixes("s1", 15, a), ErrNoFreePrefixBlock, "14 whole"},
		{"max held", addrs("capped", 5, a), ErrBudgetExhausted, "headroom 4"},
		{"max held prefix", prefixes("capped", 1, a), ErrBudgetExhausted, "headroom 4"},
		{"keep free", addrs("keep", 3, a), ErrBudgetExhausted, "headroom 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := snap(l, t0)
			err := tc.call()
			wantErr(t, err, tc.want)
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
			assertUnchanged(t, before, l, t0)
		})
	}
	// IgnoreBudget passes the cap; the budget reports it with no headroom.
	got, err := l.ReserveAddresses("capped", 5, Owner{Node: "a", IgnoreBudget: true}, t0)
	wantErr(t, err, nil)
	if len(got) != 5 {
		t.Fatalf("got %v", got)
	}
	if b := mustBudget(t, l, "capped", t0); b.Held != 5 || b.Headroom != 0 || b.Pending != 5 {
		t.Fatalf("budget = %+v", b)
	}
	// The pre-warm's own number covers it even where the headroom would not.
	_, err = l.ReserveAddresses("s2", 2, Owner{Prewarm: "p1"}, t0)
	wantErr(t, err, nil)
	assertInvariants(t, l)
}

func TestPlacementPacksBrokenBlocks(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/24"))
	mustPutNode(t, l, nodeRec("a", "s1", "10.0.0.4"))
	got, err := l.ReserveAddresses("s1", 40, Owner{Node: "a", ENI: "eni-a"}, t0)
	wantErr(t, err, nil)
	assertInvariants(t, l)
	// Block 0 (.0-.15: reserved + primary, 11 free) is the fullest, then block 15 (.240-.255:
	// broadcast, 15 free), then one fresh block (.16-.29) for the last 14.
	want := slices.Concat(addrRange("10.0.0.5", 11), addrRange("10.0.0.240", 15), addrRange("10.0.0.16", 14))
	if !slices.Equal(got, want) {
		t.Fatalf("placed %v\nwant   %v", got, want)
	}
	if bb := brokenBlocks(t, l, "s1"); !slices.Equal(bb, []int{0, 1, 15}) {
		t.Fatalf("broken blocks %v, want [0 1 15]", bb)
	}
	if b := mustBudget(t, l, "s1", t0); b.FreePrefixes != 13 || b.Pending != 40 || b.Held != 41 || b.Idle != 40 {
		t.Fatalf("budget = %+v", b)
	}
	info, _ := l.OwnerOf(got[0])
	if info.Kind != OwnerPending || info.Node != "a" || info.ENI != "eni-a" || info.Prefix.IsValid() {
		t.Fatalf("OwnerOf(pending) = %+v", info)
	}
	// Determinism: the same state gives the same addresses.
	l2 := New(Options{})
	mustPutSubnet(t, l2, subnetRec("s1", "10.0.0.0/24"))
	mustPutNode(t, l2, nodeRec("a", "s1", "10.0.0.4"))
	got2, _ := l2.ReserveAddresses("s1", 40, Owner{Node: "a", ENI: "eni-a"}, t0)
	if !slices.Equal(got, got2) {
		t.Fatalf("placement not deterministic: %v vs %v", got, got2)
	}
}

func TestPlacementFragmented(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/24"))
	// Block 5 has 1 address taken, block 9 ten, block 12 fifteen (full but for .207), block 0
	// the four reserved plus the primary.
	a := withAddrs(nodeRec("a", "s1", "10.0.0.4"), 0, "10.0.0.80")
	for _, x := range addrRange("10.0.0.144", 10) {
		a = withAddrs(a, 0, x.String())
	}
	for _, x := range addrRange("10.0.0.192", 15) {
		a = withAddrs(a, 0, x.String())
	}
	mustPutNode(t, l, a)
	// A cooling address in block 9 is skipped.
	l.Released("s1", ips("10.0.0.154"), nil, t0)
	before := brokenBlocks(t, l, "s1")

	got, err := l.ReserveAddresses("s1", 3, Owner{Node: "a"}, t0)
	wantErr(t, err, nil)
	// Block 12 (1 room) first, then block 9 (6 addresses not occupied, one cooling: 5 room).
	if want := ips("10.0.0.207", "10.0.0.155", "10.0.0.156"); !slices.Equal(got, want) {
		t.Fatalf("placed %v, want %v", got, want)
	}
	got, err = l.ReserveAddresses("s1", 10, Owner{Node: "a"}, t0)
	wantErr(t, err, nil)
	// Block 9's last 3 (.157-.159), then block 0 (11 room) before block 5 and 15 (15 room).
	if want := slices.Concat(addrRange("10.0.0.157", 3), addrRange("10.0.0.5", 7)); !slices.Equal(got, want) {
		t.Fatalf("placed %v, want %v", got, want)
	}
	if after := brokenBlocks(t, l, "s1"); !slices.Equal(before, after) {
		t.Fatalf("a whole block was broken while broken blocks had room: %v -> %v", before, after)
	}
	assertInvariants(t, l)
	// After the cooldown the address is placeable again.
	got, err = l.ReserveAddresses("s1", 1, Owner{Node: "a"}, t0.Add(DefaultReleaseCooldown))
	wantErr(t, err, nil)
	if got[0] != ip("10.0.0.154") {
		t.Fatalf("placed %v, want the cooled .154 (block 9 is the fullest)", got)
	}
}

func TestPlacementFreshBlockFromShortestRun(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/24"))
	// Free runs of blocks: 1-7 (7 blocks) and 9-14 (6 blocks).
	mustPutNode(t, l, withAddrs(nodeRec("a", "s1", "10.0.0.4"), 0, "10.0.0.130"))
	// Fill every broken block: block 0 (11), 8 (15), 15 (15).
	_, err := l.ReserveAddresses("s1", 41, Owner{Node: "a"}, t0)
	wantErr(t, err, nil)
	if bb := brokenBlocks(t, l, "s1"); !slices.Equal(bb, []int{0, 8, 15}) {
		t.Fatalf("broken blocks %v", bb)
	}
	got, err := l.ReserveAddresses("s1", 1, Owner{Node: "a"}, t0)
	wantErr(t, err, nil)
	if got[0] != ip("10.0.0.144") {
		t.Fatalf("placed %v, want 10.0.0.144 (first block of the shortest free run)", got)
	}
	// Prefixes: the shortest run is now 10-14; its first block is .160.
	ps, err := l.ReservePrefixes("s1", 2, Owner{Node: "a"}, t0)
	wantErr(t, err, nil)
	if want := []netip.Prefix{pfx("10.0.0.160/28"), pfx("10.0.0.176/28")}; !slices.Equal(ps, want) {
		t.Fatalf("prefixes %v, want %v", ps, want)
	}
	assertInvariants(t, l)
}

func TestReservePrefixes(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/24"))
	mustPutNode(t, l, nodeRec("a", "s1", "10.0.0.4"))
	ps, err := l.ReservePrefixes("s1", 2, Owner{Node: "a", ENI: "eni-a"}, t0)
	wantErr(t, err, nil)
	if want := []netip.Prefix{pfx("10.0.0.16/28"), pfx("10.0.0.32/28")}; !slices.Equal(ps, want) {
		t.Fatalf("prefixes %v, want %v", ps, want)
	}
	if info, _ := l.OwnerOf(ip("10.0.0.20")); info.Kind != OwnerPending || info.Prefix != ps[0] {
		t.Fatalf("OwnerOf(.20) = %+v", info)
	}
	if b := mustBudget(t, l, "s1", t0); b.Pending != 32 || b.FreePrefixes != 12 || b.Held != 33 {
		t.Fatalf("budget = %+v", b)
	}
	// Commit one as a lease, cancel the other.
	mustPutNode(t, l, withPrefixes(nodeRec("a", "s1", "10.0.0.4"), 0, "10.0.0.16/28"))
	l.CancelReservation("s1", Owner{Node: "a"}, nil, ps[1:])
	assertInvariants(t, l)
	if b := mustBudget(t, l, "s1", t0); b.Pending != 0 || b.FreePrefixes != 13 || b.Held != 17 {
		t.Fatalf("budget = %+v", b)
	}
	if nc, _ := l.NodeCounts("a"); nc.Leased != 16 || nc.Idle != 16 || nc.ENIs != 1 {
		t.Fatalf("counts = %+v", nc)
	}
	// A released prefix cools down: it is not placed again until the cooldown ends.
	mustPutNode(t, l, nodeRec("a", "s1", "10.0.0.4"))
	l.Released("s1", nil, []netip.Prefix{pfx("10.0.0.16/28")}, t0)
	assertInvariants(t, l)
	if b := mustBudget(t, l, "s1", t0); b.Cooling != 16 || b.FreePrefixes != 14 {
		t.Fatalf("budget = %+v", b)
	}
	ps, err = l.ReservePrefixes("s1", 1, Owner{Node: "a"}, t0.Add(time.Second))
	wantErr(t, err, nil)
	if ps[0] != pfx("10.0.0.32/28") {
		t.Fatalf("placed %v while .16/28 cools: want .32/28", ps)
	}
	free, err := l.FreePrefixBlocks("s1", t0.Add(time.Second))
	wantErr(t, err, nil)
	if len(free) != 12 || free[0] != pfx("10.0.0.48/28") {
		t.Fatalf("free blocks while cooling: %v", free)
	}
	free, _ = l.FreePrefixBlocks("s1", t0.Add(DefaultReleaseCooldown))
	if len(free) != 13 || free[0] != pfx("10.0.0.16/28") {
		t.Fatalf("free blocks after cooling: %v", free)
	}
	if _, err := l.FreePrefixBlocks("nope", t0); err == nil {
		t.Fatal("FreePrefixBlocks of unknown subnet: no error")
	}
}

func TestReserveSpecific(t *testing.T) {
	l := fixture(t)
	b := Owner{Node: "b", ENI: "eni-b"}
	for _, tc := range []struct {
		name     string
		addrs    []netip.Addr
		prefixes []netip.Prefix
		owner    Owner
		want     error
		wantMsg  string
	}{
		{"leased", ips("10.0.0.120", "10.0.0.11"), nil, b, ErrConflict, "node a"},
		{"in a's prefix", nil, []netip.Prefix{pfx("10.0.0.32/28")}, b, ErrConflict, "node a"},
		{"reserved", ips("10.0.0.255"), nil, b, ErrConflict, "AWS"},
		{"scan foreign", ips("10.0.0.80"), nil, b, ErrConflict, "foreign"},
		{"marked foreign", ips("10.0.0.70"), nil, b, ErrConflict, "foreign"},
		{"pre-warm", ips("10.0.0.61"), nil, b, ErrConflict, "pre-warm p1"},
		{"pending for someone else", ips("10.0.0.50"), nil, Owner{Node: "a"}, ErrConflict, "node b (pending)"},
		{"outside", ips("10.0.1.5"), nil, b, ErrInvalid, "10.0.1.5"},
		{"unaligned prefix", nil, []netip.Prefix{pfx("10.0.0.120/28")}, b, ErrInvalid, "aligned"},
		{"unknown subnet", nil, nil, Owner{Node: "b"}, ErrUnknownSubnet, ""},
		{"unknown node", ips("10.0.0.120"), nil, Owner{Node: "zz"}, ErrUnknownNode, "zz"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			subnet := "s1"
			if tc.want == ErrUnknownSubnet {
				subnet = "nope"
			}
			before := snap(l, t0)
			err := l.ReserveSpecific(subnet, tc.addrs, tc.prefixes, tc.owner)
			wantErr(t, err, tc.want)
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tc.wantMsg)
			}
			assertUnchanged(t, before, l, t0)
		})
	}
	// Already pending for the same owner: idempotent; cooling addresses are accepted.
	l.Released("s1", ips("10.0.0.121"), nil, t0)
	wantErr(t, l.ReserveSpecific("s1", ips("10.0.0.50", "10.0.0.120", "10.0.0.121", "10.0.0.120"), []netip.Prefix{pfx("10.0.0.208/28")}, b), nil)
	assertInvariants(t, l)
	if nc, _ := l.NodeCounts("b"); nc.Pending != 19 {
		t.Fatalf("pending of b = %d, want 19", nc.Pending)
	}
	if info, _ := l.OwnerOf(ip("10.0.0.210")); info.Kind != OwnerPending || info.Prefix != pfx("10.0.0.208/28") || info.Node != "b" {
		t.Fatalf("OwnerOf(.210) = %+v", info)
	}
	// Budget applies.
	rec, _ := l.Subnet("s1")
	rec.MaxHeld = 1
	mustPutSubnet(t, l, rec)
	before := snap(l, t0)
	wantErr(t, l.ReserveSpecific("s1", ips("10.0.0.122"), nil, b), ErrBudgetExhausted)
	assertUnchanged(t, before, l, t0)
	wantErr(t, l.ReserveSpecific("s1", ips("10.0.0.122"), nil, Owner{Node: "b", IgnoreBudget: true}), nil)
	assertInvariants(t, l)
}

func TestCancelReservation(t *testing.T) {
	l := fixture(t)
	got, err := l.ReserveAddresses("s1", 3, Owner{Node: "a"}, t0)
	wantErr(t, err, nil)
	before := snap(l, t0)
	// Someone else's pending, non-pending addresses, other subnets and unknown owners: ignored.
	l.CancelReservation("s1", Owner{Node: "b"}, got, nil)
	l.CancelReservation("s1", Owner{Node: "a"}, ips("10.0.0.11", "10.0.0.50", "10.0.1.5"), []netip.Prefix{pfx("10.0.0.32/28"), pfx("10.0.0.33/28")})
	l.CancelReservation("nope", Owner{Node: "a"}, got, nil)
	l.CancelReservation("s1", Owner{Node: "zz"}, got, nil)
	l.CancelReservation("s1", Owner{}, got, nil)
	assertUnchanged(t, before, l, t0)
	// The owner's ENI does not matter; cancelled addresses are placeable at once.
	l.CancelReservation("s1", Owner{Node: "a", ENI: "eni-other"}, got[:2], nil)
	assertInvariants(t, l)
	for _, x := range got[:2] {
		if info, ok := l.OwnerOf(x); ok || info.Kind != OwnerFree {
			t.Fatalf("OwnerOf(%v) = %+v, want free without cooling", x, info)
		}
	}
	again, err := l.ReserveAddresses("s1", 2, Owner{Node: "b"}, t0)
	wantErr(t, err, nil)
	if !slices.Equal(again, got[:2]) {
		t.Fatalf("re-placed %v, want %v", again, got[:2])
	}
	if nc, _ := l.NodeCounts("a"); nc.Pending != 1 {
		t.Fatalf("a pending = %d", nc.Pending)
	}
}

func TestMarkForeign(t *testing.T) {
	l := fixture(t)
	l.MarkForeign("s1", ips("10.0.0.50", "10.0.0.11", "10.0.0.1", "10.0.0.120", "10.0.1.5"))
	l.MarkForeign("nope", ips("10.0.0.121"))
	assertInvariants(t, l)
	// b's pending .50 is dropped and foreign now.
	if info, _ := l.OwnerOf(ip("10.0.0.50")); info.Kind != OwnerForeign || !info.Marked {
		t.Fatalf("OwnerOf(.50) = %+v", info)
	}
	if nc, _ := l.NodeCounts("b"); nc.Pending != 0 {
		t.Fatalf("b pending = %d", nc.Pending)
	}
	// a's lease stays a's and is reported.
	if info, _ := l.OwnerOf(ip("10.0.0.11")); info.Kind != OwnerLeased || info.Node != "a" || !info.Marked {
		t.Fatalf("OwnerOf(.11) = %+v", info)
	}
	cs := l.Conflicts()
	if !slices.ContainsFunc(cs, func(c Conflict) bool {
		return c.Kind == ConflictForeignOverlap && c.Node == "a" && c.Address == "10.0.0.11" && strings.Contains(c.Detail, "EC2 refused")
	}) {
		t.Fatalf("conflicts = %+v", cs)
	}
	if info, _ := l.OwnerOf(ip("10.0.0.1")); info.Kind != OwnerReserved || info.Foreign {
		t.Fatalf("reserved address marked: %+v", info)
	}
	// Placement avoids the marked .120 (block 7 otherwise empty).
	b := mustBudget(t, l, "s1", t0)
	if b.Foreign != 4 { // .50, .70, .80, .120
		t.Fatalf("foreign = %d, want 4", b.Foreign)
	}
	wantErr(t, l.PutNode(withAddrs(nodeRec("b", "s1", "10.0.0.90"), 0, "10.0.0.120")), ErrConflict)
}

func TestReleasedCooling(t *testing.T) {
	for _, order := range []string{"released-first", "put-first"} {
		t.Run(order, func(t *testing.T) {
			l := New(Options{ReleaseCooldown: 10 * time.Second})
			mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/28"))
			mustPutNode(t, l, withAddrs(nodeRec("a", "s1", "10.0.0.4"), 0, "10.0.0.5", "10.0.0.6"))
			shrunk := withAddrs(nodeRec("a", "s1", "10.0.0.4"), 0, "10.0.0.5")
			if order == "released-first" {
				l.Released("s1", ips("10.0.0.6"), nil, t0)
				assertInvariants(t, l)
				if info, _ := l.OwnerOf(ip("10.0.0.6")); info.Kind != OwnerLeased {
					t.Fatalf("released address left the node before its record did: %+v", info)
				}
				mustPutNode(t, l, shrunk)
			} else {
				mustPutNode(t, l, shrunk)
				l.Released("s1", ips("10.0.0.6"), nil, t0)
			}
			assertInvariants(t, l)
			info, ok := l.OwnerOf(ip("10.0.0.6"))
			if ok || info.Kind != OwnerCooling || !info.CoolingUntil.Equal(t0.Add(10*time.Second)) {
				t.Fatalf("OwnerOf(.6) = %+v, %v", info, ok)
			}
			b := mustBudget(t, l, "s1", t0)
			if b.Cooling != 1 || b.Free != 9 || b.Held != 2 {
				t.Fatalf("budget = %+v", b)
			}
			// All 9 free addresses: 8 placeable now, 1 cooling.
			_, err := l.ReserveAddresses("s1", 9, Owner{Node: "a"}, t0.Add(9*time.Second))
			wantErr(t, err, ErrSubnetExhausted)
			got, err := l.ReserveAddresses("s1", 9, Owner{Node: "a"}, t0.Add(10*time.Second))
			wantErr(t, err, nil)
			if got[0] != ip("10.0.0.6") {
				t.Fatalf("placed %v", got)
			}
			assertInvariants(t, l)
			if b := mustBudget(t, l, "s1", t0); b.Cooling != 0 || b.Free != 0 {
				t.Fatalf("budget = %+v", b)
			}
		})
	}
	// A negative cooldown disables cooling; unknown subnets and outside addresses are ignored.
	l := New(Options{ReleaseCooldown: -1})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/28"))
	l.Released("s1", ips("10.0.0.6", "10.0.1.1"), []netip.Prefix{pfx("10.0.0.0/28")}, t0)
	l.Released("nope", ips("10.0.0.6"), nil, t0)
	if info, _ := l.OwnerOf(ip("10.0.0.6")); info.Kind != OwnerFree {
		t.Fatalf("cooling with cooldown disabled: %+v", info)
	}
	assertInvariants(t, l)
}

func TestUsageCountsAndConflicts(t *testing.T) {
	l := fixture(t)
	a, _ := l.Node("a")
	a.ENIs[0].Addresses[1].State = LeaseReleaseProposed // .12
	a.ENIs[0].Prefixes[0].State = LeaseReleasing        // .32/28
	mustPutNode(t, l, a)
	_, err := l.ReserveAddresses("s1", 2, Owner{Node: "a"}, t0)
	wantErr(t, err, nil)
	// In use: .11 (active), .12 (proposed), .33 (releasing); .10 is a's primary (not leased),
	// .50 is b's pending, .200 nobody's, .11 twice.
	l.SetUsage("a", ips("10.0.0.33", "10.0.0.11", "10.0.0.12", "10.0.0.10", "10.0.0.50", "10.0.0.200", "10.0.0.11"))
	l.SetUsage("b", ips("10.0.0.11"))
	l.SetUsage("zz", ips("10.0.0.11"))
	assertInvariants(t, l)
	if u := l.Usage("a"); !slices.Equal(u, ips("10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.33", "10.0.0.50", "10.0.0.200")) {
		t.Fatalf("Usage(a) = %v", u)
	}
	if u := l.Usage("zz"); u != nil {
		t.Fatalf("usage of unknown node kept: %v", u)
	}
	nc, ok := l.NodeCounts("a")
	if want := (NodeCounts{ENIs: 1, Leased: 18, InUse: 3, Idle: 0, Pending: 2, Proposed: 1, Releasing: 16}); !ok || nc != want {
		t.Fatalf("NodeCounts(a) = %+v, want %+v", nc, want)
	}
	if _, ok := l.NodeCounts("zz"); ok {
		t.Fatal("NodeCounts of unknown node")
	}
	b := mustBudget(t, l, "s1", t0)
	// Held: primaries .10 .90 (2) + a's 18 leases + pending a 2 + b 1 = 23; in use 3.
	if b.Held != 23 || b.ENIPrimary != 2 || b.InUse != 3 || b.Idle != 18 {
		t.Fatalf("budget = %+v", b)
	}
	var kinds []string
	for _, c := range l.Conflicts() {
		kinds = append(kinds, c.Kind+" "+c.Node+" "+c.Address+" "+c.OtherOwner)
	}
	wantKinds := []string{
		"double-use a 10.0.0.11 node a",
		"double-use a 10.0.0.11 node b",
		"double-use b 10.0.0.11 node a",
		"in-use-not-leased a 10.0.0.10 node a (primary on eni-a)",
		"in-use-not-leased b 10.0.0.11 node a (lease on eni-a)",
		"in-use-not-leased a 10.0.0.50 node b (pending)",
		"in-use-not-leased a 10.0.0.200 nobody",
	}
	if !slices.Equal(kinds, wantKinds) {
		t.Fatalf("conflicts:\n%s\nwant:\n%s", strings.Join(kinds, "\n"), strings.Join(wantKinds, "\n"))
	}
	// An empty report clears the node's usage.
	l.SetUsage("a", nil)
	if u := l.Usage("a"); u != nil {
		t.Fatalf("usage after clearing: %v", u)
	}
	if b := mustBudget(t, l, "s1", t0); b.InUse != 0 {
		t.Fatalf("in use after clearing = %d", b.InUse)
	}
	assertInvariants(t, l)
}

// Hold: a registering instance's addresses are not placeable, survive a rescan, may be taken
// by a node's record, are no conflict once the node has them, and are placeable again when
// the hold ends; the subnet's record never changes.
func TestHold(t *testing.T) {
	l := fixture(t)
	mustPutSubnet(t, l, subnetRec("s3", "10.0.2.0/28")) // .4-.14 usable
	mustPutNode(t, l, nodeRec("c", "s3", "10.0.2.4"))
	var held []netip.Addr
	for i := 5; i <= 13; i++ {
		held = append(held, ip(fmt.Sprintf("10.0.2.%d", i)))
	}
	before := mustBudget(t, l, "s3", t0)
	wantErr(t, l.Hold("s3", append(held, ip("10.0.2.0"), ip("10.0.0.5"))), nil) // reserved and outside: ignored
	wantErr(t, l.Hold("nope", held), ErrUnknownSubnet)
	assertInvariants(t, l)
	if info, _ := l.OwnerOf(ip("10.0.2.5")); info.Kind != OwnerForeign || !info.Held || info.Foreign {
		t.Fatalf("OwnerOf(held .5) = %+v", info)
	}
	if b := mustBudget(t, l, "s3", t0); b.Foreign != before.Foreign+len(held) {
		t.Fatalf("foreign %d with %d held, want %d", b.Foreign, len(held), before.Foreign+len(held))
	}
	if rec, _ := l.Subnet("s3"); len(rec.Foreign) != 0 {
		t.Fatalf("Hold changed the subnet's record: %+v", rec.Foreign)
	}
	wantErr(t, l.ReserveSpecific("s3", ips("10.0.2.6"), nil, Owner{Node: "c", ENI: "eni-c"}), ErrConflict)
	got, err := l.ReserveAddresses("s3", 1, Owner{Node: "c", ENI: "eni-c"}, t0)
	wantErr(t, err, nil)
	if !slices.Equal(got, ips("10.0.2.14")) {
		t.Fatalf("placed %v next to held addresses, want only .14", got)
	}
	_, err = l.ReserveAddresses("s3", 1, Owner{Node: "c", ENI: "eni-c"}, t0)
	wantErr(t, err, ErrSubnetExhausted)
	// A rescan (newer, listing none of them) keeps the hold.
	rescan := subnetRec("s3", "10.0.2.0/28")
	rescan.ForeignScannedAt = t0.Add(time.Minute)
	mustPutSubnet(t, l, rescan)
	if info, _ := l.OwnerOf(ip("10.0.2.7")); !info.Held {
		t.Fatalf("a rescan dropped the hold: %+v", info)
	}
	// The registering node takes .5 and .6; no conflict while they are still held.
	mustPutNode(t, l, withAddrs(nodeRec("d", "s3", "10.0.2.5"), 0, "10.0.2.6"))
	if cs := l.Conflicts(); slices.ContainsFunc(cs, func(c Conflict) bool { return c.SubnetID == "s3" }) {
		t.Fatalf("conflicts on held addresses the node took: %+v", cs)
	}
	l.Unhold("s3", held)
	assertInvariants(t, l)
	if info, _ := l.OwnerOf(ip("10.0.2.5")); info.Kind != OwnerENIPrimary || info.Node != "d" || info.Held {
		t.Fatalf("OwnerOf(.5) after unhold = %+v", info)
	}
	if b := mustBudget(t, l, "s3", t0); b.Foreign != before.Foreign {
		t.Fatalf("foreign %d after unhold, want %d", b.Foreign, before.Foreign)
	}
	got, err = l.ReserveAddresses("s3", 1, Owner{Node: "c", ENI: "eni-c"}, t0)
	wantErr(t, err, nil)
	if len(got) != 1 || !slices.Contains(held[2:], got[0]) {
		t.Fatalf("after unhold placed %v, want one of %v", got, held[2:])
	}
}
