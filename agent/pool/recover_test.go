package pool

import (
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func ips(ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		out = append(out, ip(s))
	}
	return out
}

func assignedIPs(as []Assignment) []netip.Addr {
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		out = append(out, a.IP)
	}
	return out
}

// reported is a pod of a usage report.
func reported(cid, addr string, at time.Time) *ipledgerv1.PodAddress {
	return &ipledgerv1.PodAddress{Ip: addr, ContainerId: cid, Ifname: "eth0", PodNamespace: "ns", PodName: cid,
		PodUid: "uid-" + cid, AssignedAt: timestamppb.New(at)}
}

func TestRecoveredAddressesAreHeldUntilReleased(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	p := openPool(t, dir, clock)
	p.mustApply(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"))))
	if got := p.mustAssign(t, "a"); got != ip("10.0.0.11") {
		t.Fatalf("a got %s", got)
	}
	// The kernel shows pods on .11 (a's), .12, and .99 (not leased to the node).
	rec, err := p.Recover(ips("10.0.0.12", "10.0.0.11", "10.0.0.99"))
	if err != nil {
		t.Fatal(err)
	}
	if got := assignedIPs(rec); !slices.Equal(got, ips("10.0.0.12", "10.0.0.99")) {
		t.Fatalf("recovered %v, want .12 and .99 (.11 is a's)", got)
	}
	for _, a := range rec {
		if !a.Recovered || a.Key != (Key{}) {
			t.Fatalf("recovered assignment %+v", a)
		}
	}
	if a, ok := p.Lookup(Key{ContainerID: "a", IfName: "eth0"}); !ok || a.IP != ip("10.0.0.11") || a.Recovered {
		t.Fatalf("a after Recover: %+v %v", a, ok)
	}
	if c := p.Counts(); c.InUse != 3 || c.Unleased != 1 || c.Free != 2 {
		t.Fatalf("counts %+v, want 3 in use (1 unleased), 2 free", c)
	}

	// Never handed out.
	got := []netip.Addr{p.mustAssign(t, "b"), p.mustAssign(t, "c")}
	if !slices.Equal(got, ips("10.0.0.13", "10.0.0.14")) {
		t.Fatalf("handed out %v", got)
	}
	wantNoFree(t, p.assignErr("d"))
	// Counted in use, refused to a release proposal, left alone by GC.
	u := p.Usage()
	if !slices.ContainsFunc(u.GetInUse(), func(pa *ipledgerv1.PodAddress) bool {
		return pa.GetIp() == "10.0.0.12" && pa.GetContainerId() == ""
	}) || len(u.GetInUse()) != 5 {
		t.Fatalf("usage in use %v, want 5 with the recovered .12", u.GetInUse())
	}
	ack, err := p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "r", Addresses: []string{"10.0.0.12"}})
	if err != nil || !slices.Equal(ack.GetRefused(), []string{"10.0.0.12"}) {
		t.Fatalf("ack %v %v", ack, err)
	}
	released, err := p.GC([]Key{{ContainerID: "b", IfName: "eth0"}, {ContainerID: "c", IfName: "eth0"}})
	if err != nil || len(released) != 1 || released[0].ContainerID != "a" {
		t.Fatalf("GC released %+v %v, want only a", released, err)
	}
	if got := p.Recovered(); !slices.Equal(got, ips("10.0.0.12", "10.0.0.99")) {
		t.Fatalf("recovered after GC %v", got)
	}

	// Persisted: a restart keeps them.
	q := openPool(t, dir, clock)
	if got := q.Recovered(); !slices.Equal(got, ips("10.0.0.12", "10.0.0.99")) {
		t.Fatalf("recovered after reload %v", got)
	}
	snap := q.Snapshot()
	var rpods []string
	for _, ps := range snap.Pods {
		if ps.Recovered {
			rpods = append(rpods, ps.IP)
		}
	}
	if !slices.Equal(rpods, []string{"10.0.0.12", "10.0.0.99"}) || snap.Counts.InUse != 4 {
		t.Fatalf("snapshot after reload: recovered pods %v, counts %+v", rpods, snap.Counts)
	}
	clock.Advance(time.Hour) // a's address cooled down
	if got := q.mustAssign(t, "d"); got != ip("10.0.0.11") {
		t.Fatalf("d got %s, want a's .11", got)
	}
	wantNoFree(t, q.assignErr("e"))

	// Their rules went: they are given back and cool down; the unleased one is gone for good.
	rel, err := q.ReleaseRecovered(ips("10.0.0.12", "10.0.0.99", "10.0.0.13"))
	if err != nil || !slices.Equal(assignedIPs(rel), ips("10.0.0.12", "10.0.0.99")) {
		t.Fatalf("ReleaseRecovered %v %v", rel, err)
	}
	if len(q.Recovered()) != 0 {
		t.Fatalf("still recovered: %v", q.Recovered())
	}
	if a, ok := q.Lookup(Key{ContainerID: "b", IfName: "eth0"}); !ok || a.IP != ip("10.0.0.13") {
		t.Fatalf("ReleaseRecovered touched b: %+v %v", a, ok)
	}
	wantNoFree(t, q.assignErr("e"))
	clock.Advance(DefaultCooldown)
	if got := q.mustAssign(t, "e"); got != ip("10.0.0.12") {
		t.Fatalf("e got %s after the cooldown, want .12", got)
	}
	wantNoFree(t, q.assignErr("f"))
	if _, err := q.Recover([]netip.Addr{netip.MustParseAddr("::1")}); err == nil {
		t.Fatal("Recover of an IPv6 address succeeded")
	}
}

func TestRecoveredUnleasedAddressJoinsThePool(t *testing.T) {
	p := newPool(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11"))))
	if _, err := p.Recover(ips("10.0.0.12")); err != nil {
		t.Fatal(err)
	}
	// The server's pool leases .12 (it was leased after the checkpoint was written).
	p.mustApply(t, nodePool(2, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12"))))
	if as := p.Assignments(); len(as) != 1 || as[0].IP != ip("10.0.0.12") || !as[0].Leased || !as[0].Recovered {
		t.Fatalf("assignments %+v, want .12 recovered and leased", as)
	}
	p.mustAssign(t, "a")
	wantNoFree(t, p.assignErr("b"))
	if _, err := p.ReleaseRecovered(ips("10.0.0.12")); err != nil {
		t.Fatal(err)
	}
	p.clock.Advance(DefaultCooldown)
	if got := p.mustAssign(t, "b"); got != ip("10.0.0.12") {
		t.Fatalf("b got %s", got)
	}
}

func TestRestore(t *testing.T) {
	t0 := newClock().Now()
	pool := nodePool(3, eni("eni-0", 0, "10.0.0.10", addrs(
		"10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14", proposed, "10.0.0.15", releasng, "10.0.0.16", "10.0.0.17")))
	key := func(cid string) Key { return Key{ContainerID: cid, IfName: "eth0"} }
	type want struct {
		restored, upgraded, replaced []string // addresses
		holders                      map[string]string
		conflicts                    int
		notes                        []string // substrings of the non-conflict notes, in order
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, p *testPool) // at t0 + 1 min
		pods  []*ipledgerv1.PodAddress
		want  want
	}{{
		name: "pods missing from the checkpoint come back when leased ACTIVE or RELEASE_PROPOSED",
		setup: func(t *testing.T, p *testPool) {
			p.mustAssign(t, "a") // .11
		},
		pods: []*ipledgerv1.PodAddress{
			reported("a", "10.0.0.11", t0),
			reported("b", "10.0.0.13", t0.Add(2*time.Minute)),
			reported("c", "10.0.0.14", t0.Add(2*time.Minute)),
			reported("d", "10.0.0.15", t0.Add(2*time.Minute)), // RELEASING
			reported("e", "10.0.0.99", t0.Add(2*time.Minute)), // not leased
			{Ip: "10.0.0.16"}, // a recovered address the node reported
			{Ip: "bogus", ContainerId: "f", Ifname: "eth0"},
		},
		want: want{
			restored: []string{"10.0.0.13", "10.0.0.14"},
			holders:  map[string]string{"10.0.0.11": "a", "10.0.0.13": "b", "10.0.0.14": "c"},
			notes:    []string{"RELEASING", "not leased", "not IPv4"},
		},
	}, {
		name: "a recovered address gets its attachment",
		setup: func(t *testing.T, p *testPool) {
			if _, err := p.Recover(ips("10.0.0.12", "10.0.0.99")); err != nil {
				t.Fatal(err)
			}
		},
		pods: []*ipledgerv1.PodAddress{reported("b", "10.0.0.12", t0), reported("e", "10.0.0.99", t0)},
		want: want{
			upgraded: []string{"10.0.0.12", "10.0.0.99"},
			holders:  map[string]string{"10.0.0.12": "b", "10.0.0.99": "e"},
		},
	}, {
		name: "an address the checkpoint gives to another pod: the newer assignment wins",
		setup: func(t *testing.T, p *testPool) {
			p.mustAssign(t, "a") // .11 at t0+1m
			p.mustAssign(t, "b") // .12 at t0+1m
		},
		pods: []*ipledgerv1.PodAddress{
			reported("x", "10.0.0.11", t0),                    // older than a's: a keeps it
			reported("y", "10.0.0.12", t0.Add(2*time.Minute)), // newer than b's: b's record is stale
		},
		want: want{
			restored:  []string{"10.0.0.12"},
			replaced:  []string{"10.0.0.12"},
			holders:   map[string]string{"10.0.0.11": "a", "10.0.0.12": "y"},
			conflicts: 2,
		},
	}, {
		name: "an attachment the checkpoint gives another address: the newer assignment wins",
		setup: func(t *testing.T, p *testPool) {
			p.mustAssign(t, "a") // .11
			p.mustAssign(t, "b") // .12
		},
		pods: []*ipledgerv1.PodAddress{
			reported("a", "10.0.0.13", t0),                    // older: a stays on .11
			reported("b", "10.0.0.14", t0.Add(2*time.Minute)), // newer: b moves to .14, .12 cools
		},
		want: want{
			restored:  []string{"10.0.0.14"},
			replaced:  []string{"10.0.0.12"},
			holders:   map[string]string{"10.0.0.11": "a", "10.0.0.14": "b"},
			conflicts: 2,
		},
	}, {
		name: "an address the checkpoint saw given back after the pod got it stays free",
		setup: func(t *testing.T, p *testPool) {
			p.mustAssign(t, "a")
			p.mustRelease(t, "a") // .11 given back at t0+1m
		},
		pods: []*ipledgerv1.PodAddress{reported("a", "10.0.0.11", t0)},
		want: want{holders: map[string]string{}, notes: []string{"given back"}},
	}, {
		name: "attachments the runtime deleted before the registration stay deleted",
		setup: func(t *testing.T, p *testPool) {
			if _, found, err := p.Release(key("gone")); err != nil || found {
				t.Fatalf("release of an unknown attachment: %v %v", found, err)
			}
			if _, err := p.GC([]Key{key("kept"), key("gone")}); err != nil {
				t.Fatal(err)
			}
		},
		pods: []*ipledgerv1.PodAddress{
			reported("gone", "10.0.0.11", t0), reported("collected", "10.0.0.12", t0), reported("kept", "10.0.0.13", t0),
		},
		want: want{
			restored: []string{"10.0.0.13"},
			holders:  map[string]string{"10.0.0.13": "kept"},
			notes:    []string{"deleted", "deleted"},
		},
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clock := newClock()
			p := openPool(t, dir, clock)
			p.mustApply(t, pool)
			clock.Advance(time.Minute)
			tc.setup(t, p)
			clock.Advance(5 * time.Minute)
			res, err := p.Restore(tc.pods)
			if err != nil {
				t.Fatal(err)
			}
			strs := func(as []Assignment) []string {
				var out []string
				for _, a := range as {
					out = append(out, a.IP.String())
				}
				return out
			}
			if !slices.Equal(strs(res.Restored), tc.want.restored) || !slices.Equal(strs(res.Upgraded), tc.want.upgraded) ||
				!slices.Equal(strs(res.Replaced), tc.want.replaced) {
				t.Fatalf("restored %v upgraded %v replaced %v, want %v %v %v", strs(res.Restored), strs(res.Upgraded),
					strs(res.Replaced), tc.want.restored, tc.want.upgraded, tc.want.replaced)
			}
			conflicts := 0
			var notes []string
			for _, n := range res.Notes {
				if n.Conflict {
					conflicts++
				} else {
					notes = append(notes, n.Reason)
				}
			}
			if conflicts != tc.want.conflicts || len(notes) != len(tc.want.notes) {
				t.Fatalf("notes %+v, want %d conflicts and notes %q", res.Notes, tc.want.conflicts, tc.want.notes)
			}
			for i, n := range notes {
				if !strings.Contains(n, tc.want.notes[i]) {
					t.Fatalf("note %d %q, want it to say %q", i, n, tc.want.notes[i])
				}
			}
			check := func(q *testPool) {
				t.Helper()
				holders := map[string]string{}
				for _, a := range q.Assignments() {
					if a.Recovered {
						t.Fatalf("still recovered: %+v", a)
					}
					holders[a.IP.String()] = a.ContainerID
				}
				if len(holders) != len(tc.want.holders) {
					t.Fatalf("holders %v, want %v", holders, tc.want.holders)
				}
				for ipStr, cid := range tc.want.holders {
					if holders[ipStr] != cid {
						t.Fatalf("holders %v, want %v", holders, tc.want.holders)
					}
					a, ok := q.Lookup(key(cid))
					if !ok || a.IP.String() != ipStr {
						t.Fatalf("Lookup(%s) = %+v %v", cid, a, ok)
					}
				}
			}
			check(p)
			check(openPool(t, dir, clock)) // persisted
			for _, a := range res.Restored {
				if a.Pod.UID != "uid-"+a.ContainerID || a.ENI.ID != "eni-0" || !a.Leased {
					t.Fatalf("restored assignment %+v lacks its pod or ENI", a)
				}
			}
			// Only the first Restore restores.
			again, err := p.Restore([]*ipledgerv1.PodAddress{reported("late", "10.0.0.17", t0.Add(time.Hour))})
			if err != nil || !again.Ignored {
				t.Fatalf("second Restore: %+v %v", again, err)
			}
			if _, ok := p.Lookup(key("late")); ok {
				t.Fatal("a second Restore restored a pod")
			}
		})
	}
}

func TestRestoredPodIsReleasedByItsDel(t *testing.T) {
	clock := newClock()
	p := openPool(t, t.TempDir(), clock)
	p.mustApply(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12"))))
	if _, err := p.Restore([]*ipledgerv1.PodAddress{reported("b", "10.0.0.12", clock.Now())}); err != nil {
		t.Fatal(err)
	}
	if got := p.mustAssign(t, "a"); got != ip("10.0.0.11") {
		t.Fatalf("a got %s", got)
	}
	wantNoFree(t, p.assignErr("c"))
	if got := p.mustRelease(t, "b"); got != ip("10.0.0.12") {
		t.Fatalf("released %s", got)
	}
	wantNoFree(t, p.assignErr("c"))
	clock.Advance(DefaultCooldown)
	if got := p.mustAssign(t, "c"); got != ip("10.0.0.12") {
		t.Fatalf("c got %s", got)
	}
}

func TestRestoreWait(t *testing.T) {
	np := nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12", "10.0.0.13")))
	open := func(t *testing.T, dir string, clock *fakeClock) *Pool {
		t.Helper()
		p, err := Open(Config{CheckpointPath: filepath.Join(dir, "checkpoint.json"), NodeName: "node-a", InstanceID: "i-1", Now: clock.Now,
			RestoreWait: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	seed := func(t *testing.T) (string, *fakeClock) {
		t.Helper()
		dir, clock := t.TempDir(), newClock()
		p := openPool(t, dir, clock)
		p.mustApply(t, np)
		p.mustAssign(t, "old")
		return dir, clock
	}
	k := func(cid string) Key { return Key{ContainerID: cid, IfName: "eth0"} }

	t.Run("new attachments wait for Restore", func(t *testing.T) {
		dir, clock := seed(t)
		p := open(t, dir, clock)
		_, _, err := p.Assign(k("new"), PodInfo{})
		if !errors.Is(err, ErrAwaitingRestore) || !errors.Is(err, ErrNoFreeAddress) || !p.AwaitingRestore() {
			t.Fatalf("Assign while awaiting Restore: %v", err)
		}
		if at, ok := p.NextFreeAt(); !ok || !at.Equal(clock.Now().Add(5*time.Second)) {
			t.Fatalf("NextFreeAt %v %v, want the end of the wait", at, ok)
		}
		// A known attachment gets its address again; Del and Check work.
		if a, isNew, err := p.Assign(k("old"), PodInfo{}); err != nil || isNew || a.IP != ip("10.0.0.11") {
			t.Fatalf("Assign of the checkpointed attachment: %+v %v %v", a, isNew, err)
		}
		changed := p.Changed()
		// The server knows a pod the checkpoint lacks: it is not handed to the waiting pod.
		if _, err := p.Restore([]*ipledgerv1.PodAddress{reported("later", "10.0.0.12", clock.Now())}); err != nil {
			t.Fatal(err)
		}
		select {
		case <-changed:
		default:
			t.Fatal("Restore did not wake the waiters")
		}
		a, _, err := p.Assign(k("new"), PodInfo{})
		if err != nil || a.IP != ip("10.0.0.13") || p.AwaitingRestore() {
			t.Fatalf("Assign after Restore: %+v %v", a, err)
		}
	})
	t.Run("the wait ends without a registration", func(t *testing.T) {
		dir, clock := seed(t)
		p := open(t, dir, clock)
		clock.Advance(5 * time.Second)
		if a, _, err := p.Assign(k("new"), PodInfo{}); err != nil || a.IP != ip("10.0.0.12") {
			t.Fatalf("Assign after the wait: %+v %v", a, err)
		}
		// A late first registration still restores (and reports what it cannot).
		res, err := p.Restore([]*ipledgerv1.PodAddress{reported("later", "10.0.0.12", clock.Now().Add(-time.Second)),
			reported("other", "10.0.0.13", clock.Now().Add(-time.Second))})
		if err != nil || res.Ignored || len(res.Restored) != 1 || len(res.Notes) != 1 || !res.Notes[0].Conflict {
			t.Fatalf("late Restore: %+v %v", res, err)
		}
	})
	t.Run("without a wait nothing waits", func(t *testing.T) {
		dir, clock := seed(t)
		p := openPool(t, dir, clock)
		if p.AwaitingRestore() {
			t.Fatal("awaiting Restore without RestoreWait")
		}
		p.mustAssign(t, "new")
	})
}
