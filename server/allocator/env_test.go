package allocator

import (
	"context"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ipledger/ipledger/server/ledger"
)

// Tests of this package run the allocator against fakeEC2 and fakeStore under a fake clock:
// no etcd, no HTTP simulator (the package's tests import neither server/store nor
// server/ec2sim). The server's tests drive the same code against embedded etcd and the
// simulator.

const (
	testCluster = "test"
	subnetA     = "subnet-0000000000000000a"
	subnetB     = "subnet-0000000000000000b"
	testAZ      = "us-east-1a"
)

var testEpoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// env is one allocator with its fakes. Its loops do not run unless a test calls run: tests step
// the allocator's work themselves.
type env struct {
	t   *testing.T
	ctx context.Context
	ec2 *fakeEC2
	st  *fakeStore
	clk *clockwork.FakeClock
	a   *Allocator
	cfg Config
}

// newEnv builds a fake EC2 with two subnets (a /24 and a /26), an empty store and an allocator
// over them; mod may change the configuration first.
func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	e := &env{t: t, ctx: t.Context(), ec2: newFakeEC2(), st: newFakeStore(), clk: clockwork.NewFakeClockAt(testEpoch)}
	e.ec2.addSubnet(subnetA, "10.0.0.0/24", testAZ)
	e.ec2.addSubnet(subnetB, "10.0.1.0/26", testAZ)
	e.cfg = Config{
		ClusterName: testCluster, Ledger: ledger.New(ledger.Options{}), Store: e.st.lead(), EC2: e.ec2, Revision: 1,
		Subnets: []string{subnetA}, ReleaseDelay: 0, ProposalTimeout: time.Minute, DriftGrace: time.Minute,
		Clock: e.clk,
	}
	if mod != nil {
		mod(&e.cfg)
	}
	watchLocks(t, &e.cfg, e.ec2, e.st)
	a, err := New(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.a = a
	if err := a.learnSubnets(e.ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

// instance launches an instance in subnet and returns its registration.
func (e *env) instance(typ, subnet string) Registration {
	id := e.ec2.runInstance(typ, subnet)
	e.ec2.mu.Lock()
	defer e.ec2.mu.Unlock()
	in := e.ec2.instances[id]
	req := Registration{NodeName: in.dns, InstanceID: in.id, InstanceType: in.typ, AvailabilityZone: in.az,
		SubnetID: in.subnet, PrimaryIP: in.ip}
	for _, x := range e.ec2.enis {
		if x.Attachment != nil && x.Attachment.InstanceID == id && x.Attachment.DeviceIndex == 0 {
			req.PrimaryENI = x.ID
		}
	}
	return req
}

// register launches and registers a node.
func (e *env) register(typ, subnet string) string {
	e.t.Helper()
	req := e.instance(typ, subnet)
	if _, _, err := e.a.RegisterNode(e.ctx, req); err != nil {
		e.t.Fatalf("register %s: %v", req.NodeName, err)
	}
	return req.NodeName
}

func (e *env) ns(node string) *nodeState {
	e.t.Helper()
	ns, ok := e.a.node(node)
	if !ok {
		e.t.Fatalf("node %s is not registered", node)
	}
	return ns
}

// step runs one pass of the node's worker, its release work included, synchronously.
func (e *env) step(node string) {
	e.t.Helper()
	ns := e.ns(node)
	e.a.retryUncommitted(e.ctx, ns)
	e.a.expireProposal(e.ctx, ns)
	e.a.supply(e.ctx, ns)
	e.a.maybePropose(e.ctx, ns)
	e.a.releaseLane(e.ctx, ns)
}

func (e *env) record(node string) ledger.NodeRecord {
	e.t.Helper()
	rec, ok := e.a.led.Node(node)
	if !ok {
		e.t.Fatalf("the ledger has no node %s", node)
	}
	return rec
}

// active lists the node's ACTIVE leased addresses, sorted.
func (e *env) active(node string) []netip.Addr {
	var out []netip.Addr
	for _, en := range e.record(node).ENIs {
		for _, ad := range en.Addresses {
			if ad.State == ledger.LeaseActive {
				out = append(out, ad.IP)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// usage reports the given addresses in use by pods on the node.
func (e *env) usage(node string, inUse ...netip.Addr) {
	e.t.Helper()
	u := Usage{}
	for _, ip := range inUse {
		u.InUse = append(u.InUse, PodAddress{IP: ip, ContainerID: "c-" + ip.String()})
	}
	if err := e.a.ReportUsage(node, u); err != nil {
		e.t.Fatal(err)
	}
}

// subscribe opens the node's sync view, closed at the end of the test.
func (e *env) subscribe(node string) *Subscription {
	e.t.Helper()
	s, err := e.a.Subscribe(node)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { e.a.Unsubscribe(s) })
	return s
}

// ec2Has reports whether EC2 has the address as a secondary address of the ENI.
func (e *env) ec2Has(eni string, ip netip.Addr) bool {
	for _, x := range e.ec2.snapshot() {
		if x.ID == eni {
			for _, s := range x.SecondaryIPs {
				if s == ip {
					return true
				}
			}
		}
	}
	return false
}
