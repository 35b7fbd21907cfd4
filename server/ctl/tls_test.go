package ctl

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/internal/mtls"
	"github.com/ipledger/ipledger/internal/mtls/mtlstest"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/servertest"
)

// ctlEnv runs ipledgerctl with an environment.
func ctlEnv(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(t.Context(), args, &out, &errOut, func(k string) string { return env[k] })
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// Against a server with --dev's certificates, ipledgerctl works with --dev-certs (or the
// environment, or the three files), and says what is missing when it has no or the wrong
// certificate.
func TestMutualTLSWithDevCertificates(t *testing.T) {
	cfg := devConfig(t)
	cfg.Insecure = false
	s := startServer(t, cfg)
	servertest.WaitFor(t, 15*time.Second, "leadership", s.IsLeader)
	dev := s.DevCerts()
	if dev == nil {
		t.Fatal("no --dev certificates")
	}
	addr := s.GRPCAddr()
	node := servertest.Running(s.Sim())[0].PrivateDNSName
	for _, tc := range []struct {
		name   string
		env    map[string]string
		args   []string
		code   int
		stdout string
		stderr []string
	}{
		{"--dev-certs", nil, []string{"--dev-certs", dev.Dir, "status"}, 0, addr + " (leader)", nil},
		{"environment", map[string]string{EnvDevCerts: dev.Dir}, []string{"status"}, 0, addr + " (leader)", nil},
		{"three files", map[string]string{EnvTLSCA: dev.CA()}, []string{"--tls-cert", dev.Admin().Cert, "--tls-key", dev.Admin().Key, "status"}, 0, addr, nil},
		// First contact without certificates: the server is there and wants mutual TLS; say so
		// and what to pass, not "cannot reach ... is it running?".
		{"plaintext", nil, []string{"status"}, ExitError, "", []string{"get cluster status: this server requires mutual TLS: ipledger-server at " + addr + " speaks TLS and ipledgerctl has no certificate",
			"--tls-cert, --tls-key and --tls-ca", "--dev-certs DIR for ipledger-server --dev", "--context NAME"}},
		{"a node's certificate", nil, []string{"--dev-certs", dev.Dir, "--tls-cert", dev.Node(node).Cert, "--tls-key", dev.Node(node).Key, "nodes"}, ExitError, "",
			[]string{"names ipledger://node/" + node + ", not an admin", "answered PermissionDenied (ADMIN_REQUIRED"}},
		{"certificate without key", nil, []string{"--tls-cert", dev.Admin().Cert, "--tls-ca", dev.CA(), "status"}, ExitUsage, "", []string{"--tls-cert, --tls-key and --tls-ca together"}},
		{"missing file", nil, []string{"--dev-certs", "/nonexistent/certs", "status"}, ExitUsage, "", []string{"/nonexistent/certs/admin.crt"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{EnvServer: addr}
			for k, v := range tc.env {
				env[k] = v
			}
			r := ctlEnv(t, env, tc.args...)
			if r.code != tc.code || !strings.Contains(r.stdout, tc.stdout) {
				t.Fatalf("want exit %d and stdout containing %q, got %s", tc.code, tc.stdout, r)
			}
			for _, want := range tc.stderr {
				if !strings.Contains(r.stderr, want) {
					t.Fatalf("stderr lacks %q: %s", want, r)
				}
			}
			if strings.Contains(r.stderr, "is it running") || strings.Contains(r.stderr, "cannot reach") {
				t.Fatalf("the server answered; ipledgerctl says it cannot reach it: %s", r)
			}
		})
	}
}

// Certificates against a plaintext server: say it speaks plaintext and to leave them out;
// nothing listening stays "cannot reach ... is it running?".
func TestFirstContactWithThePlaintextOrAbsentServer(t *testing.T) {
	cfg := devConfig(t)
	cfg.Insecure = false
	tlsServer := startServer(t, cfg)
	dev := tlsServer.DevCerts()
	plain := startDev(t)
	r := ctlEnv(t, map[string]string{EnvServer: plain.GRPCAddr(), EnvDevCerts: dev.Dir}, "status")
	if r.code != ExitError || !strings.Contains(r.stderr, "ipledger-server at "+plain.GRPCAddr()+" speaks plaintext, not TLS") ||
		!strings.Contains(r.stderr, "leave out the certificates") || strings.Contains(r.stderr, "is it running") {
		t.Fatalf("certificates against a plaintext server: %s", r)
	}
	closed := closedAddr(t)
	r = ctlEnv(t, map[string]string{EnvServer: closed}, "status")
	if r.code != ExitError || !strings.Contains(r.stderr, "cannot reach ipledger-server at "+closed+": connection refused (is it running?") ||
		strings.Contains(r.stderr, "requires mutual TLS") {
		t.Fatalf("nothing listening: %s", r)
	}
}

// A standby's NOT_LEADER redirect keeps the admin certificate: the change reaches the leader
// over mutual TLS.
func TestRedirectKeepsTheCredentials(t *testing.T) {
	be := servertest.StartBackends(t)
	ca := mtlstest.NewCA(t, "cluster CA")
	srv := ca.Issue(t, "server", mtlstest.Leaf{Identity: mtls.ServerIdentity, Server: true})
	adm := ca.Issue(t, "admin", mtlstest.Leaf{Identity: mtls.AdminIdentity("alice")})
	replica := func() *server.Server {
		cfg := devConfig(t)
		be.Use(&cfg)
		cfg.Insecure = false
		cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile = srv.Cert, srv.Key, ca.CAFile
		if cfg.Transport() != config.TransportTLSFiles {
			t.Fatalf("transport %v", cfg.Transport())
		}
		return startServer(t, cfg)
	}
	a := replica()
	servertest.WaitFor(t, 15*time.Second, "the first replica to lead", a.IsLeader)
	b := replica()
	leader, standby := a.GRPCAddr(), b.GRPCAddr()
	servertest.WaitFor(t, 15*time.Second, "the standby to know the leader", func() bool { return b.LeaderAddress() == leader })

	env := map[string]string{EnvServer: standby, EnvTLSCert: adm.Cert, EnvTLSKey: adm.Key, EnvTLSCA: adm.CA}
	policy := writeFile(t, "p.yaml", "name: tls-redirect\norder: 3\nwarm_ip_target: 2\n")
	r := ctlEnv(t, env, "policy", "set", "-f", policy)
	if r.code != 0 || !strings.Contains(r.stderr, "sending set policy tls-redirect to the leader at "+leader) {
		t.Fatalf("policy set through the standby: %s", r)
	}
	found := false
	for _, p := range a.Allocator().Policies() {
		found = found || p.Name == "tls-redirect"
	}
	if !found {
		t.Fatal("the leader does not have the policy")
	}
	// Without credentials the same command reaches nobody.
	if r := ctlEnv(t, map[string]string{EnvServer: standby}, "policy", "set", "-f", policy); r.code != ExitError {
		t.Fatalf("plaintext: %s", r)
	}
}
