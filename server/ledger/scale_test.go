package ledger

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// TestScaleSlash19 is a correctness test at size (it asserts no timings): a /19 with 300
// nodes whose primary addresses EC2 scattered at random, each leasing 30 addresses in three
// rounds of 10 until the subnet runs out. Placement must pack the leases into the blocks the
// primaries broke before breaking whole ones, then fill fresh blocks one at a time.
func TestScaleSlash19(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("big", "10.20.0.0/19"))
	const nodes, blocks = 300, 512
	base := u32(ip("10.20.0.0"))
	rng := rand.New(rand.NewPCG(19, 300))
	primaries := map[uint32]bool{}
	for len(primaries) < nodes {
		off := uint32(4 + rng.IntN(8192-5))
		primaries[off] = true
	}
	name := func(i int) string { return fmt.Sprintf("node-%03d", i) }
	i := 0
	for off := range uint32(8192) {
		if primaries[off] {
			rec := nodeRec(name(i), "big", addrOf(base+off).String())
			if err := l.PutNode(rec); err != nil {
				t.Fatal(err)
			}
			i++
		}
	}
	assertInvariants(t, l)
	initialBroken := len(brokenBlocks(t, l, "big"))
	t.Logf("%d primaries broke %d of %d blocks", nodes, initialBroken, blocks)

	// expectBroken: singles never break a whole block while a broken one has room.
	expectBroken := func(occupied int) int {
		if occupied <= initialBroken*blockSize {
			return initialBroken
		}
		return initialBroken + (occupied-initialBroken*blockSize+blockSize-1)/blockSize
	}
	commit := func(n int, got []netip.Addr) {
		rec, _ := l.Node(name(n))
		for _, a := range got {
			rec.ENIs[0].Addresses = append(rec.ENIs[0].Addresses, LeasedAddress{IP: a, State: LeaseActive})
		}
		if err := l.PutNode(rec); err != nil {
			t.Fatal(err)
		}
	}
	now := t0
	leased := 0
	for round := range 2 {
		for n := range nodes {
			got, err := l.ReserveAddresses("big", 10, Owner{Node: name(n), ENI: "eni-" + name(n)}, now)
			if err != nil {
				t.Fatalf("round %d node %d: %v", round, n, err)
			}
			commit(n, got)
			leased += 10
			if n%100 == 0 {
				assertInvariants(t, l)
			}
		}
		occupied := 5 + nodes + leased
		if got, want := len(brokenBlocks(t, l, "big")), expectBroken(occupied); got != want {
			t.Fatalf("after round %d: %d blocks broken, want %d (occupied %d)", round, got, want, occupied)
		}
		b := mustBudget(t, l, "big", now)
		if b.Held != nodes+leased || b.Free != 8192-5-nodes-leased || b.FreePrefixes != blocks-expectBroken(occupied) {
			t.Fatalf("after round %d: budget %+v", round, b)
		}
	}
	// Round three runs the subnet dry.
	exhausted := 0
	for n := range nodes {
		got, err := l.ReserveAddresses("big", 10, Owner{Node: name(n)}, now)
		if errors.Is(err, ErrSubnetExhausted) {
			exhausted++
			b := mustBudget(t, l, "big", now)
			if b.Free >= 10 {
				t.Fatalf("exhausted with %d free", b.Free)
			}
			if b.Free == 0 {
				continue
			}
			got, err = l.ReserveAddresses("big", b.Free, Owner{Node: name(n)}, now)
		}
		if err != nil {
			t.Fatalf("round 3 node %d: %v", n, err)
		}
		commit(n, got)
		leased += len(got)
	}
	assertInvariants(t, l)
	b := mustBudget(t, l, "big", now)
	if b.Free != 0 || b.Held != 8192-5 || leased != 8192-5-nodes || exhausted != nodes-(8192-5-nodes-2*nodes*10)/10 {
		t.Fatalf("after round 3: leased %d, %d nodes refused, budget %+v", leased, exhausted, b)
	}

	// Usage for every node, then every third node goes away and every other one releases half.
	for n := range nodes {
		rec, _ := l.Node(name(n))
		var used []netip.Addr
		for _, a := range rec.ENIs[0].Addresses[:len(rec.ENIs[0].Addresses)/2] {
			used = append(used, a.IP)
		}
		l.SetUsage(name(n), used)
	}
	inUse := mustBudget(t, l, "big", now).InUse
	if want := leased / 2; inUse < want-nodes || inUse > want+nodes {
		t.Fatalf("in use %d, want about %d", inUse, want)
	}
	released := 0
	for n := range nodes {
		switch {
		case n%3 == 0:
			l.DeleteNode(name(n))
		case n%2 == 0:
			rec, _ := l.Node(name(n))
			keep := len(rec.ENIs[0].Addresses) / 2
			var gone []netip.Addr
			for _, a := range rec.ENIs[0].Addresses[keep:] {
				gone = append(gone, a.IP)
			}
			rec.ENIs[0].Addresses = rec.ENIs[0].Addresses[:keep]
			if err := l.PutNode(rec); err != nil {
				t.Fatal(err)
			}
			l.Released("big", gone, nil, now)
			released += len(gone)
		}
	}
	assertInvariants(t, l)
	b = mustBudget(t, l, "big", now)
	if b.Cooling != released || len(l.Nodes()) != nodes-nodes/3 || len(l.Conflicts()) != 0 {
		t.Fatalf("after releases: %d cooling (want %d), %d nodes, %d conflicts", b.Cooling, released, len(l.Nodes()), len(l.Conflicts()))
	}
	free, _ := l.FreePrefixBlocks("big", now.Add(time.Minute))
	if len(free) != b.FreePrefixes {
		t.Fatalf("free blocks %d, budget says %d", len(free), b.FreePrefixes)
	}
	if len(free) > 0 {
		ps, err := l.ReservePrefixes("big", 1, Owner{Node: name(1)}, now.Add(time.Minute))
		if err != nil || ps[0] != free[0] && len(free) == 1 {
			t.Fatalf("prefix after releases: %v, %v (free %v)", ps, err, free)
		}
	}
	assertInvariants(t, l)
}

// TestScaleSlash16 places single addresses and prefixes for 1000 nodes in a /16, the largest
// subnet AWS allows, and checks the accounting at the end.
func TestScaleSlash16(t *testing.T) {
	l := New(Options{})
	mustPutSubnet(t, l, subnetRec("huge", "10.30.0.0/16"))
	const nodes = 1000
	now := t0
	recs := make([]NodeRecord, nodes)
	for n := range recs {
		recs[n] = nodeRec(fmt.Sprintf("n%04d", n), "huge", addrOf(u32(ip("10.30.0.0"))+uint32(4+n)).String())
		if n%4 == 0 {
			recs[n].Mode = ModePrefix
		}
		if err := l.PutNode(recs[n]); err != nil {
			t.Fatal(err)
		}
	}
	for _, rec := range recs {
		if rec.Mode == ModePrefix {
			ps, err := l.ReservePrefixes("huge", 2, Owner{Node: rec.Name}, now)
			if err != nil {
				t.Fatal(err)
			}
			rec = withPrefixes(rec, 0, ps[0].String(), ps[1].String())
		} else {
			got, err := l.ReserveAddresses("huge", 20, Owner{Node: rec.Name}, now)
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range got {
				rec = withAddrs(rec, 0, a.String())
			}
		}
		if err := l.PutNode(rec); err != nil {
			t.Fatal(err)
		}
	}
	assertInvariants(t, l)
	b := mustBudget(t, l, "huge", now)
	singles, prefixNodes := 750*20, 250
	occupied := 5 + nodes + singles
	wantBroken := (occupied + blockSize - 1) / blockSize // singles pack: every broken block full but one
	if b.Held != nodes+singles+prefixNodes*2*blockSize || b.FreePrefixes != 4096-wantBroken-prefixNodes*2 {
		t.Fatalf("budget %+v (want %d blocks broken by singles)", b, wantBroken)
	}
}
