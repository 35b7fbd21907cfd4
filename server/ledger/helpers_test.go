package ledger

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }
func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ips(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = ip(s)
	}
	return out
}

func subnetRec(id, cidr string) SubnetRecord {
	return SubnetRecord{ID: id, CIDR: pfx(cidr), AvailabilityZone: "us-east-1a", VPCID: "vpc-1"}
}

// nodeRec is a node with a primary ENI "eni-<name>" in subnet whose primary address is primary.
func nodeRec(name, subnet, primary string) NodeRecord {
	return NodeRecord{
		Name: name, InstanceID: "i-" + name, InstanceType: "m5.large", AvailabilityZone: "us-east-1a",
		SubnetID: subnet, PrimaryENI: "eni-" + name, PrimaryIP: ip(primary), Mode: ModeSecondaryIP,
		ENIs: []ENIRecord{{ID: "eni-" + name, SubnetID: subnet, PrimaryIP: ip(primary)}},
	}
}

func withAddrs(rec NodeRecord, eni int, addrs ...string) NodeRecord {
	for _, a := range addrs {
		rec.ENIs[eni].Addresses = append(rec.ENIs[eni].Addresses, LeasedAddress{IP: ip(a), State: LeaseActive})
	}
	return rec
}

func withPrefixes(rec NodeRecord, eni int, ps ...string) NodeRecord {
	for _, p := range ps {
		rec.ENIs[eni].Prefixes = append(rec.ENIs[eni].Prefixes, LeasedPrefix{Prefix: pfx(p), State: LeaseActive})
	}
	return rec
}

func mustPutSubnet(t testing.TB, l *Ledger, rec SubnetRecord) {
	t.Helper()
	if err := l.PutSubnet(rec); err != nil {
		t.Fatalf("PutSubnet(%s): %v", rec.ID, err)
	}
	assertInvariants(t, l)
}

func mustPutNode(t testing.TB, l *Ledger, rec NodeRecord) {
	t.Helper()
	if err := l.PutNode(rec); err != nil {
		t.Fatalf("PutNode(%s): %v", rec.Name, err)
	}
	assertInvariants(t, l)
}

func mustBudget(t testing.TB, l *Ledger, id string, now time.Time) Budget {
	t.Helper()
	b, err := l.Budget(id, now)
	if err != nil {
		t.Fatalf("Budget(%s): %v", id, err)
	}
	return b
}

func wantErr(t testing.TB, err, want error) {
	t.Helper()
	if want == nil {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("error = %v, want %v", err, want)
	}
}

// snapshot is everything observable about a ledger plus its internal per-address state, to
// check that a failed call changed nothing.
type snapshot struct {
	Budgets   []Budget
	Nodes     []NodeRecord
	Prewarms  []PrewarmRecord
	Subnets   []SubnetRecord
	Conflicts []Conflict
	Internal  map[string]subnetDump
}

type subnetDump struct {
	Slots   []slot
	Flags   []uint8
	Pending map[uint32]pend
	Cooling map[uint32]time.Time
}

func snap(l *Ledger, now time.Time) snapshot {
	s := snapshot{Budgets: l.Budgets(now), Nodes: l.Nodes(), Prewarms: l.Prewarms(), Subnets: l.Subnets(),
		Conflicts: l.Conflicts(), Internal: map[string]subnetDump{}}
	l.mu.RLock()
	defer l.mu.RUnlock()
	for id, sub := range l.subnets {
		s.Internal[id] = subnetDump{slices.Clone(sub.slots), slices.Clone(sub.flags), maps.Clone(sub.pending), maps.Clone(sub.cooling)}
	}
	return s
}

func assertUnchanged(t testing.TB, before snapshot, l *Ledger, now time.Time) {
	t.Helper()
	after := snap(l, now)
	if !reflect.DeepEqual(before, after) {
		switch {
		case !reflect.DeepEqual(before.Budgets, after.Budgets):
			t.Fatalf("failed call changed budgets:\nbefore %+v\nafter  %+v", before.Budgets, after.Budgets)
		case !reflect.DeepEqual(before.Nodes, after.Nodes):
			t.Fatalf("failed call changed nodes")
		default:
			t.Fatalf("failed call changed the ledger's state")
		}
	}
}

// assertInvariants checks the ledger from outside (budgets add up, no address on two nodes)
// and from inside (every counter and index agrees with a recomputation from the records).
func assertInvariants(t testing.TB, l *Ledger) {
	t.Helper()
	if err := checkInvariants(l, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
}

func checkInvariants(l *Ledger, now time.Time) error {
	for _, b := range l.Budgets(now) {
		if err := checkBudget(b); err != nil {
			return err
		}
	}
	owners := map[netip.Addr]string{}
	for _, n := range l.Nodes() {
		for _, e := range n.ENIs {
			as := []netip.Addr{e.PrimaryIP}
			for _, a := range e.Addresses {
				as = append(as, a.IP)
			}
			for _, p := range e.Prefixes {
				for a, i := p.Prefix.Addr(), 0; i < blockSize; a, i = a.Next(), i+1 {
					as = append(as, a)
				}
			}
			for _, a := range as {
				if o, dup := owners[a]; dup {
					return fmt.Errorf("address %v held by node %s and node %s", a, o, n.Name)
				}
				owners[a] = n.Name
			}
		}
	}
	return l.verify()
}

func checkBudget(b Budget) error {
	if b.Size != b.Reserved+b.Foreign+b.Held+b.PrewarmReserved+b.Free {
		return fmt.Errorf("subnet %s: size %d != reserved %d + foreign %d + held %d + prewarm %d + free %d",
			b.SubnetID, b.Size, b.Reserved, b.Foreign, b.Held, b.PrewarmReserved, b.Free)
	}
	if b.Held != b.ENIPrimary+b.InUse+b.Idle {
		return fmt.Errorf("subnet %s: held %d != primary %d + in use %d + idle %d", b.SubnetID, b.Held, b.ENIPrimary, b.InUse, b.Idle)
	}
	for name, v := range map[string]int{"reserved": b.Reserved, "foreign": b.Foreign, "held": b.Held, "primary": b.ENIPrimary,
		"in use": b.InUse, "idle": b.Idle, "prewarm": b.PrewarmReserved, "free": b.Free, "free prefixes": b.FreePrefixes,
		"cooling": b.Cooling, "pending": b.Pending, "headroom": b.Headroom} {
		if v < 0 {
			return fmt.Errorf("subnet %s: %s is negative (%d)", b.SubnetID, name, v)
		}
	}
	if b.Reserved != 5 {
		return fmt.Errorf("subnet %s: reserved %d, want 5", b.SubnetID, b.Reserved)
	}
	if b.Cooling > b.Free || b.Pending > b.Held+b.PrewarmReserved || b.FreePrefixes*blockSize > b.Free+b.PrewarmReserved {
		return fmt.Errorf("subnet %s: cooling/pending/free prefixes out of range: %+v", b.SubnetID, b)
	}
	if b.Headroom > b.Free {
		return fmt.Errorf("subnet %s: headroom %d above free %d", b.SubnetID, b.Headroom, b.Free)
	}
	return nil
}

// verify recomputes the ledger's internal state from its records and compares.
func (l *Ledger) verify() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	want := map[*subnet][]slot{}
	for _, s := range l.subnets {
		w := make([]slot, s.size)
		for i := range w {
			w[i] = freeSlot
			if s.reserved(uint32(i)) {
				w[i] = slot{kind: kReserved, ent: -1}
			}
		}
		want[s] = w
	}
	set := func(s *subnet, a netip.Addr, sl slot, who string) error {
		off, ok := s.offset(a)
		if !ok {
			return fmt.Errorf("%s: %v outside subnet %s", who, a, s.rec.ID)
		}
		if want[s][off] != freeSlot {
			return fmt.Errorf("%s: %v already owned (%+v)", who, a, want[s][off])
		}
		want[s][off] = sl
		return nil
	}
	instances, enis, leasedENI := map[string]string{}, map[string]string{}, map[string]string{}
	for name, n := range l.nodes {
		if l.ents[n.ent].node != n || n.rec.Name != name {
			return fmt.Errorf("node %s: entity index broken", name)
		}
		instances[n.rec.InstanceID] = name
		leased := 0
		for _, e := range n.rec.ENIs {
			enis[e.ID] = name
			leasedENI[e.ID] = name
			s := l.subnets[e.SubnetID]
			if s == nil {
				return fmt.Errorf("node %s: ENI %s in unknown subnet %s", name, e.ID, e.SubnetID)
			}
			if err := set(s, e.PrimaryIP, slot{kPrimary, n.ent}, "node "+name); err != nil {
				return err
			}
			for _, a := range e.Addresses {
				leased++
				if err := set(s, a.IP, slot{kLease, n.ent}, "node "+name); err != nil {
					return err
				}
			}
			for _, p := range e.Prefixes {
				for a, i := p.Prefix.Addr(), 0; i < blockSize; a, i = a.Next(), i+1 {
					leased++
					if err := set(s, a, slot{kLease, n.ent}, "node "+name); err != nil {
						return err
					}
				}
			}
		}
		if leased != n.leased || len(n.claims) != len(n.byAddr) {
			return fmt.Errorf("node %s: leased %d, counted %d", name, leased, n.leased)
		}
	}
	if !maps.Equal(instances, l.byInstance) || !maps.Equal(enis, l.eniNode) {
		return fmt.Errorf("instance or ENI index out of date")
	}
	pendCount := map[int32]int{}
	for _, s := range l.subnets {
		for off, p := range s.pending {
			var sl slot
			if p.owner.Node != "" {
				n := l.nodes[p.owner.Node]
				if n == nil {
					return fmt.Errorf("pending %v for unknown node %s", s.addr(off), p.owner.Node)
				}
				sl = slot{kPendNode, n.ent}
			} else {
				pw := l.prewarms[p.owner.Prewarm]
				if pw == nil {
					return fmt.Errorf("pending %v for unknown pre-warm %s", s.addr(off), p.owner.Prewarm)
				}
				sl = slot{kPendPrewarm, pw.ent}
			}
			pendCount[sl.ent]++
			if err := set(s, s.addr(off), sl, "pending"); err != nil {
				return err
			}
		}
	}
	// Pre-warm ENIs own their addresses unless someone else holds them; when two pre-warm ENIs
	// list one address (possible only after both were held by nodes), either may own it.
	pwENIs := map[string]string{}
	type pwAddr struct {
		s   *subnet
		off uint32
	}
	candidates := map[pwAddr][]int32{}
	for id, pw := range l.prewarms {
		if l.ents[pw.ent].pw != pw || pw.rec.ID != id || pw.sub != l.subnets[pw.rec.SubnetID] {
			return fmt.Errorf("pre-warm %s: entity or subnet index broken", id)
		}
		for k, e := range pw.rec.ENIs {
			if e.ID != "" {
				pwENIs[e.ID] = id
			}
			if e.State == PrewarmENIAttached || (e.ID != "" && enis[e.ID] != "") {
				continue
			}
			for _, off := range pw.eniOffs[k] {
				if want[pw.sub][off] == freeSlot {
					candidates[pwAddr{pw.sub, off}] = append(candidates[pwAddr{pw.sub, off}], pw.ent)
				}
			}
		}
	}
	owned := map[int32]int{}
	for a, ents := range candidates {
		got := a.s.slots[a.off]
		if got.kind != kPrewarm || !slices.Contains(ents, got.ent) {
			return fmt.Errorf("subnet %s: %v: slot %+v, pre-warm records %v claim it", a.s.rec.ID, a.s.addr(a.off), got, ents)
		}
		want[a.s][a.off] = got
		owned[got.ent]++
	}
	for id, pw := range l.prewarms {
		if owned[pw.ent] != pw.owned || pendCount[pw.ent] != pw.pending {
			return fmt.Errorf("pre-warm %s: owned %d/%d pending %d/%d", id, owned[pw.ent], pw.owned, pendCount[pw.ent], pw.pending)
		}
	}
	if !maps.Equal(pwENIs, l.eniPrewarm) {
		return fmt.Errorf("pre-warm ENI index out of date")
	}
	for _, n := range l.nodes {
		if pendCount[n.ent] != n.pending {
			return fmt.Errorf("node %s: pending %d, counted %d", n.rec.Name, pendCount[n.ent], n.pending)
		}
	}
	inUse := map[*subnet]int{}
	for _, n := range l.nodes {
		if !slices.IsSortedFunc(n.usage, func(a, b netip.Addr) int { return a.Compare(b) }) {
			return fmt.Errorf("node %s: usage not sorted", n.rec.Name)
		}
		for _, a := range n.usage {
			s, off, ok := l.subnetOf(a)
			if ok && s.slots[off] == (slot{kLease, n.ent}) {
				inUse[s]++
			}
		}
	}
	for _, s := range l.subnets {
		w := want[s]
		for off := range w {
			if w[off] != s.slots[off] {
				return fmt.Errorf("subnet %s: %v: slot %+v, records say %+v", s.rec.ID, s.addr(uint32(off)), s.slots[off], w[off])
			}
		}
		var count [numKinds]int
		occ := make([]uint8, len(s.occ))
		occTotal, foreignFree := 0, 0
		scan := make([]bool, s.size)
		for _, r := range s.rec.Foreign {
			for a := r.First; a.Compare(r.Last) <= 0; a = a.Next() {
				off, _ := s.offset(a)
				scan[off] = true
			}
		}
		for off, sl := range s.slots {
			o := uint32(off)
			count[sl.kind]++
			f := s.flags[off]
			if (f&flagScan != 0) != (scan[off] && !s.reserved(o)) || (s.reserved(o) && f != 0) {
				return fmt.Errorf("subnet %s: %v: foreign flags %b disagree with the record", s.rec.ID, s.addr(o), f)
			}
			if sl.kind != kFree || f != 0 {
				occ[off/blockSize]++
				occTotal++
			}
			if sl.kind == kFree && f != 0 {
				foreignFree++
			}
			if (sl.kind == kPendNode || sl.kind == kPendPrewarm) != hasKey(s.pending, o) {
				return fmt.Errorf("subnet %s: %v: pending map disagrees with slot", s.rec.ID, s.addr(o))
			}
		}
		if count != s.count || !slices.Equal(occ, s.occ) || occTotal != s.occTotal || foreignFree != s.foreignFree || inUse[s] != s.inUse {
			return fmt.Errorf("subnet %s: counters out of date: count %v/%v occTotal %d/%d foreign %d/%d inUse %d/%d",
				s.rec.ID, count, s.count, occTotal, s.occTotal, foreignFree, s.foreignFree, inUse[s], s.inUse)
		}
		for off := range s.cooling {
			if int(off) >= s.size || s.reserved(off) {
				return fmt.Errorf("subnet %s: cooling entry %d out of range", s.rec.ID, off)
			}
		}
	}
	return nil
}

func hasKey[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	return ok
}
