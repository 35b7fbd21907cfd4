package mtls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ipledger/ipledger/internal/atomicfile"
)

// Lifetimes of development certificates.
const (
	devCALifetime   = 10 * 365 * 24 * time.Hour
	devLeafLifetime = 365 * 24 * time.Hour
	// devRenewBefore: a leaf that expires sooner than this is issued again at start.
	devRenewBefore = 7 * 24 * time.Hour
	// DevAdminName is the name in the development admin certificate (ipledger://admin/dev-admin).
	DevAdminName = "dev-admin"
)

// DevCerts are the files of a development CA directory (ipledger-server --dev):
//
//	ca.crt, ca.key            the CA (the key mode 0600)
//	server.crt, server.key    ipledger://server; SANs 127.0.0.1, ::1, localhost
//	admin.crt, admin.key      ipledger://admin/dev-admin (for ipledgerctl)
//	nodes/<node>.crt, .key    ipledger://node/<node> (one per simulated instance)
type DevCerts struct {
	Dir string
}

// CA is the CA certificate (the bundle both sides verify with).
func (d DevCerts) CA() string { return filepath.Join(d.Dir, "ca.crt") }

// CAKey is the CA's private key.
func (d DevCerts) CAKey() string { return filepath.Join(d.Dir, "ca.key") }

// Server is the server's certificate, key and the client CA.
func (d DevCerts) Server() Files {
	return Files{Cert: filepath.Join(d.Dir, "server.crt"), Key: filepath.Join(d.Dir, "server.key"), CA: d.CA()}
}

// Admin is the admin client's certificate, key and the server CA.
func (d DevCerts) Admin() Files {
	return Files{Cert: filepath.Join(d.Dir, "admin.crt"), Key: filepath.Join(d.Dir, "admin.key"), CA: d.CA()}
}

// Node is node name's agent certificate, key and the server CA.
func (d DevCerts) Node(name string) Files {
	return Files{Cert: filepath.Join(d.Dir, "nodes", name+".crt"), Key: filepath.Join(d.Dir, "nodes", name+".key"), CA: d.CA()}
}

// EnsureDevCerts creates a development CA in dir with the server's and the admin's
// certificates and one per node name, or reuses what is there: the CA is kept when it loads
// (a CA that does not load is an error naming the file, never silently replaced, since clients
// may trust it), and a leaf is issued again only when it is missing, does not load, does not
// chain to the CA, names another identity or expires within a week.
func EnsureDevCerts(dir string, nodes []string, now time.Time) (DevCerts, error) {
	d := DevCerts{Dir: dir}
	for _, n := range nodes {
		if err := ValidName(n); err != nil {
			return d, fmt.Errorf("mtls: dev certificate for node: %w", err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "nodes"), 0o700); err != nil {
		return d, fmt.Errorf("mtls: dev certificate directory: %w", err)
	}
	ca, caKey, err := ensureCA(d, now)
	if err != nil {
		return d, err
	}
	leaves := []struct {
		files Files
		id    Identity
		cn    string
	}{
		{d.Server(), ServerIdentity, "ipledger-server"},
		{d.Admin(), AdminIdentity(DevAdminName), DevAdminName},
	}
	for _, n := range nodes {
		leaves = append(leaves, struct {
			files Files
			id    Identity
			cn    string
		}{d.Node(n), NodeIdentity(n), n})
	}
	for _, l := range leaves {
		if leafUsable(l.files, ca, l.id, now) {
			continue
		}
		if err := issueLeaf(l.files, ca, caKey, l.id, l.cn, now); err != nil {
			return d, err
		}
	}
	return d, nil
}

func ensureCA(d DevCerts, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	_, certErr := os.Stat(d.CA())
	_, keyErr := os.Stat(d.CAKey())
	if certErr == nil || keyErr == nil {
		cert, err := readCert(d.CA())
		if err != nil {
			return nil, nil, fmt.Errorf("mtls: dev CA %s does not load (remove %s to create a new CA): %w", d.CA(), d.Dir, err)
		}
		key, err := readKey(d.CAKey())
		if err != nil {
			return nil, nil, fmt.Errorf("mtls: dev CA key %s does not load (remove %s to create a new CA): %w", d.CAKey(), d.Dir, err)
		}
		if !cert.IsCA {
			return nil, nil, fmt.Errorf("mtls: %s is not a CA certificate", d.CA())
		}
		return cert, key, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "ipledger development CA", Organization: []string{"ipledger"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(devCALifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("mtls: create dev CA: %w", err)
	}
	if err := writeKey(d.CAKey(), key); err != nil {
		return nil, nil, err
	}
	if err := writeCert(d.CA(), der); err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// leafUsable reports whether f holds a certificate for id signed by ca, valid for a week more.
func leafUsable(f Files, ca *x509.Certificate, id Identity, now time.Time) bool {
	cert, err := readCert(f.Cert)
	if err != nil {
		return false
	}
	if _, err := readKey(f.Key); err != nil {
		return false
	}
	if got, err := IdentityOf(cert); err != nil || got != id {
		return false
	}
	if cert.CheckSignatureFrom(ca) != nil || now.Before(cert.NotBefore) || now.Add(devRenewBefore).After(cert.NotAfter) {
		return false
	}
	if id.Kind == KindServer {
		// The dev server must answer on every loopback name.
		if !slices.Contains(cert.DNSNames, "localhost") || len(cert.IPAddresses) < 2 {
			return false
		}
	}
	return true
}

func issueLeaf(f Files, ca *x509.Certificate, caKey crypto.Signer, id Identity, cn string, now time.Time) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"ipledger"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(devLeafLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		URIs:         []*url.URL{id.URI()},
	}
	if id.Kind == KindServer {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("mtls: issue dev certificate for %s: %w", id, err)
	}
	if err := writeKey(f.Key, key); err != nil {
		return err
	}
	return writeCert(f.Cert, der)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}

func readKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New(path + ": not a signing key")
	}
	return s, nil
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

func writeCert(path string, der []byte) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// writeFile writes atomically: a temporary file in the same directory, then rename.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.Write(path, data, mode); err != nil {
		return fmt.Errorf("mtls: write %s: %w", path, err)
	}
	return nil
}
