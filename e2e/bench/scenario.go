package bench

import (
	"fmt"
	"math/bits"
	"net/netip"

	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/instancetypes"
)

// vpcCIDR is the simulated VPC of every generated scenario (the seed's).
const vpcCIDR = "192.168.0.0/16"

var azs = []string{"eu-west-1a", "eu-west-1b", "eu-west-1c"}

// clusterShape describes a generated cluster: nodes of one type spread over subnets in three AZs.
type clusterShape struct {
	Nodes        int
	InstanceType string
	// Subnets to spread the nodes over (default 3, one per AZ).
	Subnets int
	// Running: the instances exist when the simulator starts (false: the trace launches them).
	Running bool
	// PrefixLen forces the subnets' size (0: sized for the nodes at their instance type's limit).
	PrefixLen int
}

// generateScenario builds an ec2sim.Scenario for the shape: subnets large enough for every node
// at its instance type's full address limit (so no system runs out of subnet by accident),
// carved one after another from the VPC.
func generateScenario(sh clusterShape) (*ec2sim.Scenario, error) {
	t, ok := instancetypes.Lookup(sh.InstanceType)
	if !ok {
		return nil, fmt.Errorf("bench: unknown instance type %q", sh.InstanceType)
	}
	if sh.Nodes < 1 {
		return nil, fmt.Errorf("bench: a cluster needs at least one node, not %d", sh.Nodes)
	}
	if sh.Subnets <= 0 {
		sh.Subnets = 3
	}
	sh.Subnets = min(sh.Subnets, sh.Nodes)
	perSubnet := (sh.Nodes + sh.Subnets - 1) / sh.Subnets
	plen := sh.PrefixLen
	if plen == 0 {
		// Every node at its limit (ENIs x IPv4 per ENI), plus a quarter of slack and the 5
		// AWS-reserved addresses.
		need := perSubnet*t.MaxENIs*t.IPv4PerENI*5/4 + 16
		plen = 32 - bits.Len(uint(need-1))
		plen = min(plen, 24)
	}
	if plen < 16 || plen > 28 {
		return nil, fmt.Errorf("bench: %d nodes of %s need subnets of /%d, outside /16../28", sh.Nodes, sh.InstanceType, plen)
	}
	size := 1 << (32 - plen)
	if size*sh.Subnets > 1<<16 {
		return nil, fmt.Errorf("bench: %d subnets of /%d do not fit the /16 VPC (%d nodes of %s)", sh.Subnets, plen, sh.Nodes, sh.InstanceType)
	}
	sc := &ec2sim.Scenario{VPC: ec2sim.VPCSpec{CIDR: vpcCIDR}}
	base := netip.MustParsePrefix(vpcCIDR).Addr().As4()
	start := uint32(base[0])<<24 | uint32(base[1])<<16
	left := sh.Nodes
	for i := 0; i < sh.Subnets; i++ {
		a := start + uint32(i*size)
		cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), plen).String()
		sc.Subnets = append(sc.Subnets, ec2sim.SubnetSpec{CIDR: cidr, AvailabilityZone: azs[i%len(azs)],
			Tags: map[string]string{"Name": fmt.Sprintf("bench-%s", azs[i%len(azs)])}})
		n := min(perSubnet, left)
		left -= n
		if sh.Running && n > 0 {
			sc.Instances = append(sc.Instances, ec2sim.InstanceGroup{Type: sh.InstanceType, Subnet: cidr, Count: n, Name: fmt.Sprintf("node-%c", 'a'+i)})
		}
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("bench: generated scenario: %w", err)
	}
	return sc, nil
}

// nodesPerSubnet splits n nodes over the scenario's subnets as generateScenario does.
func nodesPerSubnet(sc *ec2sim.Scenario, n int) []int {
	k := len(sc.Subnets)
	per := (n + k - 1) / k
	out := make([]int, k)
	for i := range out {
		out[i] = min(per, n)
		n -= out[i]
	}
	return out
}
