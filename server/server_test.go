package server_test

import (
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/servertest"
)

func TestNodesRegisterAndPoolsFillToTheFloor(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	var agents []*servertest.Agent
	for _, in := range servertest.Instances(s) {
		a := servertest.NewAgent(t, conn, in)
		resp := a.Register()
		for _, ni := range resp.GetPool().GetInterfaces() {
			if ni.GetSubnetCidr() == "" {
				t.Fatalf("the first registration's pool lacks the subnet CIDR of %s", ni.GetEniId())
			}
		}
		if resp.GetPolicy().GetName() != policy.DefaultName || resp.GetPool().GetMode() != ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP {
			t.Fatalf("register: %v", resp)
		}
		a.Sync()
		agents = append(agents, a)
	}
	if len(agents) != 5 {
		t.Fatalf("default scenario has %d running instances, want 5", len(agents))
	}
	for _, a := range agents {
		p := a.WaitPool(10*time.Second, "one warm address", func(p *ipledgerv1.NodePool) bool {
			return len(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) == 1
		})
		if len(p.GetInterfaces()) != 1 || p.GetInterfaces()[0].GetSubnetCidr() == "" || p.GetTargetFree() != 1 {
			t.Fatalf("pool of %s: %v", a.Name(), p)
		}
		// The address is on the node's primary ENI in EC2, and nothing else is.
		e := servertest.SimENI(t, s.Sim(), a.Inst.PrimaryENI)
		if len(e.SecondaryIPs) != 1 || e.SecondaryIPs[0] != servertest.Addresses(p, 0)[0] {
			t.Fatalf("EC2 has %v on %s, pool says %v", e.SecondaryIPs, e.ID, servertest.Addresses(p, 0))
		}
	}
	servertest.CheckNoAddressTwice(t, s)
	servertest.CheckBudgetsAddUp(t, s)

	// What the seed saw as 43 addresses for two idle nodes is 4 here: two primaries, two warm.
	resp, err := ipledgerv1.NewAdminServiceClient(conn).ListSubnets(t.Context(), &ipledgerv1.ListSubnetsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var held uint32
	for _, b := range resp.GetSubnets() {
		held += b.Held
	}
	if held != 10 {
		t.Fatalf("5 idle nodes hold %d addresses, want 10 (5 primaries + 5 warm)", held)
	}

	// Registering again is idempotent and returns the same lease.
	again, err := agents[0].Client.RegisterNode(t.Context(), agents[0].RegisterRequest())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := servertest.Addresses(again.GetPool(), 0), servertest.Addresses(agents[0].Pool(), 0); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("re-registration changed the pool: %v vs %v", got, want)
	}
}

func TestUsageMovesTargetsAndSurplusIsReleasedThroughTheHandshake(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	a := servertest.NewAgent(t, conn, servertest.Instances(s)[0])
	a.Register()
	a.Sync()
	p := a.WaitPool(10*time.Second, "one warm address", func(p *ipledgerv1.NodePool) bool { return len(servertest.Addresses(p, 0)) == 1 })
	first := servertest.Addresses(p, 0)[0]

	// A pod takes the address: the node is below its floor of 1 free and gets another.
	a.ReportIPs([]string{first}, 0)
	p = a.WaitPool(10*time.Second, "a second address", func(p *ipledgerv1.NodePool) bool { return len(servertest.Addresses(p, 0)) == 2 })
	// Three pods wait: the pool grows to cover them plus the floor.
	a.ReportIPs([]string{first}, 3)
	p = a.WaitPool(10*time.Second, "five addresses", func(p *ipledgerv1.NodePool) bool { return len(servertest.Addresses(p, 0)) == 5 })

	// A re-registration (an agent restarting) gets back the pods it last reported.
	again, err := a.Client.RegisterNode(t.Context(), a.RegisterRequest())
	if err != nil {
		t.Fatal(err)
	}
	if got := again.GetLastReportedInUse(); len(got) != 1 || got[0].GetIp() != first || got[0].GetContainerId() != "c0" {
		t.Fatalf("last reported pods on re-registration: %v", got)
	}

	// The agent refuses to give anything back: nothing is unassigned.
	a.SetRefuse(true)
	a.ReportIPs(nil, 0)
	servertest.WaitFor(t, 10*time.Second, "a proposal", func() bool { return len(a.Proposals()) > 0 })
	time.Sleep(300 * time.Millisecond)
	if got := len(servertest.SimENI(t, s.Sim(), a.Inst.PrimaryENI).SecondaryIPs); got != 5 {
		t.Fatalf("refused release still unassigned addresses: EC2 has %d", got)
	}

	// Now the agent confirms: the surplus goes back to EC2, the floor stays.
	a.SetRefuse(false)
	a.ReportIPs(nil, 0)
	servertest.WaitFor(t, 15*time.Second, "surplus released on EC2", func() bool {
		return len(servertest.SimENI(t, s.Sim(), a.Inst.PrimaryENI).SecondaryIPs) == 1
	})
	p = a.WaitPool(10*time.Second, "pool back to one", func(p *ipledgerv1.NodePool) bool { return len(servertest.Addresses(p, 0)) == 1 })
	if servertest.Addresses(p, 0)[0] != servertest.SimENI(t, s.Sim(), a.Inst.PrimaryENI).SecondaryIPs[0] {
		t.Fatalf("pool %v and EC2 %v disagree", servertest.Addresses(p, 0), servertest.SimENI(t, s.Sim(), a.Inst.PrimaryENI).SecondaryIPs)
	}
	servertest.CheckNoAddressTwice(t, s)
	servertest.CheckBudgetsAddUp(t, s)
}

func TestNewENIWhenFullAndTerminatedInstanceIsCleaned(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	admin := ipledgerv1.NewAdminServiceClient(conn)
	inst := servertest.Instances(s)[1]
	if _, err := admin.SetPolicy(t.Context(), &ipledgerv1.SetPolicyRequest{Policy: &ipledgerv1.NodePolicy{
		Name: "min12", Order: 1, Selector: &ipledgerv1.NodeSelector{InstanceTypes: []string{"m5.large"}}, MinimumIpTarget: proto.Uint32(12),
	}}); err != nil {
		t.Fatal(err)
	}
	a := servertest.NewAgent(t, conn, inst)
	if resp := a.Register(); resp.GetPolicy().GetName() != "min12" {
		t.Fatalf("policy %s", resp.GetPolicy().GetName())
	}
	a.Sync()
	// m5.large: 9 secondaries fit on the primary ENI; the other 3 need a second ENI.
	p := a.WaitPool(15*time.Second, "12 addresses on two ENIs", func(p *ipledgerv1.NodePool) bool {
		return len(servertest.Addresses(p, 0)) == 12 && len(p.GetInterfaces()) == 2
	})
	second := p.GetInterfaces()[1]
	if second.GetDeviceIndex() != 1 || len(second.GetAddresses()) != 3 {
		t.Fatalf("second ENI: %v", second)
	}
	servertest.WaitFor(t, 10*time.Second, "the new ENI attached with DeleteOnTermination", func() bool {
		e := servertest.SimENI(t, s.Sim(), second.GetEniId())
		return e.Attachment != nil && e.Attachment.InstanceID == inst.ID && e.Attachment.DeleteOnTermination &&
			e.Tags[allocator.TagCluster] == "dev" && e.Tags[allocator.TagNode] == a.Name()
	})
	// The new ENI carries the node's primary ENI's security groups.
	gw, err := ec2gw.New(t.Context(), ec2gw.Config{Region: "eu-west-1", Endpoint: s.Sim().Endpoint(),
		Credentials: credentials.NewStaticCredentialsProvider("x", "y", "")})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	both, err := gw.DescribeNetworkInterfaces(t.Context(), ec2gw.PriorityReconcile, ec2gw.ENIFilter{IDs: []string{inst.PrimaryENI, second.GetEniId()}})
	if err != nil || len(both) != 2 {
		t.Fatalf("describe: %v %v", both, err)
	}
	if len(both[0].SecurityGroupIDs) == 0 || strings.Join(both[0].SecurityGroupIDs, ",") != strings.Join(both[1].SecurityGroupIDs, ",") {
		t.Fatalf("security groups: %v vs %v", both[0].SecurityGroupIDs, both[1].SecurityGroupIDs)
	}
	servertest.CheckNoAddressTwice(t, s)

	// The instance goes away: the node is removed and EC2 keeps no ENI of ours.
	if err := s.Sim().Sim().TerminateInstances(t.Context(), inst.ID); err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, 10*time.Second, "node removed", func() bool {
		_, ok := s.Ledger().Node(a.Name())
		return !ok
	})
	for _, e := range s.Sim().Sim().Snapshot().ENIs {
		if e.Tags[allocator.TagCluster] == "dev" {
			t.Fatalf("ENI %s of the terminated node is left in EC2 (%s)", e.ID, e.Status)
		}
	}
	if _, err := admin.GetNode(t.Context(), &ipledgerv1.GetNodeRequest{NodeName: a.Name()}); status.Code(err) != codes.NotFound {
		t.Fatalf("GetNode of a removed node: %v", err)
	}
	servertest.CheckBudgetsAddUp(t, s)
}

func TestBadInputGetsAClearErrorAndChangesNothing(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	nodes := ipledgerv1.NewNodeServiceClient(conn)
	admin := ipledgerv1.NewAdminServiceClient(conn)
	insts := servertest.Instances(s)
	good := servertest.NewAgent(t, conn, insts[0])
	good.Register()
	revBefore := s.ClusterStatus(t.Context()).GetRevision()
	stateBefore, err := s.Store().Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}

	mutate := func(f func(r *ipledgerv1.RegisterNodeRequest)) *ipledgerv1.RegisterNodeRequest {
		r := servertest.NewAgent(t, conn, insts[1]).RegisterRequest()
		f(r)
		return r
	}
	tests := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason ipledgerv1.Reason
	}{
		{"unknown node asks for addresses", func() error {
			_, err := nodes.RequestAddresses(t.Context(), &ipledgerv1.RequestAddressesRequest{NodeName: "no-such-node", Count: 1})
			return err
		}, codes.NotFound, ipledgerv1.Reason_UNKNOWN_NODE},
		{"instance EC2 does not know", func() error {
			_, err := nodes.RegisterNode(t.Context(), mutate(func(r *ipledgerv1.RegisterNodeRequest) { r.InstanceId = "i-0123456789abcdef0" }))
			return err
		}, codes.FailedPrecondition, ipledgerv1.Reason_INSTANCE_MISMATCH},
		{"facts differ from EC2", func() error {
			_, err := nodes.RegisterNode(t.Context(), mutate(func(r *ipledgerv1.RegisterNodeRequest) { r.InstanceType = "m5.xlarge" }))
			return err
		}, codes.FailedPrecondition, ipledgerv1.Reason_INSTANCE_MISMATCH},
		{"second registration of an instance", func() error {
			r := good.RegisterRequest()
			r.NodeName = "another-name"
			_, err := nodes.RegisterNode(t.Context(), r)
			return err
		}, codes.AlreadyExists, ipledgerv1.Reason_INSTANCE_ALREADY_REGISTERED},
		{"malformed node name", func() error {
			_, err := nodes.RegisterNode(t.Context(), mutate(func(r *ipledgerv1.RegisterNodeRequest) { r.NodeName = "Not A Name" }))
			return err
		}, codes.InvalidArgument, ipledgerv1.Reason_INVALID_ARGUMENT},
		{"malformed primary ip", func() error {
			_, err := nodes.RegisterNode(t.Context(), mutate(func(r *ipledgerv1.RegisterNodeRequest) { r.PrimaryIp = "300.1.1.1" }))
			return err
		}, codes.InvalidArgument, ipledgerv1.Reason_INVALID_ARGUMENT},
		{"count out of range", func() error {
			_, err := nodes.RequestAddresses(t.Context(), &ipledgerv1.RequestAddressesRequest{NodeName: good.Name(), Count: 1000})
			return err
		}, codes.InvalidArgument, ipledgerv1.Reason_INVALID_ARGUMENT},
		{"invalid policy", func() error {
			_, err := admin.SetPolicy(t.Context(), &ipledgerv1.SetPolicyRequest{Policy: &ipledgerv1.NodePolicy{Name: "x", WarmPrefixTarget: proto.Uint32(1)}})
			return err
		}, codes.InvalidArgument, ipledgerv1.Reason_INVALID_ARGUMENT},
		{"budget for a subnet the cluster does not use", func() error {
			_, err := admin.SetSubnetBudget(t.Context(), &ipledgerv1.SetSubnetBudgetRequest{SubnetId: "subnet-0123456789abcdef0", MaxHeld: 10})
			return err
		}, codes.NotFound, ipledgerv1.Reason_REASON_UNSPECIFIED},
		{"budget larger than the subnet", func() error {
			_, err := admin.SetSubnetBudget(t.Context(), &ipledgerv1.SetSubnetBudgetRequest{SubnetId: insts[0].SubnetID, MaxHeld: 1 << 20})
			return err
		}, codes.InvalidArgument, ipledgerv1.Reason_INVALID_ARGUMENT},
		{"sync without hello", func() error {
			st, err := nodes.Sync(t.Context())
			if err != nil {
				return err
			}
			st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Usage{Usage: &ipledgerv1.UsageReport{}}})
			_, err = st.Recv()
			return err
		}, codes.InvalidArgument, ipledgerv1.Reason_INVALID_ARGUMENT},
		{"drain of an unknown node", func() error {
			_, err := admin.DrainNode(t.Context(), &ipledgerv1.DrainNodeRequest{NodeName: "ghost"})
			return err
		}, codes.NotFound, ipledgerv1.Reason_UNKNOWN_NODE},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if status.Code(err) != tc.code {
				t.Fatalf("want %s, got %v", tc.code, err)
			}
			if tc.reason != 0 {
				if r, _ := api.ReasonOf(err); r != tc.reason.String() {
					t.Fatalf("want reason %s, got %q (%v)", tc.reason, r, err)
				}
			}
			if msg := status.Convert(err).Message(); len(msg) < 10 {
				t.Fatalf("message too terse to act on: %q", msg)
			}
		})
	}
	stateAfter, err := s.Store().Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(stateAfter.Nodes) != len(stateBefore.Nodes) || len(stateAfter.Policies) != len(stateBefore.Policies) {
		t.Fatalf("bad input changed state: nodes %d -> %d, policies %d -> %d", len(stateBefore.Nodes), len(stateAfter.Nodes), len(stateBefore.Policies), len(stateAfter.Policies))
	}
	for id, sub := range stateAfter.Subnets {
		if b := stateBefore.Subnets[id]; b.MaxHeld != sub.MaxHeld {
			t.Fatalf("bad input changed the budget of %s", id)
		}
	}
	_ = revBefore
	_ = netip.Addr{}
	_ = io.EOF
}
