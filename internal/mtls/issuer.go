package mtls

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"
)

// AttestedScheme is the scheme of the URI SAN that names the EC2 instance an attested node
// certificate was issued for: aws-iid://<account>/<region>/<instance-id>. It is not an
// ipledger identity (IdentityOf ignores it); the server uses it to hold an attested node to
// its own instance.
const AttestedScheme = "aws-iid"

// ErrBadCSR: a certificate signing request does not parse, is not self-signed by its key, or
// uses a key the issuer does not accept.
var ErrBadCSR = errors.New("mtls: unacceptable certificate signing request")

// Instance is the EC2 instance an attested certificate names.
type Instance struct {
	Account, Region, ID string
}

var (
	accountRE = regexp.MustCompile(`^[0-9]{12}$`)
	regionRE  = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	instRE    = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)
)

// URI is the instance as a URI SAN.
func (in Instance) URI() *url.URL {
	return &url.URL{Scheme: AttestedScheme, Host: in.Account, Path: "/" + in.Region + "/" + in.ID}
}

// AttestedInstanceOf returns the instance an attested certificate names (false when it names
// none or the URI is malformed).
func AttestedInstanceOf(cert *x509.Certificate) (Instance, bool) {
	if cert == nil {
		return Instance{}, false
	}
	for _, u := range cert.URIs {
		if u.Scheme != AttestedScheme {
			continue
		}
		parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
		if len(parts) != 2 || !accountRE.MatchString(u.Host) || !regionRE.MatchString(parts[0]) || !instRE.MatchString(parts[1]) {
			return Instance{}, false
		}
		return Instance{Account: u.Host, Region: parts[0], ID: parts[1]}, true
	}
	return Instance{}, false
}

// KeyFingerprint is the hex SHA-256 of a public key's SubjectPublicKeyInfo.
func KeyFingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// ParseCSR decodes a PEM PKCS#10 request, checks its self-signature and that its key is ECDSA
// P-256/P-384, Ed25519 or RSA of at least 2048 bits.
func ParseCSR(b []byte) (*x509.CertificateRequest, error) {
	if len(b) == 0 || len(b) > 16<<10 {
		return nil, fmt.Errorf("%w: %d bytes (1..16384)", ErrBadCSR, len(b))
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("%w: not a PEM CERTIFICATE REQUEST", ErrBadCSR)
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: not signed by its own key: %v", ErrBadCSR, err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("%w: ECDSA curve %s (want P-256 or P-384)", ErrBadCSR, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("%w: RSA key of %d bits (want at least 2048)", ErrBadCSR, k.N.BitLen())
		}
	default:
		return nil, fmt.Errorf("%w: key type %T", ErrBadCSR, csr.PublicKey)
	}
	return csr, nil
}

// NewCSR makes a PEM certificate signing request for key (the agent's; the subject and SANs
// are the issuer's to decide, so the request carries none).
func NewCSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ipledger node"}}, key)
	if err != nil {
		return nil, fmt.Errorf("mtls: certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// Issuer signs node certificates with a CA it holds (the cluster's issuing CA from a Secret, or
// the --dev CA). It never writes anything: certificates go back to the caller.
type Issuer struct {
	cert  *x509.Certificate
	chain []*x509.Certificate // the CA and any intermediates above it, as in its file
	key   crypto.Signer
	now   func() time.Time
}

// NewIssuer loads the issuing CA from PEM files: certFile holds the CA certificate (optionally
// followed by its own chain), keyFile its PKCS#8, PKCS#1 or SEC 1 private key.
func NewIssuer(certFile, keyFile string, now func() time.Time) (*Issuer, error) {
	if now == nil {
		now = time.Now
	}
	b, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("mtls: issuing CA: %w", err)
	}
	var chain []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("mtls: issuing CA %s: %w", certFile, err)
		}
		chain = append(chain, c)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("mtls: issuing CA %s: no PEM certificate", certFile)
	}
	if !chain[0].IsCA || chain[0].KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("mtls: issuing CA %s: the first certificate is not a CA that may sign certificates", certFile)
	}
	key, err := readAnyKey(keyFile)
	if err != nil {
		return nil, fmt.Errorf("mtls: issuing CA key: %w", err)
	}
	if fp1, _ := KeyFingerprint(key.Public()); fp1 != mustFingerprint(chain[0].PublicKey) {
		return nil, fmt.Errorf("mtls: issuing CA key %s does not match the certificate %s", keyFile, certFile)
	}
	return &Issuer{cert: chain[0], chain: chain, key: key, now: now}, nil
}

func mustFingerprint(pub crypto.PublicKey) string {
	fp, _ := KeyFingerprint(pub)
	return fp
}

func readAnyKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM key", path)
	}
	var k any
	switch blk.Type {
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: not a signing key", path)
	}
	return s, nil
}

// CA is the issuing CA's certificate.
func (is *Issuer) CA() *x509.Certificate { return is.cert }

// Issued is a node certificate.
type Issued struct {
	Cert *x509.Certificate
	// ChainPEM is the certificate followed by the issuer's chain, PEM.
	ChainPEM []byte
}

// IssueNode signs a client certificate for node name's agent, for the key of csr, valid from a
// minute ago for lifetime (capped at the CA's own expiry), naming the attested instance in a
// second URI SAN when in is not zero.
func (is *Issuer) IssueNode(csr *x509.CertificateRequest, name string, in Instance, lifetime time.Duration) (Issued, error) {
	if err := ValidName(name); err != nil {
		return Issued{}, fmt.Errorf("mtls: issue node certificate: %w", err)
	}
	if lifetime <= 0 {
		return Issued{}, errors.New("mtls: issue node certificate: lifetime must be positive")
	}
	now := is.now()
	notAfter := now.Add(lifetime)
	if notAfter.After(is.cert.NotAfter) {
		notAfter = is.cert.NotAfter
	}
	uris := []*url.URL{NodeIdentity(name).URI()}
	if in != (Instance{}) {
		uris = append(uris, in.URI())
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"ipledger"}},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:         uris,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, is.cert, csr.PublicKey, is.key)
	if err != nil {
		return Issued{}, fmt.Errorf("mtls: issue node certificate for %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return Issued{}, err
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for _, c := range is.chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return Issued{Cert: cert, ChainPEM: out}, nil
}
