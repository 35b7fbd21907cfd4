package ctl

import (
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/ipledger/ipledger/server/ec2sim"
)

// ec2Client is the AWS SDK pointed at the dev server's simulator, as someone with access to the
// account would use it behind ipledger's back.
func ec2Client(sim *ec2sim.Server) *ec2.Client {
	return ec2.New(ec2.Options{
		Region:       "eu-west-1",
		BaseEndpoint: aws.String(sim.Endpoint()),
		Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
		Retryer:      aws.NopRetryer{},
		HTTPClient:   ec2sim.NewHTTPClient(),
	})
}

func TestCheckFindsInjectedInconsistencies(t *testing.T) {
	c := startCluster(t)

	// A clean cluster: exit 0, with and without EC2.
	var rep Report
	decode(t, mustCtl(t, 0, c.addr, "check", "-o", "json"), &rep)
	if !rep.OK || len(rep.Findings) != 0 || rep.NodesChecked != 5 || rep.ENIsChecked != 5 || !rep.IncludedEC2 || rep.CheckedAt == nil {
		t.Fatalf("clean check %+v", rep)
	}
	r := mustCtl(t, 0, c.addr, "check")
	if !strings.HasPrefix(r.stdout, "OK: etcd, agents and EC2 agree (5 nodes, 5 ENIs") {
		t.Fatalf("clean check table:\n%s", r.stdout)
	}
	mustCtl(t, 0, c.addr, "check", "--no-ec2")

	// Behind ipledger's back: an ENI tagged for the cluster that no node owns, and a leased idle
	// address unassigned from its node's ENI.
	ec2c := ec2Client(c.s.Sim())
	node := c.agents[1]
	created, err := ec2c.CreateNetworkInterface(t.Context(), &ec2.CreateNetworkInterfaceInput{
		SubnetId: aws.String(node.Inst.SubnetID),
		TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeNetworkInterface,
			Tags:         []types.Tag{{Key: aws.String("ipledger.io/cluster"), Value: aws.String("dev")}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	leakedENI := aws.ToString(created.NetworkInterface.NetworkInterfaceId)
	lost := node.addresses()[0]
	if _, err := ec2c.UnassignPrivateIpAddresses(t.Context(), &ec2.UnassignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(node.Inst.PrimaryENI), PrivateIpAddresses: []string{lost},
	}); err != nil {
		t.Fatal(err)
	}

	r = mustCtl(t, ExitProblems, c.addr, "check", "-o", "json")
	decode(t, r, &rep)
	if rep.OK || !strings.Contains(r.stderr, "check found") {
		t.Fatalf("check after injection: %s", r)
	}
	var sawLeak, sawLost bool
	for _, f := range rep.Findings {
		switch {
		case f.Kind == "leaked_eni" && f.ENIID == leakedENI:
			sawLeak = true
		case f.Kind == "leased_not_on_ec2" && f.Address == lost && f.NodeName == node.Name() && f.ENIID == node.Inst.PrimaryENI:
			sawLost = true
		}
	}
	if !sawLeak || !sawLost {
		t.Fatalf("check did not report the leaked ENI %s (%v) and the lost address %s (%v): %+v", leakedENI, sawLeak, lost, sawLost, rep.Findings)
	}

	r = mustCtl(t, ExitProblems, c.addr, "check")
	if !strings.HasPrefix(r.stdout, "PROBLEMS: ") {
		t.Fatalf("check table:\n%s", r.stdout)
	}
	rows := tableRows(t, r.stdout, "KIND", "SUBNET", "NODE", "ENI", "ADDRESS", "DETAIL")
	if len(rows) != len(rep.Findings) {
		t.Fatalf("want a row per finding (%d):\n%s", len(rep.Findings), r.stdout)
	}
	var yrep Report
	decodeYAML(t, mustCtl(t, ExitProblems, c.addr, "check", "-o", "yaml"), &yrep)
	if len(yrep.Findings) != len(rep.Findings) || yrep.OK {
		t.Fatalf("YAML report %+v", yrep)
	}

	// Without EC2 only etcd and the agents are compared, and they agree.
	decode(t, mustCtl(t, 0, c.addr, "check", "--no-ec2", "-o", "json"), &rep)
	if !rep.OK || rep.IncludedEC2 {
		t.Fatalf("--no-ec2 %+v", rep)
	}
}
