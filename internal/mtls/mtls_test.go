package mtls_test

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/internal/mtls"
	"github.com/ipledger/ipledger/internal/mtls/mtlstest"
)

func TestParseIdentity(t *testing.T) {
	for _, tc := range []struct {
		uri  string
		want mtls.Identity
		err  string
	}{
		{"ipledger://node/ip-192-168-1-5.eu-west-1.compute.internal", mtls.NodeIdentity("ip-192-168-1-5.eu-west-1.compute.internal"), ""},
		{"ipledger://admin/alice", mtls.AdminIdentity("alice"), ""},
		{"ipledger://server", mtls.ServerIdentity, ""},
		{"ipledger://server/", mtls.Identity{}, "canonical"},
		{"ipledger://node/%69p-192-168-1-5", mtls.Identity{}, "canonical"},
		{"ipledger://admin/%61lice", mtls.Identity{}, "canonical"},
		{"ipledger://server/x", mtls.Identity{}, "no name"},
		{"ipledger://node/", mtls.Identity{}, "no name"},
		{"ipledger://node", mtls.Identity{}, "no name"},
		{"ipledger://node/Upper", mtls.Identity{}, "DNS-1123"},
		{"ipledger://node/a/b", mtls.Identity{}, "DNS-1123"},
		{"ipledger://node/a%2Fb", mtls.Identity{}, "DNS-1123"},
		{"ipledger://node/a?x=1", mtls.Identity{}, "parts"},
		{"ipledger://user@node/a", mtls.Identity{}, "parts"},
		{"ipledger://node:80/a", mtls.Identity{}, "parts"},
		{"ipledger://root/a", mtls.Identity{}, "unknown kind"},
		{"spiffe://cluster/ns/x", mtls.Identity{}, "not an ipledger"},
	} {
		t.Run(tc.uri, func(t *testing.T) {
			u, err := url.Parse(tc.uri)
			if err != nil {
				t.Fatal(err)
			}
			got, err := mtls.ParseIdentity(u)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, mtls.ErrBadIdentity) {
					t.Fatalf("got %v, %v; want an ErrBadIdentity containing %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
			if back := got.String(); strings.TrimSuffix(tc.uri, "/") != back {
				t.Fatalf("round trip: %s -> %s", tc.uri, back)
			}
		})
	}
}

func TestIdentityOfCertificate(t *testing.T) {
	ca := mtlstest.NewCA(t, "ca")
	for _, tc := range []struct {
		name string
		leaf mtlstest.Leaf
		want mtls.Identity
		err  error
	}{
		{"node", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1")}, mtls.NodeIdentity("n1"), nil},
		{"node with a SPIFFE id too", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1"), ExtraURIs: []string{"spiffe://td/ns/kube-system/sa/agent"}}, mtls.NodeIdentity("n1"), nil},
		{"none", mtlstest.Leaf{}, mtls.Identity{}, mtls.ErrNoIdentity},
		{"two", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1"), ExtraURIs: []string{"ipledger://admin/root"}}, mtls.Identity{}, mtls.ErrBadIdentity},
		{"malformed", mtlstest.Leaf{ExtraURIs: []string{"ipledger://node/NOPE"}}, mtls.Identity{}, mtls.ErrBadIdentity},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := ca.Issue(t, "leaf", tc.leaf)
			src, err := mtls.NewSource(f, mtls.SourceOptions{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := mtls.IdentityOf(src.Leaf())
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("got %v, %v; want %v, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

func TestNewSourceNamesTheBadFile(t *testing.T) {
	ca := mtlstest.NewCA(t, "ca")
	good := ca.Issue(t, "n", mtlstest.Leaf{Identity: mtls.NodeIdentity("n")})
	other := ca.Issue(t, "o", mtlstest.Leaf{Identity: mtls.NodeIdentity("o")})
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		files mtls.Files
		want  string
	}{
		{"cert without key", mtls.Files{Cert: good.Cert, CA: good.CA}, "go together"},
		{"no CA", mtls.Files{Cert: good.Cert, Key: good.Key}, "CA file"},
		{"missing cert", mtls.Files{Cert: "/nonexistent/x.crt", Key: good.Key, CA: good.CA}, "/nonexistent/x.crt"},
		{"key of another cert", mtls.Files{Cert: good.Cert, Key: other.Key, CA: good.CA}, "private key does not match"},
		{"garbage CA", mtls.Files{Cert: good.Cert, Key: good.Key, CA: garbage}, garbage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := mtls.NewSource(tc.files, mtls.SourceOptions{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestSourceReloadsChangedFilesAndKeepsTheOldOnBadOnes(t *testing.T) {
	ca := mtlstest.NewCA(t, "ca")
	f := ca.Issue(t, "n", mtlstest.Leaf{Identity: mtls.NodeIdentity("first")})
	clock := &fakeClock{t: time.Now()}
	src, err := mtls.NewSource(f, mtls.SourceOptions{Interval: time.Second, Now: clock.now})
	if err != nil {
		t.Fatal(err)
	}
	idOf := func() mtls.Identity {
		id, err := mtls.IdentityOf(src.Leaf())
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	if got := idOf(); got != mtls.NodeIdentity("first") {
		t.Fatalf("got %v", got)
	}
	// A new certificate on disk is not looked at before the interval passes.
	mtlstest.CopyFiles(t, ca.Issue(t, "n2", mtlstest.Leaf{Identity: mtls.NodeIdentity("second")}), f)
	if got := idOf(); got != mtls.NodeIdentity("first") {
		t.Fatalf("reloaded before the interval: %v", got)
	}
	clock.t = clock.t.Add(time.Second)
	if got := idOf(); got != mtls.NodeIdentity("second") || src.Reloads() != 1 {
		t.Fatalf("after the interval: %v, %d reloads", got, src.Reloads())
	}
	// A broken file keeps the previous material and reports the error; a fixed one loads.
	mtlstest.WriteFile(t, f.Key, []byte("half a key"))
	clock.t = clock.t.Add(time.Second)
	if got := idOf(); got != mtls.NodeIdentity("second") || src.LastError() == nil {
		t.Fatalf("broken key: %v, last error %v", got, src.LastError())
	}
	mtlstest.CopyFiles(t, ca.Issue(t, "n3", mtlstest.Leaf{Identity: mtls.NodeIdentity("third")}), f)
	clock.t = clock.t.Add(time.Second)
	if got := idOf(); got != mtls.NodeIdentity("third") || src.LastError() != nil {
		t.Fatalf("fixed: %v, last error %v", got, src.LastError())
	}
}

// healthServer serves the gRPC health service with creds and reports the peer identity of
// the last call it saw.
func healthServer(t *testing.T, creds credentials.TransportCredentials) (addr string, last chan mtls.Identity) {
	t.Helper()
	last = make(chan mtls.Identity, 16)
	srv := grpc.NewServer(grpc.Creds(creds), grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if id, err := mtls.PeerIdentity(ctx); err == nil {
			last <- id
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), last
}

func check(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	var p peer.Peer
	_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p))
	return err
}

func clientCreds(t *testing.T, f mtls.Files) credentials.TransportCredentials {
	t.Helper()
	src, err := mtls.NewSource(f, mtls.SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return mtls.ClientCredentials(src)
}

func TestMutualTLSHandshakes(t *testing.T) {
	ca := mtlstest.NewCA(t, "cluster CA")
	rogue := mtlstest.NewCA(t, "rogue CA")
	serverFiles := ca.Issue(t, "server", mtlstest.Leaf{Identity: mtls.ServerIdentity, Server: true})
	src, err := mtls.NewSource(serverFiles, mtls.SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var failures []error
	failed := make(chan error, 64)
	creds, err := mtls.ServerCredentials(src, nil, func(err error) { failed <- err })
	if err != nil {
		t.Fatal(err)
	}
	addr, last := healthServer(t, creds)
	now := time.Now()

	// A node certificate of the cluster CA gets through, and the server sees its identity.
	node := ca.Issue(t, "node", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1")})
	if err := check(t, addr, clientCreds(t, node)); err != nil {
		t.Fatalf("good client: %v", err)
	}
	if id := <-last; id != mtls.NodeIdentity("n1") {
		t.Fatalf("server saw %v", id)
	}

	// The client says what is wrong with its own certificate before it sends it.
	for _, tc := range []struct {
		name string
		leaf mtlstest.Leaf
		want string
	}{
		{"expired", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1"), NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}, "expired at"},
		{"not yet valid", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1"), NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour)}, "not valid before"},
		{"server certificate used as client", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1"), Server: true}, "does not allow client authentication"},
	} {
		t.Run("client side "+tc.name, func(t *testing.T) {
			err := check(t, addr, clientCreds(t, ca.Issue(t, "n", tc.leaf)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}

	// The server refuses what the client does not catch. With TLS 1.3 the client sees the
	// server's alert on its first read (or a broken pipe); the server logs and counts why.
	withCA := func(f mtls.Files) mtls.Files { f.CA = ca.CAFile; return f }
	for _, tc := range []struct {
		name   string
		creds  credentials.TransportCredentials
		server string
	}{
		{"unknown CA", clientCreds(t, withCA(rogue.Issue(t, "n", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1")}))), "unknown authority"},
		{"no client certificate", clientCreds(t, mtls.Files{CA: ca.CAFile}), "didn't provide a certificate"},
		{"plaintext", insecure.NewCredentials(), "first record does not look like a TLS handshake"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := check(t, addr, tc.creds)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("got %v, want Unavailable", err)
			}
			// Earlier cases' aborted handshakes (EOF) may still be queued: look for this one.
			timeout := time.After(5 * time.Second)
			for {
				select {
				case e := <-failed:
					failures = append(failures, e)
					if strings.Contains(e.Error(), tc.server) {
						return
					}
				case <-timeout:
					t.Fatalf("the server observed no failed handshake with %q; saw %v", tc.server, failures)
				}
			}
		})
	}
	for _, e := range failures {
		if e == nil {
			t.Fatal("nil handshake failure observed")
		}
	}
}

func TestClientRefusesAServerWithoutTheServerIdentity(t *testing.T) {
	ca := mtlstest.NewCA(t, "cluster CA")
	rogue := mtlstest.NewCA(t, "rogue CA")
	node := ca.Issue(t, "node", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1")})
	for _, tc := range []struct {
		name   string
		server mtls.Files
		want   string
	}{
		// A node's certificate cannot impersonate the server, even from the right CA.
		{"node identity", ca.Issue(t, "s", mtlstest.Leaf{Identity: mtls.NodeIdentity("n2"), Server: true}), "want ipledger://server"},
		{"no identity", ca.Issue(t, "s", mtlstest.Leaf{Server: true}), "no ipledger identity"},
		{"client-only certificate", ca.Issue(t, "s", mtlstest.Leaf{Identity: mtls.ServerIdentity}), "incompatible key usage"},
		{"other CA", rogue.Issue(t, "s", mtlstest.Leaf{Identity: mtls.ServerIdentity, Server: true}), "unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The server trusts the cluster CA for clients in every case.
			tc.server.CA = ca.CAFile
			src, err := mtls.NewSource(tc.server, mtls.SourceOptions{})
			if err != nil {
				t.Fatal(err)
			}
			creds, err := mtls.ServerCredentials(src, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			addr, _ := healthServer(t, creds)
			err = check(t, addr, clientCreds(t, node))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestServerCertificateRotationWithoutRestart(t *testing.T) {
	ca := mtlstest.NewCA(t, "cluster CA")
	f := ca.Issue(t, "server", mtlstest.Leaf{Identity: mtls.ServerIdentity, Server: true, CommonName: "first"})
	src, err := mtls.NewSource(f, mtls.SourceOptions{Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := mtls.ServerCredentials(src, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := healthServer(t, creds)
	node := ca.Issue(t, "node", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1")})
	served := func() string {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(clientCreds(t, node)))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		var p peer.Peer
		if _, err := healthpb.NewHealthClient(cc).Check(t.Context(), &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
			t.Fatal(err)
		}
		return p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0].Subject.CommonName
	}
	if got := served(); got != "first" {
		t.Fatalf("served %q", got)
	}
	mtlstest.CopyFiles(t, ca.Issue(t, "server2", mtlstest.Leaf{Identity: mtls.ServerIdentity, Server: true, CommonName: "second"}), mtls.Files{Cert: f.Cert, Key: f.Key})
	deadline := time.Now().Add(5 * time.Second)
	for served() != "second" {
		if time.Now().After(deadline) {
			t.Fatal("the server still serves the old certificate")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEnsureDevCertsCreatesAndReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	now := time.Now()
	d, err := mtls.EnsureDevCerts(dir, []string{"ip-192-168-1-5.eu-west-1.compute.internal"}, now)
	if err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{d.CAKey(): 0o600, d.Server().Key: 0o600, d.Admin().Key: 0o600, d.CA(): 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), mode)
		}
	}
	wantIDs := map[string]mtls.Identity{
		d.Server().Cert: mtls.ServerIdentity,
		d.Admin().Cert:  mtls.AdminIdentity(mtls.DevAdminName),
		d.Node("ip-192-168-1-5.eu-west-1.compute.internal").Cert: mtls.NodeIdentity("ip-192-168-1-5.eu-west-1.compute.internal"),
	}
	before := map[string][]byte{}
	for path, id := range wantIDs {
		f := mtls.Files{Cert: path, Key: strings.TrimSuffix(path, ".crt") + ".key", CA: d.CA()}
		src, err := mtls.NewSource(f, mtls.SourceOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got, err := mtls.IdentityOf(src.Leaf()); err != nil || got != id {
			t.Fatalf("%s: %v %v, want %v", path, got, err, id)
		}
		pool := src.CAs()
		usage := x509.ExtKeyUsageClientAuth
		if id == mtls.ServerIdentity {
			usage = x509.ExtKeyUsageServerAuth
		}
		if _, err := src.Leaf().Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Fatalf("%s does not verify: %v", path, err)
		}
		before[path], _ = os.ReadFile(path)
	}
	// A second start reuses everything and adds the new node only.
	caBefore, _ := os.ReadFile(d.CA())
	d2, err := mtls.EnsureDevCerts(dir, []string{"ip-192-168-1-5.eu-west-1.compute.internal", "n2"}, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if caAfter, _ := os.ReadFile(d2.CA()); string(caAfter) != string(caBefore) {
		t.Fatal("the CA was replaced")
	}
	for path, b := range before {
		if after, _ := os.ReadFile(path); string(after) != string(b) {
			t.Errorf("%s was issued again", path)
		}
	}
	if _, err := os.Stat(d2.Node("n2").Cert); err != nil {
		t.Fatal(err)
	}
	// A leaf close to its expiry is issued again at start.
	if _, err := mtls.EnsureDevCerts(dir, nil, now.Add(360*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if after, _ := os.ReadFile(d.Server().Cert); string(after) == string(before[d.Server().Cert]) {
		t.Error("a server certificate expiring within a week was kept")
	}
	// A CA that does not load is an error, not silently replaced.
	if err := os.WriteFile(d.CA(), []byte("broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := mtls.EnsureDevCerts(dir, nil, now); err == nil || !strings.Contains(err.Error(), d.CA()) {
		t.Fatalf("broken CA: %v", err)
	}
	if _, err := mtls.EnsureDevCerts(t.TempDir(), []string{"Not_A_Node"}, now); err == nil {
		t.Fatal("a bad node name was accepted")
	}
}

// A client's rotated certificate is used by its next connection: the server sees the new one.
func TestClientCertificateRotation(t *testing.T) {
	ca := mtlstest.NewCA(t, "cluster CA")
	srvSrc, err := mtls.NewSource(ca.Issue(t, "server", mtlstest.Leaf{Identity: mtls.ServerIdentity, Server: true}), mtls.SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := mtls.ServerCredentials(srvSrc, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr, last := healthServer(t, creds)
	f := ca.Issue(t, "node", mtlstest.Leaf{Identity: mtls.NodeIdentity("first")})
	src, err := mtls.NewSource(f, mtls.SourceOptions{Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	clientCreds := mtls.ClientCredentials(src)
	if err := check(t, addr, clientCreds); err != nil {
		t.Fatal(err)
	}
	if id := <-last; id != mtls.NodeIdentity("first") {
		t.Fatalf("server saw %v", id)
	}
	mtlstest.CopyFiles(t, ca.Issue(t, "node2", mtlstest.Leaf{Identity: mtls.NodeIdentity("second")}), mtls.Files{Cert: f.Cert, Key: f.Key})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if err := check(t, addr, clientCreds); err != nil {
			t.Fatal(err)
		}
		if id := <-last; id == mtls.NodeIdentity("second") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the client still presents its old certificate")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
