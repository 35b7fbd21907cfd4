package replica

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/store"
)

// The replica's tests run against embedded etcd. The allocator it leads gets an EC2 that has
// nothing (no subnet to learn, no node): these tests are about following, electing and
// handing over, not about addresses.

// emptyEC2 answers every describe with nothing and refuses changes.
type emptyEC2 struct{}

var errNoEC2 = errors.New("empty EC2")

func (emptyEC2) DescribeInstances(context.Context, ec2gw.Priority, []string) ([]ec2gw.Instance, error) {
	return nil, nil
}
func (emptyEC2) DescribeInstanceTypes(context.Context, ec2gw.Priority, []string) ([]ec2gw.InstanceType, error) {
	return nil, nil
}
func (emptyEC2) DescribeSubnets(context.Context, ec2gw.Priority, []string, string) ([]ec2gw.Subnet, error) {
	return nil, errNoEC2
}
func (emptyEC2) DescribeNetworkInterfaces(context.Context, ec2gw.Priority, ec2gw.ENIFilter) ([]ec2gw.ENI, error) {
	return nil, nil
}
func (emptyEC2) CreateENI(context.Context, ec2gw.Priority, ec2gw.CreateENIInput) (ec2gw.ENI, error) {
	return ec2gw.ENI{}, errNoEC2
}
func (emptyEC2) AttachENI(context.Context, ec2gw.Priority, string, string, int, int) (string, error) {
	return "", errNoEC2
}
func (emptyEC2) SetDeleteOnTermination(context.Context, ec2gw.Priority, string, string, bool) error {
	return errNoEC2
}
func (emptyEC2) DetachENI(context.Context, ec2gw.Priority, string, bool) error { return errNoEC2 }
func (emptyEC2) DeleteENI(context.Context, ec2gw.Priority, string) error       { return errNoEC2 }
func (emptyEC2) AssignAddresses(context.Context, ec2gw.Priority, string, []netip.Addr) error {
	return errNoEC2
}
func (emptyEC2) AssignPrefixes(context.Context, ec2gw.Priority, string, []netip.Prefix) error {
	return errNoEC2
}
func (emptyEC2) UnassignAddresses(context.Context, ec2gw.Priority, string, []netip.Addr, []netip.Prefix) error {
	return errNoEC2
}
func (emptyEC2) EstimateWait(string, ec2gw.Priority) time.Duration { return 0 }
func (emptyEC2) DescribeInstancesFiltered(context.Context, ec2gw.Priority, ec2gw.InstanceFilter) ([]ec2gw.Instance, error) {
	return nil, errNoEC2
}

type drainCount struct {
	mu sync.Mutex
	n  int
}

func (d *drainCount) AssumeDrained() { d.mu.Lock(); d.n++; d.mu.Unlock() }

func startEtcd(t *testing.T) []string {
	t.Helper()
	emb, err := store.StartEmbedded(t.Context(), store.EmbeddedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = emb.Close() })
	return emb.Endpoints()
}

// running is a replica whose Run goroutine the test stops.
type running struct {
	r      *Replica
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, endpoints []string, advertise string, gw Drainer) *running {
	t.Helper()
	r := New(Config{
		Store:     store.Config{Endpoints: endpoints, ClusterName: "replica-test", SessionTTL: time.Second},
		Advertise: advertise, Gateway: gw,
		Allocator: allocator.Config{ClusterName: "replica-test", EC2: emptyEC2{}},
		RetryMin:  20 * time.Millisecond, RetryMax: 200 * time.Millisecond, Logger: testLogger(),
	})
	ctx, cancel := context.WithCancel(context.Background())
	run := &running{r: r, cancel: cancel, done: make(chan error, 1)}
	go func() { run.done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-run.done:
		case <-time.After(20 * time.Second):
			t.Error("Run did not return")
		}
		_ = r.Close()
	})
	return run
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One replica leads, the other follows every change as a standby and knows the leader; when the
// leader stops it resigns and the standby takes over with everything the leader wrote.
func TestStandbyFollowsAndTakesOver(t *testing.T) {
	eps := startEtcd(t)
	drains := &drainCount{}
	a := start(t, eps, "10.0.0.1:7400", drains)
	waitFor(t, 15*time.Second, "a to lead", func() bool { return a.r.Allocator() != nil })
	b := start(t, eps, "10.0.0.2:7400", drains)
	waitFor(t, 15*time.Second, "b to know the leader", func() bool { return b.r.LeaderAddress() == "10.0.0.1:7400" })
	if b.r.Allocator() != nil {
		t.Fatal("two replicas lead")
	}
	ctx := t.Context()
	p := policy.Policy{Name: "seven", Order: 3, MinimumIPTarget: policy.U32(7)}
	if _, err := a.r.Allocator().SetPolicy(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := a.r.Allocator().SetPolicy(ctx, policy.Policy{Name: "gone", Order: 4}); err != nil {
		t.Fatal(err)
	}
	if err := a.r.Allocator().DeletePolicy(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "b to follow the policies", func() bool {
		ps := b.r.Policies()
		return len(ps) == 2 && ps[0].Name == "seven" && ps[0].MinimumIPTarget != nil && *ps[0].MinimumIPTarget == 7
	})
	if b.r.Revision() < a.r.Revision() {
		waitFor(t, 10*time.Second, "b's revision", func() bool { return b.r.Revision() >= a.r.Revision() })
	}
	if err := b.r.Health(ctx); err != nil {
		t.Fatalf("standby health: %v", err)
	}
	before := time.Now()
	a.cancel()
	select {
	case err := <-a.done:
		if err != nil {
			t.Fatalf("a stopped leader's Run: %v", err)
		}
		a.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("a did not stop")
	}
	waitFor(t, 10*time.Second, "b to lead", func() bool { return b.r.Allocator() != nil })
	// a resigned: b did not wait out a's session.
	if took := time.Since(before); took > 5*time.Second {
		t.Fatalf("takeover took %s", took)
	}
	if ps := b.r.Allocator().Policies(); len(ps) != 2 || ps[0].Name != "seven" {
		t.Fatalf("the new leader's policies: %+v", ps)
	}
	if b.r.LeaderAddress() != "10.0.0.2:7400" {
		t.Fatalf("the new leader names %q as leader", b.r.LeaderAddress())
	}
}

// A leader whose session is revoked behind its back stops leading: Run returns
// ErrLeadershipEnded.
func TestLostLeadershipEndsRun(t *testing.T) {
	eps := startEtcd(t)
	a := start(t, eps, "10.0.0.1:7400", nil)
	waitFor(t, 15*time.Second, "a to lead", func() bool { return a.r.Allocator() != nil })
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/ipledger/replica-test/election/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("election keys: %v %v", resp, err)
	}
	for _, kv := range resp.Kvs {
		if _, err := cli.Revoke(ctx, clientv3.LeaseID(kv.Lease)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-a.done:
		if !errors.Is(err, ErrLeadershipEnded) {
			t.Fatalf("Run returned %v, want ErrLeadershipEnded", err)
		}
		a.done <- err
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not end after the leadership was lost")
	}
	if a.r.Allocator() != nil {
		t.Fatal("the allocator is still published after leadership ended")
	}
}

// A replica that cannot reach etcd stays up, says why, and stops when asked.
func TestWaitsForEtcd(t *testing.T) {
	r := start(t, []string{"http://127.0.0.1:1"}, "10.0.0.1:7400", nil)
	waitFor(t, 10*time.Second, "the health to say why", func() bool {
		err := r.r.Health(t.Context())
		return err != nil && strings.Contains(err.Error(), "etcd")
	})
	if r.r.Allocator() != nil || r.r.Store() != nil {
		t.Fatal("a replica without etcd leads or has a store")
	}
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("Run of a replica that never reached etcd: %v", err)
		}
		r.done <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not stop")
	}
}

// The ledger built from the store's records refuses records that conflict.
func TestBuildLedger(t *testing.T) {
	subnet := ledger.SubnetRecord{ID: "subnet-0000000000000000a", CIDR: netip.MustParsePrefix("10.0.0.0/24"), AvailabilityZone: "us-east-1a"}
	node := ledger.NodeRecord{Name: "n1", InstanceID: "i-0000000000000001", InstanceType: "m5.large", AvailabilityZone: "us-east-1a",
		SubnetID: subnet.ID, PrimaryENI: "eni-0000000000000001", PrimaryIP: netip.MustParseAddr("10.0.0.10"), Mode: ledger.ModeSecondaryIP,
		ENIs: []ledger.ENIRecord{{ID: "eni-0000000000000001", SubnetID: subnet.ID, PrimaryIP: netip.MustParseAddr("10.0.0.10"),
			Addresses: []ledger.LeasedAddress{{IP: netip.MustParseAddr("10.0.0.11"), State: ledger.LeaseActive}}}}}
	state := &store.State{Subnets: map[string]ledger.SubnetRecord{subnet.ID: subnet}, Nodes: map[string]ledger.NodeRecord{"n1": node}}
	build := func(state *store.State) (*ledger.Ledger, error) {
		return allocator.BuildLedger(diff.RecordsOf(state.Nodes, state.Subnets, state.Prewarms), ledger.Options{})
	}
	led, err := build(state)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := led.Node("n1"); !ok {
		t.Fatal("the node is missing")
	}
	twin := node
	twin.Name, twin.InstanceID = "n2", "i-0000000000000002"
	twin.PrimaryENI, twin.ENIs = "eni-0000000000000002", []ledger.ENIRecord{{ID: "eni-0000000000000002", SubnetID: subnet.ID,
		PrimaryIP: netip.MustParseAddr("10.0.0.20"), Addresses: node.ENIs[0].Addresses}}
	twin.PrimaryIP = netip.MustParseAddr("10.0.0.20")
	state.Nodes["n2"] = twin
	if _, err := build(state); err == nil {
		t.Fatal("two nodes leasing one address built a ledger")
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("IPLEDGER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}
