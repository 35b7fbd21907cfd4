package server_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ipledger/ipledger/internal/mtls"
	"github.com/ipledger/ipledger/internal/mtls/mtlstest"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/servertest"
)

// dialTLS connects to addr with a client certificate.
func dialTLS(t *testing.T, addr string, f mtls.Files) *grpc.ClientConn {
	t.Helper()
	src, err := mtls.NewSource(f, mtls.SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(mtls.ClientCredentials(src)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// wantDenied checks a PERMISSION_DENIED answer with reason.
func wantDenied(t *testing.T, what string, err error, reason ipledgerv1.Reason) {
	t.Helper()
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("%s: want PermissionDenied, got %v", what, err)
	}
	if r, _ := api.ReasonOf(err); r != reason.String() {
		t.Fatalf("%s: want reason %s, got %q (%v)", what, reason, r, err)
	}
}

// syncHello opens a Sync stream for node and returns its first answer.
func syncHello(ctx context.Context, cli ipledgerv1.NodeServiceClient, node, instance string) (*ipledgerv1.SyncResponse, error) {
	st, err := cli.Sync(ctx)
	if err != nil {
		return nil, err
	}
	if err := st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Hello{Hello: &ipledgerv1.SyncHello{NodeName: node, InstanceId: instance}}}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return st.Recv()
}

// With --dev's certificates, an agent holding node A's certificate can neither read nor
// change node B's lease; node and admin certificates cannot stand in for each other; a
// plaintext client gets nothing.
func TestDevCertificatesConfineEachCallerToItsIdentity(t *testing.T) {
	s := servertest.StartDev(t, func(c *config.Config) { c.Insecure = false })
	dev := s.DevCerts()
	if dev == nil {
		t.Fatal("--dev without --insecure made no certificates")
	}
	insts := servertest.Instances(s)
	a, b := insts[0], insts[1]
	nodeA, nodeB := servertest.NodeCertFiles(t, dev, a.PrivateDNSName), servertest.NodeCertFiles(t, dev, b.PrivateDNSName)
	asA := ipledgerv1.NewNodeServiceClient(dialTLS(t, s.GRPCAddr(), nodeA))
	asB := ipledgerv1.NewNodeServiceClient(dialTLS(t, s.GRPCAddr(), nodeB))
	adminConn := dialTLS(t, s.GRPCAddr(), dev.Admin())

	// B registers itself and gets its warm address.
	agentB := &servertest.Agent{T: t, Inst: b, Client: asB}
	agentB.Register()
	agentB.Sync()
	agentB.WaitPool(10*time.Second, "B's warm address", func(p *ipledgerv1.NodePool) bool {
		return len(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) == 1
	})
	before, ok := s.Ledger().Node(b.PrivateDNSName)
	if !ok {
		t.Fatal("B is not registered")
	}
	revBefore := s.Allocator().Revision()

	// A, with its own certificate, acting for B: refused, whatever the call.
	regB := agentB.RegisterRequest()
	_, err := asA.RegisterNode(t.Context(), regB)
	wantDenied(t, "A registers B", err, ipledgerv1.Reason_WRONG_NODE_IDENTITY)
	_, err = asA.RequestAddresses(t.Context(), &ipledgerv1.RequestAddressesRequest{NodeName: b.PrivateDNSName, Count: 4})
	wantDenied(t, "A asks addresses for B", err, ipledgerv1.Reason_WRONG_NODE_IDENTITY)
	resp, err := syncHello(t.Context(), asA, b.PrivateDNSName, b.ID)
	wantDenied(t, "A syncs as B (would read B's pool and answer its release proposals)", err, ipledgerv1.Reason_WRONG_NODE_IDENTITY)
	if resp != nil {
		t.Fatalf("A got B's data: %v", resp)
	}
	// An admin certificate is not a node's.
	_, err = ipledgerv1.NewNodeServiceClient(adminConn).RegisterNode(t.Context(), regB)
	wantDenied(t, "admin registers B", err, ipledgerv1.Reason_WRONG_NODE_IDENTITY)
	// A node certificate is not an admin's: no listing, no draining.
	_, err = ipledgerv1.NewAdminServiceClient(dialTLS(t, s.GRPCAddr(), nodeA)).ListNodes(t.Context(), &ipledgerv1.ListNodesRequest{})
	wantDenied(t, "node lists nodes", err, ipledgerv1.Reason_ADMIN_REQUIRED)
	_, err = ipledgerv1.NewAdminServiceClient(dialTLS(t, s.GRPCAddr(), nodeA)).DrainNode(t.Context(), &ipledgerv1.DrainNodeRequest{NodeName: b.PrivateDNSName})
	wantDenied(t, "node drains B", err, ipledgerv1.Reason_ADMIN_REQUIRED)
	// The server's own certificate is neither.
	_, err = ipledgerv1.NewAdminServiceClient(dialTLS(t, s.GRPCAddr(), mtls.Files{Cert: dev.Server().Cert, Key: dev.Server().Key, CA: dev.CA()})).ListNodes(t.Context(), &ipledgerv1.ListNodesRequest{})
	if status.Code(err) == codes.OK {
		t.Fatal("the server's certificate was accepted as a client")
	}

	// Nothing changed: B's record and the store's revision are as they were; A is unknown.
	after, _ := s.Ledger().Node(b.PrivateDNSName)
	if !reflect.DeepEqual(before, after) || s.Allocator().Revision() != revBefore {
		t.Fatalf("refused calls changed state: revision %d -> %d", revBefore, s.Allocator().Revision())
	}
	if _, ok := s.Ledger().Node(a.PrivateDNSName); ok {
		t.Fatal("A got registered")
	}

	// The rightful callers get through: A for itself, the admin for AdminService; health is open.
	agentA := &servertest.Agent{T: t, Inst: a, Client: asA}
	agentA.Register()
	nodes, err := ipledgerv1.NewAdminServiceClient(adminConn).ListNodes(t.Context(), &ipledgerv1.ListNodesRequest{})
	if err != nil || len(nodes.GetNodes()) != 2 {
		t.Fatalf("admin lists nodes: %v, %v", nodes, err)
	}
	if _, err := healthpb.NewHealthClient(dialTLS(t, s.GRPCAddr(), nodeA)).Check(t.Context(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health with a node certificate: %v", err)
	}
	// A client without a certificate completes the handshake (attestation needs it) but may
	// call nothing but IdentityService.Attest.
	anon := dialTLS(t, s.GRPCAddr(), mtls.Files{CA: dev.CA()})
	_, err = ipledgerv1.NewNodeServiceClient(anon).RegisterNode(t.Context(), regB)
	wantDenied(t, "anonymous registers B", err, ipledgerv1.Reason_WRONG_NODE_IDENTITY)
	_, err = ipledgerv1.NewAdminServiceClient(anon).ListNodes(t.Context(), &ipledgerv1.ListNodesRequest{})
	wantDenied(t, "anonymous lists nodes", err, ipledgerv1.Reason_ADMIN_REQUIRED)
	_, err = ipledgerv1.NewIdentityServiceClient(anon).Renew(t.Context(), &ipledgerv1.RenewRequest{})
	wantDenied(t, "anonymous renews", err, ipledgerv1.Reason_WRONG_NODE_IDENTITY)
	// A plaintext client against the mTLS server gets nothing.
	plain := servertest.Dial(t, s.GRPCAddr())
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := ipledgerv1.NewAdminServiceClient(plain).ListNodes(ctx, &ipledgerv1.ListNodesRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext client: want Unavailable, got %v", err)
	}
	if got := counterValue(t, s, "ipledger_grpc_tls_handshake_failures_total"); got < 1 {
		t.Fatalf("handshake failures counted: %v", got)
	}
	if got := counterValue(t, s, "ipledger_grpc_requests_total", "service", "ipledger.v1.NodeService", "method", "RegisterNode", "code", "PermissionDenied"); got < 2 {
		t.Fatalf("refused RegisterNode calls counted: %v", got)
	}
}

// counterValue reads a counter (summed over series matching the label pairs) from the registry.
func counterValue(t *testing.T, s *server.Server, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := s.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// With certificates from files (a cluster CA, as cert-manager issues them): certificates of an
// unknown CA, expired ones and missing ones are refused; replacing the server's files on disk
// changes the certificate new connections get, without a restart.
func TestTLSFilesRefuseBadCertificatesAndRotateWithoutRestart(t *testing.T) {
	ca := mtlstest.NewCA(t, "cluster CA")
	rogue := mtlstest.NewCA(t, "rogue CA")
	serverFiles := ca.Issue(t, "server", mtlstest.Leaf{Identity: mtls.ServerIdentity, Server: true, CommonName: "first"})
	s := servertest.StartDev(t, func(c *config.Config) {
		c.Insecure = false
		c.TLSCertFile, c.TLSKeyFile, c.TLSClientCAFile = serverFiles.Cert, serverFiles.Key, ca.CAFile
	})
	if s.DevCerts() != nil {
		t.Fatal("TLS files given, but --dev certificates were made")
	}
	admin := ca.Issue(t, "admin", mtlstest.Leaf{Identity: mtls.AdminIdentity("alice")})
	status1 := func(f mtls.Files) (string, error) {
		conn := dialTLS(t, s.GRPCAddr(), f)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		var p peer.Peer
		_, err := ipledgerv1.NewAdminServiceClient(conn).GetClusterStatus(ctx, &ipledgerv1.GetClusterStatusRequest{}, grpc.Peer(&p))
		if err != nil {
			return "", err
		}
		return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].Subject.CommonName, nil
	}
	if cn, err := status1(admin); err != nil || cn != "first" {
		t.Fatalf("admin: %q, %v", cn, err)
	}
	now := time.Now()
	withCA := func(f mtls.Files) mtls.Files { f.CA = ca.CAFile; return f }
	for _, tc := range []struct {
		name string
		f    mtls.Files
		want string
	}{
		{"unknown CA", withCA(rogue.Issue(t, "admin", mtlstest.Leaf{Identity: mtls.AdminIdentity("alice")})), ""},
		{"expired", ca.Issue(t, "admin", mtlstest.Leaf{Identity: mtls.AdminIdentity("alice"), NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Minute)}), "expired at"},
		{"no certificate", mtls.Files{CA: ca.CAFile}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := counterValue(t, s, "ipledger_grpc_tls_handshake_failures_total")
			_, err := status1(tc.f)
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want Unavailable containing %q, got %v", tc.want, err)
			}
			servertest.WaitFor(t, 5*time.Second, "the server to count the refused handshake", func() bool {
				return counterValue(t, s, "ipledger_grpc_tls_handshake_failures_total") > before
			})
		})
	}
	// The same certificate, seen by the server with its clock: an expired certificate a client
	// sends anyway (its own check skipped) is refused by the server too.
	expired := ca.Issue(t, "admin", mtlstest.Leaf{Identity: mtls.AdminIdentity("alice"), NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Minute)})
	src, err := mtls.NewSource(expired, mtls.SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	raw := mtls.ClientConfig(src, mtls.ServerIdentity)
	raw.GetClientCertificate = nil
	raw.Certificates = []tls.Certificate{*src.Certificate()}
	conn, err := grpc.NewClient(s.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(raw)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	before := counterValue(t, s, "ipledger_grpc_tls_handshake_failures_total")
	if _, err := ipledgerv1.NewAdminServiceClient(conn).ListNodes(t.Context(), &ipledgerv1.ListNodesRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("expired certificate sent anyway: %v", err)
	}
	servertest.WaitFor(t, 5*time.Second, "the server to refuse the expired certificate", func() bool {
		return counterValue(t, s, "ipledger_grpc_tls_handshake_failures_total") > before
	})

	// Rotation: cert-manager writes new files; new connections get the new certificate.
	mtlstest.CopyFiles(t, ca.Issue(t, "server2", mtlstest.Leaf{Identity: mtls.ServerIdentity, Server: true, CommonName: "second"}),
		mtls.Files{Cert: serverFiles.Cert, Key: serverFiles.Key})
	servertest.WaitFor(t, 10*time.Second, "the rotated server certificate", func() bool {
		cn, err := status1(admin)
		return err == nil && cn == "second"
	})
	if s.TLS().Reloads() != 1 {
		t.Fatalf("%d reloads", s.TLS().Reloads())
	}
}

// One node flooding the server gets RESOURCE_EXHAUSTED / RATE_LIMITED on its unary calls; on
// its Sync stream, messages over the limit are dropped, a steady excess keeps the stream and
// only a flood of over ~1,000 messages a second ends it; meanwhile another node's calls are
// served promptly.
func TestPerNodeRateLimitKeepsAFloodingAgentFromStarvingOthers(t *testing.T) {
	const perSecond, burst = 10, 5
	s := servertest.StartDev(t, func(c *config.Config) { c.NodeRateLimit, c.NodeRateBurst = perSecond, burst })
	conn := servertest.Dial(t, s.GRPCAddr())
	insts := servertest.Instances(s)
	flood := servertest.NewAgent(t, conn, insts[0])
	calm := servertest.NewAgent(t, conn, insts[1])
	flood.Register()

	// 200 concurrent RequestAddresses from one node: at most the burst plus the refill pass.
	const calls = 200
	var limited, other atomic.Int32
	var wg sync.WaitGroup
	start := time.Now()
	for range calls {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
			defer cancel()
			_, err := flood.Client.RequestAddresses(ctx, &ipledgerv1.RequestAddressesRequest{NodeName: flood.Name(), Count: 1})
			if status.Code(err) == codes.ResourceExhausted {
				if r, _ := api.ReasonOf(err); r == ipledgerv1.Reason_RATE_LIMITED.String() {
					limited.Add(1)
					return
				}
			}
			other.Add(1)
		})
	}
	// Meanwhile the other node registers and syncs as if nothing happened.
	t0 := time.Now()
	calm.Register()
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("the calm node waited %s to register", d)
	}
	wg.Wait()
	maxPassed := int32(burst + perSecond*time.Since(start).Seconds() + 1)
	if limited.Load() < calls-maxPassed || other.Load() > maxPassed {
		t.Fatalf("%d of %d calls rate-limited, %d passed (at most %d should)", limited.Load(), calls, other.Load(), maxPassed)
	}
	if got := counterValue(t, s, "ipledger_grpc_rate_limited_total", "method", "RequestAddresses"); got != float64(limited.Load()) {
		t.Fatalf("metric counts %v refusals, clients saw %d", got, limited.Load())
	}

	// Sync: the unary flood did not spend the stream's bucket. Reports faster than the limit (in
	// groups of 5 every 300 ms against 10/s: 3 tokens come back between groups) lose some
	// messages but keep the stream.
	st, err := flood.Client.Sync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Hello{Hello: &ipledgerv1.SyncHello{NodeName: flood.Name(), InstanceId: flood.Inst.ID}}}); err != nil {
		t.Fatal(err)
	}
	streamErr := make(chan error, 1)
	go func() {
		for {
			if _, err := st.Recv(); err != nil {
				streamErr <- err
				return
			}
		}
	}()
	report := func(free int) error {
		return st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Usage{Usage: &ipledgerv1.UsageReport{Free: uint32(free)}}})
	}
	const groups = 8
	for g := range groups {
		for i := range 5 {
			if err := report(5*g + i); err != nil {
				t.Fatalf("report %d: %v", 5*g+i, err)
			}
		}
		time.Sleep(300 * time.Millisecond) // pacing the sender, not synchronisation
	}
	servertest.WaitFor(t, 5*time.Second, "the server to hold a report of the last group", func() bool {
		rt, ok := s.Allocator().Runtime(flood.Name())
		return ok && rt.Usage != nil && rt.Usage.Free >= 5*(groups-1)
	})
	select {
	case err := <-streamErr:
		t.Fatalf("a stream slightly over its limit was ended: %v", err)
	default:
	}
	if got := counterValue(t, s, "ipledger_grpc_rate_limited_total", "method", "Sync"); got < 1 {
		t.Fatal("no Sync message was dropped over the limit")
	}

	// A steady excess below the flood rate (about 150 messages a second against a limit of
	// 10) is dropped, never ended.
	tick := time.NewTicker(20 * time.Millisecond)
	for i := range 100 {
		<-tick.C // pacing the sender, not synchronisation
		for j := range 3 {
			if err := report(500 + 3*i + j); err != nil {
				t.Fatalf("steady excess, report %d: %v", 3*i+j, err)
			}
		}
	}
	tick.Stop()
	select {
	case err := <-streamErr:
		t.Fatalf("a stream with a steady excess below the flood rate was ended: %v", err)
	default:
	}

	// A flood (drops faster than ~1,000 a second) ends the stream with RATE_LIMITED.
	go func() {
		for i := 0; i < 50000; i++ {
			if report(1000+i) != nil {
				return
			}
		}
	}()
	var err2 error
	select {
	case err2 = <-streamErr:
	case <-time.After(10 * time.Second):
		t.Fatal("the flooding stream was not ended")
	}
	if status.Code(err2) != codes.ResourceExhausted {
		t.Fatalf("flooding stream ended with %v", err2)
	}
	if r, _ := api.ReasonOf(err2); r != ipledgerv1.Reason_RATE_LIMITED.String() {
		t.Fatalf("flooding stream: reason %q", r)
	}
	// The calm node's stream works, promptly.
	t0 = time.Now()
	calm.Sync()
	calm.WaitPool(5*time.Second, "the calm node's warm address", func(p *ipledgerv1.NodePool) bool {
		return len(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) >= 1
	})
	if d := time.Since(t0); d > 3*time.Second {
		t.Fatalf("the calm node waited %s", d)
	}
}

// Sync streams are bounded per caller, counted from the moment they open (before any hello):
// one node certificate may hold a few, on any number of connections; the next is refused at
// once with RATE_LIMITED, another node is not affected, and closing one makes room.
func TestSyncStreamsAreBoundedPerIdentity(t *testing.T) {
	s := servertest.StartDev(t, func(c *config.Config) { c.Insecure = false })
	dev := s.DevCerts()
	insts := servertest.Instances(s)
	asA := ipledgerv1.NewNodeServiceClient(dialTLS(t, s.GRPCAddr(), dev.Node(insts[0].PrivateDNSName)))
	// A second connection with the same certificate counts against the same identity.
	asAToo := ipledgerv1.NewNodeServiceClient(dialTLS(t, s.GRPCAddr(), dev.Node(insts[0].PrivateDNSName)))
	asB := ipledgerv1.NewNodeServiceClient(dialTLS(t, s.GRPCAddr(), dev.Node(insts[1].PrivateDNSName)))
	a := &servertest.Agent{T: t, Inst: insts[0], Client: asA}
	a.Register()

	// open starts a stream and, with hello, waits for its first pool: the server counts it.
	open := func(c ipledgerv1.NodeServiceClient, hello bool) (ipledgerv1.NodeService_SyncClient, context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(t.Context())
		st, err := c.Sync(ctx)
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		if hello {
			if err := st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Hello{Hello: &ipledgerv1.SyncHello{NodeName: a.Name(), InstanceId: a.Inst.ID}}}); err != nil {
				cancel()
				return nil, nil, err
			}
		}
		if _, err := st.Recv(); err != nil {
			cancel()
			return nil, nil, err
		}
		return st, cancel, nil
	}
	var cancels []context.CancelFunc
	for i := range api.DefaultMaxStreamsPerCaller {
		c := asA
		if i%2 == 1 {
			c = asAToo
		}
		_, cancel, err := open(c, true)
		if err != nil {
			t.Fatalf("stream %d of the allowed %d: %v", i+1, api.DefaultMaxStreamsPerCaller, err)
		}
		cancels = append(cancels, cancel)
	}
	// One more, without a hello, is refused at once (it never gets to wait for one).
	_, _, err := open(asA, false)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("stream over the per-identity limit: %v, want RESOURCE_EXHAUSTED", err)
	}
	if r, md := api.ReasonOf(err); r != ipledgerv1.Reason_RATE_LIMITED.String() || md["caller"] != "ipledger://node/"+a.Name() {
		t.Fatalf("stream over the limit: reason %q metadata %v", r, md)
	}
	if got := counterValue(t, s, "ipledger_grpc_streams_refused_total", "why", "too_many_streams"); got != 1 {
		t.Fatalf("ipledger_grpc_streams_refused_total{why=too_many_streams} = %v, want 1", got)
	}
	// Another node is not affected.
	b := &servertest.Agent{T: t, Inst: insts[1], Client: asB}
	b.Register()
	b.Sync()
	b.WaitPool(10*time.Second, "B's warm address", func(p *ipledgerv1.NodePool) bool {
		return len(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) >= 1
	})
	// Closing one of A's streams makes room for another.
	cancels[0]()
	servertest.WaitFor(t, 5*time.Second, "room for another of A's streams", func() bool {
		_, cancel, err := open(asA, true)
		if err != nil {
			return false
		}
		cancels = append(cancels, cancel)
		return true
	})
	for _, c := range cancels {
		c()
	}
}

// Repeated fields are bounded: a usage report with too many pods ends the stream with
// INVALID_ARGUMENT and is not applied.
func TestOversizedUsageReportIsRefused(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	a := servertest.NewAgent(t, conn, servertest.Instances(s)[0])
	a.Register()
	st, err := a.Client.Sync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Hello{Hello: &ipledgerv1.SyncHello{NodeName: a.Name(), InstanceId: a.Inst.ID}}}); err != nil {
		t.Fatal(err)
	}
	u := &ipledgerv1.UsageReport{}
	for i := range api.MaxUsagePods + 1 {
		u.InUse = append(u.InUse, &ipledgerv1.PodAddress{Ip: fmt.Sprintf("10.%d.%d.%d", i>>16, (i>>8)&255, i&255), ContainerId: "c", Ifname: "eth0"})
	}
	if err := st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Usage{Usage: u}}); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	for err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "usage.in_use") {
		t.Fatalf("oversized report: %v", err)
	}
	if rt, ok := s.Allocator().Runtime(a.Name()); ok && rt.Usage != nil {
		t.Fatalf("the oversized report was applied: %d pods", len(rt.Usage.InUse))
	}
}

// Pod names and namespaces with control characters (a forged table row, terminal escapes) are
// refused in usage reports, as the agent refuses them at ADD: the stream ends with
// INVALID_ARGUMENT naming the field and nothing is applied.
func TestUsageReportWithControlCharactersIsRefused(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	for _, tc := range []struct {
		field string
		pod   *ipledgerv1.PodAddress
	}{
		{"pod_name", &ipledgerv1.PodAddress{Ip: "192.168.32.9", ContainerId: "c1", Ifname: "eth0", PodNamespace: "default", PodName: "web\x1b[2J"}},
		{"pod_namespace", &ipledgerv1.PodAddress{Ip: "192.168.32.9", ContainerId: "c1", Ifname: "eth0", PodNamespace: "ns\r\nforged-row", PodName: "web"}},
		{"pod_uid", &ipledgerv1.PodAddress{Ip: "192.168.32.9", ContainerId: "c1", Ifname: "eth0", PodUid: "u\a"}},
		{"container_id", &ipledgerv1.PodAddress{Ip: "192.168.32.9", ContainerId: "c\x1b", Ifname: "eth0"}},
	} {
		t.Run(tc.field, func(t *testing.T) {
			a := servertest.NewAgent(t, conn, servertest.Instances(s)[0])
			a.Register()
			st, err := a.Client.Sync(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Hello{Hello: &ipledgerv1.SyncHello{NodeName: a.Name(), InstanceId: a.Inst.ID}}}); err != nil {
				t.Fatal(err)
			}
			before, _ := s.Allocator().Runtime(a.Name())
			u := &ipledgerv1.UsageReport{InUse: []*ipledgerv1.PodAddress{tc.pod}}
			if err := st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Usage{Usage: u}}); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			for err == nil {
				_, err = st.Recv()
			}
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "usage.in_use[0]."+tc.field) || !strings.Contains(err.Error(), "control characters") {
				t.Fatalf("report with a control character in %s: %v", tc.field, err)
			}
			if after, _ := s.Allocator().Runtime(a.Name()); after.Usage != before.Usage {
				t.Fatal("the refused report was applied")
			}
		})
	}
}

// A usage report that claims another node's addresses: those are left out of the node's usage,
// counted per node, and the agent is told which and why; ipledgerctl check stays clean.
func TestUsageReportClaimingAnotherNodesAddressIsRefused(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	insts := servertest.Instances(s)
	owner := servertest.NewAgent(t, conn, insts[0])
	owner.Register()
	owner.Sync()
	pool := owner.WaitPool(10*time.Second, "the owner's warm address", func(p *ipledgerv1.NodePool) bool {
		return len(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) >= 1
	})
	stolen := servertest.Addresses(pool, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)[0]

	thief := servertest.NewAgent(t, conn, insts[1])
	thief.Register()
	st, err := thief.Client.Sync(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Hello{Hello: &ipledgerv1.SyncHello{NodeName: thief.Name(), InstanceId: thief.Inst.ID}}}); err != nil {
		t.Fatal(err)
	}
	u := &ipledgerv1.UsageReport{InUse: []*ipledgerv1.PodAddress{{Ip: stolen, ContainerId: "c1", Ifname: "eth0"}}}
	if err := st.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Usage{Usage: u}}); err != nil {
		t.Fatal(err)
	}
	var refused *ipledgerv1.UsageRefused
	for refused == nil {
		resp, err := st.Recv()
		if err != nil {
			t.Fatalf("the stream ended before a refusal: %v", err)
		}
		refused = resp.GetUsageRefused()
	}
	if len(refused.GetAddresses()) != 1 || refused.GetAddresses()[0] != stolen || !strings.Contains(refused.GetReason(), "other nodes") {
		t.Fatalf("refusal %v, want %s named as another node's", refused, stolen)
	}
	if got := counterValue(t, s, "ipledger_usage_items_refused_total", "node", thief.Name()); got != 1 {
		t.Fatalf("ipledger_usage_items_refused_total{node=%s} = %v, want 1", thief.Name(), got)
	}
	if rt, ok := s.Allocator().Runtime(thief.Name()); ok && rt.Usage != nil && len(rt.Usage.InUse) != 0 {
		t.Fatalf("the refused address was taken as the thief's usage: %+v", rt.Usage.InUse)
	}
	rep, err := ipledgerv1.NewAdminServiceClient(conn).Check(t.Context(), &ipledgerv1.CheckRequest{})
	if err != nil || !rep.GetOk() {
		t.Fatalf("check after the refused report: %v, %v", rep.GetFindings(), err)
	}
}

// A node cannot choose its own policy: selectors match the instance's EC2 tags, which the
// server reads itself, not the labels the agent reports.
func TestPolicyMatchesVerifiedTagsNotReportedLabels(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	admin := ipledgerv1.NewAdminServiceClient(conn)
	gold := &ipledgerv1.NodePolicy{Name: "gold", Order: 1, Selector: &ipledgerv1.NodeSelector{Labels: map[string]string{"tier": "gold"}},
		WarmIpTarget: proto.Uint32(8)}
	if _, err := admin.SetPolicy(t.Context(), &ipledgerv1.SetPolicyRequest{Policy: gold}); err != nil {
		t.Fatal(err)
	}
	insts := servertest.Instances(s)
	liar := servertest.NewAgent(t, conn, insts[0])
	req := liar.RegisterRequest()
	req.Labels = map[string]string{"tier": "gold"}
	resp, err := liar.Client.RegisterNode(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetPolicy().GetName(); got == "gold" {
		t.Fatalf("a node that only says tier=gold got the gold policy")
	}
	if err := s.Sim().Sim().TagInstance(t.Context(), insts[1].ID, map[string]string{"tier": "gold"}); err != nil {
		t.Fatal(err)
	}
	tagged := servertest.NewAgent(t, conn, insts[1])
	if got := tagged.Register().GetPolicy().GetName(); got != "gold" {
		t.Fatalf("an instance tagged tier=gold got policy %q, want gold", got)
	}
}
