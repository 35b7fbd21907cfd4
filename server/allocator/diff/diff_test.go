package diff

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

const cluster = "c1"

func ip(s string) netip.Addr    { return netip.MustParseAddr(s) }
func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func ips(ss ...string) (out []netip.Addr) {
	for _, s := range ss {
		out = append(out, ip(s))
	}
	return out
}

// world is one node with a primary ENI and a managed secondary ENI, both as EC2 has them and as
// the records lease them, consistent.
func world() (Records, EC2) {
	rec := Records{
		Subnets: []ledger.SubnetRecord{{ID: "subnet-1", CIDR: pfx("10.0.0.0/24")}},
		Nodes: []ledger.NodeRecord{{
			Name: "n1", InstanceID: "i-1", SubnetID: "subnet-1", PrimaryENI: "eni-0",
			ENIs: []ledger.ENIRecord{
				{ID: "eni-0", SubnetID: "subnet-1", PrimaryIP: ip("10.0.0.10"), Addresses: []ledger.LeasedAddress{
					{IP: ip("10.0.0.11"), State: ledger.LeaseActive}, {IP: ip("10.0.0.12"), State: ledger.LeaseReleasing}}},
				{ID: "eni-1", SubnetID: "subnet-1", PrimaryIP: ip("10.0.0.20"), DeviceIndex: 1, Managed: true,
					Prefixes: []ledger.LeasedPrefix{{Prefix: pfx("10.0.0.32/28"), State: ledger.LeaseActive}}},
			},
		}},
	}
	e := EC2{
		ENIs: []ec2gw.ENI{
			{ID: "eni-0", SubnetID: "subnet-1", PrimaryIP: ip("10.0.0.10"), SecondaryIPs: ips("10.0.0.11", "10.0.0.12"),
				Attachment: &ec2gw.Attachment{InstanceID: "i-1"}},
			{ID: "eni-1", SubnetID: "subnet-1", PrimaryIP: ip("10.0.0.20"), Prefixes: []netip.Prefix{pfx("10.0.0.32/28")},
				Tags: map[string]string{TagCluster: cluster, TagNode: "n1"}, Attachment: &ec2gw.Attachment{InstanceID: "i-1", DeviceIndex: 1}},
			{ID: "eni-foreign", SubnetID: "subnet-1", PrimaryIP: ip("10.0.0.100"), SecondaryIPs: ips("10.0.0.101")},
		},
		Instances: []ec2gw.Instance{{ID: "i-1", State: "running"}},
	}
	return rec, e
}

func kinds(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Kind.String()+":"+f.Address+f.ENI)
	}
	return out
}

func TestConsistentWorldHasNoFindings(t *testing.T) {
	rec, e := world()
	if fs := Diff(cluster, rec, e); len(fs) != 0 {
		t.Fatalf("findings in a consistent world: %v", fs)
	}
}

func TestEveryKindOfDifferenceIsFound(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Records, *EC2)
		want   Finding // Kind and the fields set are compared
		twice  bool
	}{
		{"lease missing on EC2", func(r *Records, e *EC2) { e.ENIs[0].SecondaryIPs = ips("10.0.0.12") },
			Finding{Kind: LeasedNotOnEC2, Node: "n1", ENI: "eni-0", Address: "10.0.0.11", State: ledger.LeaseActive}, false},
		{"release done on EC2", func(r *Records, e *EC2) { e.ENIs[0].SecondaryIPs = ips("10.0.0.11") },
			Finding{Kind: LeasedNotOnEC2, Node: "n1", ENI: "eni-0", Address: "10.0.0.12", State: ledger.LeaseReleasing}, false},
		{"prefix missing on EC2", func(r *Records, e *EC2) { e.ENIs[1].Prefixes = nil },
			Finding{Kind: LeasedNotOnEC2, Node: "n1", ENI: "eni-1", Address: "10.0.0.32/28"}, false},
		{"address on EC2 not leased", func(r *Records, e *EC2) { e.ENIs[0].SecondaryIPs = append(e.ENIs[0].SecondaryIPs, ip("10.0.0.13")) },
			Finding{Kind: OnEC2NotLeased, Node: "n1", ENI: "eni-0", Address: "10.0.0.13"}, false},
		{"prefix on EC2 not leased", func(r *Records, e *EC2) { e.ENIs[1].Prefixes = append(e.ENIs[1].Prefixes, pfx("10.0.0.48/28")) },
			Finding{Kind: OnEC2NotLeased, Node: "n1", ENI: "eni-1", Address: "10.0.0.48/28"}, false},
		{"ENI missing", func(r *Records, e *EC2) { e.ENIs = []ec2gw.ENI{e.ENIs[0], e.ENIs[2]} },
			Finding{Kind: ENIMissing, Node: "n1", ENI: "eni-1"}, false},
		{"ENI detached", func(r *Records, e *EC2) { e.ENIs[1].Attachment = nil },
			Finding{Kind: ENIAttachment, Node: "n1", ENI: "eni-1"}, false},
		{"ENI on another instance", func(r *Records, e *EC2) { e.ENIs[1].Attachment = &ec2gw.Attachment{InstanceID: "i-2"} },
			Finding{Kind: ENIAttachment, Node: "n1", ENI: "eni-1", Other: "i-2"}, false},
		{"leaked ENI", func(r *Records, e *EC2) {
			e.ENIs = append(e.ENIs, ec2gw.ENI{ID: "eni-9", SubnetID: "subnet-1", PrimaryIP: ip("10.0.0.90"), Tags: map[string]string{TagCluster: cluster}})
		}, Finding{Kind: LeakedENI, ENI: "eni-9"}, false},
		{"reservation's ENI attached", func(r *Records, e *EC2) {
			r.Prewarms = []ledger.PrewarmRecord{{ID: "pw-1", ENIs: []ledger.PrewarmENI{{ID: "eni-pw", State: ledger.PrewarmENIReady}}}}
			e.ENIs = append(e.ENIs, ec2gw.ENI{ID: "eni-pw", SubnetID: "subnet-1", PrimaryIP: ip("10.0.0.60"),
				Tags: map[string]string{TagCluster: cluster, TagPrewarm: "pw-1"}, Attachment: &ec2gw.Attachment{InstanceID: "i-1", DeviceIndex: 2}})
		}, Finding{Kind: ReservedENIAttached, ENI: "eni-pw", Other: "pw-1"}, false},
		{"instance gone", func(r *Records, e *EC2) { e.Instances[0].State = "terminated" },
			Finding{Kind: InstanceGone, Node: "n1", Other: "i-1"}, false},
		{"instance unknown", func(r *Records, e *EC2) { e.Instances = []ec2gw.Instance{} },
			Finding{Kind: InstanceGone, Node: "n1", Other: "i-1"}, false},
		{"address on two ENIs", func(r *Records, e *EC2) { e.ENIs[2].SecondaryIPs = ips("10.0.0.101", "10.0.0.11") },
			Finding{Kind: DoubleOnEC2, ENI: "eni-foreign", Address: "10.0.0.11", Other: "eni-0"}, true},
		{"address leased twice", func(r *Records, e *EC2) {
			n2 := ledger.NodeRecord{Name: "n2", InstanceID: "i-2", ENIs: []ledger.ENIRecord{{ID: "eni-0", SubnetID: "subnet-1",
				Addresses: []ledger.LeasedAddress{{IP: ip("10.0.0.11"), State: ledger.LeaseActive}}}}}
			r.Nodes = append(r.Nodes, n2)
		}, Finding{Kind: DoubleLease, Node: "n2", Address: "10.0.0.11", Other: "n1"}, true},
		{"address inside a leased prefix", func(r *Records, e *EC2) {
			r.Nodes[0].ENIs[0].Addresses = append(r.Nodes[0].ENIs[0].Addresses, ledger.LeasedAddress{IP: ip("10.0.0.33"), State: ledger.LeaseActive})
			e.ENIs[0].SecondaryIPs = append(e.ENIs[0].SecondaryIPs, ip("10.0.0.33"))
		}, Finding{Kind: DoubleLease, Node: "n1", Address: "10.0.0.33", Other: "n1"}, true},
		{"foreign and leased", func(r *Records, e *EC2) {
			r.Subnets[0].Foreign = []ledger.AddrRange{{First: ip("10.0.0.11"), Last: ip("10.0.0.11")}}
		}, Finding{Kind: ForeignLeased, Node: "n1", ENI: "eni-0", Address: "10.0.0.11"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec, e := world()
			tc.mutate(&rec, &e)
			fs := Diff(cluster, rec, e)
			found := false
			for _, f := range fs {
				if f.Kind != tc.want.Kind || (tc.want.Node != "" && f.Node != tc.want.Node) || (tc.want.ENI != "" && f.ENI != tc.want.ENI) ||
					(tc.want.Address != "" && f.Address != tc.want.Address) || (tc.want.State != "" && f.State != tc.want.State) ||
					(tc.want.Other != "" && f.Other != tc.want.Other) {
					continue
				}
				found = true
				if f.Twice() != tc.twice {
					t.Fatalf("%s: Twice() = %v, want %v", f, f.Twice(), tc.twice)
				}
				if f.Detail == "" || !strings.Contains(f.String(), f.Kind.String()) {
					t.Fatalf("finding without a detail or kind in its text: %q", f.String())
				}
			}
			if !found {
				t.Fatalf("want %+v among %v", tc.want, kinds(fs))
			}
		})
	}
}

// A reservation's ENI is owned; an untagged ENI nobody owns is foreign, not leaked; instances
// are only checked when given.
func TestOwnershipOutsideNodes(t *testing.T) {
	rec, e := world()
	e.ENIs = append(e.ENIs, ec2gw.ENI{ID: "eni-pw", SubnetID: "subnet-1", PrimaryIP: ip("10.0.0.60"), Tags: map[string]string{TagCluster: cluster, TagPrewarm: "pw-1"}})
	rec.Prewarms = []ledger.PrewarmRecord{{ID: "pw-1", ENIs: []ledger.PrewarmENI{{ID: "eni-pw"}}}}
	e.Instances = nil
	if fs := Diff(cluster, rec, e); len(fs) != 0 {
		t.Fatalf("findings: %v", fs)
	}
	// Another cluster's tagged ENI is not ours to call leaked.
	e.ENIs = append(e.ENIs, ec2gw.ENI{ID: "eni-x", SubnetID: "subnet-1", PrimaryIP: ip("10.0.0.70"), Tags: map[string]string{TagCluster: "other"}})
	if fs := Diff(cluster, rec, e); len(fs) != 0 {
		t.Fatalf("findings: %v", fs)
	}
}

func TestFindingsAreSortedAndKeysStable(t *testing.T) {
	rec, e := world()
	e.ENIs[0].SecondaryIPs = nil
	e.ENIs[1].Attachment = nil
	a, b := Diff(cluster, rec, e), Diff(cluster, rec, e)
	if len(a) != 3 {
		t.Fatalf("findings: %v", a)
	}
	for i := range a {
		if a[i].Key() != b[i].Key() {
			t.Fatalf("keys differ between two comparisons: %s / %s", a[i].Key(), b[i].Key())
		}
		if i > 0 && a[i-1].Kind > a[i].Kind {
			t.Fatalf("not sorted by kind: %v", kinds(a))
		}
	}
}

func TestFromConflict(t *testing.T) {
	for kind, want := range map[string]Kind{
		ledger.ConflictInUseNotLeased: InUseNotLeased, ledger.ConflictDoubleUse: DoubleUse,
		ledger.ConflictForeignOverlap: ForeignLeased, ledger.ConflictDoubleOwner: DoubleLease,
	} {
		f := FromConflict(ledger.Conflict{Kind: kind, Node: "n", Address: "10.0.0.1", OtherOwner: "node m", Detail: "d"})
		if f.Kind != want || !strings.Contains(f.Detail, "node m") {
			t.Fatalf("%s: %+v", kind, f)
		}
	}
	if Kind(99).String() != "kind-99" || LeakedENI.String() != "leaked-eni" {
		t.Fatal("kind names")
	}
}

func TestRecordsOfSortsByName(t *testing.T) {
	r := RecordsOf(map[string]ledger.NodeRecord{"b": {Name: "b"}, "a": {Name: "a"}},
		map[string]ledger.SubnetRecord{"s2": {ID: "s2"}, "s1": {ID: "s1"}},
		map[string]ledger.PrewarmRecord{"p2": {ID: "p2"}, "p1": {ID: "p1"}})
	if r.Nodes[0].Name != "a" || r.Subnets[0].ID != "s1" || r.Prewarms[0].ID != "p1" || len(r.Nodes)+len(r.Subnets)+len(r.Prewarms) != 6 {
		t.Fatalf("RecordsOf: %+v", r)
	}
	if got := Items(ec2gw.ENI{SecondaryIPs: ips("10.0.0.2", "10.0.0.1"), Prefixes: []netip.Prefix{pfx("10.0.0.16/28")}}); strings.Join(got, ",") != "10.0.0.1,10.0.0.16/28,10.0.0.2" {
		t.Fatalf("Items: %v", got)
	}
}

// A subnet's foreign scan taken before the node registered does not make the node's addresses
// foreign-leased (a registration writes only the node); one taken after it does.
func TestForeignScanOlderThanTheNodeIsNoFinding(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		scanned time.Time
		want    bool
	}{{t0.Add(-time.Minute), false}, {t0, false}, {t0.Add(time.Minute), true}} {
		rec, e := world()
		rec.Nodes[0].RegisteredAt = t0
		rec.Subnets[0].Foreign = []ledger.AddrRange{{First: ip("10.0.0.10"), Last: ip("10.0.0.11")}}
		rec.Subnets[0].ForeignScannedAt = tc.scanned
		got := 0
		for _, f := range Diff(cluster, rec, e) {
			if f.Kind == ForeignLeased {
				got++
			}
		}
		if (got > 0) != tc.want {
			t.Fatalf("scan at %s, node registered at %s: %d foreign-leased findings, want any: %v", tc.scanned, t0, got, tc.want)
		}
	}
}
