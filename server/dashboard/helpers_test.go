package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/dashboard"
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

// testConfig is a --dev configuration with short intervals and no simulated throttling.
func testConfig(t *testing.T) config.Config {
	cfg := config.DevConfig(t.TempDir())
	cfg.SessionTTL = config.Duration(2 * time.Second)
	cfg.ReleaseDelay = 0
	cfg.ProposalTimeout = config.Duration(5 * time.Second)
	cfg.ReconcileInterval = config.Duration(time.Hour)
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

// startDev starts a complete --dev replica and waits until it leads.
func startDev(t *testing.T) *server.Server {
	t.Helper()
	s := startServer(t, testConfig(t))
	waitFor(t, 15*time.Second, "leadership", s.IsLeader)
	return s
}

// serveDashboard runs a dashboard of its own over the replica's AdminServer (sampling every
// sampleEvery) on a loopback listener. It returns the base URL and the paths a browser
// (a Chrome user agent) requested of it.
func serveDashboard(t *testing.T, s *server.Server, sampleEvery time.Duration) (string, *dashboard.Dashboard, func() []string) {
	t.Helper()
	d := dashboard.New(api.NewAdminServer(s), dashboard.Options{SampleEvery: sampleEvery, History: time.Hour, Logger: testLogger()})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	var mu sync.Mutex
	var paths []string
	h := d.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.UserAgent(), "Chrome") {
			mu.Lock()
			paths = append(paths, r.URL.Path)
			mu.Unlock()
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, d, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), paths...)
	}
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

func instances(s *server.Server) []ec2sim.InstanceInfo { return running(s.Sim()) }

// startSim starts an EC2 simulator of the default scenario without throttling.
func startSim(t *testing.T) *ec2sim.Server {
	t.Helper()
	sim, err := ec2sim.Start(ec2sim.Config{Scenario: ec2sim.DefaultScenario(), Logger: testLogger()}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

// running lists the simulator's running instances by id.
func running(sim *ec2sim.Server) []ec2sim.InstanceInfo {
	var out []ec2sim.InstanceInfo
	for _, in := range sim.Sim().Snapshot().Instances {
		if in.State == "running" {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// agent speaks NodeService the way ipledger-agent does: registers, keeps a sync stream open,
// confirms every release proposal and reports usage when told.
type agent struct {
	t    *testing.T
	inst ec2sim.InstanceInfo

	mu     sync.Mutex
	pool   *ipledgerv1.NodePool
	stream ipledgerv1.NodeService_SyncClient
}

func startAgent(t *testing.T, conn *grpc.ClientConn, inst ec2sim.InstanceInfo) *agent {
	t.Helper()
	a := &agent{t: t, inst: inst}
	cli := ipledgerv1.NewNodeServiceClient(conn)
	resp, err := cli.RegisterNode(t.Context(), &ipledgerv1.RegisterNodeRequest{
		NodeName: inst.PrivateDNSName, InstanceId: inst.ID, InstanceType: inst.InstanceType,
		AvailabilityZone: inst.AvailabilityZone, SubnetId: inst.SubnetID,
		PrimaryEniId: inst.PrimaryENI, PrimaryIp: inst.PrivateIP,
	})
	if err != nil {
		t.Fatalf("register %s: %v", inst.PrivateDNSName, err)
	}
	a.setPool(resp.GetPool())
	ctx, cancel := context.WithCancel(t.Context())
	stream, err := cli.Sync(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Hello{Hello: &ipledgerv1.SyncHello{NodeName: inst.PrivateDNSName, InstanceId: inst.ID}}}); err != nil {
		cancel()
		t.Fatal(err)
	}
	a.stream = stream
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
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
				_ = stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_ReleaseAck{ReleaseAck: &ipledgerv1.ReleaseAck{ProposalId: m.Release.GetProposalId(), Confirmed: items}}})
				a.mu.Unlock()
			}
		}
	}()
	return a
}

func (a *agent) name() string { return a.inst.PrivateDNSName }

func (a *agent) setPool(p *ipledgerv1.NodePool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pool == nil || p.GetGeneration() >= a.pool.GetGeneration() {
		a.pool = p
	}
}

// active returns the pool's ACTIVE secondary addresses, sorted.
func (a *agent) active() []string {
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

func (a *agent) report(inUse []string, waiting int) {
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

// runPods makes n pods use addresses on the agent's node (it is told only the count): when the
// pool is short they wait first and take addresses as it grows. Fewer pods than before free
// addresses without a moment where none is in use.
func (a *agent) runPods(n int) {
	a.t.Helper()
	if len(a.active()) < n {
		a.report(nil, n)
		waitFor(a.t, 15*time.Second, fmt.Sprintf("%d addresses on %s", n, a.name()), func() bool { return len(a.active()) >= n })
	}
	a.report(a.active()[:n], 0)
}

// getDocument fetches and decodes the JSON document twice: as the typed Document and as plain
// maps (to check the field names themselves).
func getDocument(t *testing.T, url string) (*dashboard.Document, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %d %s: %s", url, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var doc dashboard.Document
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	return &doc, raw
}

func get(t *testing.T, url string) (int, http.Header, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}
