package policy

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/ledger"
)

func podPolicy(ps *PodSubnets) Policy { return Policy{Name: "pods", PodSubnets: ps} }

// Every bad pod subnet selection is refused with an error naming its field.
func TestPodSubnetsValidation(t *testing.T) {
	ok := "subnet-0123456789abcdef0"
	ok2 := "subnet-0123456789abcdef1"
	tests := []struct {
		name  string
		ps    *PodSubnets
		field string // "" = valid
	}{
		{"ids", &PodSubnets{SubnetIDs: []string{ok, ok2}}, ""},
		{"tags", &PodSubnets{Tags: map[string]string{"kubernetes.io/role/cni": "1"}, IncludeNodeSubnet: true}, ""},
		{"zones", &PodSubnets{Zones: map[string]ZoneSubnets{"eu-west-1a": {SubnetIDs: []string{ok}, SecurityGroups: []string{"sg-0123456789abcdef0"}}}, ExcludePrimaryENI: true}, ""},
		{"none", &PodSubnets{}, "pod_subnets:"},
		{"two forms", &PodSubnets{SubnetIDs: []string{ok}, Tags: map[string]string{"a": "b"}}, "pod_subnets:"},
		{"bad id", &PodSubnets{SubnetIDs: []string{ok, "sub-1"}}, "pod_subnets.subnet_ids[1]"},
		{"twice", &PodSubnets{SubnetIDs: []string{ok, ok}}, "pod_subnets.subnet_ids[1]"},
		{"empty tag key", &PodSubnets{Tags: map[string]string{"": "1"}}, "pod_subnets.tags"},
		{"bad zone", &PodSubnets{Zones: map[string]ZoneSubnets{"mars": {SubnetIDs: []string{ok}}}}, "pod_subnets.zones"},
		{"empty zone", &PodSubnets{Zones: map[string]ZoneSubnets{"eu-west-1a": {}}}, "pod_subnets.zones[eu-west-1a].subnet_ids"},
		{"subnet in two zones", &PodSubnets{Zones: map[string]ZoneSubnets{"eu-west-1a": {SubnetIDs: []string{ok}}, "eu-west-1b": {SubnetIDs: []string{ok}}}}, "pod_subnets.zones[eu-west-1b].subnet_ids[0]"},
		{"bad zone sg", &PodSubnets{Zones: map[string]ZoneSubnets{"eu-west-1a": {SubnetIDs: []string{ok}, SecurityGroups: []string{"default"}}}}, "pod_subnets.zones[eu-west-1a].security_group_ids[0]"},
		{"bad sg", &PodSubnets{SubnetIDs: []string{ok}, SecurityGroups: []string{"sg-0123456789abcdef0", "sg-1"}}, "pod_subnets.security_group_ids[1]"},
		{"too many sgs", &PodSubnets{SubnetIDs: []string{ok}, SecurityGroups: slices.Repeat([]string{"sg-0123456789abcdef0"}, 17)}, "pod_subnets.security_group_ids"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := podPolicy(tc.ps).Validate()
			if tc.field == "" {
				if err != nil {
					t.Fatalf("valid selection refused: %v", err)
				}
				return
			}
			var fe *FieldError
			if !errors.Is(err, ErrInvalid) || !errors.As(err, &fe) || !strings.HasPrefix(fe.Field+":", strings.TrimSuffix(tc.field, ":")) {
				t.Fatalf("got %v, want an error naming %s", err, tc.field)
			}
		})
	}
}

// Normalized copies the selection: changing the caller's maps changes nothing stored; Equal
// sees every field.
func TestPodSubnetsCloneAndEqual(t *testing.T) {
	zones := map[string]ZoneSubnets{"eu-west-1a": {SubnetIDs: []string{"subnet-0000000a"}}}
	p := podPolicy(&PodSubnets{Zones: zones}).Normalized()
	zones["eu-west-1a"].SubnetIDs[0] = "subnet-0000000b"
	if p.PodSubnets.Zones["eu-west-1a"].SubnetIDs[0] != "subnet-0000000a" {
		t.Fatal("the normalized policy shares the caller's slices")
	}
	q := p.Normalized()
	if !p.Equal(q) {
		t.Fatal("a copy is not equal")
	}
	q.PodSubnets.ExcludePrimaryENI = true
	if p.Equal(q) {
		t.Fatal("exclude_primary_eni not compared")
	}
	if p.Equal(Policy{Name: "pods"}) || !(Policy{Name: "x"}).Equal(Policy{Name: "x"}) {
		t.Fatal("nil pod subnets compared wrongly")
	}
}

var (
	subA1 = ledger.SubnetRecord{ID: "subnet-000000a1", AvailabilityZone: "eu-west-1a", VPCID: "vpc-1", CIDR: netip.MustParsePrefix("100.64.0.0/24"), Tags: map[string]string{"kubernetes.io/role/cni": "1"}}
	subA2 = ledger.SubnetRecord{ID: "subnet-000000a2", AvailabilityZone: "eu-west-1a", VPCID: "vpc-1", CIDR: netip.MustParsePrefix("100.64.1.0/24"), Tags: map[string]string{"kubernetes.io/role/cni": "1"}}
	subB1 = ledger.SubnetRecord{ID: "subnet-000000b1", AvailabilityZone: "eu-west-1b", VPCID: "vpc-1", CIDR: netip.MustParsePrefix("100.64.2.0/24"), Tags: map[string]string{"kubernetes.io/role/cni": "1"}}
	subX  = ledger.SubnetRecord{ID: "subnet-000000f1", AvailabilityZone: "eu-west-1a", VPCID: "vpc-2", CIDR: netip.MustParsePrefix("100.64.3.0/24"), Tags: map[string]string{"kubernetes.io/role/cni": "1"}}
	node  = ledger.SubnetRecord{ID: "subnet-000000n1", AvailabilityZone: "eu-west-1a", VPCID: "vpc-1", CIDR: netip.MustParsePrefix("10.0.0.0/24")}
	all   = []ledger.SubnetRecord{subA1, subA2, subB1, subX, node}
	at    = Place{Zone: "eu-west-1a", SubnetID: node.ID, VPCID: "vpc-1"}
)

func ids(cs []Candidate) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.SubnetID)
	}
	return out
}

// Candidates are the pod subnets of the node's zone and VPC only, in every form.
func TestCandidatesStayInTheNodesZoneAndVPC(t *testing.T) {
	sg := []string{"sg-00000001"}
	tests := []struct {
		name string
		ps   *PodSubnets
		want []string
	}{
		{"default: own subnet", nil, []string{node.ID}},
		{"ids of several zones", &PodSubnets{SubnetIDs: []string{subB1.ID, subA2.ID, subA1.ID, subX.ID}, SecurityGroups: sg}, []string{subA1.ID, subA2.ID}},
		{"tags", &PodSubnets{Tags: map[string]string{"kubernetes.io/role/cni": "*"}}, []string{subA1.ID, subA2.ID}},
		{"tags and node subnet", &PodSubnets{Tags: map[string]string{"kubernetes.io/role/cni": "1"}, IncludeNodeSubnet: true}, []string{subA1.ID, subA2.ID, node.ID}},
		{"tag value differs", &PodSubnets{Tags: map[string]string{"kubernetes.io/role/cni": "0"}}, nil},
		{"zones", &PodSubnets{Zones: map[string]ZoneSubnets{"eu-west-1a": {SubnetIDs: []string{subA2.ID}, SecurityGroups: sg}, "eu-west-1b": {SubnetIDs: []string{subB1.ID}}}}, []string{subA2.ID}},
		{"zone not listed", &PodSubnets{Zones: map[string]ZoneSubnets{"eu-west-1b": {SubnetIDs: []string{subB1.ID}}}}, nil},
		{"unknown subnet", &PodSubnets{SubnetIDs: []string{"subnet-0000dead"}}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := podPolicy(tc.ps).Candidates(at, all)
			if !slices.Equal(ids(got), tc.want) {
				t.Fatalf("candidates %v, want %v", ids(got), tc.want)
			}
			for _, c := range got {
				if c.Zone != at.Zone {
					t.Fatalf("candidate %s of zone %s", c.SubnetID, c.Zone)
				}
			}
		})
	}
	zoneSG := podPolicy(&PodSubnets{Zones: map[string]ZoneSubnets{"eu-west-1a": {SubnetIDs: []string{subA1.ID}, SecurityGroups: []string{"sg-0000000a"}}}, SecurityGroups: sg}).Candidates(at, all)
	if len(zoneSG) != 1 || !slices.Equal(zoneSG[0].SecurityGroups, []string{"sg-0000000a"}) {
		t.Fatalf("a zone's security groups do not win: %+v", zoneSG)
	}
	global := podPolicy(&PodSubnets{Zones: map[string]ZoneSubnets{"eu-west-1a": {SubnetIDs: []string{subA1.ID}}}, SecurityGroups: sg}).Candidates(at, all)
	if len(global) != 1 || !slices.Equal(global[0].SecurityGroups, sg) {
		t.Fatalf("the policy's security groups are not the default of a zone: %+v", global)
	}
}

func budget(headroom, free, cooling, freePrefixes int) ledger.Budget {
	return ledger.Budget{Headroom: headroom, Free: free, Cooling: cooling, FreePrefixes: freePrefixes}
}

// Rank puts first the subnet that can take the whole ENI and keeps the most room at its trend,
// and leaves out exhausted subnets.
func TestRankByHeadroomAndForecast(t *testing.T) {
	cands := []Candidate{{SubnetID: "a"}, {SubnetID: "b"}, {SubnetID: "c"}, {SubnetID: "d"}}
	state := map[string]SubnetState{
		"a": {Budget: budget(100, 200, 0, 5)},
		"b": {Budget: budget(150, 150, 0, 9)},
		"c": {Budget: budget(1, 1, 0, 0)}, // only a primary: no room
		"d": {Budget: budget(5, 5, 0, 0)}, // room for a part of the ENI
	}
	if got := ids(Rank(cands, state, false, 9)); !slices.Equal(got, []string{"b", "a", "d"}) {
		t.Fatalf("rank %v", got)
	}
	// b grows by 60 an hour: at its trend it keeps less than a.
	state["b"] = SubnetState{Budget: budget(150, 150, 0, 9), HeldPerHour: 60}
	if got := ids(Rank(cands, state, false, 9)); !slices.Equal(got, []string{"a", "b", "d"}) {
		t.Fatalf("rank with a trend %v", got)
	}
	// Cooling addresses and the budget cap are not room.
	state["a"] = SubnetState{Budget: budget(3, 200, 199, 5)}
	if got := ids(Rank(cands, state, false, 9)); !slices.Equal(got, []string{"b", "d"}) {
		t.Fatalf("rank with cooling %v", got)
	}
	// Prefix nodes count whole /28 blocks.
	state = map[string]SubnetState{
		"a": {Budget: budget(200, 200, 0, 2)},
		"b": {Budget: budget(40, 40, 0, 2)},
		"c": {Budget: budget(200, 200, 0, 0)},
	}
	if got := ids(Rank(cands, state, true, 2)); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("prefix rank %v", got)
	}
}

// Groups list each policy's pod subnets per zone; a group's forecast sums its subnets'.
func TestGroupsAndTheirForecast(t *testing.T) {
	ps := []Policy{
		{Name: "plain"},
		podPolicy(&PodSubnets{SubnetIDs: []string{subA1.ID, subA2.ID, subB1.ID}, ExcludePrimaryENI: true}),
	}
	gs := Groups(ps, all)
	if len(gs) != 2 || gs[0].Zone != "eu-west-1a" || gs[1].Zone != "eu-west-1b" {
		t.Fatalf("groups %+v", gs)
	}
	if !slices.Equal(ids(gs[0].Subnets), []string{subA1.ID, subA2.ID}) || !gs[0].ExcludePrimaryENI {
		t.Fatalf("group a %+v", gs[0])
	}
	f := GroupForecast([]Forecast{{HeldPerHour: 10, Window: time.Hour, OK: true}, {HeldPerHour: 30, Window: time.Hour, OK: true}}, 200)
	if !f.OK || f.TimeToExhaustion != 5*time.Hour || f.HeldPerHour != 40 {
		t.Fatalf("group forecast %+v", f)
	}
	if f := GroupForecast([]Forecast{{}, {}}, 200); f.OK {
		t.Fatalf("no trend forecast %+v", f)
	}
}

// Custom networking takes the primary ENI off the node's pod capacity and off the warm ENI
// arithmetic.
func TestCustomNetworkingShape(t *testing.T) {
	sh := m5large(t, ledger.ModeSecondaryIP)
	sh.PrimaryUnused = true
	if sh.PodENIs() != 2 || sh.MaxAddresses() != 18 {
		t.Fatalf("m5.large with custom networking: %d ENIs, %d addresses", sh.PodENIs(), sh.MaxAddresses())
	}
	p := Policy{Name: "a", WarmENITarget: U32(1), PodSubnets: &PodSubnets{SubnetIDs: []string{subA1.ID}, ExcludePrimaryENI: true}}
	for _, tc := range []struct{ used, want int }{{0, 9}, {1, 18}, {9, 18}, {10, 18}} {
		if got := Compute(p, sh, Inputs{InUse: tc.used}, time.Minute).WantAddresses; got != tc.want {
			t.Errorf("%d pods: want %d addresses, got %d", tc.used, tc.want, got)
		}
	}
}

// CanFitPods places each node's pod ENIs whole, spilling over between pod subnets, and the
// nodes' own addresses in their subnets.
func TestCanFitPodsSpillsOver(t *testing.T) {
	req := PodFitRequest{NodeCount: 4, PodsPerNode: 17, SlotsPerENI: 9, PodENIs: 3, PrimaryUnused: true,
		NodeBudgets: []ledger.Budget{{SubnetID: "n", Headroom: 4}},
		PodBudgets:  []ledger.Budget{{SubnetID: "a", Headroom: 40}, {SubnetID: "b", Headroom: 30}}}
	// 17 pods + 1 floor = 18: two ENIs of 1 + 9 each per node, 80 addresses in all for 4 nodes:
	// a and b hold 7 ENIs (4 + 3), not 8.
	res := CanFitPods(req)
	if res.Fits || res.PerNode != 21 || !slices.Equal(res.PodSubnetENIs, []int{4, 3}) {
		t.Fatalf("4 nodes: %+v", res)
	}
	req.NodeCount = 3
	if res := CanFitPods(req); !res.Fits || !slices.Equal(res.PodSubnetENIs, []int{4, 2}) {
		t.Fatalf("3 nodes: %+v", res)
	}
	req.NodeBudgets[0].Headroom = 2
	if res := CanFitPods(req); res.Fits || !strings.Contains(strings.Join(res.Reasons, ";"), "own subnets hold 2 of 3") {
		t.Fatalf("node subnet short: %+v", res)
	}
	req.PodsPerNode = 30
	req.NodeBudgets[0].Headroom = 10
	if res := CanFitPods(req); res.Fits || !strings.Contains(strings.Join(res.Reasons, ";"), "need 4 pod ENIs") {
		t.Fatalf("type limit: %+v", res)
	}
}
