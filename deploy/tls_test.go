package deploy

import (
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/ipledger/ipledger/internal/mtls"
	"github.com/ipledger/ipledger/server/config"
)

// The manifests wire mutual TLS end to end: the server serves the certificate of a cert-manager
// Certificate that names ipledger://server and trusts, as client CA, the CA that issued it,
// which also issues the admin's certificate; the agent presents its node's certificate and
// verifies the server with a CA file; every certificate is renewed before it expires.
func TestMutualTLSWiring(t *testing.T) {
	forEachComplete(t, testMutualTLSWiring)
}

func testMutualTLSWiring(t *testing.T, b *bundle) {
	certFor := func(secret string) *cmCertificate {
		for _, c := range b.certificates {
			if c.Spec.SecretName == secret {
				return c
			}
		}
		return nil
	}
	identities := func(c *cmCertificate) []mtls.Identity {
		var out []mtls.Identity
		for _, s := range c.Spec.URIs {
			u, err := url.Parse(s)
			if err != nil {
				t.Errorf("Certificate %s: URI %q: %v", c.Name, s, err)
				continue
			}
			id, err := mtls.ParseIdentity(u)
			if err != nil {
				t.Errorf("Certificate %s: %v", c.Name, err)
				continue
			}
			out = append(out, id)
		}
		return out
	}

	var serverSecret string
	for _, r := range b.runs(t) {
		vals, err := flagValues(r.binary, r.args)
		if err != nil {
			t.Fatal(err)
		}
		switch r.binary {
		case "ipledger-server":
			cfg, err := config.Load("ipledger-server", r.args, func(k string) string { return r.env[k] })
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Transport() != config.TransportTLSFiles {
				t.Fatalf("the server's gRPC is %v, want mutual TLS from files", cfg.Transport())
			}
			m, rel := mountFor(r.c, vals["tls-cert-file"])
			v := volumeNamed(r.wl.pod, m.Name)
			if v == nil || v.Secret == nil {
				t.Fatalf("--tls-cert-file is not on a Secret volume")
			}
			serverSecret = v.Secret.SecretName
			if rel != "tls.crt" {
				t.Errorf("--tls-cert-file is %s of the Secret, want tls.crt", rel)
			}
			for flag, key := range map[string]string{"tls-key-file": "tls.key", "tls-client-ca-file": "ca.crt"} {
				m2, rel2 := mountFor(r.c, vals[flag])
				if m2 == nil || m2.Name != m.Name || rel2 != key {
					t.Errorf("--%s=%s: want key %s of the same Secret as --tls-cert-file", flag, vals[flag], key)
				}
			}
		case "ipledger-agent":
			for _, f := range []string{"tls-cert-file", "tls-key-file", "tls-ca-file"} {
				if vals[f] == "" {
					t.Errorf("the agent runs without --%s: plaintext to the server", f)
				}
			}
		}
	}

	server := certFor(serverSecret)
	if server == nil {
		// certificates.source=secret: the user creates it, with cert-manager's keys.
		if keys, ok := b.keys("Secret", serverSecret); !ok || !slices.Equal(keys, certificateSecretKeys) {
			t.Fatalf("no cert-manager Certificate issues Secret %s, and it is not a documented user Secret (keys %v)", serverSecret, keys)
		}
		if certFor("ipledger-admin-tls") != nil {
			t.Errorf("the server's certificate is the user's, but cert-manager issues the admin's")
		}
		checkCertificates(t, b)
		return
	}
	if ids := identities(server); !slices.Equal(ids, []mtls.Identity{mtls.ServerIdentity}) {
		t.Errorf("the server's Certificate names %v, want only %s", ids, mtls.ServerIdentity)
	}
	if !slices.Contains(server.Spec.Usages, "server auth") {
		t.Errorf("the server's Certificate usages %v lack server auth", server.Spec.Usages)
	}
	admin := certFor("ipledger-admin-tls")
	if admin == nil {
		t.Fatal("no Certificate for ipledgerctl's admin identity")
	}
	if ids := identities(admin); len(ids) != 1 || ids[0].Kind != mtls.KindAdmin {
		t.Errorf("the admin Certificate names %v, want one ipledger://admin/<name>", ids)
	}
	if !slices.Contains(admin.Spec.Usages, "client auth") || slices.Contains(admin.Spec.Usages, "server auth") {
		t.Errorf("the admin Certificate usages %v: want client auth only", admin.Spec.Usages)
	}
	// ca.crt of the server's Secret is the issuing CA: the admin certificate must come from
	// the same issuer to be accepted.
	if admin.Spec.IssuerRef != server.Spec.IssuerRef {
		t.Errorf("admin issuer %+v differs from the server's %+v, whose CA the server trusts for clients", admin.Spec.IssuerRef, server.Spec.IssuerRef)
	}
	checkCertificates(t, b)
}

// checkCertificates: every Certificate comes from an Issuer of the manifests (a CA Issuer whose
// Secret exists, or a self-signed one for a CA certificate), is renewed before it expires and,
// unless it is a CA, gets a new key each time.
func checkCertificates(t *testing.T, b *bundle) {
	t.Helper()
	for _, c := range b.certificates {
		var iss *cmIssuer
		for _, i := range b.issuers {
			if i.Name == c.Spec.IssuerRef.Name && c.Spec.IssuerRef.Kind == "Issuer" && i.Namespace == c.Namespace {
				iss = i
			}
		}
		if iss != nil && iss.Spec.SelfSigned != nil {
			if !c.Spec.IsCA {
				t.Errorf("Certificate %s is self-signed but not a CA", c.Name)
			}
			continue
		}
		if iss == nil || iss.Spec.CA == nil {
			t.Errorf("Certificate %s: issuer %+v is not a CA Issuer of the manifests", c.Name, c.Spec.IssuerRef)
			continue
		}
		if _, ok := b.keys("Secret", iss.Spec.CA.SecretName); !ok {
			t.Errorf("Issuer %s: CA Secret %s is neither rendered nor documented as user-provided", iss.Name, iss.Spec.CA.SecretName)
		}
		d, err1 := time.ParseDuration(c.Spec.Duration)
		rb, err2 := time.ParseDuration(c.Spec.RenewBefore)
		if err1 != nil || err2 != nil || rb <= 0 || rb >= d {
			t.Errorf("Certificate %s: duration %q, renewBefore %q: want renewal before expiry", c.Name, c.Spec.Duration, c.Spec.RenewBefore)
		}
		if c.Spec.PrivateKey.RotationPolicy != "Always" && !c.Spec.IsCA {
			t.Errorf("Certificate %s: the key is not rotated with the certificate", c.Name)
		}
	}
}
