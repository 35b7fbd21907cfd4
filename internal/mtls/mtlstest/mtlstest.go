// Package mtlstest issues certificates for tests of ipledger's mutual TLS: a throwaway CA and
// leaves with any identity, validity window and key usage, written as PEM files into a test's
// temporary directory. Only tests import it; it never touches files outside the directories
// tests give it.
package mtlstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ipledger/ipledger/internal/atomicfile"
	"github.com/ipledger/ipledger/internal/mtls"
)

// CA is a certificate authority living in a test's temporary directory.
type CA struct {
	Cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	dir    string
	CAFile string
	serial int64
}

// NewCA creates a CA named name and writes its certificate to <t.TempDir()>/ca.crt.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := &CA{Cert: cert, key: key, dir: dir, CAFile: filepath.Join(dir, "ca.crt"), serial: 1}
	WriteFile(t, ca.CAFile, pemCert(der))
	return ca
}

// Leaf describes a certificate to issue.
type Leaf struct {
	// Identity goes into the URI SAN (zero: no ipledger identity).
	Identity mtls.Identity
	// ExtraURIs are added as further URI SANs.
	ExtraURIs []string
	// NotBefore and NotAfter (zero: one hour ago, one day ahead).
	NotBefore, NotAfter time.Time
	// Server: server authentication with loopback SANs (else client authentication).
	Server bool
	// CommonName (default: the identity's name, or "test").
	CommonName string
}

// Issue signs l and writes <name>.crt and <name>.key into a new temporary directory; the
// returned Files name them with the CA's file.
func (ca *CA) Issue(t testing.TB, name string, l Leaf) mtls.Files {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if l.NotBefore.IsZero() {
		l.NotBefore = now.Add(-time.Hour)
	}
	if l.NotAfter.IsZero() {
		l.NotAfter = now.Add(24 * time.Hour)
	}
	cn := l.CommonName
	if cn == "" {
		cn = l.Identity.Name
	}
	if cn == "" {
		cn = "test"
	}
	ca.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: l.NotBefore, NotAfter: l.NotAfter, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	if !l.Identity.IsZero() {
		tmpl.URIs = append(tmpl.URIs, l.Identity.URI())
	}
	for _, s := range l.ExtraURIs {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	if l.Server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := mtls.Files{Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"), CA: ca.CAFile}
	WriteFile(t, f.Cert, pemCert(der))
	WriteFile(t, f.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	return f
}

// WriteFile replaces path atomically (a temporary file renamed over it), as cert-manager's
// volume updates do, so a reader never sees half a file.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// CopyFiles copies the certificate, key and CA of from over to's paths (atomically each).
func CopyFiles(t testing.TB, from, to mtls.Files) {
	t.Helper()
	for _, p := range [][2]string{{from.Cert, to.Cert}, {from.Key, to.Key}, {from.CA, to.CA}} {
		if p[0] == "" || p[1] == "" {
			continue
		}
		b, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		WriteFile(t, p[1], b)
	}
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
