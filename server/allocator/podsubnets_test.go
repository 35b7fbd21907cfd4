package allocator

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ipledger/ipledger/server/allocator/policy"
)

const (
	podA1    = "subnet-00000000000000a01" // 100.64.0.0/24, testAZ
	podA2    = "subnet-00000000000000a02" // 100.64.1.0/24, testAZ
	podB1    = "subnet-00000000000000b01" // 100.64.2.0/24, another zone
	podOther = "subnet-00000000000000f01" // another VPC, testAZ
	otherAZ  = "us-east-1b"
	zoneSG   = "sg-0000000000000000a"
	secondSG = "sg-0000000000000000b"
)

var secondaryCIDR = netip.MustParsePrefix("100.64.0.0/16")

// podEnv is newEnv with pod subnets in a secondary CIDR: two in the nodes' zone (sizes given
// as prefix lengths), one in another zone, one of another VPC.
func podEnv(t *testing.T, bitsA1, bitsA2 int) *env {
	e := newEnv(t, nil)
	cidr := func(third, bits int) string {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(third), 0}), bits).String()
	}
	cni := map[string]string{"kubernetes.io/role/cni": "1"}
	e.ec2.addSubnetIn(podA1, cidr(0, bitsA1), testAZ, "vpc-00000000000000001", cni)
	e.ec2.addSubnetIn(podA2, cidr(1, bitsA2), testAZ, "vpc-00000000000000001", cni)
	e.ec2.addSubnetIn(podB1, cidr(2, 24), otherAZ, "vpc-00000000000000001", cni)
	e.ec2.addSubnetIn(podOther, cidr(3, 24), testAZ, "vpc-00000000000000002", cni)
	return e
}

// A policy whose pod subnets cannot be used is refused with the field and the reason, and
// changes nothing.
func TestPodSubnetPolicyRefusals(t *testing.T) {
	e := podEnv(t, 24, 24)
	tests := []struct {
		name, field, msg string
		ps               *policy.PodSubnets
	}{
		{"unknown", "pod_subnets.subnet_ids[1]", "EC2 does not know", &policy.PodSubnets{SubnetIDs: []string{podA1, "subnet-0000000000000dead"}}},
		{"other VPC", "pod_subnets.subnet_ids[0]", "outside the cluster's VPC", &policy.PodSubnets{SubnetIDs: []string{podOther}}},
		{"wrong zone", "pod_subnets.zones[us-east-1b].subnet_ids[0]", "is in zone us-east-1a, not us-east-1b",
			&policy.PodSubnets{Zones: map[string]policy.ZoneSubnets{otherAZ: {SubnetIDs: []string{podA1}}}}},
		{"no tagged subnet", "pod_subnets.tags", "carries these tags", &policy.PodSubnets{Tags: map[string]string{"team": "none"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.a.SetPolicy(e.ctx, policy.Policy{Name: "pods", Order: 1, PodSubnets: tc.ps})
			var pe *PodSubnetError
			if !errors.Is(err, ErrNoPodSubnet) || !errors.As(err, &pe) || pe.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want NO_POD_SUBNET naming %s (%q)", err, tc.field, tc.msg)
			}
			if slices.ContainsFunc(e.a.Policies(), func(p policy.Policy) bool { return p.Name == "pods" }) {
				t.Fatal("the refused policy was stored")
			}
			if _, ok := e.a.led.Subnet(podA1); ok {
				t.Fatal("a refused policy's subnet was learnt")
			}
		})
	}
	// By the VPC CNI's tag, the zone's two tagged subnets of the VPC are learnt.
	e.setPolicy(policy.Policy{Name: "pods", Order: 1, PodSubnets: &policy.PodSubnets{Tags: map[string]string{"kubernetes.io/role/cni": "1"}}})
	for id, want := range map[string]bool{podA1: true, podA2: true, podB1: true, podOther: false} {
		if _, ok := e.a.led.Subnet(id); ok != want {
			t.Errorf("subnet %s learnt: %v, want %v", id, ok, want)
		}
	}
}

// Custom networking per zone: the node's pods get addresses from its zone's pod subnets only,
// on ENIs with the zone's security groups; the primary ENI holds none and the node's capacity
// leaves it out.
func TestCustomNetworkingPlacesPodsInTheZonesPodSubnets(t *testing.T) {
	e := podEnv(t, 24, 24)
	e.setPolicy(policy.Policy{Name: "custom", Order: 1, MinimumIPTarget: policy.U32(12), PodSubnets: &policy.PodSubnets{
		Zones: map[string]policy.ZoneSubnets{
			testAZ:  {SubnetIDs: []string{podA1, podA2}, SecurityGroups: []string{zoneSG, secondSG}},
			otherAZ: {SubnetIDs: []string{podB1}},
		},
		ExcludePrimaryENI: true,
	}})
	node := e.register("m5.large", subnetA)
	for range 3 {
		e.step(node)
	}
	rec := e.record(node)
	if got := len(e.active(node)); got != 12 {
		t.Fatalf("%d addresses, want 12", got)
	}
	for _, en := range rec.ENIs {
		if en.ID == rec.PrimaryENI {
			if len(en.Addresses) != 0 {
				t.Fatalf("the primary ENI holds %v with custom networking", en.Addresses)
			}
			continue
		}
		if en.SubnetID != podA1 && en.SubnetID != podA2 {
			t.Fatalf("ENI %s in %s, not a pod subnet of the zone", en.ID, en.SubnetID)
		}
		for _, ad := range en.Addresses {
			if !secondaryCIDR.Contains(ad.IP) {
				t.Fatalf("pod address %s outside the secondary CIDR", ad.IP)
			}
		}
	}
	for _, x := range e.ec2.snapshot() {
		if x.Attachment != nil && x.Attachment.DeviceIndex > 0 && x.Tags[TagNode] == node && !slices.Equal(x.SecurityGroupIDs, []string{zoneSG, secondSG}) {
			t.Fatalf("ENI %s has security groups %v", x.ID, x.SecurityGroupIDs)
		}
		if x.SubnetID == podB1 {
			t.Fatalf("an ENI in the other zone's subnet: %+v", x)
		}
	}
	rt, _ := e.a.Runtime(node)
	if rt.Targets.Max != 18 {
		t.Fatalf("pod capacity %d, want 2 ENIs x 9 = 18", rt.Targets.Max)
	}
	if got := podSubnetIDs(rec); len(got) == 0 || slices.Contains(got, subnetA) {
		t.Fatalf("pod subnets of the node: %v", got)
	}
}

// When the pod subnet in use runs out, the next ENI goes to the other pod subnet, and the
// metric and an event say so.
func TestSpilloverWhenAPodSubnetRunsOut(t *testing.T) {
	e := podEnv(t, 28, 27) // 11 and 27 usable addresses
	e.setPolicy(policy.Policy{Name: "spill", Order: 1, MinimumIPTarget: policy.U32(13), PodSubnets: &policy.PodSubnets{
		SubnetIDs: []string{podA1, podA2}, ExcludePrimaryENI: true,
	}})
	node := e.register("m5.xlarge", subnetA) // 14 IPv4 per ENI: 13 slots
	e.step(node)
	first := e.record(node).ENIs
	if len(first) != 2 || first[1].SubnetID != podA2 {
		t.Fatalf("the first pod ENI should go to the roomier %s: %+v", podA2, first)
	}
	// 13 more: podA2 has 13 left (not enough for a whole ENI with its primary; podA1's 11
	// are fewer), then runs out, and the last address comes from podA1.
	e.setPolicy(policy.Policy{Name: "spill", Order: 1, MinimumIPTarget: policy.U32(26), PodSubnets: &policy.PodSubnets{
		SubnetIDs: []string{podA1, podA2}, ExcludePrimaryENI: true,
	}})
	for range 4 {
		e.step(node)
	}
	if got := len(e.active(node)); got != 26 {
		t.Fatalf("%d addresses, want 26 (problem: %v)", got, e.ns(node).problem)
	}
	subnets := podSubnetIDs(e.record(node))
	if !slices.Equal(subnets, []string{podA1, podA2}) {
		t.Fatalf("pod subnets %v, want both", subnets)
	}
	if n := counterValue(t, e.a.met.spillovers.WithLabelValues("spill", podA2, podA1)); n < 1 {
		t.Fatalf("spill-over metric %v", n)
	}
	evs := e.a.Events(node, podA2)
	if len(evs) == 0 || evs[0].Reason != ReasonPodSubnetSpillover || !strings.Contains(evs[0].Message, podA1) {
		t.Fatalf("events %+v", evs)
	}
	b, _ := e.a.led.Budget(podA2, e.clk.Now())
	if b.Headroom != 0 {
		t.Fatalf("%s keeps %d headroom", podA2, b.Headroom)
	}
}

// EC2 saying InsufficientFreeAddressesInSubnet moves the ENI to the next pod subnet in the
// same pass: no failed supply, no pause.
func TestSpilloverWhenEC2SaysTheSubnetIsFull(t *testing.T) {
	e := podEnv(t, 24, 26)
	e.setPolicy(policy.Policy{Name: "spill", Order: 1, MinimumIPTarget: policy.U32(5), PodSubnets: &policy.PodSubnets{
		SubnetIDs: []string{podA1, podA2}, SecurityGroups: []string{zoneSG}, ExcludePrimaryENI: true,
	}})
	node := e.register("m5.large", subnetA)
	creates := 0
	e.ec2.fault = func(action string) fakeFault {
		if action == "CreateNetworkInterface" {
			creates++
			if creates == 1 {
				return faultSubnetFull // podA1, the roomier, is full on EC2
			}
		}
		return faultNone
	}
	e.step(node)
	if p := e.ns(node).problem; p != nil {
		t.Fatalf("supply failed: %v", p)
	}
	rec := e.record(node)
	if len(rec.ENIs) != 2 || rec.ENIs[1].SubnetID != podA2 || len(e.active(node)) != 5 {
		t.Fatalf("want one pod ENI in %s with 5 addresses: %+v", podA2, rec.ENIs)
	}
	if n := counterValue(t, e.a.met.spillovers.WithLabelValues("spill", podA1, podA2)); n != 1 {
		t.Fatalf("spill-over metric %v", n)
	}
	evs := e.a.Events("", podA1)
	if len(evs) != 1 || !strings.Contains(evs[0].Message, "InsufficientFreeAddressesInSubnet") {
		t.Fatalf("events %+v", evs)
	}
	// Nothing of the refused attempt stays reserved in podA1.
	b, _ := e.a.led.Budget(podA1, e.clk.Now())
	if b.Pending != 0 || b.Held != 0 {
		t.Fatalf("%s: %+v", podA1, b)
	}
}

// A node whose policy gives its zone no pod subnet is refused with the reason, and recorded.
func TestNodeWithoutAPodSubnetInItsZoneIsRefused(t *testing.T) {
	e := podEnv(t, 24, 24)
	e.setPolicy(policy.Policy{Name: "b-only", Order: 1, PodSubnets: &policy.PodSubnets{
		Zones: map[string]policy.ZoneSubnets{otherAZ: {SubnetIDs: []string{podB1}}}, ExcludePrimaryENI: true,
	}})
	req := e.instance("m5.large", subnetA)
	_, _, err := e.a.RegisterNode(e.ctx, req)
	if !errors.Is(err, ErrNoPodSubnet) || !strings.Contains(err.Error(), "zone "+testAZ) {
		t.Fatalf("got %v, want NO_POD_SUBNET for zone %s", err, testAZ)
	}
	if _, ok := e.a.led.Node(req.NodeName); ok {
		t.Fatal("the refused node was registered")
	}
	if evs := e.a.Events(req.NodeName, ""); len(evs) != 1 || evs[0].Reason != ReasonNoPodSubnet || evs[0].Type != EventWarning {
		t.Fatalf("events %+v", evs)
	}
}

// Policies without pod subnets keep every ENI in the node's subnet, pre-warm and all.
func TestWithoutPodSubnetsENIsStayInTheNodesSubnet(t *testing.T) {
	e := podEnv(t, 24, 24)
	e.setPolicy(policy.Policy{Name: "twelve", Order: 1, MinimumIPTarget: policy.U32(12)})
	node := e.register("m5.large", subnetA)
	e.step(node)
	for _, en := range e.record(node).ENIs {
		if en.SubnetID != subnetA {
			t.Fatalf("ENI %s in %s", en.ID, en.SubnetID)
		}
	}
	if rt, _ := e.a.Runtime(node); rt.Targets.Max != 27 {
		t.Fatalf("capacity %d, want 3 x 9", rt.Targets.Max)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
