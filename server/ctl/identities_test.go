package ctl

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ipledger/ipledger/agent/attest"
	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
)

// dialFiles opens a mutual-TLS connection with a node's certificate files.
func dialFiles(t *testing.T, addr string, f mtls.Files) *grpc.ClientConn {
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

// attestNode attests an instance as its agent does (key on disk, IMDS document, Attest) and
// registers it with the certificate it got.
func attestNode(t *testing.T, addr string, sim *ec2sim.Server, ca string, in ec2sim.InstanceInfo) *servertest.Agent {
	t.Helper()
	ep, err := sim.IMDSEndpoint(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := attest.New(attest.Config{Dir: t.TempDir(), CAFile: ca, Servers: []string{addr}, IMDSEndpoint: ep})
	if err != nil {
		t.Fatal(err)
	}
	name, err := cl.Ensure(t.Context())
	if err != nil || name != in.PrivateDNSName {
		t.Fatalf("attest %s: %q %v", in.ID, name, err)
	}
	a := servertest.NewAgent(t, dialFiles(t, addr, cl.Files()), in)
	a.Register()
	return a
}

// ipledgerctl shows how each node proved its identity and when its certificate expires, lists
// the attestations, and forgets one by node name or instance id.
func TestIdentities(t *testing.T) {
	s := servertest.StartDev(t, func(c *config.Config) {
		c.Insecure = false
		c.NodeCertLifetime = config.Duration(time.Hour)
	})
	dev := s.DevCerts()
	addr := s.GRPCAddr()
	env := map[string]string{EnvServer: addr, EnvDevCerts: dev.Dir}
	run := func(want int, args ...string) result {
		t.Helper()
		r := ctlEnv(t, env, args...)
		if r.code != want {
			t.Fatalf("ipledgerctl %s: want exit %d, got %s", strings.Join(args, " "), want, r)
		}
		return r
	}
	insts := servertest.Instances(s)
	a, b, c := insts[0], insts[1], insts[2]
	attestNode(t, addr, s.Sim(), dev.CA(), a)
	attestNode(t, addr, s.Sim(), dev.CA(), c)
	// b's agent has a certificate from files (the operator's own PKI): not attested.
	servertest.NewAgent(t, dialFiles(t, addr, servertest.NodeCertFiles(t, dev, b.PrivateDNSName)), b).Register()

	var nodes []NodeSummary
	decode(t, run(0, "nodes", "-o", "json"), &nodes)
	byName := map[string]NodeSummary{}
	for _, n := range nodes {
		byName[n.NodeName] = n
	}
	for _, tc := range []struct {
		in     ec2sim.InstanceInfo
		method string
		life   time.Duration
	}{{a, "aws-iid", time.Hour}, {c, "aws-iid", time.Hour}, {b, "certificate", 24 * time.Hour}} {
		n, ok := byName[tc.in.PrivateDNSName]
		if !ok {
			t.Fatalf("node %s not listed: %+v", tc.in.PrivateDNSName, nodes)
		}
		if n.IdentityMethod != tc.method || n.CertificateNotAfter == nil {
			t.Fatalf("node %s: identity %q, certificate expiry %v; want %s", n.NodeName, n.IdentityMethod, n.CertificateNotAfter, tc.method)
		}
		if left := time.Until(*n.CertificateNotAfter); left > tc.life || left < tc.life-5*time.Minute {
			t.Errorf("node %s: certificate expires in %s, want about %s", n.NodeName, left, tc.life)
		}
	}
	var ynodes []NodeSummary
	decodeYAML(t, run(0, "nodes", "-o", "yaml"), &ynodes)
	for _, n := range ynodes {
		if want := byName[n.NodeName]; n.IdentityMethod != want.IdentityMethod || !n.CertificateNotAfter.Equal(*want.CertificateNotAfter) {
			t.Errorf("YAML node %s: %q %v, JSON %q %v", n.NodeName, n.IdentityMethod, n.CertificateNotAfter, want.IdentityMethod, want.CertificateNotAfter)
		}
	}
	table := run(0, "nodes").stdout
	header := strings.Fields(strings.SplitN(table, "\n", 2)[0])
	if got := header[len(header)-2:]; got[0] != "IDENTITY" || got[1] != "CERT-EXPIRES" {
		t.Fatalf("nodes table ends with %v, want IDENTITY CERT-EXPIRES:\n%s", got, table)
	}
	for _, r := range tableRows(t, table, "NODE", "INSTANCE") {
		// CERT-EXPIRES is relative: "in 59m" / "in 23h59m" (two words at the end).
		method, expires := r[len(r)-3], r[len(r)-2]+" "+r[len(r)-1]
		want := byName[r[0]]
		if method != want.IdentityMethod || !regexp.MustCompile(`^in (59m|1h|23h5\dm|1d)$`).MatchString(expires) {
			t.Errorf("row %v: identity %q expires %q, want %s and a relative time", r, method, expires, want.IdentityMethod)
		}
	}
	var detail NodeDetail
	decode(t, run(0, "node", a.PrivateDNSName, "-o", "json"), &detail)
	if detail.IdentityMethod != "aws-iid" || detail.CertificateNotAfter == nil || !detail.CertificateNotAfter.Equal(*byName[a.PrivateDNSName].CertificateNotAfter) {
		t.Fatalf("node detail identity %q %v", detail.IdentityMethod, detail.CertificateNotAfter)
	}
	if out := run(0, "node", b.PrivateDNSName).stdout; !regexp.MustCompile(`Identity:\s+certificate, certificate expires \S+ \(in 23h5\dm\)`).MatchString(out) {
		t.Errorf("node table lacks the identity line:\n%s", out)
	}

	// identities: the two attested instances, as the server recorded them.
	truth, err := ipledgerv1.NewAdminServiceClient(dialFiles(t, addr, dev.Admin())).ListIdentities(t.Context(), &ipledgerv1.ListIdentitiesRequest{})
	if err != nil || len(truth.GetIdentities()) != 2 {
		t.Fatalf("ListIdentities: %v %v", truth, err)
	}
	var ids []Identity
	decode(t, run(0, "identities", "-o", "json"), &ids)
	if len(ids) != 2 || ids[0].NodeName > ids[1].NodeName {
		t.Fatalf("identities %+v: want the two attested nodes, by name", ids)
	}
	for _, id := range ids {
		var rec *ipledgerv1.NodeIdentity
		for _, r := range truth.GetIdentities() {
			if r.GetInstanceId() == id.InstanceID {
				rec = r
			}
		}
		if rec == nil || id.NodeName != rec.GetNodeName() || id.Method != "aws-iid" || id.AccountID != "111111111111" || id.Region != "eu-west-1" ||
			id.KeySHA256 != rec.GetKeySha256() || len(id.KeySHA256) != 64 || id.CertificateSerial != rec.GetCertificateSerial() ||
			id.AttestedAt == nil || id.PendingTime == nil || id.CertificateNotAfter == nil || id.Renewals != rec.GetRenewals() {
			t.Fatalf("identity %+v, the server's %v", id, rec)
		}
	}
	var yids []Identity
	decodeYAML(t, run(0, "identities", "-o", "yaml"), &yids)
	if len(yids) != 2 || yids[0].KeySHA256 != ids[0].KeySHA256 {
		t.Fatalf("YAML identities %+v", yids)
	}
	rows := tableRows(t, run(0, "identities").stdout, "NODE", "INSTANCE", "METHOD", "ACCOUNT", "REGION", "ATTESTED", "CERT-EXPIRES", "RENEWALS", "KEY")
	if len(rows) != 2 {
		t.Fatalf("identities table rows %v", rows)
	}
	for i, r := range rows {
		// NODE INSTANCE METHOD ACCOUNT REGION <n> ago in <n> RENEWALS KEY
		if len(r) != 11 || r[0] != ids[i].NodeName || r[1] != ids[i].InstanceID || r[2] != "aws-iid" || r[3] != "111111111111" || r[4] != "eu-west-1" ||
			r[6] != "ago" || r[7] != "in" || r[10] != ids[i].KeySHA256[:12] {
			t.Errorf("identities row %v for %+v", r, ids[i])
		}
	}

	// forget-identity: a node without an attestation is NotFound (exit 1, the server's words);
	// by name and by instance id, each once.
	r := run(ExitError, "node", "forget-identity", b.PrivateDNSName)
	if !strings.Contains(r.stderr, "answered NotFound") || !strings.Contains(r.stderr, b.PrivateDNSName) || r.stdout != "" {
		t.Fatalf("forget an unattested node: %s", r)
	}
	var gone Identity
	decode(t, run(0, "node", "forget-identity", a.PrivateDNSName, "-o", "json"), &gone)
	if gone.InstanceID != a.ID || gone.NodeName != a.PrivateDNSName || gone.KeySHA256 != byID(ids, a.ID).KeySHA256 {
		t.Fatalf("forgotten %+v, want a's record %+v", gone, byID(ids, a.ID))
	}
	if r := run(ExitError, "node", "forget-identity", a.PrivateDNSName); !strings.Contains(r.stderr, "NotFound") {
		t.Fatalf("forget twice: %s", r)
	}
	out := run(0, "node", "forget-identity", "--instance", c.ID).stdout
	if !strings.Contains(out, "forgot the attestation of node "+c.PrivateDNSName+" (instance "+c.ID+")") || !strings.Contains(out, byID(ids, c.ID).KeySHA256) {
		t.Fatalf("forget by instance:\n%s", out)
	}
	if r := run(ExitError, "node", "forget-identity", "--instance", c.ID); !strings.Contains(r.stderr, "NotFound") {
		t.Fatalf("forget an instance twice: %s", r)
	}
	if rows := tableRows(t, run(0, "identities").stdout, "NODE", "INSTANCE"); len(rows) != 1 || !strings.HasPrefix(rows[0][0], "(none") {
		t.Fatalf("identities after forgetting both: %v", rows)
	}
	// The instance whose identity was forgotten attests again with a new key.
	attestNode(t, addr, s.Sim(), dev.CA(), a)
	decode(t, run(0, "identities", "-o", "json"), &ids)
	if len(ids) != 1 || ids[0].InstanceID != a.ID || ids[0].KeySHA256 == gone.KeySHA256 {
		t.Fatalf("after a new attestation: %+v (the forgotten key was %s)", ids, gone.KeySHA256)
	}
}

func byID(ids []Identity, instance string) Identity {
	for _, id := range ids {
		if id.InstanceID == instance {
			return id
		}
	}
	return Identity{}
}
