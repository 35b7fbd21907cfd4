package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/ledger"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("IPLEDGER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startDev starts a --dev replica (embedded etcd, in-process simulator without throttling) with
// short intervals for tests.
func startDev(t *testing.T, mod func(*config.Config)) *Server {
	t.Helper()
	cfg := config.DevConfig(t.TempDir())
	cfg.SessionTTL = config.Duration(2 * time.Second)
	cfg.ReleaseDelay = 0
	cfg.ProposalTimeout = config.Duration(5 * time.Second)
	cfg.InstanceCheckInterval = config.Duration(200 * time.Millisecond)
	cfg.ReconcileInterval = config.Duration(time.Hour)
	cfg.DriftGrace = config.Duration(time.Millisecond)
	cfg.SimThrottle = false
	if mod != nil {
		mod(&cfg)
	}
	s, err := Start(t.Context(), cfg, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	waitFor(t, 15*time.Second, "leadership", s.IsLeader)
	return s
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// testAgent speaks NodeService to a real server the way ipledger-agent does.
type testAgent struct {
	t      *testing.T
	inst   ec2sim.InstanceInfo
	cli    ipledgerv1.NodeServiceClient
	cancel context.CancelFunc

	mu        sync.Mutex
	pool      *ipledgerv1.NodePool
	proposals []*ipledgerv1.ReleaseProposal
	stream    ipledgerv1.NodeService_SyncClient
	refuse    bool
	streamErr error
}

func newTestAgent(t *testing.T, conn *grpc.ClientConn, inst ec2sim.InstanceInfo) *testAgent {
	return &testAgent{t: t, inst: inst, cli: ipledgerv1.NewNodeServiceClient(conn)}
}

func (a *testAgent) name() string { return a.inst.PrivateDNSName }

func (a *testAgent) registerRequest() *ipledgerv1.RegisterNodeRequest {
	return &ipledgerv1.RegisterNodeRequest{
		NodeName: a.name(), InstanceId: a.inst.ID, InstanceType: a.inst.InstanceType,
		AvailabilityZone: a.inst.AvailabilityZone, SubnetId: a.inst.SubnetID,
		PrimaryEniId: a.inst.PrimaryENI, PrimaryIp: a.inst.PrivateIP,
	}
}

func (a *testAgent) register() *ipledgerv1.RegisterNodeResponse {
	a.t.Helper()
	resp, err := a.cli.RegisterNode(a.t.Context(), a.registerRequest())
	if err != nil {
		a.t.Fatalf("register %s: %v", a.name(), err)
	}
	a.setPool(resp.GetPool())
	return resp
}

func (a *testAgent) setPool(p *ipledgerv1.NodePool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pool == nil || p.GetGeneration() >= a.pool.GetGeneration() {
		a.pool = p
	}
}

// sync opens the stream; proposals are confirmed (or refused) automatically.
func (a *testAgent) sync() {
	a.t.Helper()
	ctx, cancel := context.WithCancel(a.t.Context())
	a.cancel = cancel
	a.t.Cleanup(cancel)
	stream, err := a.cli.Sync(ctx)
	if err != nil {
		a.t.Fatal(err)
	}
	if err := stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Hello{Hello: &ipledgerv1.SyncHello{NodeName: a.name(), InstanceId: a.inst.ID}}}); err != nil {
		a.t.Fatal(err)
	}
	a.mu.Lock()
	a.stream = stream
	a.mu.Unlock()
	go func() {
		for {
			msg, err := stream.Recv()
			if err != nil {
				a.mu.Lock()
				a.streamErr = err
				a.mu.Unlock()
				return
			}
			switch m := msg.GetMsg().(type) {
			case *ipledgerv1.SyncResponse_Pool:
				a.setPool(m.Pool)
			case *ipledgerv1.SyncResponse_Release:
				a.mu.Lock()
				a.proposals = append(a.proposals, m.Release)
				ack := &ipledgerv1.ReleaseAck{ProposalId: m.Release.GetProposalId()}
				items := append(append([]string{}, m.Release.GetAddresses()...), m.Release.GetPrefixes()...)
				if a.refuse {
					ack.Refused = items
				} else {
					ack.Confirmed = items
				}
				a.mu.Unlock()
				_ = stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_ReleaseAck{ReleaseAck: ack}})
			}
		}
	}()
}

func (a *testAgent) report(inUse []string, waiting int) {
	a.t.Helper()
	u := &ipledgerv1.UsageReport{PodsWaiting: uint32(waiting)}
	for i, ip := range inUse {
		u.InUse = append(u.InUse, &ipledgerv1.PodAddress{Ip: ip, ContainerId: fmt.Sprintf("c%d", i), Ifname: "eth0"})
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Usage{Usage: u}}); err != nil {
		a.t.Fatal(err)
	}
}

func (a *testAgent) currentPool() *ipledgerv1.NodePool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return proto.Clone(a.pool).(*ipledgerv1.NodePool)
}

// addresses lists the pool's secondary addresses in a state (all states when state is 0).
func addresses(p *ipledgerv1.NodePool, state ipledgerv1.LeaseState) []string {
	var out []string
	for _, ni := range p.GetInterfaces() {
		for _, ad := range ni.GetAddresses() {
			if state == 0 || ad.GetState() == state {
				out = append(out, ad.GetIp())
			}
		}
	}
	sort.Strings(out)
	return out
}

func (a *testAgent) waitPool(d time.Duration, what string, cond func(*ipledgerv1.NodePool) bool) *ipledgerv1.NodePool {
	a.t.Helper()
	var p *ipledgerv1.NodePool
	waitFor(a.t, d, what, func() bool {
		p = a.currentPool()
		return p != nil && cond(p)
	})
	return p
}

// simENI returns the simulator's view of an ENI.
func simENI(t *testing.T, sim *ec2sim.Server, id string) ec2sim.ENIInfo {
	t.Helper()
	for _, e := range sim.Sim().Snapshot().ENIs {
		if e.ID == id {
			return e
		}
	}
	t.Fatalf("ENI %s not in the simulator", id)
	return ec2sim.ENIInfo{}
}

// checkNoAddressTwice asserts that no address is on two ENIs in EC2, none is leased twice in
// etcd, and every lease is on EC2 on the leased ENI.
func checkNoAddressTwice(t *testing.T, s *Server) {
	t.Helper()
	snap := s.Sim().Sim().Snapshot()
	where := map[string]string{}
	for _, e := range snap.ENIs {
		for _, ip := range append([]string{e.PrimaryIP}, e.SecondaryIPs...) {
			if other, ok := where[ip]; ok {
				t.Fatalf("EC2 has %s on %s and %s", ip, other, e.ID)
			}
			where[ip] = e.ID
		}
	}
	state, err := s.Store().Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	leased := map[string]string{}
	for _, n := range state.Nodes {
		for _, e := range n.ENIs {
			for _, ad := range e.Addresses {
				ip := ad.IP.String()
				if other, ok := leased[ip]; ok {
					t.Fatalf("etcd leases %s to %s and %s", ip, other, n.Name)
				}
				leased[ip] = n.Name
				if where[ip] != e.ID && ad.State != ledger.LeaseReleasing {
					t.Fatalf("etcd leases %s on %s, EC2 has it on %q", ip, e.ID, where[ip])
				}
			}
		}
	}
}

func checkBudgetsAddUp(t *testing.T, s *Server) {
	t.Helper()
	resp, err := ipledgerv1.NewAdminServiceClient(dial(t, s.GRPCAddr())).ListSubnets(t.Context(), &ipledgerv1.ListSubnetsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range resp.GetSubnets() {
		if b.Size != b.Reserved+b.Foreign+b.Held+b.PrewarmReserved+b.Free || b.Held != b.EniPrimary+b.InUse+b.Idle {
			t.Fatalf("budget of %s does not add up: %+v", b.SubnetId, b)
		}
	}
}

func instances(s *Server) []ec2sim.InstanceInfo {
	var out []ec2sim.InstanceInfo
	for _, in := range s.Sim().Sim().Snapshot().Instances {
		if in.State == "running" {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func TestNodesRegisterAndPoolsFillToTheFloor(t *testing.T) {
	s := startDev(t, nil)
	conn := dial(t, s.GRPCAddr())
	var agents []*testAgent
	for _, in := range instances(s) {
		a := newTestAgent(t, conn, in)
		resp := a.register()
		if resp.GetPolicy().GetName() != allocator.DefaultPolicyName || resp.GetPool().GetMode() != ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP {
			t.Fatalf("register: %v", resp)
		}
		a.sync()
		agents = append(agents, a)
	}
	if len(agents) != 5 {
		t.Fatalf("default scenario has %d running instances, want 5", len(agents))
	}
	for _, a := range agents {
		p := a.waitPool(10*time.Second, "one warm address", func(p *ipledgerv1.NodePool) bool {
			return len(addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) == 1
		})
		if len(p.GetInterfaces()) != 1 || p.GetInterfaces()[0].GetSubnetCidr() == "" || p.GetTargetFree() != 1 {
			t.Fatalf("pool of %s: %v", a.name(), p)
		}
		// The address is on the node's primary ENI in EC2, and nothing else is.
		e := simENI(t, s.Sim(), a.inst.PrimaryENI)
		if len(e.SecondaryIPs) != 1 || e.SecondaryIPs[0] != addresses(p, 0)[0] {
			t.Fatalf("EC2 has %v on %s, pool says %v", e.SecondaryIPs, e.ID, addresses(p, 0))
		}
	}
	checkNoAddressTwice(t, s)
	checkBudgetsAddUp(t, s)

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
	again, err := agents[0].cli.RegisterNode(t.Context(), agents[0].registerRequest())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := addresses(again.GetPool(), 0), addresses(agents[0].currentPool(), 0); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("re-registration changed the pool: %v vs %v", got, want)
	}
}

func TestUsageMovesTargetsAndSurplusIsReleasedThroughTheHandshake(t *testing.T) {
	s := startDev(t, nil)
	conn := dial(t, s.GRPCAddr())
	a := newTestAgent(t, conn, instances(s)[0])
	a.register()
	a.sync()
	p := a.waitPool(10*time.Second, "one warm address", func(p *ipledgerv1.NodePool) bool { return len(addresses(p, 0)) == 1 })
	first := addresses(p, 0)[0]

	// A pod takes the address: the node is below its floor of 1 free and gets another.
	a.report([]string{first}, 0)
	p = a.waitPool(10*time.Second, "a second address", func(p *ipledgerv1.NodePool) bool { return len(addresses(p, 0)) == 2 })
	// Three pods wait: the pool grows to cover them plus the floor.
	a.report([]string{first}, 3)
	p = a.waitPool(10*time.Second, "five addresses", func(p *ipledgerv1.NodePool) bool { return len(addresses(p, 0)) == 5 })

	// A re-registration (an agent restarting) gets back the pods it last reported.
	again, err := a.cli.RegisterNode(t.Context(), a.registerRequest())
	if err != nil {
		t.Fatal(err)
	}
	if got := again.GetLastReportedInUse(); len(got) != 1 || got[0].GetIp() != first || got[0].GetContainerId() != "c0" {
		t.Fatalf("last reported pods on re-registration: %v", got)
	}

	// The agent refuses to give anything back: nothing is unassigned.
	a.mu.Lock()
	a.refuse = true
	a.mu.Unlock()
	a.report(nil, 0)
	waitFor(t, 10*time.Second, "a proposal", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return len(a.proposals) > 0 })
	time.Sleep(300 * time.Millisecond)
	if got := len(simENI(t, s.Sim(), a.inst.PrimaryENI).SecondaryIPs); got != 5 {
		t.Fatalf("refused release still unassigned addresses: EC2 has %d", got)
	}

	// Now the agent confirms: the surplus goes back to EC2, the floor stays.
	a.mu.Lock()
	a.refuse = false
	a.mu.Unlock()
	a.report(nil, 0)
	waitFor(t, 15*time.Second, "surplus released on EC2", func() bool {
		return len(simENI(t, s.Sim(), a.inst.PrimaryENI).SecondaryIPs) == 1
	})
	p = a.waitPool(10*time.Second, "pool back to one", func(p *ipledgerv1.NodePool) bool { return len(addresses(p, 0)) == 1 })
	if addresses(p, 0)[0] != simENI(t, s.Sim(), a.inst.PrimaryENI).SecondaryIPs[0] {
		t.Fatalf("pool %v and EC2 %v disagree", addresses(p, 0), simENI(t, s.Sim(), a.inst.PrimaryENI).SecondaryIPs)
	}
	checkNoAddressTwice(t, s)
	checkBudgetsAddUp(t, s)
}

func TestNewENIWhenFullAndTerminatedInstanceIsCleaned(t *testing.T) {
	s := startDev(t, nil)
	conn := dial(t, s.GRPCAddr())
	admin := ipledgerv1.NewAdminServiceClient(conn)
	inst := instances(s)[1]
	if _, err := admin.SetPolicy(t.Context(), &ipledgerv1.SetPolicyRequest{Policy: &ipledgerv1.NodePolicy{
		Name: "min12", Order: 1, Selector: &ipledgerv1.NodeSelector{InstanceTypes: []string{"m5.large"}}, MinimumIpTarget: proto.Uint32(12),
	}}); err != nil {
		t.Fatal(err)
	}
	a := newTestAgent(t, conn, inst)
	if resp := a.register(); resp.GetPolicy().GetName() != "min12" {
		t.Fatalf("policy %s", resp.GetPolicy().GetName())
	}
	a.sync()
	// m5.large: 9 secondaries fit on the primary ENI; the other 3 need a second ENI.
	p := a.waitPool(15*time.Second, "12 addresses on two ENIs", func(p *ipledgerv1.NodePool) bool {
		return len(addresses(p, 0)) == 12 && len(p.GetInterfaces()) == 2
	})
	second := p.GetInterfaces()[1]
	if second.GetDeviceIndex() != 1 || len(second.GetAddresses()) != 3 {
		t.Fatalf("second ENI: %v", second)
	}
	waitFor(t, 10*time.Second, "the new ENI attached with DeleteOnTermination", func() bool {
		e := simENI(t, s.Sim(), second.GetEniId())
		return e.Attachment != nil && e.Attachment.InstanceID == inst.ID && e.Attachment.DeleteOnTermination &&
			e.Tags[allocator.TagCluster] == "dev" && e.Tags[allocator.TagNode] == a.name()
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
	checkNoAddressTwice(t, s)

	// The instance goes away: the node is removed and EC2 keeps no ENI of ours.
	if err := s.Sim().Sim().TerminateInstances(t.Context(), inst.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "node removed", func() bool {
		_, ok := s.Ledger().Node(a.name())
		return !ok
	})
	for _, e := range s.Sim().Sim().Snapshot().ENIs {
		if e.Tags[allocator.TagCluster] == "dev" {
			t.Fatalf("ENI %s of the terminated node is left in EC2 (%s)", e.ID, e.Status)
		}
	}
	if _, err := admin.GetNode(t.Context(), &ipledgerv1.GetNodeRequest{NodeName: a.name()}); status.Code(err) != codes.NotFound {
		t.Fatalf("GetNode of a removed node: %v", err)
	}
	checkBudgetsAddUp(t, s)
}

func TestBadInputGetsAClearErrorAndChangesNothing(t *testing.T) {
	s := startDev(t, nil)
	conn := dial(t, s.GRPCAddr())
	nodes := ipledgerv1.NewNodeServiceClient(conn)
	admin := ipledgerv1.NewAdminServiceClient(conn)
	insts := instances(s)
	good := newTestAgent(t, conn, insts[0])
	good.register()
	revBefore := s.ClusterStatus(t.Context()).GetRevision()
	stateBefore, err := s.Store().Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}

	mutate := func(f func(r *ipledgerv1.RegisterNodeRequest)) *ipledgerv1.RegisterNodeRequest {
		r := newTestAgent(t, conn, insts[1]).registerRequest()
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
			r := good.registerRequest()
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
			_, err := nodes.RequestAddresses(t.Context(), &ipledgerv1.RequestAddressesRequest{NodeName: good.name(), Count: 1000})
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
