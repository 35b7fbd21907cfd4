// Package servertest is test support for packages that drive a real ipledger-server: a --dev
// replica with test-friendly settings (embedded etcd, the in-process simulator without
// throttling, short intervals), a gRPC client that speaks NodeService the way ipledger-agent
// does, polling with a deadline, and the consistency checks tests make against EC2 and etcd.
// It is imported only by tests; it never talks to anything but loopback.
package servertest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/dev"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/store"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// Logger is silent unless IPLEDGER_TEST_LOG is set, then debug logs go to stderr.
func Logger(t testing.TB) *slog.Logger {
	if os.Getenv("IPLEDGER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// WaitFor polls cond until it holds or d passes.
func WaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DevConfig is a --dev replica for tests: plaintext loopback, no EC2 throttling, no release
// delay, and short intervals (instance checks every 200 ms, no drift grace; reconciliation only
// at takeover).
func DevConfig(t testing.TB) config.Config {
	cfg := config.DevConfig(t.TempDir())
	cfg.SessionTTL = config.Duration(2 * time.Second)
	cfg.ReleaseDelay = 0
	cfg.ProposalTimeout = config.Duration(5 * time.Second)
	cfg.InstanceCheckInterval = config.Duration(200 * time.Millisecond)
	cfg.ReconcileInterval = config.Duration(time.Hour)
	cfg.DriftGrace = config.Duration(time.Millisecond)
	cfg.SimThrottle = false
	return cfg
}

// Start starts a replica with cfg and closes it when the test ends.
func Start(t testing.TB, cfg config.Config) *server.Server {
	t.Helper()
	return StartWith(t, cfg, server.Options{})
}

// StartWith starts a replica with cfg and opts (its Logger is the test's) and closes it when
// the test ends.
func StartWith(t testing.TB, cfg config.Config, opts server.Options) *server.Server {
	t.Helper()
	opts.Logger = Logger(t)
	s, err := dev.Start(t.Context(), cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// StartDev starts a DevConfig replica (changed by mod, if given) and waits until it leads.
func StartDev(t testing.TB, mod func(*config.Config)) *server.Server {
	t.Helper()
	cfg := DevConfig(t)
	if mod != nil {
		mod(&cfg)
	}
	s := Start(t, cfg)
	WaitFor(t, 15*time.Second, "leadership", s.IsLeader)
	return s
}

// Backends are one etcd and one EC2 simulator that several replicas share, as the replicas of
// one cluster do.
type Backends struct {
	Etcd *store.Embedded
	Sim  *ec2sim.Server
}

// StartBackends starts embedded etcd in a temporary directory and the EC2 simulator over HTTP
// on loopback without throttling; both are closed when the test ends.
func StartBackends(t testing.TB) Backends {
	t.Helper()
	emb, err := store.StartEmbedded(t.Context(), store.EmbeddedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	simCfg := ec2sim.DefaultConfig()
	simCfg.Throttle = false
	sim, err := ec2sim.Start(simCfg, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return Backends{Etcd: emb, Sim: sim}
}

// Use points a replica's configuration at the shared etcd and simulator.
func (b Backends) Use(cfg *config.Config) {
	cfg.EtcdEndpoints = b.Etcd.Endpoints()
	cfg.EC2Endpoint = b.Sim.Endpoint()
}

// Dial opens a plaintext gRPC connection, closed when the test ends.
func Dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Running lists the simulator's running instances, by id.
func Running(sim *ec2sim.Server) []ec2sim.InstanceInfo {
	var out []ec2sim.InstanceInfo
	for _, in := range sim.Sim().Snapshot().Instances {
		if in.State == "running" {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Instances lists the running instances of a --dev replica's simulator.
func Instances(s *server.Server) []ec2sim.InstanceInfo { return Running(s.Sim()) }

// Agent speaks NodeService to a real server the way ipledger-agent does: it registers, keeps a
// Sync stream, reports usage and answers release proposals (confirming them, or refusing them
// after SetRefuse(true)).
type Agent struct {
	T      testing.TB
	Inst   ec2sim.InstanceInfo
	Client ipledgerv1.NodeServiceClient
	// Labels are sent with the registration.
	Labels map[string]string

	mu        sync.Mutex
	pool      *ipledgerv1.NodePool
	proposals []*ipledgerv1.ReleaseProposal
	stream    ipledgerv1.NodeService_SyncClient
	refuse    bool
}

// NewAgent is an agent for a simulated instance over conn.
func NewAgent(t testing.TB, conn *grpc.ClientConn, inst ec2sim.InstanceInfo) *Agent {
	return &Agent{T: t, Inst: inst, Client: ipledgerv1.NewNodeServiceClient(conn)}
}

// Name is the node name: the instance's private DNS name.
func (a *Agent) Name() string { return a.Inst.PrivateDNSName }

// RegisterRequest is the registration the instance's agent would send.
func (a *Agent) RegisterRequest() *ipledgerv1.RegisterNodeRequest {
	return &ipledgerv1.RegisterNodeRequest{
		NodeName: a.Name(), InstanceId: a.Inst.ID, InstanceType: a.Inst.InstanceType,
		AvailabilityZone: a.Inst.AvailabilityZone, SubnetId: a.Inst.SubnetID,
		PrimaryEniId: a.Inst.PrimaryENI, PrimaryIp: a.Inst.PrivateIP, Labels: a.Labels,
	}
}

// Register registers the node and keeps the returned pool.
func (a *Agent) Register() *ipledgerv1.RegisterNodeResponse {
	a.T.Helper()
	resp, err := a.Client.RegisterNode(a.T.Context(), a.RegisterRequest())
	if err != nil {
		a.T.Fatalf("register %s: %v", a.Name(), err)
	}
	a.setPool(resp.GetPool())
	return resp
}

func (a *Agent) setPool(p *ipledgerv1.NodePool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pool == nil || p.GetGeneration() >= a.pool.GetGeneration() {
		a.pool = p
	}
}

// SetRefuse makes the agent refuse (true) or confirm (false) release proposals.
func (a *Agent) SetRefuse(refuse bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refuse = refuse
}

// Proposals are the release proposals received so far.
func (a *Agent) Proposals() []*ipledgerv1.ReleaseProposal {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*ipledgerv1.ReleaseProposal(nil), a.proposals...)
}

// Sync opens the stream; it ends with the test.
func (a *Agent) Sync() {
	a.T.Helper()
	ctx, cancel := context.WithCancel(a.T.Context())
	stream, err := a.Client.Sync(ctx)
	if err != nil {
		cancel()
		a.T.Fatal(err)
	}
	if err := stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Hello{Hello: &ipledgerv1.SyncHello{NodeName: a.Name(), InstanceId: a.Inst.ID}}}); err != nil {
		cancel()
		a.T.Fatal(err)
	}
	a.mu.Lock()
	a.stream = stream
	a.mu.Unlock()
	done := make(chan struct{})
	a.T.Cleanup(func() { cancel(); <-done })
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
				a.mu.Lock()
				a.proposals = append(a.proposals, m.Release)
				ack := &ipledgerv1.ReleaseAck{ProposalId: m.Release.GetProposalId()}
				if a.refuse {
					ack.Refused = items
				} else {
					ack.Confirmed = items
				}
				_ = stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_ReleaseAck{ReleaseAck: ack}})
				a.mu.Unlock()
			}
		}
	}()
}

// Report sends a usage report: pods in use and pods waiting.
func (a *Agent) Report(inUse []*ipledgerv1.PodAddress, waiting int) {
	a.T.Helper()
	u := &ipledgerv1.UsageReport{InUse: inUse, PodsWaiting: uint32(waiting)}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stream == nil {
		a.T.Fatal("Report before Sync")
	}
	if err := a.stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Usage{Usage: u}}); err != nil {
		a.T.Fatal(err)
	}
}

// ReportIPs reports a pod (container c<i>, eth0) on each address, and pods waiting.
func (a *Agent) ReportIPs(ips []string, waiting int) {
	a.T.Helper()
	var pods []*ipledgerv1.PodAddress
	for i, ip := range ips {
		pods = append(pods, &ipledgerv1.PodAddress{Ip: ip, ContainerId: fmt.Sprintf("c%d", i), Ifname: "eth0"})
	}
	a.Report(pods, waiting)
}

// Pool is a copy of the newest pool the agent received (nil before any).
func (a *Agent) Pool() *ipledgerv1.NodePool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pool == nil {
		return nil
	}
	return proto.Clone(a.pool).(*ipledgerv1.NodePool)
}

// WaitPool waits until the agent's pool satisfies cond and returns it.
func (a *Agent) WaitPool(d time.Duration, what string, cond func(*ipledgerv1.NodePool) bool) *ipledgerv1.NodePool {
	a.T.Helper()
	var p *ipledgerv1.NodePool
	WaitFor(a.T, d, what+" on "+a.Name(), func() bool {
		p = a.Pool()
		return p != nil && cond(p)
	})
	return p
}

// Addresses lists a pool's secondary addresses in a state (all states when state is 0), sorted.
func Addresses(p *ipledgerv1.NodePool, state ipledgerv1.LeaseState) []string {
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

// SimENI returns the simulator's view of an ENI.
func SimENI(t testing.TB, sim *ec2sim.Server, id string) ec2sim.ENIInfo {
	t.Helper()
	e, ok := sim.Sim().Snapshot().ENI(id)
	if !ok {
		t.Fatalf("ENI %s not in the simulator", id)
	}
	return e
}

// CheckNoAddressTwice asserts that no address is on two ENIs in EC2, none is leased twice in
// etcd, and every lease not being released is on EC2 on the leased ENI.
func CheckNoAddressTwice(t testing.TB, s *server.Server) {
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

// CheckBudgetsAddUp asserts the accounting identities of every subnet as AdminService reports
// them: size = reserved + foreign + held + prewarm + free, held = eni primaries + in use + idle.
func CheckBudgetsAddUp(t testing.TB, s *server.Server) {
	t.Helper()
	resp, err := ipledgerv1.NewAdminServiceClient(Dial(t, s.GRPCAddr())).ListSubnets(t.Context(), &ipledgerv1.ListSubnetsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range resp.GetSubnets() {
		if b.Size != b.Reserved+b.Foreign+b.Held+b.PrewarmReserved+b.Free || b.Held != b.EniPrimary+b.InUse+b.Idle {
			t.Fatalf("budget of %s does not add up: %+v", b.SubnetId, b)
		}
	}
}

// NodeCertFiles issues, with the --dev CA, a node certificate for name (what attestation would
// give the node's agent) into a temporary directory, as files a client loads.
func NodeCertFiles(t testing.TB, dev *mtls.DevCerts, name string) mtls.Files {
	t.Helper()
	is, err := mtls.NewIssuer(dev.CA(), dev.CAKey(), nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csrPEM, err := mtls.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := mtls.ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	got, err := is.IssueNode(csr, name, mtls.Instance{}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := mtls.Files{Cert: filepath.Join(dir, "node.crt"), Key: filepath.Join(dir, "node.key"), CA: dev.CA()}
	if err := os.WriteFile(f.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Cert, got.ChainPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}
