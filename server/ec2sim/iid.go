package ec2sim

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/pkcs7"
)

// iidSigner signs instance identity documents the way EC2 does, with a key of the simulator's
// own: the rsa2048 form (PKCS#7 SignedData, SHA-256, RSA-2048, the document inside, no
// certificate attached: verifiers use the region's published certificate) and the signature
// form (base64 RSA PKCS#1 v1.5 over SHA-256 of the document). The certificate is published on
// the control API (GET /_sim/iid-certificate) and by IIDCertificatePEM; ipledger-server --dev
// trusts it.
type iidSigner struct {
	key  *rsa.PrivateKey
	cert *x509.Certificate
	pem  []byte

	mu    sync.Mutex
	cache map[string][2]string // document -> rsa2048, signature (an instance's document rarely changes)
}

// signed returns both signatures of doc, from the cache when it was signed before.
func (g *iidSigner) signed(doc []byte) (rsa2048, signature string, err error) {
	g.mu.Lock()
	c, ok := g.cache[string(doc)]
	g.mu.Unlock()
	if ok {
		return c[0], c[1], nil
	}
	if rsa2048, err = g.rsa2048(doc); err != nil {
		return "", "", err
	}
	if signature, err = g.signature(doc); err != nil {
		return "", "", err
	}
	g.mu.Lock()
	if len(g.cache) > 4096 {
		clear(g.cache)
	}
	g.cache[string(doc)] = [2]string{rsa2048, signature}
	g.mu.Unlock()
	return rsa2048, signature, nil
}

// processSigner is the one signer of every simulator in a process, made at first use: an
// RSA-2048 key costs tens of milliseconds, and fuzzing builds a simulator per input.
var processSigner = sync.OnceValues(func() (*iidSigner, error) { return newIIDSigner(time.Now()) })

func newIIDSigner(now time.Time) (*iidSigner, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("ec2sim: instance identity key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano()),
		Subject: pkix.Name{Country: []string{"US"}, Province: []string{"Washington State"}, Locality: []string{"Seattle"},
			Organization: []string{"ipledger EC2 simulator"}, CommonName: "ec2sim instance identity"},
		NotBefore: now.Add(-time.Hour),
		NotAfter:  now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:  x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ec2sim: instance identity certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &iidSigner{key: key, cert: cert, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cache: map[string][2]string{}}, nil
}

// rsa2048 is the base64 PKCS#7 SignedData of doc, in 64-column lines as IMDS serves it.
func (g *iidSigner) rsa2048(doc []byte) (string, error) {
	sd, err := pkcs7.NewSignedData(doc)
	if err != nil {
		return "", err
	}
	sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256)
	if err := sd.AddSigner(g.cert, g.key, pkcs7.SignerInfoConfig{}); err != nil {
		return "", err
	}
	der, err := sd.Finish()
	if err != nil {
		return "", err
	}
	return wrap64(base64.StdEncoding.EncodeToString(der)), nil
}

// signature is the base64 RSA PKCS#1 v1.5 SHA-256 signature of doc.
func (g *iidSigner) signature(doc []byte) (string, error) {
	sum := sha256.Sum256(doc)
	sig, err := rsa.SignPKCS1v15(rand.Reader, g.key, crypto.SHA256, sum[:])
	if err != nil {
		return "", err
	}
	return wrap64(base64.StdEncoding.EncodeToString(sig)), nil
}

func wrap64(s string) string {
	var b strings.Builder
	for len(s) > 64 {
		b.WriteString(s[:64])
		b.WriteByte('\n')
		s = s[64:]
	}
	b.WriteString(s)
	return b.String()
}

// signer is the simulator's signer (made at first use).
func (s *Sim) signer() (*iidSigner, error) {
	g, err := processSigner()
	if err != nil {
		return nil, fmt.Errorf("ec2sim: instance identity signer: %w", err)
	}
	return g, nil
}

// IIDCertificatePEM is the PEM certificate whose key signs the simulated instances' identity
// documents (what GET /_sim/iid-certificate serves): every region's, for every simulator of
// this process.
func (s *Sim) IIDCertificatePEM() ([]byte, error) {
	g, err := s.signer()
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), g.pem...), nil
}

// SignIdentityDocument signs any document with the simulator's key, in both forms (rsa2048 and
// signature). Tests use it to make documents EC2 would sign but the server must refuse (another
// account, a terminated instance): the signature is genuine, the facts are not acceptable.
func (s *Sim) SignIdentityDocument(doc []byte) (rsa2048, signature string, err error) {
	g, err := s.signer()
	if err != nil {
		return "", "", err
	}
	if rsa2048, err = g.rsa2048(doc); err != nil {
		return "", "", fmt.Errorf("ec2sim: sign identity document: %w", err)
	}
	if signature, err = g.signature(doc); err != nil {
		return "", "", fmt.Errorf("ec2sim: sign identity document: %w", err)
	}
	return rsa2048, signature, nil
}

func (s *Sim) ctlIIDCertificate(w http.ResponseWriter, _ *http.Request) {
	b, err := s.IIDCertificatePEM()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(b)
}
