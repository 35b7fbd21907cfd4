package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/containernetworking/cni/pkg/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/e2e/harness"
	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
)

// certLifetime is short so that a node certificate is renewed, and outlived, during the test.
const certLifetime = 12 * time.Second

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
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

type iidDoc struct{ body, rsa2048 string }

func instanceDocument(t *testing.T, s *server.Server, id string) iidDoc {
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
	return iidDoc{get("document"), get("rsa2048")}
}

func attestRaw(t *testing.T, cli ipledgerv1.IdentityServiceClient, d iidDoc) error {
	t.Helper()
	csr, err := mtls.NewCSR(newTestKey(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.Attest(t.Context(), &ipledgerv1.AttestRequest{Document: []byte(d.body), Signature: d.rsa2048,
		SignatureFormat: ipledgerv1.SignatureFormat_SIGNATURE_FORMAT_RSA2048, Csr: csr})
	return err
}

func wantReason(t *testing.T, what string, err error, code codes.Code, reason ipledgerv1.Reason) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: want %v, got %v", what, code, err)
	}
	if r, _ := api.ReasonOf(err); r != reason.String() {
		t.Fatalf("%s: want reason %s, got %q (%v)", what, reason, r, err)
	}
}

// Agents started with no certificate files join a --dev server by attestation, get pools and
// serve CNI ADD through cnitool, with the conflist installed by the agent only once it can
// serve; bad attestations are refused with their reasons and change nothing; a certificate is
// renewed (and outlived) during the run without a restart or a new Sync stream; a stopped
// agent's node gets "try again later".
func TestAgentsJoinByAttestation(t *testing.T) {
	s := harness.StartDev(t, func(c *config.Config) {
		c.Insecure = false
		c.NodeCertLifetime = config.Duration(certLifetime)
	})
	dev := s.DevCerts()
	admin := ipledgerv1.NewAdminServiceClient(dialTLS(t, s.GRPCAddr(), dev.Admin()))
	anon := ipledgerv1.NewIdentityServiceClient(dialTLS(t, s.GRPCAddr(), mtls.Files{CA: dev.CA()}))
	insts := harness.Running(s.Sim().Sim())
	a, b, c := insts[0], insts[1], insts[2]

	// Node B's document is stolen and attested first with someone else's key: B's own agent is
	// then refused, and its node gets no network config.
	docB := instanceDocument(t, s, b.ID)
	if err := attestRaw(t, anon, docB); err != nil {
		t.Fatalf("the squatter's attestation: %v", err)
	}
	nb := harness.NewNode(t, s.Sim(), b, s.GRPCAddr())
	nb.Attest(dev.CA())
	nb.ManagedRuntime("1.0.0")
	agentB := nb.StartAgent()
	agentB.WaitView(30*time.Second, "B's attestation refused", func(v agent.PoolView) bool {
		return strings.Contains(agentB.Log(), "INSTANCE_ALREADY_ATTESTED")
	})
	if _, err := os.Stat(nb.Conflist()); !os.IsNotExist(err) {
		t.Fatalf("an agent that has not attested installed the conflist: %v", err)
	}
	pb := nb.NewPod("pod-b")
	if e := nb.Plugin("ADD", pb, "1.0.0").CNIError(t); e.Code != types.ErrTryAgainLater {
		t.Fatalf("ADD on the unattested node: %+v, want try again later", e)
	}

	// Node A joins: attests, registers, installs the conflist, serves ADD through cnitool.
	na := harness.NewNode(t, s.Sim(), a, s.GRPCAddr())
	na.Attest(dev.CA())
	rt := na.ManagedRuntime("1.0.0")
	if _, err := os.Stat(na.Conflist()); !os.IsNotExist(err) {
		t.Fatalf("conflist before the agent ran: %v", err)
	}
	agentA := na.StartAgent()
	v := agentA.WaitView(30*time.Second, "A attested, connected, conflist installed", func(v agent.PoolView) bool {
		return v.Server.Connected && v.Conflist && v.Identity.Method == "aws-iid"
	})
	if _, err := os.Stat(na.Conflist()); err != nil {
		t.Fatalf("the agent reports the conflist installed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(na.IdentityDir, "node.key")); err != nil {
		t.Fatalf("node key: %v", err)
	}
	pa := na.CNIToolPod("tool-a")
	ipA := rt.Run("add", pa).MustSucceed(t, "cnitool add on the attested node").IP(t)
	harness.Eventually(t, 10*time.Second, "A's pod reported", func() error {
		d, err := admin.GetNode(t.Context(), &ipledgerv1.GetNodeRequest{NodeName: na.Name()})
		if err != nil {
			return err
		}
		for _, p := range d.GetPods() {
			if p.GetIp() == ipA.String() {
				if d.GetSummary().GetIdentityMethod() != "aws-iid" || d.GetSummary().GetCertificateNotAfter() == nil {
					t.Fatalf("node listing without the identity: %v", d.GetSummary())
				}
				return nil
			}
		}
		return os.ErrNotExist
	})

	// Refusals, each with its reason; nothing changes.
	revBefore := s.Allocator().Revision()
	docA := instanceDocument(t, s, a.ID)
	wantReason(t, "A's document replayed", attestRaw(t, anon, docA), codes.AlreadyExists, ipledgerv1.Reason_INSTANCE_ALREADY_ATTESTED)
	badSig := docA
	badSig.rsa2048 = strings.Replace(docA.rsa2048, docA.rsa2048[len(docA.rsa2048)-20:len(docA.rsa2048)-16], "AAAA", 1)
	wantReason(t, "a bad signature", attestRaw(t, anon, badSig), codes.Unauthenticated, ipledgerv1.Reason_ATTESTATION_INVALID)
	docC := instanceDocument(t, s, c.ID)
	wantReason(t, "another account", attestRaw(t, anon, resigned(t, s, docC.body, "accountId", "999999999999")), codes.PermissionDenied, ipledgerv1.Reason_ATTESTATION_FOREIGN)
	if err := s.Sim().Sim().TerminateInstances(t.Context(), c.ID); err != nil {
		t.Fatal(err)
	}
	wantReason(t, "a terminated instance", attestRaw(t, anon, docC), codes.FailedPrecondition, ipledgerv1.Reason_INSTANCE_NOT_RUNNING)
	wantReason(t, "B, attested with another key", attestRaw(t, anon, docB), codes.AlreadyExists, ipledgerv1.Reason_INSTANCE_ALREADY_ATTESTED)
	rep, err := admin.Check(t.Context(), &ipledgerv1.CheckRequest{IncludeEc2: true})
	if err != nil || !rep.GetOk() {
		t.Fatalf("check after the refusals: %v %v", rep, err)
	}
	nodes, err := admin.ListNodes(t.Context(), &ipledgerv1.ListNodesRequest{})
	if err != nil || len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetNodeName() != na.Name() {
		t.Fatalf("nodes after the refusals: %v %v", nodes, err)
	}
	ids, err := admin.ListIdentities(t.Context(), &ipledgerv1.ListIdentitiesRequest{})
	if err != nil || len(ids.GetIdentities()) != 2 {
		t.Fatalf("identities after the refusals: %v %v", ids, err)
	}
	if got := s.Allocator().Revision(); got != revBefore {
		t.Logf("revision %d -> %d (the allocator's own writes)", revBefore, got)
	}

	// Renewal: the certificate is renewed twice and the first one has expired, yet the agent
	// never restarted and its Sync stream is the first one; a new ADD still works.
	first := v.Identity
	v = agentA.WaitView(4*certLifetime, "two renewals and the first certificate expired", func(v agent.PoolView) bool {
		return v.Identity.Renewals >= 2 && time.Now().After(first.NotAfter.Add(time.Second))
	})
	if v.Identity.Serial == first.Serial || !v.Identity.NotAfter.After(first.NotAfter) {
		t.Fatalf("identity after renewals %+v, first %+v", v.Identity, first)
	}
	if v.Server.Connects != 1 || !v.Server.Connected || agentA.Exited() {
		t.Fatalf("the renewals dropped the Sync stream or the agent: connects %d, connected %v", v.Server.Connects, v.Server.Connected)
	}
	pa2 := na.CNIToolPod("tool-a2")
	rt.Run("add", pa2).MustSucceed(t, "cnitool add after the renewals")

	// The admin forgets B's squatted identity: B's own agent attests, joins, installs its conflist.
	if _, err := admin.ForgetIdentity(t.Context(), &ipledgerv1.ForgetIdentityRequest{InstanceId: b.ID}); err != nil {
		t.Fatalf("forget B: %v", err)
	}
	agentB.WaitView(30*time.Second, "B attested and connected after forget-identity", func(v agent.PoolView) bool {
		return v.Server.Connected && v.Conflist
	})
	nb.Plugin("ADD", pb, "1.0.0").MustSucceed(t, "ADD on B after it joined")

	// A stopped agent's node: the conflist stays, ADD fails fast with "try again later".
	if err := agentA.Stop(); err != nil {
		t.Fatal(err)
	}
	if e := na.Plugin("ADD", na.NewPod("late"), "1.0.0").CNIError(t); e.Code != types.ErrTryAgainLater {
		t.Fatalf("ADD with the agent stopped: %+v, want try again later", e)
	}
	// A restart reuses the key and the valid certificate on disk: no attestation.
	before, err := admin.ListIdentities(t.Context(), &ipledgerv1.ListIdentitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	agentA = na.StartAgent()
	agentA.WaitConnected(30*time.Second, 0)
	if !strings.Contains(agentA.Log(), "no attestation needed") && !strings.Contains(agentA.Log(), "node attested") {
		t.Fatalf("restarted agent log:\n%s", agentA.Log())
	}
	after, _ := admin.ListIdentities(t.Context(), &ipledgerv1.ListIdentitiesRequest{})
	for i := range before.GetIdentities() {
		if before.GetIdentities()[i].GetKeySha256() != after.GetIdentities()[i].GetKeySha256() {
			t.Fatalf("a restart changed the node key: %v -> %v", before, after)
		}
	}
}

// resigned is a document with one field changed, signed by the simulator (as EC2 would sign
// another account's instance).
func resigned(t *testing.T, s *server.Server, body, field, value string) iidDoc {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatal(err)
	}
	m[field] = value
	b, _ := json.MarshalIndent(m, "", "  ")
	p7, _, err := s.Sim().Sim().SignIdentityDocument(b)
	if err != nil {
		t.Fatal(err)
	}
	return iidDoc{string(b), p7}
}

func newTestKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
