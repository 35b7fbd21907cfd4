package server_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
)

// mutatingCalls is the simulator's count of calls that change something (everything but the
// Describe* actions), by action, since before.
func mutatingCalls(before, after ec2sim.Stats) map[string]int {
	out := map[string]int{}
	for action, st := range after.Calls {
		if strings.HasPrefix(action, "Describe") {
			continue
		}
		if n := st.Calls - before.Calls[action].Calls; n > 0 {
			out[action] = n
		}
	}
	return out
}

// TestLaunchAddressesAreTheLeaseAtRegistration: two instances launched through the simulator's
// RunInstances (over the SDK) with their primary interface carrying what a launch hint says,
// three secondary addresses on one and a /28 prefix on the other, register. Each node's lease in
// its registration's answer is what EC2 put there (the prefix node in prefix mode), with no
// mutating EC2 call from ipledger; the subnet counts the addresses as held, not foreign; Check
// finds nothing. The secondary node's surplus over its policy (it runs no pods) then goes back
// through the release handshake, the only mutating call.
func TestLaunchAddressesAreTheLeaseAtRegistration(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	admin := ipledgerv1.NewAdminServiceClient(conn)
	sim := s.Sim()
	subnet := servertest.Instances(s)[0].SubnetID

	awsCfg, err := awsconfig.LoadDefaultConfig(t.Context(), awsconfig.WithRegion("eu-west-1"),
		awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("test", "test", "")))
	if err != nil {
		t.Fatal(err)
	}
	client := ec2.NewFromConfig(awsCfg, func(o *ec2.Options) { o.BaseEndpoint = aws.String(sim.Endpoint()) })
	launch := func(ni ec2types.InstanceNetworkInterfaceSpecification) ec2sim.InstanceInfo {
		t.Helper()
		ni.DeviceIndex, ni.SubnetId = aws.Int32(0), aws.String(subnet)
		out, err := client.RunInstances(t.Context(), &ec2.RunInstancesInput{
			InstanceType: ec2types.InstanceTypeM5Large, MinCount: aws.Int32(1), MaxCount: aws.Int32(1),
			NetworkInterfaces: []ec2types.InstanceNetworkInterfaceSpecification{ni},
		})
		if err != nil {
			t.Fatal(err)
		}
		id := aws.ToString(out.Instances[0].InstanceId)
		for _, in := range servertest.Running(sim) {
			if in.ID == id {
				return in
			}
		}
		t.Fatalf("launched %s is not running", id)
		return ec2sim.InstanceInfo{}
	}
	withIPs := launch(ec2types.InstanceNetworkInterfaceSpecification{SecondaryPrivateIpAddressCount: aws.Int32(3)})
	withPrefix := launch(ec2types.InstanceNetworkInterfaceSpecification{Ipv4PrefixCount: aws.Int32(1)})
	launchedIPs := servertest.SimENI(t, sim, withIPs.PrimaryENI).SecondaryIPs
	launchedPrefixes := servertest.SimENI(t, sim, withPrefix.PrimaryENI).Prefixes
	if len(launchedIPs) != 3 || len(launchedPrefixes) != 1 {
		t.Fatalf("EC2 launched %v and %v, want 3 addresses and 1 prefix", launchedIPs, launchedPrefixes)
	}

	before := sim.Sim().Stats()
	ipAgent := servertest.NewAgent(t, conn, withIPs)
	pool := ipAgent.Register().GetPool()
	if got := servertest.Addresses(pool, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE); strings.Join(got, ",") != strings.Join(sortedCopy(launchedIPs), ",") {
		t.Fatalf("registration leases %v, EC2 launched %v", got, launchedIPs)
	}
	if pool.GetMode() != ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP {
		t.Fatalf("mode %v, want secondary IPs", pool.GetMode())
	}
	pfxAgent := servertest.NewAgent(t, conn, withPrefix)
	pool = pfxAgent.Register().GetPool()
	var leasedPrefixes []string
	for _, ni := range pool.GetInterfaces() {
		for _, p := range ni.GetPrefixes() {
			if p.GetState() == ipledgerv1.LeaseState_LEASE_STATE_ACTIVE {
				leasedPrefixes = append(leasedPrefixes, p.GetCidr())
			}
		}
	}
	if strings.Join(leasedPrefixes, ",") != launchedPrefixes[0] || pool.GetMode() != ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX {
		t.Fatalf("registration leases prefixes %v in %v, EC2 launched %v", leasedPrefixes, pool.GetMode(), launchedPrefixes)
	}
	if m := mutatingCalls(before, sim.Sim().Stats()); len(m) != 0 {
		t.Fatalf("registering launched nodes made mutating EC2 calls: %v", m)
	}

	// Nothing foreign, everything held, nothing for Check to report.
	subs, err := admin.ListSubnets(t.Context(), &ipledgerv1.ListSubnetsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range subs.GetSubnets() {
		if b.GetSubnetId() != subnet {
			continue
		}
		// Three addresses, 16 of the prefix and the two primaries, at least (the scenario's
		// other instances are not registered, so their addresses are foreign).
		if b.GetHeld() != 3+16+2 || b.GetEniPrimary() != 2 {
			t.Fatalf("subnet holds %d (primaries %d), want 21 (2): %+v", b.GetHeld(), b.GetEniPrimary(), b)
		}
	}
	servertest.CheckBudgetsAddUp(t, s)
	check := func() {
		t.Helper()
		rep, err := admin.Check(t.Context(), &ipledgerv1.CheckRequest{IncludeEc2: true})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.GetOk() || len(rep.GetFindings()) != 0 {
			t.Fatalf("check: %v", rep)
		}
	}
	check()

	// The agents connect with no pods: the prefix node holds what its policy wants (one
	// prefix); the other node's two addresses beyond the default policy's floor of one free go
	// back through a proposal the agent confirms.
	ipAgent.Sync()
	pfxAgent.Sync()
	ipAgent.ReportIPs(nil, 0)
	pfxAgent.ReportIPs(nil, 0)
	ipAgent.WaitPool(15*time.Second, "surplus released", func(p *ipledgerv1.NodePool) bool {
		return len(servertest.Addresses(p, 0)) == 1
	})
	if len(ipAgent.Proposals()) == 0 {
		t.Fatal("surplus left without a release proposal")
	}
	servertest.WaitFor(t, 10*time.Second, "EC2 has the release", func() bool {
		return len(servertest.SimENI(t, sim, withIPs.PrimaryENI).SecondaryIPs) == 1
	})
	m := mutatingCalls(before, sim.Sim().Stats())
	if len(m) != 1 || m["UnassignPrivateIpAddresses"] != 1 {
		t.Fatalf("mutating calls after registration: %v, want only the release's one UnassignPrivateIpAddresses", m)
	}
	if len(pfxAgent.Proposals()) != 0 || len(servertest.SimENI(t, sim, withPrefix.PrimaryENI).Prefixes) != 1 {
		t.Fatalf("the prefix node's one prefix was proposed or released: %v", pfxAgent.Proposals())
	}
	servertest.CheckNoAddressTwice(t, s)
	servertest.CheckBudgetsAddUp(t, s)
	check()
}

func sortedCopy(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return out
}
