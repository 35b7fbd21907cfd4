// Package iid verifies EC2 instance identity documents: the JSON document IMDS serves at
// /latest/dynamic/instance-identity/document and one of its signatures, the rsa2048 PKCS#7
// SignedData (SHA-256 with RSA-2048) or the base64 "signature" (RSA PKCS#1 v1.5 with SHA-256),
// against AWS's public per-region certificates (embedded, from AWS's documentation "AWS public
// certificates for instance identity document signatures") plus certificates an operator adds
// (a PEM file, or the EC2 simulator's certificate in development).
//
// It owns the trust roots of the signature check and the parsing of the document. It never
// decides whether an instance may join (server/identity does, with EC2's view of the instance),
// never reaches the network, and never trusts a certificate that a signature carries itself.
package iid

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"embed"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/smallstep/pkcs7"
)

// Format is which signature of the document is checked.
type Format string

// Signature formats.
const (
	// FormatRSA2048 is /latest/dynamic/instance-identity/rsa2048: base64 PKCS#7 SignedData that
	// carries the document, verified with AWS's RSA-2048 certificate of the region.
	FormatRSA2048 Format = "rsa2048"
	// FormatSignature is /latest/dynamic/instance-identity/signature: a base64 RSA PKCS#1 v1.5
	// SHA-256 signature of the document, verified with AWS's RSA certificate of the region.
	FormatSignature Format = "signature"
)

// Bounds of what is parsed.
const (
	MaxDocumentBytes  = 16 << 10
	MaxSignatureBytes = 16 << 10
)

// Errors. Every error Verify returns wraps ErrInvalid.
var (
	// ErrInvalid: the document or its signature does not verify, or does not parse.
	ErrInvalid = errors.New("iid: instance identity document does not verify")
)

// Document is the instance identity document (the fields AWS documents).
type Document struct {
	AccountID        string    `json:"accountId"`
	Architecture     string    `json:"architecture"`
	AvailabilityZone string    `json:"availabilityZone"`
	ImageID          string    `json:"imageId"`
	InstanceID       string    `json:"instanceId"`
	InstanceType     string    `json:"instanceType"`
	PendingTime      time.Time `json:"pendingTime"`
	PrivateIP        string    `json:"privateIp"`
	Region           string    `json:"region"`
	Version          string    `json:"version"`
}

var (
	accountRE  = regexp.MustCompile(`^[0-9]{12}$`)
	regionRE   = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	instanceRE = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)
)

// ParseDocument decodes a document and checks the shape of the fields the server relies on.
func ParseDocument(b []byte) (Document, error) {
	var d Document
	if len(b) == 0 || len(b) > MaxDocumentBytes {
		return d, fmt.Errorf("%w: document of %d bytes (1..%d)", ErrInvalid, len(b), MaxDocumentBytes)
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, fmt.Errorf("%w: document is not JSON: %v", ErrInvalid, err)
	}
	switch {
	case !accountRE.MatchString(d.AccountID):
		return d, fmt.Errorf("%w: accountId %q is not an account id", ErrInvalid, d.AccountID)
	case !regionRE.MatchString(d.Region):
		return d, fmt.Errorf("%w: region %q is not a region", ErrInvalid, d.Region)
	case !instanceRE.MatchString(d.InstanceID):
		return d, fmt.Errorf("%w: instanceId %q is not an instance id", ErrInvalid, d.InstanceID)
	case d.PendingTime.IsZero():
		return d, fmt.Errorf("%w: no pendingTime", ErrInvalid)
	}
	return d, nil
}

// Trust holds the certificates that may sign documents: per format, per region, plus
// certificates accepted for every region (added with AddAnyRegion).
type Trust struct {
	byRegion map[Format]map[string][]*x509.Certificate
	any      []*x509.Certificate
}

//go:embed awscerts/rsa2048/*.pem awscerts/signature/*.pem
var awsCerts embed.FS

// AWS returns the trust of AWS's published certificates, for every region listed in AWS's
// documentation (commercial, China and GovCloud partitions).
func AWS() *Trust {
	t := &Trust{byRegion: map[Format]map[string][]*x509.Certificate{}}
	for _, f := range []Format{FormatRSA2048, FormatSignature} {
		t.byRegion[f] = map[string][]*x509.Certificate{}
		dir := "awscerts/" + string(f)
		ents, err := awsCerts.ReadDir(dir)
		if err != nil {
			panic(err) // embedded at build time
		}
		for _, e := range ents {
			b, err := awsCerts.ReadFile(path.Join(dir, e.Name()))
			if err != nil {
				panic(err)
			}
			certs, err := parsePEM(b)
			if err != nil || len(certs) != 1 {
				panic(fmt.Sprintf("iid: embedded %s: %v", e.Name(), err))
			}
			region := strings.TrimSuffix(e.Name(), ".pem")
			t.byRegion[f][region] = append(t.byRegion[f][region], certs...)
		}
	}
	return t
}

// Regions lists the regions with an embedded certificate for f.
func (t *Trust) Regions(f Format) []string {
	var out []string
	for r := range t.byRegion[f] {
		out = append(out, r)
	}
	sort.Strings(out)
	return out
}

// AddAnyRegion trusts certs for every region and both formats (an operator's file for a region
// AWS added later, or the EC2 simulator's certificate in development).
func (t *Trust) AddAnyRegion(certs ...*x509.Certificate) {
	t.any = append(t.any, certs...)
}

// AddPEMFile trusts every certificate of a PEM file for every region.
func (t *Trust) AddPEMFile(file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("iid: trusted certificates: %w", err)
	}
	certs, err := parsePEM(b)
	if err != nil {
		return fmt.Errorf("iid: trusted certificates %s: %w", file, err)
	}
	if len(certs) == 0 {
		return fmt.Errorf("iid: trusted certificates %s: no PEM certificate", file)
	}
	t.AddAnyRegion(certs...)
	return nil
}

// certs are the certificates that may sign a document of region in format f.
func (t *Trust) certs(f Format, region string) []*x509.Certificate {
	out := append([]*x509.Certificate(nil), t.byRegion[f][region]...)
	return append(out, t.any...)
}

func parsePEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// Verify checks the signature of a document in format f and returns the parsed document. For
// FormatRSA2048 the document is the one the SignedData carries; document, when not empty, must be
// byte for byte the same. The signing certificate must be one of t's for the document's region:
// a certificate the signature carries is ignored.
func (t *Trust) Verify(document []byte, signature string, f Format) (Document, error) {
	if len(signature) == 0 || len(signature) > MaxSignatureBytes {
		return Document{}, fmt.Errorf("%w: signature of %d bytes (1..%d)", ErrInvalid, len(signature), MaxSignatureBytes)
	}
	raw, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(signature), ""))
	if err != nil {
		return Document{}, fmt.Errorf("%w: signature is not base64: %v", ErrInvalid, err)
	}
	switch f {
	case FormatRSA2048:
		return t.verifyPKCS7(document, raw)
	case FormatSignature:
		return t.verifyRSA(document, raw)
	}
	return Document{}, fmt.Errorf("%w: unknown signature format %q (want rsa2048 or signature)", ErrInvalid, f)
}

func (t *Trust) verifyPKCS7(document, raw []byte) (Document, error) {
	p7, err := pkcs7.Parse(raw)
	if err != nil {
		return Document{}, fmt.Errorf("%w: rsa2048 signature is not PKCS#7: %v", ErrInvalid, err)
	}
	if len(document) > 0 && !bytes.Equal(p7.Content, document) {
		return Document{}, fmt.Errorf("%w: the rsa2048 signature carries another document than the one sent", ErrInvalid)
	}
	doc, err := ParseDocument(p7.Content)
	if err != nil {
		return Document{}, err
	}
	certs := t.certs(FormatRSA2048, doc.Region)
	if len(certs) == 0 {
		return Document{}, fmt.Errorf("%w: no certificate is trusted for region %s", ErrInvalid, doc.Region)
	}
	// Only our certificates can vouch: the signer is looked up among them by issuer and serial.
	p7.Certificates = certs
	if err := p7.Verify(); err != nil {
		return Document{}, fmt.Errorf("%w: rsa2048 signature of region %s: %v", ErrInvalid, doc.Region, err)
	}
	return doc, nil
}

func (t *Trust) verifyRSA(document, sig []byte) (Document, error) {
	doc, err := ParseDocument(document)
	if err != nil {
		return Document{}, err
	}
	certs := t.certs(FormatSignature, doc.Region)
	if len(certs) == 0 {
		return Document{}, fmt.Errorf("%w: no certificate is trusted for region %s", ErrInvalid, doc.Region)
	}
	sum := sha256.Sum256(document)
	for _, c := range certs {
		pub, ok := c.PublicKey.(*rsa.PublicKey)
		if !ok {
			continue
		}
		if rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig) == nil {
			return doc, nil
		}
	}
	return Document{}, fmt.Errorf("%w: signature does not verify with the certificates of region %s", ErrInvalid, doc.Region)
}
