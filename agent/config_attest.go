package agent

import (
	"flag"
	"path/filepath"
	"time"

	"github.com/ipledger/ipledger/agent/attest"
	"github.com/ipledger/ipledger/deploy/cniinstall"
)

// AttestConfig is how the agent gets its certificate when it has none, and where it installs
// the CNI network config once it can serve pods.
type AttestConfig struct {
	// IdentityDir keeps the node's key and attested certificate (--identity-dir). With
	// --tls-ca-file and without --tls-cert-file/--tls-key-file the agent attests: it proves its
	// instance with IMDS's signed identity document and gets a certificate from the server.
	IdentityDir string
	// AttestSignature is the IMDS signature sent: rsa2048 or signature (--attest-signature).
	AttestSignature string
	// CNIConfDir is the node's CNI config directory (--cni-conf-dir; "" = the agent leaves the
	// conflist alone). The agent installs CNIConflistSource there once it holds an identity and
	// a pool, so the node turns Ready only when its agent can serve.
	CNIConfDir        string
	CNIConflistSource string
	// CNIBinDir is checked for the plugin and the chained plugins before the conflist goes in.
	CNIBinDir string
	// CNIVersion overrides the conflist's cniVersion (as ipledger-cni-install --cni-version).
	CNIVersion string
	// AttestRetry is the wait after the server refused the attestation (--attest-retry): an
	// admin may fix the cause (forget a lost key's identity, tag the instance) meanwhile.
	AttestRetry time.Duration
}

// DefaultAttestConfig returns the defaults.
func DefaultAttestConfig() AttestConfig {
	return AttestConfig{
		IdentityDir:       attest.DefaultDir,
		AttestSignature:   attest.FormatRSA2048,
		CNIConflistSource: cniinstall.DefaultConflistSource,
		CNIBinDir:         cniinstall.DefaultBinDir,
		AttestRetry:       30 * time.Second,
	}
}

// Attests says whether the agent obtains its certificate by attestation.
func (c Config) Attests() bool {
	return c.Credentials == nil && c.TLSCAFile != "" && c.TLSCertFile == ""
}

// cniInstall is the conflist installation the agent does (ok false when it does none).
func (c Config) cniInstall() (cniinstall.Config, bool) {
	if c.CNIConfDir == "" {
		return cniinstall.Config{}, false
	}
	ic := cniinstall.DefaultConfig()
	ic.ConfDir, ic.ConflistSource, ic.BinDir, ic.CNIVersion = c.CNIConfDir, c.CNIConflistSource, c.CNIBinDir, c.CNIVersion
	return ic, true
}

func (c *Config) registerAttestFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.IdentityDir, "identity-dir", c.IdentityDir, "directory of the node's key and attested certificate (with --tls-ca-file and no --tls-cert-file the agent attests)")
	fs.StringVar(&c.AttestSignature, "attest-signature", c.AttestSignature, "IMDS signature of the identity document to send: rsa2048 or signature")
	fs.DurationVar(&c.AttestRetry, "attest-retry", c.AttestRetry, "wait after the server refused the attestation before trying again")
	fs.StringVar(&c.CNIConfDir, "cni-conf-dir", c.CNIConfDir, "the node's CNI config directory: install the conflist there once the agent can serve (\"\" = leave it alone)")
	fs.StringVar(&c.CNIConflistSource, "cni-conflist-src", c.CNIConflistSource, "network config list to install in --cni-conf-dir")
	fs.StringVar(&c.CNIBinDir, "cni-bin-dir", c.CNIBinDir, "the node's CNI bin directory (the plugin and its chained plugins must be there)")
	fs.StringVar(&c.CNIVersion, "cni-version", c.CNIVersion, "cniVersion to install the conflist with (\"\" = as shipped)")
}

func (c Config) validateAttest(bad func(flag, format string, args ...any)) {
	if !filepath.IsAbs(c.IdentityDir) {
		bad("identity-dir", "%q is not an absolute path", c.IdentityDir)
	}
	if c.AttestSignature != attest.FormatRSA2048 && c.AttestSignature != attest.FormatSignature {
		bad("attest-signature", "%q is neither rsa2048 nor signature", c.AttestSignature)
	}
	if c.AttestRetry <= 0 {
		bad("attest-retry", "must be positive, not %v", c.AttestRetry)
	}
	if ic, ok := c.cniInstall(); ok {
		ic.PluginSource = cniinstall.DefaultPluginSource
		if err := ic.Validate(); err != nil {
			bad("cni-conf-dir", "%v", err)
		}
	}
}
