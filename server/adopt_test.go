package server_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/servertest"
	"github.com/ipledger/ipledger/server/store"
)

// TestTakeoverAdoptsAnAssignmentTheOldLeaderNeverCommitted: a leader that dies between EC2's
// AssignPrivateIpAddresses and its etcd commit leaves an address on the node's ENI that no lease
// holds. The next leader must not place it elsewhere, and must adopt it into the node's lease
// one drift grace after it takes over, not one whole reconcile interval (an hour here) later.
func TestTakeoverAdoptsAnAssignmentTheOldLeaderNeverCommitted(t *testing.T) {
	be := servertest.StartBackends(t)
	emb, sim := be.Etcd, be.Sim
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")

	replicaCfg := func() config.Config {
		cfg := servertest.DevConfig(t)
		cfg.Dev = false
		cfg.ClusterName = "adopt"
		cfg.Region = "eu-west-1"
		be.Use(&cfg)
		cfg.GRPCListen, cfg.HTTPListen = "127.0.0.1:0", "127.0.0.1:0"
		cfg.DriftGrace = config.Duration(300 * time.Millisecond)
		return cfg
	}

	// The first leader registers the node and fills its pool, then stops.
	first := servertest.Start(t, replicaCfg())
	servertest.WaitFor(t, 15*time.Second, "the first replica to lead", first.IsLeader)
	inst := servertest.Running(sim)[0]
	ag := servertest.NewAgent(t, servertest.Dial(t, first.GRPCAddr()), inst)
	ag.Register()
	ag.Sync()
	ag.WaitPool(15*time.Second, "a filled pool", func(p *ipledgerv1.NodePool) bool {
		return len(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) > 0
	})
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	// What the dying leader did on EC2 but never wrote to etcd: one more address on the node's
	// primary ENI, assigned over the simulator's EC2 API.
	awsCfg, err := awsconfig.LoadDefaultConfig(t.Context(), awsconfig.WithRegion("eu-west-1"),
		awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("test", "test", "")))
	if err != nil {
		t.Fatal(err)
	}
	client := ec2.NewFromConfig(awsCfg, func(o *ec2.Options) { o.BaseEndpoint = aws.String(sim.Endpoint()) })
	out, err := client.AssignPrivateIpAddresses(t.Context(), &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(inst.PrimaryENI), SecondaryPrivateIpAddressCount: aws.Int32(1),
	})
	if err != nil {
		t.Fatal(err)
	}
	orphan := aws.ToString(out.AssignedPrivateIpAddresses[0].PrivateIpAddress)

	second := servertest.Start(t, replicaCfg())
	servertest.WaitFor(t, 15*time.Second, "the second replica to lead", second.IsLeader)
	admin := ipledgerv1.NewAdminServiceClient(servertest.Dial(t, second.GRPCAddr()))
	var adopted time.Duration
	start := time.Now()
	servertest.WaitFor(t, 10*time.Second, "the orphaned address "+orphan+" in the node's lease", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		d, err := admin.GetNode(ctx, &ipledgerv1.GetNodeRequest{NodeName: ag.Name()})
		if err != nil {
			return false
		}
		for _, e := range d.GetPool().GetInterfaces() {
			for _, a := range e.GetAddresses() {
				if a.GetIp() == orphan && e.GetEniId() == inst.PrimaryENI {
					adopted = time.Since(start)
					return true
				}
			}
		}
		return false
	})
	t.Logf("orphaned %s adopted %v after the new leader led", orphan, adopted.Round(time.Millisecond))

	// Nothing else holds it, and the check finds nothing wrong.
	st, err := store.Open(t.Context(), store.Config{Endpoints: emb.Endpoints(), ClusterName: "adopt"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	servertest.WaitFor(t, 10*time.Second, "EC2 and etcd to agree", func() bool { return servertest.Consistent(t.Context(), sim.Sim(), st, "adopt") == nil })
	rep, err := admin.Check(t.Context(), &ipledgerv1.CheckRequest{IncludeEc2: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.GetOk() {
		t.Fatalf("check after adoption: %v", rep.GetFindings())
	}
	ip := netip.MustParseAddr(orphan)
	holders := 0
	for _, e := range sim.Sim().Snapshot().ENIs {
		if e.PrimaryIP == orphan || slices.Contains(e.SecondaryIPs, ip.String()) {
			holders++
		}
	}
	if holders != 1 {
		t.Fatalf("%s is on %d ENIs", orphan, holders)
	}
}

// TestAnOrphanPlacedAgainIsAdopted: an address a dead leader assigned on EC2 but never
// committed is free in the next leader's ledger, so supply may place it again; EC2 answers
// InvalidIPAddress.InUse because the address is already on that very ENI. It must be adopted
// into the node's lease at once, not be taken for someone else's (foreign) until the next
// reconciliation (an hour here).
func TestAnOrphanPlacedAgainIsAdopted(t *testing.T) {
	var cluster string
	s := servertest.StartDev(t, func(c *config.Config) { c.DriftGrace = config.Duration(time.Hour); cluster = c.ClusterName })
	sim := s.Sim()
	inst := servertest.Instances(s)[0]
	ag := servertest.NewAgent(t, servertest.Dial(t, s.GRPCAddr()), inst)
	ag.Register()
	ag.Sync()
	pool := ag.WaitPool(15*time.Second, "a warm address", func(p *ipledgerv1.NodePool) bool {
		return len(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) > 0
	})

	// The address the leader places next (placement is deterministic: the same state gives
	// the same addresses), computed on a copy of the ledger built from etcd.
	state, err := s.Store().Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	led, err := allocator.BuildLedger(diff.RecordsOf(state.Nodes, state.Subnets, state.Prewarms), ledger.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := led.Node(ag.Name())
	next, err := led.ReserveAddresses(rec.SubnetID, 1, ledger.Owner{Node: ag.Name(), ENI: inst.PrimaryENI}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	orphan := next[0].String()
	// A dead leader's uncommitted assignment of exactly that address.
	awsCfg, err := awsconfig.LoadDefaultConfig(t.Context(), awsconfig.WithRegion("eu-west-1"),
		awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider("test", "test", "")))
	if err != nil {
		t.Fatal(err)
	}
	client := ec2.NewFromConfig(awsCfg, func(o *ec2.Options) { o.BaseEndpoint = aws.String(sim.Endpoint()) })
	if _, err := client.AssignPrivateIpAddresses(t.Context(), &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(inst.PrimaryENI), PrivateIpAddresses: []string{orphan},
	}); err != nil {
		t.Fatal(err)
	}

	// The node's pods take its warm addresses: supply places the orphan.
	ag.ReportIPs(servertest.Addresses(pool, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE), 1)
	servertest.WaitFor(t, 10*time.Second, "the orphan "+orphan+" in the node's lease", func() bool {
		p := ag.Pool()
		return p != nil && slices.Contains(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE), orphan)
	})
	servertest.WaitFor(t, 10*time.Second, "EC2 and etcd to agree", func() bool {
		return servertest.Consistent(t.Context(), sim.Sim(), s.Store(), cluster) == nil
	})
}
