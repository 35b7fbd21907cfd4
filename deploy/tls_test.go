package deploy

import (
	"io"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/agent"
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

	var serverSecret, issuerSecret string
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
			// Attestation: the issuing CA's certificate and key, from one Secret.
			if b.chart && cfg.AttestationOn() != (b.values("attestation", "enabled") != "false") {
				t.Errorf("the server attests: %v; attestation.enabled is %q", cfg.AttestationOn(), b.values("attestation", "enabled"))
			}
			if cfg.IssuerCertFile != "" {
				m, rel := mountFor(r.c, cfg.IssuerCertFile)
				m2, rel2 := mountFor(r.c, cfg.IssuerKeyFile)
				v := volumeNamed(r.wl.pod, m.Name)
				if v == nil || v.Secret == nil || m2 == nil || m2.Name != m.Name || rel != "tls.crt" || rel2 != "tls.key" {
					t.Fatalf("--issuer-cert-file/--issuer-key-file are not tls.crt and tls.key of one Secret")
				}
				issuerSecret = v.Secret.SecretName
				for flag, want := range map[string]string{"attest-account-ids": "accountIDs", "attest-vpc-ids": "vpcIDs"} {
					if got := b.values("attestation", want); b.chart && strings.Trim(got, "[]") != strings.ReplaceAll(vals[flag], ",", " ") {
						t.Errorf("--%s=%s, attestation.%s is %s", flag, vals[flag], want, got)
					}
				}
			}
		case "ipledger-agent":
			cfg, err := agent.LoadConfig(r.args, func(k string) (string, bool) { v, ok := r.env[k]; return v, ok }, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if vals["tls-ca-file"] == "" {
				t.Error("the agent runs without --tls-ca-file: plaintext to the server")
			}
			if !cfg.Attests() && (vals["tls-cert-file"] == "" || vals["tls-key-file"] == "") {
				t.Error("the agent neither attests nor has certificate files")
			}
			// The server's CA certificate comes from a ConfigMap or a Secret holding no
			// private key: nothing on the nodes can sign or impersonate the server.
			if cfg.Attests() {
				m, rel := mountFor(r.c, vals["tls-ca-file"])
				v := volumeNamed(r.wl.pod, m.Name)
				switch {
				case v == nil || rel != "ca.crt" || (v.ConfigMap == nil && v.Secret == nil):
					t.Errorf("--tls-ca-file=%s is not ca.crt of a ConfigMap or Secret", vals["tls-ca-file"])
				case v.ConfigMap != nil:
					if cm := b.configMaps[v.ConfigMap.Name]; cm != nil && !strings.Contains(cm.Data["ca.crt"], "-----BEGIN CERTIFICATE-----") {
						t.Errorf("ConfigMap %s's ca.crt holds no certificate", cm.Name)
					}
				}
			}
			for _, v := range r.wl.pod.Volumes {
				if v.Secret == nil {
					continue
				}
				keys, _ := b.keys("Secret", v.Secret.SecretName)
				for _, it := range v.Secret.Items {
					keys = append(keys, it.Key)
				}
				if slices.Contains(keys, "tls.key") || slices.Contains(keys, "ca.key") {
					t.Errorf("the agent's pod mounts Secret %s, which holds a private key: every node's kubelet would fetch it", v.Secret.SecretName)
				}
			}
		}
	}

	server := certFor(serverSecret)
	// The issuing CA is the CA of the server's client CA bundle, so the server accepts the node
	// certificates it issues: with cert-manager, the CA Secret of the Issuer that signs the
	// server's certificate.
	if issuerSecret != "" && server != nil {
		var iss *cmIssuer
		for _, i := range b.issuers {
			if i.Name == server.Spec.IssuerRef.Name && server.Spec.IssuerRef.Kind == "Issuer" {
				iss = i
			}
		}
		if iss == nil || iss.Spec.CA == nil || iss.Spec.CA.SecretName != issuerSecret {
			t.Errorf("the server issues node certificates with Secret %s, but its own certificate's issuer is %+v: the node certificates would not chain to its client CA", issuerSecret, server.Spec.IssuerRef)
		}
	}
	if issuerSecret != "" {
		if keys, ok := b.keys("Secret", issuerSecret); !ok || !slices.Contains(keys, "tls.crt") || !slices.Contains(keys, "tls.key") {
			t.Errorf("the issuing CA's Secret %s is neither rendered nor documented as user-provided with tls.crt and tls.key (%v)", issuerSecret, keys)
		}
	}
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
