package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// step is one operation of a scripted pool test.
type step struct {
	op      string // assign, release, advance, apply, nofree
	cid     string
	want    string // address expected from assign/release ("" to skip the check)
	advance time.Duration
	pool    *ipledgerv1.NodePool
}

func TestAssignReleaseScripts(t *testing.T) {
	three := nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12", "10.0.0.13")))
	tests := []struct {
		name  string
		pool  *ipledgerv1.NodePool
		steps []step
	}{
		{
			name: "assign lowest, idempotent, distinct",
			pool: three,
			steps: []step{
				{op: "assign", cid: "a", want: "10.0.0.11"},
				{op: "assign", cid: "a", want: "10.0.0.11"},
				{op: "assign", cid: "b", want: "10.0.0.12"},
				{op: "assign", cid: "c", want: "10.0.0.13"},
				{op: "nofree", cid: "d"},
				{op: "assign", cid: "b", want: "10.0.0.12"},
			},
		},
		{
			name: "cooldown keeps a released address out until it passes",
			pool: three,
			steps: []step{
				{op: "assign", cid: "a", want: "10.0.0.11"},
				{op: "assign", cid: "b", want: "10.0.0.12"},
				{op: "assign", cid: "c", want: "10.0.0.13"},
				{op: "release", cid: "a", want: "10.0.0.11"},
				{op: "nofree", cid: "d"},
				{op: "advance", advance: 29 * time.Second},
				{op: "nofree", cid: "d"},
				{op: "advance", advance: time.Second},
				{op: "assign", cid: "d", want: "10.0.0.11"},
			},
		},
		{
			name: "never-used first, then the address released longest ago",
			pool: three,
			steps: []step{
				{op: "assign", cid: "a", want: "10.0.0.11"},
				{op: "assign", cid: "b", want: "10.0.0.12"},
				{op: "release", cid: "b", want: "10.0.0.12"},
				{op: "advance", advance: 5 * time.Second},
				{op: "release", cid: "a", want: "10.0.0.11"},
				{op: "advance", advance: time.Minute},
				{op: "assign", cid: "c", want: "10.0.0.13"},
				{op: "assign", cid: "d", want: "10.0.0.12"},
				{op: "assign", cid: "e", want: "10.0.0.11"},
			},
		},
		{
			name: "release of an unknown attachment is success",
			pool: three,
			steps: []step{
				{op: "release-unknown", cid: "zz"},
				{op: "assign", cid: "a", want: "10.0.0.11"},
			},
		},
		{
			name: "only ACTIVE addresses are handed out",
			pool: nodePool(1, eni("eni-0", 0, "10.0.0.10",
				addrs("10.0.0.11", proposed, "10.0.0.12", releasng, "10.0.0.13"))),
			steps: []step{
				{op: "assign", cid: "a", want: "10.0.0.13"},
				{op: "nofree", cid: "b"},
			},
		},
		{
			name: "empty pool and no pool at all",
			pool: nil,
			steps: []step{
				{op: "nofree", cid: "a"},
				{op: "apply", pool: nodePool(1, eni("eni-0", 0, "10.0.0.10", nil))},
				{op: "nofree", cid: "a"},
				{op: "apply", pool: three},
				{op: "assign", cid: "a", want: "10.0.0.11"},
			},
		},
		{
			name: "prefix mode hands out all 16 addresses of a prefix",
			pool: nodePool(1, eni("eni-0", 0, "10.0.0.10", nil, prefix("10.0.1.0/28", active))),
			steps: func() []step {
				var s []step
				for i := range 16 {
					s = append(s, step{op: "assign", cid: fmt.Sprint("p", i), want: fmt.Sprintf("10.0.1.%d", i)})
				}
				return append(s, step{op: "nofree", cid: "p16"})
			}(),
		},
		{
			name: "prefix mode packs into the prefix that already has pods",
			pool: nodePool(1, eni("eni-0", 0, "10.0.0.10", nil, prefix("10.0.1.16/28", active))),
			steps: []step{
				{op: "assign", cid: "a", want: "10.0.1.16"},
				{op: "assign", cid: "b", want: "10.0.1.17"},
				{op: "apply", pool: nodePool(2, eni("eni-0", 0, "10.0.0.10", nil,
					prefix("10.0.1.0/28", active), prefix("10.0.1.16/28", active)))},
				// The lower prefix is empty: the new pod goes next to a and b.
				{op: "assign", cid: "c", want: "10.0.1.18"},
				{op: "release", cid: "a", want: "10.0.1.16"},
				{op: "release", cid: "b", want: "10.0.1.17"},
				{op: "release", cid: "c", want: "10.0.1.18"},
				// Nothing held now: the lowest never-used address.
				{op: "assign", cid: "d", want: "10.0.1.0"},
				{op: "assign", cid: "e", want: "10.0.1.1"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, tc.pool)
			for i, s := range tc.steps {
				switch s.op {
				case "assign":
					if got := p.mustAssign(t, s.cid); s.want != "" && got != ip(s.want) {
						t.Fatalf("step %d: assign %s = %s, want %s", i, s.cid, got, s.want)
					}
				case "release":
					if got := p.mustRelease(t, s.cid); s.want != "" && got != ip(s.want) {
						t.Fatalf("step %d: release %s = %s, want %s", i, s.cid, got, s.want)
					}
				case "release-unknown":
					_, found, err := p.Release(Key{ContainerID: s.cid, IfName: "eth0"})
					if err != nil || found {
						t.Fatalf("step %d: release unknown: found=%v err=%v", i, found, err)
					}
				case "nofree":
					wantNoFree(t, p.assignErr(s.cid))
				case "advance":
					p.clock.Advance(s.advance)
				case "apply":
					p.mustApply(t, s.pool)
				default:
					t.Fatalf("unknown op %q", s.op)
				}
			}
		})
	}
}

func TestAssignmentCarriesENI(t *testing.T) {
	p := newPool(t, nodePool(1,
		eni("eni-0", 0, "10.0.0.10", nil),
		eni("eni-2", 2, "10.0.0.20", addrs("10.0.0.21"))))
	a, isNew, err := p.Assign(Key{ContainerID: "a", IfName: "eth0"}, PodInfo{Namespace: "ns", Name: "pod", UID: "u"})
	if err != nil || !isNew {
		t.Fatalf("Assign: new=%v err=%v", isNew, err)
	}
	if a.ENI.ID != "eni-2" || a.ENI.DeviceIndex != 2 || a.ENI.MAC == "" || !a.Leased {
		t.Fatalf("assignment %+v: want eni-2, device 2, MAC, leased", a)
	}
	if a.Pod != (PodInfo{Namespace: "ns", Name: "pod", UID: "u"}) || !a.AssignedAt.Equal(p.clock.Now()) {
		t.Fatalf("assignment pod %+v at %v", a.Pod, a.AssignedAt)
	}
	got, ok := p.Lookup(a.Key)
	if !ok || got.IP != a.IP {
		t.Fatalf("Lookup = %+v %v", got, ok)
	}
	a2, isNew, err := p.Assign(a.Key, PodInfo{})
	if err != nil || isNew || a2.IP != a.IP || a2.Pod.Name != "pod" {
		t.Fatalf("idempotent Assign = %+v new=%v err=%v", a2, isNew, err)
	}
	if p.AddsTotal() != 1 {
		t.Fatalf("adds total %d, want 1", p.AddsTotal())
	}
	// Two interfaces of one container are two attachments.
	b, _, err := p.Assign(Key{ContainerID: "a", IfName: "net1"}, PodInfo{})
	if !errors.Is(err, ErrNoFreeAddress) {
		t.Fatalf("second interface got %v / %v, want no free address (one address only)", b.IP, err)
	}
}

func TestGenerationOrdering(t *testing.T) {
	p := newPool(t, nil)
	pools := map[uint64]*ipledgerv1.NodePool{
		1: nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11"))),
		5: nodePool(5, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.15"))),
		3: nodePool(3, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.13"))),
	}
	tests := []struct {
		gen       uint64
		force     bool
		applied   bool
		wantGen   uint64
		wantFirst string
	}{
		{gen: 1, applied: true, wantGen: 1, wantFirst: "10.0.0.11"},
		{gen: 5, applied: true, wantGen: 5, wantFirst: "10.0.0.15"},
		{gen: 3, applied: false, wantGen: 5, wantFirst: "10.0.0.15"},
		{gen: 5, applied: true, wantGen: 5, wantFirst: "10.0.0.15"},
		{gen: 1, force: true, applied: true, wantGen: 1, wantFirst: "10.0.0.11"},
	}
	for i, tc := range tests {
		res, err := p.Apply(pools[tc.gen], tc.force)
		if err != nil {
			t.Fatalf("%d: Apply: %v", i, err)
		}
		if res.Applied != tc.applied || p.Generation() != tc.wantGen {
			t.Fatalf("%d: apply gen %d force=%v: applied=%v generation=%d, want %v %d", i, tc.gen, tc.force, res.Applied, p.Generation(), tc.applied, tc.wantGen)
		}
		snap := p.Snapshot()
		if got := snap.ENIs[0].Addresses[0].IP; got != tc.wantFirst {
			t.Fatalf("%d: first address %s, want %s", i, got, tc.wantFirst)
		}
	}
}

func TestInvalidPoolChangesNothing(t *testing.T) {
	good := nodePool(2, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11")))
	tests := []struct {
		name string
		np   *ipledgerv1.NodePool
		want error
	}{
		{"nil", nil, ErrInvalidPool},
		{"duplicate address", nodePool(3, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.12", "10.0.0.12"))), ErrInvalidPool},
		{"address on two ENIs", nodePool(3, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.12")), eni("eni-1", 1, "10.0.0.20", addrs("10.0.0.12"))), ErrInvalidPool},
		{"duplicate ENI", nodePool(3, eni("eni-0", 0, "10.0.0.10", nil), eni("eni-0", 1, "10.0.0.20", nil)), ErrInvalidPool},
		{"bad address", nodePool(3, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.300"))), ErrInvalidPool},
		{"ipv6 address", nodePool(3, eni("eni-0", 0, "10.0.0.10", addrs("fd00::1"))), ErrInvalidPool},
		{"primary listed", nodePool(3, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.10"))), ErrInvalidPool},
		{"unaligned prefix", nodePool(3, eni("eni-0", 0, "10.0.0.10", nil, prefix("10.0.1.8/28", active))), ErrInvalidPool},
		{"not a /28", nodePool(3, eni("eni-0", 0, "10.0.0.10", nil, prefix("10.0.1.0/27", active))), ErrInvalidPool},
		{"prefix overlaps address", nodePool(3, eni("eni-0", 0, "10.0.0.10", addrs("10.0.1.3"), prefix("10.0.1.0/28", active))), ErrInvalidPool},
		{"other node", func() *ipledgerv1.NodePool { np := nodePool(3); np.NodeName = "node-b"; return np }(), ErrWrongIdentity},
		{"other instance", func() *ipledgerv1.NodePool { np := nodePool(3); np.InstanceId = "i-2"; return np }(), ErrWrongIdentity},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPool(t, good)
			before := p.Snapshot()
			if _, err := p.Apply(tc.np, false); !errors.Is(err, tc.want) {
				t.Fatalf("Apply: %v, want %v", err, tc.want)
			}
			after := p.Snapshot()
			if after.Generation != 2 || len(after.ENIs) != 1 || after.ENIs[0].Addresses[0].IP != before.ENIs[0].Addresses[0].IP {
				t.Fatalf("pool changed: %+v", after)
			}
		})
	}
}

func TestVanishedAddressKeptForPodThenRetired(t *testing.T) {
	p := newPool(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12"))))
	p.mustAssign(t, "a") // 10.0.0.11
	res := p.mustApply(t, nodePool(2, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.12"))))
	if len(res.Vanished) != 1 || res.Vanished[0].IP != ip("10.0.0.11") || res.Vanished[0].ContainerID != "a" || res.Vanished[0].Leased {
		t.Fatalf("vanished %+v, want a's 10.0.0.11 unleased", res.Vanished)
	}
	a, ok := p.Lookup(Key{ContainerID: "a", IfName: "eth0"})
	if !ok || a.IP != ip("10.0.0.11") || a.Leased || a.ENI.ID != "eni-0" {
		t.Fatalf("a's assignment after vanish: %+v %v", a, ok)
	}
	if c := p.Counts(); c.InUse != 1 || c.Unleased != 1 || c.Free != 1 {
		t.Fatalf("counts %+v", c)
	}
	u := p.Usage()
	if len(u.InUse) != 1 || u.InUse[0].Ip != "10.0.0.11" {
		t.Fatalf("usage must still report the pod: %+v", u.InUse)
	}
	// Applying again does not report it again.
	if res := p.mustApply(t, nodePool(3, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.12")))); len(res.Vanished) != 0 {
		t.Fatalf("vanished reported twice: %+v", res.Vanished)
	}
	p.mustRelease(t, "a")
	p.clock.Advance(time.Hour)
	if got := p.mustAssign(t, "b"); got != ip("10.0.0.12") {
		t.Fatalf("b got %s", got)
	}
	wantNoFree(t, p.assignErr("c"))
	if c := p.Counts(); c.InUse != 1 || c.Free != 0 || c.Cooling != 0 {
		t.Fatalf("counts after retire %+v", c)
	}
}

func TestVanishedAddressComesBack(t *testing.T) {
	p := newPool(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11"))))
	p.mustAssign(t, "a")
	p.mustApply(t, nodePool(2, eni("eni-0", 0, "10.0.0.10", nil)))
	p.mustApply(t, nodePool(3, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11"))))
	a, _ := p.Lookup(Key{ContainerID: "a", IfName: "eth0"})
	if !a.Leased {
		t.Fatalf("address leased again but assignment says unleased: %+v", a)
	}
	wantNoFree(t, p.assignErr("b"))
	p.mustRelease(t, "a")
	p.clock.Advance(time.Minute)
	if got := p.mustAssign(t, "b"); got != ip("10.0.0.11") {
		t.Fatalf("b got %s", got)
	}
}

func TestApplyReportsENIChanges(t *testing.T) {
	p := newPool(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", nil), eni("eni-1", 1, "10.0.0.20", nil)))
	res := p.mustApply(t, nodePool(2, eni("eni-0", 0, "10.0.0.10", nil), eni("eni-2", 2, "10.0.0.30", nil)))
	ids := func(es []ENI) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.ID)
		}
		return out
	}
	if got := ids(res.ENIs); !slices.Equal(got, []string{"eni-0", "eni-2"}) {
		t.Fatalf("ENIs %v", got)
	}
	if got := ids(res.Removed); !slices.Equal(got, []string{"eni-1"}) {
		t.Fatalf("removed %v", got)
	}
}

func TestReleaseProposalAddresses(t *testing.T) {
	p := newPool(t, nodePool(1, eni("eni-0", 0, "10.0.0.10",
		addrs("10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14", "10.0.0.15", proposed))))
	p.mustAssign(t, "held") // .11
	p.mustAssign(t, "gone") // .12
	p.mustRelease(t, "gone")

	ack, err := p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "r1",
		Addresses: []string{"10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.15", "10.0.0.99", "junk", "10.0.0.13"},
		Prefixes:  []string{"10.0.1.0/28"}})
	if err != nil {
		t.Fatal(err)
	}
	if ack.ProposalId != "r1" {
		t.Fatalf("proposal id %q", ack.ProposalId)
	}
	if want := []string{"10.0.0.13", "10.0.0.15"}; !slices.Equal(ack.Confirmed, want) {
		t.Fatalf("confirmed %v, want %v", ack.Confirmed, want)
	}
	if want := []string{"10.0.0.11", "10.0.0.12", "10.0.0.99", "junk", "10.0.1.0/28"}; !slices.Equal(ack.Refused, want) {
		t.Fatalf("refused %v, want %v", ack.Refused, want)
	}
	// .13 is locked, .12 cooling, .15 proposed: only .14 can go out.
	if got := p.mustAssign(t, "x"); got != ip("10.0.0.14") {
		t.Fatalf("x got %s, want 10.0.0.14", got)
	}
	p.clock.Advance(time.Minute)
	if got := p.mustAssign(t, "y"); got != ip("10.0.0.12") {
		t.Fatalf("y got %s, want the cooled 10.0.0.12", got)
	}
	wantNoFree(t, p.assignErr("z"))

	// The same proposal again (after a reconnect) gets the same answer for locked items.
	ack2, err := p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "r1", Addresses: []string{"10.0.0.13"}})
	if err != nil || !slices.Equal(ack2.Confirmed, []string{"10.0.0.13"}) {
		t.Fatalf("repeat: %v %v", ack2, err)
	}

	// A newer pool that still lists .13 as RELEASING keeps it locked; one that shows it ACTIVE
	// again (the server took the release back) unlocks it.
	p.mustApply(t, nodePool(2, eni("eni-0", 0, "10.0.0.10",
		addrs("10.0.0.11", "10.0.0.12", "10.0.0.13", releasng, "10.0.0.14"))))
	wantNoFree(t, p.assignErr("z"))
	if c := p.Counts(); c.Locked != 1 {
		t.Fatalf("counts %+v, want 1 locked", c)
	}
	res := p.mustApply(t, nodePool(3, eni("eni-0", 0, "10.0.0.10",
		addrs("10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"))))
	if !slices.Equal(res.Unlocked, []string{"10.0.0.13"}) {
		t.Fatalf("unlocked %v", res.Unlocked)
	}
	if got := p.mustAssign(t, "z"); got != ip("10.0.0.13") {
		t.Fatalf("z got %s", got)
	}
}

func TestReleaseLockSurvivesSameGenerationActive(t *testing.T) {
	np := nodePool(4, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11")))
	p := newPool(t, np)
	ack, err := p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "r", Addresses: []string{"10.0.0.11"}})
	if err != nil || len(ack.Confirmed) != 1 {
		t.Fatalf("ack %v %v", ack, err)
	}
	// The pool of the generation the lock was taken at (re-sent after a reconnect) shows the
	// address ACTIVE; it is older than the proposal and must not unlock it.
	if res := p.mustApply(t, np); len(res.Unlocked) != 0 {
		t.Fatalf("unlocked by a same-generation pool: %v", res.Unlocked)
	}
	wantNoFree(t, p.assignErr("a"))
	// A forced pool (registration after the server re-created the node) is current whatever
	// its generation: ACTIVE there ends the lock.
	forced := nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12")))
	if res, err := p.Apply(forced, true); err != nil || !slices.Equal(res.Unlocked, []string{"10.0.0.11"}) {
		t.Fatalf("forced apply: %+v %v", res, err)
	}
	if _, err := p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "r2", Addresses: []string{"10.0.0.11"}}); err != nil {
		t.Fatal(err)
	}
	// Gone from the pool: the lock ends with it.
	res := p.mustApply(t, nodePool(5, eni("eni-0", 0, "10.0.0.10", nil)))
	if !slices.Equal(res.Unlocked, []string{"10.0.0.11"}) {
		t.Fatalf("unlocked %v", res.Unlocked)
	}
	if n := len(p.Snapshot().Locked); n != 0 {
		t.Fatalf("%d locks left", n)
	}
}

func TestReleaseProposalPrefixes(t *testing.T) {
	p := newPool(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", nil,
		prefix("10.0.1.0/28", active), prefix("10.0.1.16/28", active), prefix("10.0.1.32/28", active))))
	p.mustAssign(t, "a") // 10.0.1.0: packs into the first prefix
	p.mustAssign(t, "b") // 10.0.1.1
	ack, err := p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "r",
		Prefixes: []string{"10.0.1.0/28", "10.0.1.16/28", "10.0.1.48/28", "10.0.1.32/27"}, Addresses: []string{"10.0.1.33"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.0.1.16/28"}; !slices.Equal(ack.Confirmed, want) {
		t.Fatalf("confirmed %v, want %v", ack.Confirmed, want)
	}
	// An address inside a prefix is not a lease item of its own.
	if want := []string{"10.0.1.33", "10.0.1.0/28", "10.0.1.48/28", "10.0.1.32/27"}; !slices.Equal(ack.Refused, want) {
		t.Fatalf("refused %v, want %v", ack.Refused, want)
	}
	// None of the locked prefix's 16 addresses is handed out: 14 left in the first prefix,
	// then the third prefix.
	var got []netip.Addr
	for i := range 30 {
		got = append(got, p.mustAssign(t, fmt.Sprint("c", i)))
	}
	for _, a := range got {
		if netip.MustParsePrefix("10.0.1.16/28").Contains(a) {
			t.Fatalf("handed out %s from the locked prefix", a)
		}
	}
	if got[13] != ip("10.0.1.15") || got[14] != ip("10.0.1.32") {
		t.Fatalf("packing order wrong: %v", got)
	}
	wantNoFree(t, p.assignErr("last"))
	// A prefix whose addresses are all free but one still cooling is refused.
	for i := 14; i < 30; i++ {
		p.mustRelease(t, fmt.Sprint("c", i))
		p.clock.Advance(time.Second)
	}
	p.clock.Advance(DefaultCooldown - 2*time.Second)
	if c := p.Counts(); c.Cooling != 1 {
		t.Fatalf("counts %+v, want one address cooling", c)
	}
	ack, err = p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "r2", Prefixes: []string{"10.0.1.32/28"}})
	if err != nil || !slices.Equal(ack.Refused, []string{"10.0.1.32/28"}) {
		t.Fatalf("ack %v %v", ack, err)
	}
}

func TestGC(t *testing.T) {
	p := newPool(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12", "10.0.0.13"))))
	p.mustAssign(t, "a")
	p.mustAssign(t, "b")
	p.mustAssign(t, "c")
	released, err := p.GC([]Key{{ContainerID: "b", IfName: "eth0"}, {ContainerID: "nope", IfName: "eth0"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 2 || released[0].ContainerID != "a" || released[1].ContainerID != "c" {
		t.Fatalf("released %+v", released)
	}
	if as := p.Assignments(); len(as) != 1 || as[0].ContainerID != "b" {
		t.Fatalf("left %+v", as)
	}
	if c := p.Counts(); c.Cooling != 2 || c.InUse != 1 {
		t.Fatalf("counts %+v", c)
	}
}

func TestNextFreeAtAndChanged(t *testing.T) {
	p := newPool(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11"))))
	if _, ok := p.NextFreeAt(); ok {
		t.Fatal("nothing cools yet")
	}
	p.mustAssign(t, "a")
	ch := p.Changed()
	select {
	case <-ch:
		t.Fatal("Changed closed without a change")
	default:
	}
	start := p.clock.Now()
	p.mustRelease(t, "a")
	select {
	case <-ch:
	default:
		t.Fatal("Release did not signal Changed")
	}
	at, ok := p.NextFreeAt()
	if !ok || !at.Equal(start.Add(DefaultCooldown)) {
		t.Fatalf("NextFreeAt %v %v", at, ok)
	}
	ch = p.Changed()
	p.mustApply(t, nodePool(2, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12"))))
	select {
	case <-ch:
	default:
		t.Fatal("Apply did not signal Changed")
	}
}

func TestOnChangeCalled(t *testing.T) {
	var mu sync.Mutex
	n := 0
	p, err := Open(Config{CheckpointPath: t.TempDir() + "/cp.json", OnChange: func() { mu.Lock(); n++; mu.Unlock() }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Apply(nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11"))), false); err != nil {
		t.Fatal(err)
	}
	k := Key{ContainerID: "a", IfName: "eth0"}
	if _, _, err := p.Assign(k, PodInfo{}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Release(k); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if n != 3 {
		t.Fatalf("OnChange called %d times, want 3", n)
	}
}

func TestConcurrentAssignNeverSharesAnAddress(t *testing.T) {
	var as []*ipledgerv1.PoolAddress
	for i := range 300 {
		as = append(as, &ipledgerv1.PoolAddress{Ip: fmt.Sprintf("10.0.%d.%d", 1+i/200, 1+i%200), State: active})
	}
	dir := t.TempDir()
	p := openPool(t, dir, nil)
	p.mustApply(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", as)))
	const n = 320
	results := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a, _, err := p.Assign(Key{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}, PodInfo{})
			results[i], errs[i] = a.IP, err
		})
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	nofree := 0
	for i := range n {
		switch {
		case errors.Is(errs[i], ErrNoFreeAddress):
			nofree++
		case errs[i] != nil:
			t.Fatalf("assign %d: %v", i, errs[i])
		default:
			if j, dup := seen[results[i]]; dup {
				t.Fatalf("%s handed to c%d and c%d", results[i], j, i)
			}
			seen[results[i]] = i
		}
	}
	if len(seen) != 300 || nofree != 20 {
		t.Fatalf("%d assigned, %d without address; want 300 and 20", len(seen), nofree)
	}
	// Everything reached the checkpoint.
	q := openPool(t, dir, nil)
	if got := len(q.Assignments()); got != 300 {
		t.Fatalf("checkpoint holds %d assignments, want 300", got)
	}
}

// TestPacksOntoLowestDeviceIndex: pods land on the ENI with the lowest device index that has a
// free address, whatever the order of the pool's interfaces or their addresses, also before an
// address of a higher ENI never used; so a higher ENI's pods drain away as pods come and go, and
// once they are gone (and their addresses cooled down) a release of all its addresses is
// confirmed while the node keeps starting pods.
func TestPacksOntoLowestDeviceIndex(t *testing.T) {
	// eni-2 has the lowest addresses and comes first; eni-0 the highest.
	p := newPool(t, nodePool(1,
		eni("eni-2", 2, "10.0.0.10", addrs("10.0.0.1", "10.0.0.2", "10.0.0.3")),
		eni("eni-1", 1, "10.0.0.20", addrs("10.0.0.21", "10.0.0.22", "10.0.0.23")),
		eni("eni-0", 0, "10.0.0.30", addrs("10.0.0.31", "10.0.0.32", "10.0.0.33"))))
	onENI := map[string]string{}
	assign := func(cid, wantENI string) {
		t.Helper()
		a, _, err := p.Assign(Key{ContainerID: cid, IfName: "eth0"}, PodInfo{})
		if err != nil {
			t.Fatalf("assign %s: %v", cid, err)
		}
		if a.ENI.ID != wantENI {
			t.Fatalf("%s got %s on %s (device %d), want %s", cid, a.IP, a.ENI.ID, a.ENI.DeviceIndex, wantENI)
		}
		onENI[cid] = wantENI
	}
	// A burst of 7 pods: ENI 0 first, then 1, then 2.
	for i, want := range []string{"eni-0", "eni-0", "eni-0", "eni-1", "eni-1", "eni-1", "eni-2"} {
		assign(fmt.Sprint("p", i), want)
	}
	// Churn: pods end on every ENI, new ones come. Each new pod takes the lowest ENI with an
	// address free (cooled down), never eni-2's two that were never used.
	p.mustRelease(t, "p0") // eni-0
	p.mustRelease(t, "p3") // eni-1
	p.mustRelease(t, "p6") // eni-2: now empty
	assign("q0", "eni-2")  // eni-0's and eni-1's addresses cool down: only eni-2's are free
	p.mustRelease(t, "q0")
	p.clock.Advance(DefaultCooldown)
	assign("q1", "eni-0") // eni-0's cooled address, before eni-1's and eni-2's
	assign("q2", "eni-1")
	p.mustRelease(t, "p4")
	p.mustRelease(t, "p1")
	p.clock.Advance(DefaultCooldown)
	assign("q3", "eni-0")
	assign("q4", "eni-1")
	// eni-2 held no pod since q0, and nothing of it cools: the server's release of its three
	// addresses (then of the ENI) is confirmed, all of it.
	ack, err := p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "drain-eni-2", Addresses: []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ack.GetConfirmed(), []string{"10.0.0.1", "10.0.0.2", "10.0.0.3"}) || len(ack.GetRefused()) != 0 {
		t.Fatalf("release of eni-2: confirmed %v, refused %v", ack.GetConfirmed(), ack.GetRefused())
	}
	// The pods are where the route tables expect them: each assignment carries its ENI's device.
	for _, a := range p.Assignments() {
		if onENI[a.ContainerID] != a.ENI.ID || a.ENI.DeviceIndex != map[string]uint32{"eni-0": 0, "eni-1": 1, "eni-2": 2}[a.ENI.ID] {
			t.Fatalf("assignment %+v", a)
		}
	}
	// The locked addresses are never handed out: the node is full with 6 pods on eni-0 and eni-1.
	wantNoFree(t, p.assignErr("q5"))
}

// TestPacksPrefixesOntoLowestDeviceIndex: in prefix mode, the lowest device index first, then
// the prefix with the most pods on it.
func TestPacksPrefixesOntoLowestDeviceIndex(t *testing.T) {
	p := newPool(t, nodePool(1,
		eni("eni-1", 1, "10.0.0.20", nil, prefix("10.0.1.0/28", active)),
		eni("eni-0", 0, "10.0.0.10", nil, prefix("10.0.2.0/28", active), prefix("10.0.2.16/28", active))))
	var got []string
	for i := range 33 {
		a, _, err := p.Assign(Key{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}, PodInfo{})
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.ENI.ID)
	}
	for i, e := range got {
		if want := map[bool]string{true: "eni-0", false: "eni-1"}[i < 32]; e != want {
			t.Fatalf("pod %d on %s, want %s (%v)", i, e, want, got)
		}
	}
	// ENI 0's first prefix fills before its second.
	a, _ := p.Lookup(Key{ContainerID: "c15", IfName: "eth0"})
	b, _ := p.Lookup(Key{ContainerID: "c16", IfName: "eth0"})
	if a.IP != ip("10.0.2.15") || b.IP != ip("10.0.2.16") {
		t.Fatalf("c15 on %s, c16 on %s", a.IP, b.IP)
	}
}
