package server_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
)

// doc is an instance's identity document and its rsa2048 signature, as IMDS serves them.
type doc struct {
	body, rsa2048, signature string
}

func imdsDoc(t *testing.T, s *server.Server, id string) doc {
	t.Helper()
	ep, err := s.Sim().IMDSEndpoint(id)
	if err != nil {
		t.Fatal(err)
	}
	get := func(p string) string {
		out, err := imds.New(imds.Options{Endpoint: ep}).GetDynamicData(t.Context(), &imds.GetDynamicDataInput{Path: "instance-identity/" + p})
		if err != nil {
			t.Fatal(err)
		}
		defer out.Content.Close()
		b, _ := io.ReadAll(out.Content)
		return string(b)
	}
	return doc{get("document"), get("rsa2048"), get("signature")}
}

// withField is a document with one field changed.
func withField(t *testing.T, body, field, value string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatal(err)
	}
	m[field] = value
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func newKey(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := mtls.NewCSR(k)
	if err != nil {
		t.Fatal(err)
	}
	return k, csr
}

func attest(t *testing.T, cli ipledgerv1.IdentityServiceClient, d doc, csr []byte) (*ipledgerv1.NodeCertificate, error) {
	t.Helper()
	return cli.Attest(t.Context(), &ipledgerv1.AttestRequest{Document: []byte(d.body), Signature: d.rsa2048,
		SignatureFormat: ipledgerv1.SignatureFormat_SIGNATURE_FORMAT_RSA2048, Csr: csr})
}

func wantRefused(t *testing.T, what string, err error, code codes.Code, reason ipledgerv1.Reason) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: want %v, got %v", what, code, err)
	}
	if r, _ := api.ReasonOf(err); r != reason.String() {
		t.Fatalf("%s: want reason %s, got %q (%v)", what, reason, r, err)
	}
}

// certFiles writes a node's key and its issued chain as files a client loads.
func certFiles(t *testing.T, dev *mtls.DevCerts, key crypto.Signer, nc *ipledgerv1.NodeCertificate) mtls.Files {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := mtls.Files{Cert: filepath.Join(dir, "node.crt"), Key: filepath.Join(dir, "node.key"), CA: dev.CA()}
	if err := os.WriteFile(f.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.Cert, nc.GetCertificateChain(), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

func leafOf(t *testing.T, nc *ipledgerv1.NodeCertificate) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(nc.GetCertificateChain())
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An agent with no certificate attests with its instance identity document and gets a node
// certificate naming its instance; every bad attestation is refused with its reason and
// changes nothing; renewal keeps the key; an admin can forget a lost key's identity.
func TestAttestationIssuesNodeCertificatesAndRefusesBadOnes(t *testing.T) {
	s := servertest.StartDev(t, func(c *config.Config) {
		c.Insecure = false
		c.NodeCertLifetime = config.Duration(time.Hour)
	})
	dev := s.DevCerts()
	anon := ipledgerv1.NewIdentityServiceClient(dialTLS(t, s.GRPCAddr(), mtls.Files{CA: dev.CA()}))
	admin := ipledgerv1.NewAdminServiceClient(dialTLS(t, s.GRPCAddr(), dev.Admin()))
	insts := servertest.Instances(s)
	a, b, c := insts[0], insts[1], insts[2]
	docA := imdsDoc(t, s, a.ID)
	identities := func() []*ipledgerv1.NodeIdentity {
		t.Helper()
		r, err := admin.ListIdentities(t.Context(), &ipledgerv1.ListIdentitiesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetIdentities()
	}

	// The first attestation: a certificate for the private DNS name, for the CSR's key.
	keyA, csrA := newKey(t)
	nc, err := attest(t, anon, docA, csrA)
	if err != nil {
		t.Fatalf("attest: %v", err)
	}
	leaf := leafOf(t, nc)
	if id, _ := mtls.IdentityOf(leaf); id != mtls.NodeIdentity(a.PrivateDNSName) || nc.GetNodeName() != a.PrivateDNSName || nc.GetMethod() != "aws-iid" {
		t.Fatalf("certificate names %v (%s)", id, nc.GetNodeName())
	}
	if in, ok := mtls.AttestedInstanceOf(leaf); !ok || in.ID != a.ID || in.Account != "111111111111" || in.Region != "eu-west-1" {
		t.Fatalf("attested instance %v %v", in, ok)
	}
	if d := time.Until(leaf.NotAfter); d > time.Hour || d < 59*time.Minute {
		t.Fatalf("lifetime %v", d)
	}
	ids := identities()
	if len(ids) != 1 || ids[0].GetInstanceId() != a.ID || ids[0].GetNodeName() != a.PrivateDNSName || ids[0].GetKeySha256() == "" {
		t.Fatalf("identities after the first attestation: %v", ids)
	}
	// The signature form works too, and the same key may attest again (a restart whose
	// certificate expired): the identity is kept, counted as a renewal.
	if _, err := anon.Attest(t.Context(), &ipledgerv1.AttestRequest{Document: []byte(docA.body), Signature: docA.signature,
		SignatureFormat: ipledgerv1.SignatureFormat_SIGNATURE_FORMAT_SIGNATURE, Csr: csrA}); err != nil {
		t.Fatalf("again with the same key: %v", err)
	}

	// Refusals, each with its reason, none changing anything.
	revBefore := s.Allocator().Revision()
	before := identities()
	_, csrX := newKey(t)
	_, err = attest(t, anon, docA, csrX)
	wantRefused(t, "A's document replayed with another key", err, codes.AlreadyExists, ipledgerv1.Reason_INSTANCE_ALREADY_ATTESTED)
	if !strings.Contains(err.Error(), "forget-identity "+a.PrivateDNSName) {
		t.Fatalf("the refusal does not say what to do: %v", err)
	}
	bad := docA
	bad.body = strings.Replace(docA.body, `"m5.large"`, `"m5.24xlarge"`, 1)
	_, err = attest(t, anon, bad, csrX)
	wantRefused(t, "a changed document", err, codes.Unauthenticated, ipledgerv1.Reason_ATTESTATION_INVALID)
	bad = docA
	bad.signature = strings.Replace(docA.signature, docA.signature[10:14], "AAAA", 1)
	_, err = anon.Attest(t.Context(), &ipledgerv1.AttestRequest{Document: []byte(bad.body), Signature: bad.signature,
		SignatureFormat: ipledgerv1.SignatureFormat_SIGNATURE_FORMAT_SIGNATURE, Csr: csrX})
	wantRefused(t, "a bad signature", err, codes.Unauthenticated, ipledgerv1.Reason_ATTESTATION_INVALID)
	signed := func(body string) doc {
		p7, sig, err := s.Sim().Sim().SignIdentityDocument([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return doc{body, p7, sig}
	}
	docB := imdsDoc(t, s, b.ID)
	_, err = attest(t, anon, signed(withField(t, docB.body, "accountId", "222222222222")), csrX)
	wantRefused(t, "another account's instance", err, codes.PermissionDenied, ipledgerv1.Reason_ATTESTATION_FOREIGN)
	_, err = attest(t, anon, signed(withField(t, docB.body, "region", "us-east-2")), csrX)
	wantRefused(t, "another region's instance", err, codes.PermissionDenied, ipledgerv1.Reason_ATTESTATION_FOREIGN)
	_, err = attest(t, anon, signed(withField(t, docB.body, "instanceId", "i-0123456789abcdef0")), csrX)
	wantRefused(t, "an instance EC2 does not know", err, codes.FailedPrecondition, ipledgerv1.Reason_INSTANCE_MISMATCH)
	_, err = attest(t, anon, signed(withField(t, docB.body, "pendingTime", "2020-01-02T03:04:05Z")), csrX)
	wantRefused(t, "another pendingTime than EC2's launch time", err, codes.FailedPrecondition, ipledgerv1.Reason_INSTANCE_MISMATCH)
	_, err = attest(t, anon, doc{docB.body, docB.rsa2048, docB.signature}, []byte("not a csr"))
	wantRefused(t, "a bad CSR", err, codes.Unauthenticated, ipledgerv1.Reason_ATTESTATION_INVALID)
	docC := imdsDoc(t, s, c.ID)
	if err := s.Sim().Sim().TerminateInstances(t.Context(), c.ID); err != nil {
		t.Fatal(err)
	}
	_, err = attest(t, anon, docC, csrX)
	wantRefused(t, "a terminated instance", err, codes.FailedPrecondition, ipledgerv1.Reason_INSTANCE_NOT_RUNNING)
	// An instance of the account without the cluster tag's value.
	other, err := s.Sim().Sim().RunInstances(t.Context(), ec2sim.InstanceSpec{InstanceType: "m5.large", SubnetID: b.SubnetID,
		Tags: map[string]string{"kubernetes.io/cluster/dev": "other-cluster"}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest(t, anon, imdsDoc(t, s, other[0].ID), csrX); err != nil {
		t.Fatalf("the default tag check accepts any value of the key: %v", err)
	}
	// An attested instance that terminates loses its identity at the next sweep.
	if err := s.Sim().Sim().TerminateInstances(t.Context(), other[0].ID); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Identity().Sweep(t.Context()); err != nil || n != 1 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	for _, r := range identities() {
		if r.GetInstanceId() == other[0].ID {
			t.Fatal("the terminated instance's identity survived the sweep")
		}
	}
	before = identities()
	revBefore = s.Allocator().Revision()
	if got := identities(); len(got) != len(before) || s.Allocator().Revision() != revBefore {
		t.Fatalf("refused attestations changed etcd: %d -> %d identities, revision %d -> %d", len(before), len(got), revBefore, s.Allocator().Revision())
	}
	if n := len(s.Ledger().Nodes()); n != 0 {
		t.Fatalf("attestations registered %d nodes", n)
	}

	// The attested certificate works for its node, and only for its own instance.
	filesA := certFiles(t, dev, keyA, nc)
	asA := ipledgerv1.NewNodeServiceClient(dialTLS(t, s.GRPCAddr(), filesA))
	agentA := &servertest.Agent{T: t, Inst: a, Client: asA}
	squat := agentA.RegisterRequest()
	squat.InstanceId, squat.SubnetId, squat.PrimaryEniId, squat.PrimaryIp = b.ID, b.SubnetID, b.PrimaryENI, b.PrivateIP
	_, err = asA.RegisterNode(t.Context(), squat)
	wantDenied(t, "A's certificate registering B's instance under A's name", err, ipledgerv1.Reason_WRONG_NODE_IDENTITY)
	agentA.Register()
	nodes, err := admin.ListNodes(t.Context(), &ipledgerv1.ListNodesRequest{})
	if err != nil || len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetIdentityMethod() != "aws-iid" ||
		nodes.GetNodes()[0].GetCertificateNotAfter() == nil || time.Until(nodes.GetNodes()[0].GetCertificateNotAfter().AsTime()) < 59*time.Minute {
		t.Fatalf("node listing: %v %v", nodes, err)
	}

	// Renewal over the current certificate: same key, new serial; another key is refused.
	renewer := ipledgerv1.NewIdentityServiceClient(dialTLS(t, s.GRPCAddr(), filesA))
	renewed, err := renewer.Renew(t.Context(), &ipledgerv1.RenewRequest{Csr: csrA})
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if l := leafOf(t, renewed); l.SerialNumber.Cmp(leaf.SerialNumber) == 0 || !l.NotAfter.After(leaf.NotAfter.Add(-time.Second)) {
		t.Fatalf("renewal gave serial %v not after %v (was %v, %v)", l.SerialNumber, l.NotAfter, leaf.SerialNumber, leaf.NotAfter)
	}
	_, err = renewer.Renew(t.Context(), &ipledgerv1.RenewRequest{Csr: csrX})
	wantRefused(t, "renewal for another key", err, codes.Unauthenticated, ipledgerv1.Reason_ATTESTATION_INVALID)
	// A certificate from files (not attested) cannot renew here.
	_, err = ipledgerv1.NewIdentityServiceClient(dialTLS(t, s.GRPCAddr(), servertest.NodeCertFiles(t, dev, b.PrivateDNSName))).Renew(t.Context(), &ipledgerv1.RenewRequest{Csr: csrX})
	wantDenied(t, "renewal of a file certificate", err, ipledgerv1.Reason_WRONG_NODE_IDENTITY)

	// The node lost its key: an admin forgets the identity, and the new key attests.
	forgotten, err := admin.ForgetIdentity(t.Context(), &ipledgerv1.ForgetIdentityRequest{NodeName: a.PrivateDNSName})
	if err != nil || forgotten.GetInstanceId() != a.ID {
		t.Fatalf("forget: %v %v", forgotten, err)
	}
	_, err = admin.ForgetIdentity(t.Context(), &ipledgerv1.ForgetIdentityRequest{NodeName: a.PrivateDNSName})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("forget twice: %v", err)
	}
	if _, err := admin.ForgetIdentity(t.Context(), &ipledgerv1.ForgetIdentityRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("forget nothing: %v", err)
	}
	if _, err := attest(t, anon, docA, csrX); err != nil {
		t.Fatalf("attest with the new key after forget: %v", err)
	}
	// The old certificate cannot renew the new identity.
	_, err = renewer.Renew(t.Context(), &ipledgerv1.RenewRequest{Csr: csrA})
	wantRefused(t, "renewal with the old key after forget", err, codes.AlreadyExists, ipledgerv1.Reason_INSTANCE_ALREADY_ATTESTED)
}

// A first attestation later than --attest-max-instance-age after the launch is refused; a
// server without an issuing CA attests nobody.
func TestAttestationTooLateAndDisabled(t *testing.T) {
	s := servertest.StartDev(t, func(c *config.Config) {
		c.Insecure = false
		c.AttestMaxInstanceAge = config.Duration(time.Nanosecond)
		c.AttestInstanceTag = "kubernetes.io/cluster/dev=owned"
	})
	dev := s.DevCerts()
	anon := ipledgerv1.NewIdentityServiceClient(dialTLS(t, s.GRPCAddr(), mtls.Files{CA: dev.CA()}))
	_, csr := newKey(t)
	insts := servertest.Instances(s)
	_, err := attest(t, anon, imdsDoc(t, s, insts[0].ID), csr)
	wantRefused(t, "too late", err, codes.FailedPrecondition, ipledgerv1.Reason_ATTESTATION_TOO_LATE)
	other, err := s.Sim().Sim().RunInstances(t.Context(), ec2sim.InstanceSpec{InstanceType: "m5.large", SubnetID: insts[0].SubnetID,
		Tags: map[string]string{"kubernetes.io/cluster/dev": "shared"}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, err = attest(t, anon, imdsDoc(t, s, other[0].ID), csr)
	wantRefused(t, "another value of the cluster tag", err, codes.PermissionDenied, ipledgerv1.Reason_ATTESTATION_FOREIGN)

	plain := servertest.StartDev(t, nil)
	_, err = ipledgerv1.NewIdentityServiceClient(servertest.Dial(t, plain.GRPCAddr())).Attest(context.Background(), &ipledgerv1.AttestRequest{})
	wantRefused(t, "plaintext server", err, codes.FailedPrecondition, ipledgerv1.Reason_ATTESTATION_DISABLED)
}

// Nodes named by instance id where the cluster does so; instances of another VPC are foreign.
func TestAttestationNodeNameAndVPC(t *testing.T) {
	s := servertest.StartDev(t, func(c *config.Config) {
		c.Insecure = false
		c.AttestNodeName = "instance-id"
	})
	anon := ipledgerv1.NewIdentityServiceClient(dialTLS(t, s.GRPCAddr(), mtls.Files{CA: s.DevCerts().CA()}))
	_, csr := newKey(t)
	in := servertest.Instances(s)[0]
	nc, err := attest(t, anon, imdsDoc(t, s, in.ID), csr)
	if err != nil || nc.GetNodeName() != in.ID {
		t.Fatalf("attest: %v %v, want node name %s", nc.GetNodeName(), err, in.ID)
	}

	s2 := servertest.StartDev(t, func(c *config.Config) {
		c.Insecure = false
		c.AttestVPCIDs = []string{"vpc-0123456789abcdef0"}
	})
	anon2 := ipledgerv1.NewIdentityServiceClient(dialTLS(t, s2.GRPCAddr(), mtls.Files{CA: s2.DevCerts().CA()}))
	_, err = attest(t, anon2, imdsDoc(t, s2, servertest.Instances(s2)[0].ID), csr)
	wantRefused(t, "another VPC", err, codes.PermissionDenied, ipledgerv1.Reason_ATTESTATION_FOREIGN)
}
