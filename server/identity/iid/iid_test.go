package iid_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/smallstep/pkcs7"

	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/identity/iid"
)

func TestEmbeddedAWSCertificates(t *testing.T) {
	tr := iid.AWS()
	for _, f := range []iid.Format{iid.FormatRSA2048, iid.FormatSignature} {
		regions := tr.Regions(f)
		// AWS's page lists 36 regions (commercial, China, GovCloud) for each form.
		if len(regions) < 30 {
			t.Fatalf("%s: %d regions embedded: %v", f, len(regions), regions)
		}
		for _, r := range []string{"us-east-1", "eu-west-1", "ap-southeast-2", "cn-north-1", "us-gov-west-1"} {
			if !strings.Contains(strings.Join(regions, " "), r) {
				t.Errorf("%s: no certificate for %s", f, r)
			}
		}
	}
}

// simTrust trusts the simulator's certificate (as --dev does) on top of AWS's.
func simTrust(t *testing.T, sim *ec2sim.Sim) *iid.Trust {
	t.Helper()
	b, err := sim.IIDCertificatePEM()
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	tr := iid.AWS()
	tr.AddAnyRegion(c)
	return tr
}

func imdsGet(t *testing.T, endpoint, path string) []byte {
	t.Helper()
	out, err := imds.New(imds.Options{Endpoint: endpoint}).GetDynamicData(context.Background(), &imds.GetDynamicDataInput{Path: path})
	if err != nil {
		t.Fatalf("IMDS %s: %v", path, err)
	}
	defer out.Content.Close()
	b, err := io.ReadAll(out.Content)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSimulatorDocumentsVerifyInBothForms(t *testing.T) {
	srv, err := ec2sim.Start(ec2sim.DefaultConfig(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tr := simTrust(t, srv.Sim())
	for id, ep := range srv.IMDSEndpoints() {
		doc := imdsGet(t, ep, "instance-identity/document")
		for _, f := range []iid.Format{iid.FormatRSA2048, iid.FormatSignature} {
			sig := imdsGet(t, ep, "instance-identity/"+string(f))
			d, err := tr.Verify(doc, string(sig), f)
			if err != nil {
				t.Fatalf("%s %s: %v", id, f, err)
			}
			if d.InstanceID != id || d.AccountID != "111111111111" || d.Region != "eu-west-1" || d.PendingTime.IsZero() ||
				d.InstanceType != "m5.large" || d.PrivateIP == "" || d.AvailabilityZone == "" || d.ImageID == "" || d.Version == "" || d.Architecture == "" {
				t.Fatalf("%s %s: document %+v", id, f, d)
			}
			// AWS's certificates alone do not trust the simulator.
			if _, err := iid.AWS().Verify(doc, string(sig), f); !errors.Is(err, iid.ErrInvalid) {
				t.Fatalf("%s %s: verified without trusting the simulator: %v", id, f, err)
			}
			// One changed byte of the document is refused.
			bad := []byte(strings.Replace(string(doc), id, "i-0000000000000dead", 1))
			if _, err := tr.Verify(bad, string(sig), f); !errors.Is(err, iid.ErrInvalid) {
				t.Fatalf("%s %s: a changed document verified: %v", id, f, err)
			}
		}
	}
}

func TestVerifyRefusesWhatTheSignatureCarriesItself(t *testing.T) {
	sim, err := ec2sim.New(ec2sim.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	tr := simTrust(t, sim)
	doc := []byte(`{"accountId":"111111111111","instanceId":"i-0123456789abcdef0","region":"eu-west-1","pendingTime":"2026-01-02T03:04:05Z"}`)

	// A rogue key that attaches its own certificate to the SignedData.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "rogue"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	sd, err := pkcs7.NewSignedData(doc)
	if err != nil {
		t.Fatal(err)
	}
	sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256)
	if err := sd.AddSigner(cert, key, pkcs7.SignerInfoConfig{}); err != nil {
		t.Fatal(err)
	}
	p7, err := sd.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Verify(doc, base64.StdEncoding.EncodeToString(p7), iid.FormatRSA2048); !errors.Is(err, iid.ErrInvalid) {
		t.Fatalf("a self-certified signature verified: %v", err)
	}

	// The genuine rsa2048 signature of one document does not vouch for another one sent with it.
	good, sig, err := sim.SignIdentityDocument(doc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Verify(doc, good, iid.FormatRSA2048); err != nil {
		t.Fatalf("genuine: %v", err)
	}
	other := []byte(strings.Replace(string(doc), "111111111111", "222222222222", 1))
	if _, err := tr.Verify(other, good, iid.FormatRSA2048); !errors.Is(err, iid.ErrInvalid) {
		t.Fatalf("rsa2048 with another document: %v", err)
	}
	if _, err := tr.Verify(other, sig, iid.FormatSignature); !errors.Is(err, iid.ErrInvalid) {
		t.Fatalf("signature with another document: %v", err)
	}
	for _, tc := range []struct{ doc, sig, want string }{
		{string(doc), "not base64!", "base64"},
		{string(doc), "", "signature of 0 bytes"},
		{`{"accountId":"1","instanceId":"i-0123456789abcdef0","region":"eu-west-1","pendingTime":"2026-01-02T03:04:05Z"}`, sig, "accountId"},
		{`[]`, sig, "not JSON"},
	} {
		if _, err := tr.Verify([]byte(tc.doc), tc.sig, iid.FormatSignature); !errors.Is(err, iid.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: got %v, want %q", tc.doc, err, tc.want)
		}
	}
	if _, err := tr.Verify(doc, sig, "pkcs7"); err == nil || !strings.Contains(err.Error(), "unknown signature format") {
		t.Fatalf("DSA pkcs7 form: %v", err)
	}
}
