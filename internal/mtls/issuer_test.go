package mtls_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/internal/mtls"
	"github.com/ipledger/ipledger/internal/mtls/mtlstest"
)

func devIssuer(t *testing.T) (mtls.DevCerts, *mtls.Issuer) {
	t.Helper()
	dev, err := mtls.EnsureDevCerts(t.TempDir(), nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	is, err := mtls.NewIssuer(dev.CA(), dev.CAKey(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return dev, is
}

func TestIssueNodeCertificateForACSR(t *testing.T) {
	dev, is := devIssuer(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrPEM, err := mtls.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := mtls.ParseCSR(csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	in := mtls.Instance{Account: "111111111111", Region: "eu-west-1", ID: "i-0123456789abcdef0"}
	got, err := is.IssueNode(csr, "ip-10-0-0-1.eu-west-1.compute.internal", in, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := mtls.IdentityOf(got.Cert); err != nil || id != mtls.NodeIdentity("ip-10-0-0-1.eu-west-1.compute.internal") {
		t.Fatalf("identity %v %v", id, err)
	}
	if gotIn, ok := mtls.AttestedInstanceOf(got.Cert); !ok || gotIn != in {
		t.Fatalf("instance %v %v", gotIn, ok)
	}
	if d := time.Until(got.Cert.NotAfter); d > time.Hour || d < 59*time.Minute {
		t.Fatalf("not after in %v", d)
	}
	if fp1, _ := mtls.KeyFingerprint(got.Cert.PublicKey); fp1 != mustFP(t, key) {
		t.Fatal("certificate for another key")
	}
	roots := x509.NewCertPool()
	roots.AddCert(is.CA())
	if _, err := got.Cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("does not verify as a client certificate of the CA: %v", err)
	}
	// The chain PEM, written with the key, loads as a Source (as the agent does).
	dir := t.TempDir()
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	mtlstest.WriteFile(t, filepath.Join(dir, "node.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	mtlstest.WriteFile(t, filepath.Join(dir, "node.crt"), got.ChainPEM)
	if _, err := mtls.NewSource(mtls.Files{Cert: filepath.Join(dir, "node.crt"), Key: filepath.Join(dir, "node.key"), CA: dev.CA()}, mtls.SourceOptions{}); err != nil {
		t.Fatal(err)
	}
	// A lifetime beyond the CA's own is cut to it.
	long, err := is.IssueNode(csr, "n1", mtls.Instance{}, 100*365*24*time.Hour)
	if err != nil || !long.Cert.NotAfter.Equal(is.CA().NotAfter) {
		t.Fatalf("long: %v %v", long.Cert.NotAfter, err)
	}
	if _, ok := mtls.AttestedInstanceOf(long.Cert); ok {
		t.Fatal("names an instance it was not given")
	}
	if _, err := is.IssueNode(csr, "Not_A_Name", in, time.Hour); err == nil {
		t.Fatal("issued for a bad name")
	}
}

func mustFP(t *testing.T, key *ecdsa.PrivateKey) string {
	fp, err := mtls.KeyFingerprint(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

func TestParseCSRRefusesWhatItCannotTrust(t *testing.T) {
	weak, _ := rsa.GenerateKey(rand.Reader, 1024)
	weakCSR, err := mtls.NewCSR(weak)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good, _ := mtls.NewCSR(key)
	blk, _ := pem.Decode(good)
	blk.Bytes[len(blk.Bytes)-3] ^= 0xff // the signature
	tampered := pem.EncodeToMemory(blk)
	for name, b := range map[string][]byte{"empty": nil, "garbage": []byte("nope"), "rsa1024": weakCSR, "tampered": tampered,
		"certificate": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}})} {
		if _, err := mtls.ParseCSR(b); !errors.Is(err, mtls.ErrBadCSR) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestNewIssuerNamesBadFiles(t *testing.T) {
	dev, _ := devIssuer(t)
	other, _ := devIssuer(t)
	if _, err := mtls.NewIssuer(dev.CA(), other.CAKey(), nil); err == nil {
		t.Fatal("a key of another CA was accepted")
	}
	if _, err := mtls.NewIssuer(dev.Admin().Cert, dev.Admin().Key, nil); err == nil {
		t.Fatal("a leaf was accepted as issuing CA")
	}
	missing := filepath.Join(t.TempDir(), "none.crt")
	if _, err := mtls.NewIssuer(missing, dev.CAKey(), nil); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestAnonymousClientsOnlyWhenAllowed(t *testing.T) {
	ca := mtlstest.NewCA(t, "cluster CA")
	rogue := mtlstest.NewCA(t, "rogue CA")
	src, err := mtls.NewSource(ca.Issue(t, "server", mtlstest.Leaf{Identity: mtls.ServerIdentity, Server: true}), mtls.SourceOptions{})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := mtls.NewServerCredentials(src, mtls.ServerOptions{AllowAnonymous: true})
	if err != nil {
		t.Fatal(err)
	}
	addr, last := healthServer(t, creds)
	// No certificate: the handshake completes (the server verifies nothing about the client)
	// and the call carries no identity.
	if err := check(t, addr, clientCreds(t, mtls.Files{CA: ca.CAFile})); err != nil {
		t.Fatalf("anonymous: %v", err)
	}
	select {
	case id := <-last:
		t.Fatalf("an anonymous call had identity %v", id)
	default:
	}
	// A certificate of another CA is still refused, and one of the CA still identifies.
	withCA := rogue.Issue(t, "n", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1")})
	withCA.CA = ca.CAFile
	if err := check(t, addr, clientCreds(t, withCA)); status.Code(err) != codes.Unavailable {
		t.Fatalf("rogue certificate: %v", err)
	}
	if err := check(t, addr, clientCreds(t, ca.Issue(t, "n", mtlstest.Leaf{Identity: mtls.NodeIdentity("n1")}))); err != nil {
		t.Fatal(err)
	}
	if id := <-last; id != mtls.NodeIdentity("n1") {
		t.Fatalf("identity %v", id)
	}
}
