package demo

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ipledger/ipledger/e2e/vpccni"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/instancetypes"
)

// VPCCNIComparison is what the Amazon VPC CNI's default (WARM_ENI_TARGET=1, the model in
// e2e/vpccni) holds in the busiest subnet of a copy of the demo's account, with the same nodes
// and the same pods: the seed documents' observation, computed instead of quoted.
type VPCCNIComparison struct {
	// Subnet is the copy's subnet with the CIDR of the demo's busiest one.
	Subnet string
	// InUse is EC2's count in the subnet (size - 5 reserved - available), Available what is
	// left, Usable the subnet's size less AWS's 5 reserved addresses.
	InUse, Available, Usable int
	// ENIsPerNode and AddressesPerENI explain it: each node keeps the ENIs its pods fill plus a
	// whole warm one, every ENI filled.
	ENIsPerNode, AddressesPerENI int
}

// maxModelPasses bounds the pool-loop passes per node; each pass makes at most one EC2 step, and
// a node of the seed needs four (start, fill the primary ENI, create and fill a second one).
const maxModelPasses = 32

// compareWithVPCCNI runs one modelled ipamd per instance of a fresh simulator built from the
// demo server's scenario and seed (so the instances, subnets and addresses are the same), gives
// each node the pods the demo placed on it, lets each pool loop run until it stops growing, and
// reads EC2's counts of the subnet.
func compareWithVPCCNI(ctx context.Context, scfg config.Config, rep Report, log *slog.Logger) (VPCCNIComparison, error) {
	scen := ec2sim.DefaultScenario()
	if scfg.SimScenario != "" {
		var err error
		if scen, err = ec2sim.LoadScenario(scfg.SimScenario); err != nil {
			return VPCCNIComparison{}, err
		}
	}
	sim, err := ec2sim.Start(ec2sim.Config{Scenario: scen, Seed: scfg.SimSeed, Logger: log}, "127.0.0.1:0")
	if err != nil {
		return VPCCNIComparison{}, fmt.Errorf("simulator for the VPC CNI model: %w", err)
	}
	defer sim.Close()
	hc := vpccni.NewHTTPClient()
	defer hc.CloseIdleConnections()

	pods := map[string][]string{}
	for _, n := range rep.Nodes {
		for _, p := range n.Pods {
			if !p.HostNetwork {
				pods[n.Name] = append(pods[n.Name], p.Namespace+"/"+p.Name)
			}
		}
	}
	// Nodes are matched by name and the subnet by CIDR: the copy is built from the same
	// scenario and seed, and a mismatch means it is not the same account.
	cmp := VPCCNIComparison{}
	for _, sn := range sim.Sim().Snapshot().Subnets {
		if sn.CIDR == rep.BusiestSubnet.CIDR {
			cmp.Subnet = sn.ID
		}
	}
	if cmp.Subnet == "" {
		return cmp, fmt.Errorf("the copy of the account has no subnet %s", rep.BusiestSubnet.CIDR)
	}
	known := map[string]bool{}
	for _, n := range rep.Nodes {
		known[n.Name] = true
	}
	for _, in := range running(sim) {
		if !known[in.PrivateDNSName] {
			return cmp, fmt.Errorf("the copy of the account has node %s, which the demo does not", in.PrivateDNSName)
		}
		client, err := vpccni.NewEC2Client(vpccni.ClientConfig{Endpoint: sim.Endpoint(), HTTPClient: hc})
		if err != nil {
			return cmp, err
		}
		node, err := vpccni.New(vpccni.Config{Settings: vpccni.Default(), EC2: client, InstanceID: in.ID, Logger: log})
		if err != nil {
			return cmp, err
		}
		if err := settle(ctx, node); err != nil {
			return cmp, fmt.Errorf("VPC CNI model on %s: %w", in.ID, err)
		}
		for _, p := range pods[in.PrivateDNSName] {
			if _, err := node.Add(p); err != nil {
				return cmp, fmt.Errorf("VPC CNI model on %s: add %s: %w", in.ID, p, err)
			}
		}
		if err := settle(ctx, node); err != nil {
			return cmp, fmt.Errorf("VPC CNI model on %s: %w", in.ID, err)
		}
		if in.SubnetID == cmp.Subnet {
			cmp.ENIsPerNode = node.Counts().ENIs
			if t, ok := instancetypes.Lookup(in.InstanceType); ok {
				cmp.AddressesPerENI = t.IPv4PerENI
			}
		}
	}
	sn, _ := sim.Sim().Snapshot().Subnet(cmp.Subnet)
	cmp.InUse, cmp.Available, cmp.Usable = sn.Size-5-sn.Available, sn.Available, sn.Size-5
	return cmp, nil
}

// settle runs the node's pool loop until a pass changes nothing.
func settle(ctx context.Context, n *vpccni.Node) error {
	prev := n.Counts()
	for range maxModelPasses {
		if err := n.Reconcile(ctx); err != nil {
			return err
		}
		c := n.Counts()
		if c == prev && c.ENIs > 0 {
			return nil
		}
		prev = c
	}
	return fmt.Errorf("pool still changing after %d passes: %+v", maxModelPasses, prev)
}
