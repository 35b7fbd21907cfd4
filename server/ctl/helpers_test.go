package ctl

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2sim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func testLogger() *slog.Logger {
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

// devConfig is a --dev replica (embedded etcd, in-process simulator without throttling) with
// short intervals; reconciliation runs only at takeover so injected drift stays for check.
func devConfig(t *testing.T) config.Config {
	cfg := config.DevConfig(t.TempDir())
	cfg.SessionTTL = config.Duration(2 * time.Second)
	cfg.ReleaseDelay = 0
	cfg.ProposalTimeout = config.Duration(5 * time.Second)
	cfg.InstanceCheckInterval = config.Duration(time.Hour)
	cfg.ReconcileInterval = config.Duration(time.Hour)
	cfg.DriftGrace = config.Duration(time.Hour)
	cfg.SimThrottle = false
	return cfg
}

func startServer(t *testing.T, cfg config.Config) *server.Server {
	t.Helper()
	s, err := server.Start(t.Context(), cfg, server.Options{Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func startDev(t *testing.T) *server.Server {
	t.Helper()
	s := startServer(t, devConfig(t))
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

func admin(t *testing.T, addr string) ipledgerv1.AdminServiceClient {
	return ipledgerv1.NewAdminServiceClient(dial(t, addr))
}

// result is one run of ipledgerctl.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// ctl runs ipledgerctl against addr (through $IPLEDGER_SERVER, as a user would set it).
func ctl(t *testing.T, addr string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	env := map[string]string{EnvServer: addr}
	code := Main(t.Context(), args, &out, &errOut, func(k string) string { return env[k] })
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// mustCtl runs ipledgerctl and fails the test unless it exits with want.
func mustCtl(t *testing.T, want int, addr string, args ...string) result {
	t.Helper()
	r := ctl(t, addr, args...)
	if r.code != want {
		t.Fatalf("ipledgerctl %s: want exit %d, got %s", strings.Join(args, " "), want, r)
	}
	return r
}

// testAgent speaks NodeService to a real server the way ipledger-agent does: it registers,
// keeps the sync stream open, confirms release proposals and reports pods.
type testAgent struct {
	t    *testing.T
	inst ec2sim.InstanceInfo
	cli  ipledgerv1.NodeServiceClient

	mu     sync.Mutex
	pool   *ipledgerv1.NodePool
	stream ipledgerv1.NodeService_SyncClient
}

func newTestAgent(t *testing.T, conn *grpc.ClientConn, inst ec2sim.InstanceInfo) *testAgent {
	return &testAgent{t: t, inst: inst, cli: ipledgerv1.NewNodeServiceClient(conn)}
}

func (a *testAgent) name() string { return a.inst.PrivateDNSName }

func (a *testAgent) register() {
	a.t.Helper()
	resp, err := a.cli.RegisterNode(a.t.Context(), &ipledgerv1.RegisterNodeRequest{
		NodeName: a.name(), InstanceId: a.inst.ID, InstanceType: a.inst.InstanceType,
		AvailabilityZone: a.inst.AvailabilityZone, SubnetId: a.inst.SubnetID,
		PrimaryEniId: a.inst.PrimaryENI, PrimaryIp: a.inst.PrivateIP,
		Labels: map[string]string{"ipledger.io/test": "ctl"},
	})
	if err != nil {
		a.t.Fatalf("register %s: %v", a.name(), err)
	}
	a.setPool(resp.GetPool())
}

func (a *testAgent) setPool(p *ipledgerv1.NodePool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pool == nil || p.GetGeneration() >= a.pool.GetGeneration() {
		a.pool = p
	}
}

func (a *testAgent) sync() {
	a.t.Helper()
	ctx, cancel := context.WithCancel(a.t.Context())
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
	done := make(chan struct{})
	a.t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for {
			msg, err := stream.Recv()
			if err != nil {
				return
			}
			switch m := msg.GetMsg().(type) {
			case *ipledgerv1.SyncResponse_Pool:
				a.setPool(m.Pool)
			case *ipledgerv1.SyncResponse_Release:
				items := append(append([]string{}, m.Release.GetAddresses()...), m.Release.GetPrefixes()...)
				ack := &ipledgerv1.ReleaseAck{ProposalId: m.Release.GetProposalId(), Confirmed: items}
				a.mu.Lock()
				_ = stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_ReleaseAck{ReleaseAck: ack}})
				a.mu.Unlock()
			}
		}
	}()
}

// report tells the server which pods use which addresses.
func (a *testAgent) report(pods map[string]string) {
	a.t.Helper()
	u := &ipledgerv1.UsageReport{}
	for _, ip := range sortedKeys(pods) {
		u.InUse = append(u.InUse, &ipledgerv1.PodAddress{
			Ip: ip, ContainerId: "container-" + strings.ReplaceAll(ip, ".", "-"), Ifname: "eth0",
			PodNamespace: "default", PodName: pods[ip],
		})
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Usage{Usage: u}}); err != nil {
		a.t.Fatal(err)
	}
}

// addresses lists the pool's active secondary addresses.
func (a *testAgent) addresses() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for _, ni := range a.pool.GetInterfaces() {
		for _, ad := range ni.GetAddresses() {
			if ad.GetState() == ipledgerv1.LeaseState_LEASE_STATE_ACTIVE {
				out = append(out, ad.GetIp())
			}
		}
	}
	sort.Strings(out)
	return out
}

func (a *testAgent) waitAddresses(n int) []string {
	a.t.Helper()
	var got []string
	waitFor(a.t, 15*time.Second, fmt.Sprintf("%d addresses on %s", n, a.name()), func() bool {
		got = a.addresses()
		return len(got) >= n
	})
	return got
}

func runningInstances(sim *ec2sim.Server) []ec2sim.InstanceInfo {
	var out []ec2sim.InstanceInfo
	for _, in := range sim.Sim().Snapshot().Instances {
		if in.State == "running" {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// cluster is a dev server with every simulated instance registered as a node; the first node
// runs two pods.
type cluster struct {
	s      *server.Server
	addr   string
	agents []*testAgent
	pods   map[string]string // ip -> pod name on agents[0]
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	s := startDev(t)
	c := &cluster{s: s, addr: s.GRPCAddr()}
	conn := dial(t, c.addr)
	for _, in := range runningInstances(s.Sim()) {
		a := newTestAgent(t, conn, in)
		a.register()
		a.sync()
		c.agents = append(c.agents, a)
	}
	for _, a := range c.agents {
		a.waitAddresses(1)
		a.report(nil) // agents report usage; only a node that reported is asked to release
	}
	// Two pods on the first node: its pool grows to keep one free.
	first := c.agents[0]
	ips := first.addresses()
	c.pods = map[string]string{ips[0]: "web-0"}
	first.report(c.pods)
	ips = first.waitAddresses(2)
	for _, ip := range ips {
		if _, ok := c.pods[ip]; !ok {
			c.pods[ip] = "web-1"
			break
		}
	}
	first.report(c.pods)
	first.waitAddresses(3)
	return c
}
