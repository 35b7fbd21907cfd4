package config

import (
	"regexp"
	"strings"
	"time"
)

// Attest is the server's node attestation and dashboard settings.
type Attest struct {
	// AttestAccountIDs are the AWS accounts whose instances may attest (empty: any that EC2
	// describes with the server's credentials, i.e. its own account).
	AttestAccountIDs []string `json:"attest_account_ids"`
	// AttestVPCIDs are the VPCs whose instances may attest (empty: any).
	AttestVPCIDs []string `json:"attest_vpc_ids"`
	// AttestInstanceTag is the tag an attesting instance must carry, "key" or "key=value"
	// ("": kubernetes.io/cluster/<cluster-name>, which EKS node groups and Karpenter put on
	// their instances; "none": no check).
	AttestInstanceTag string `json:"attest_instance_tag"`
	// AttestMaxInstanceAge bounds the time from launch to an instance's first attestation.
	AttestMaxInstanceAge Duration `json:"attest_max_instance_age"`
	// AttestNodeName names attested nodes: "private-dns" (EKS's node names) or "instance-id"
	// (clusters that name nodes by resource name).
	AttestNodeName string `json:"attest_node_name"`
	// AttestTrustFile adds certificates that may sign identity documents, for any region.
	AttestTrustFile string `json:"attest_trust_file"`
	// IssuerCertFile and IssuerKeyFile are the CA that signs node certificates (the Secret of
	// the cluster's CA); with them, or with --dev's CA, agents without certificates attest.
	IssuerCertFile string `json:"issuer_cert_file"`
	IssuerKeyFile  string `json:"issuer_key_file"`
	// NodeCertLifetime is the lifetime of node certificates (agents renew at two thirds).
	NodeCertLifetime Duration `json:"node_cert_lifetime"`
	// DashboardTokenFile holds a bearer token: the dashboard and its JSON (everything on
	// --http-listen but /metrics, /healthz and /readyz) answer clients on loopback, and others
	// only with "Authorization: Bearer <token>". Without it, only loopback (kubectl port-forward).
	DashboardTokenFile string `json:"dashboard_token_file"`
}

// DefaultAttest is the default of each attestation setting.
func DefaultAttest() Attest {
	return Attest{
		AttestMaxInstanceAge: Duration(2 * time.Hour),
		AttestNodeName:       "private-dns",
		NodeCertLifetime:     Duration(24 * time.Hour),
	}
}

// MinNodeCertLifetime is the shortest --node-cert-lifetime (tests use short ones).
const MinNodeCertLifetime = 10 * time.Second

// AttestTag is the tag check in force ("" for none).
func (c Config) AttestTag() string {
	switch c.AttestInstanceTag {
	case "":
		return "kubernetes.io/cluster/" + c.ClusterName
	case "none":
		return ""
	}
	return c.AttestInstanceTag
}

// AttestationOn says whether agents may attest: an issuing CA is given, or --dev's CA issues.
func (c Config) AttestationOn() bool {
	return c.IssuerCertFile != "" || c.Transport() == TransportDevCerts
}

var (
	accountIDRE = regexp.MustCompile(`^[0-9]{12}$`)
	vpcIDRE     = regexp.MustCompile(`^vpc-[0-9a-f]{8,17}$`)
)

func (c Config) validateAttest(bad func(setting, format string, args ...any)) {
	for _, a := range c.AttestAccountIDs {
		if !accountIDRE.MatchString(a) {
			bad("attest-account-ids", "%q is not a 12-digit account id", a)
		}
	}
	for _, v := range c.AttestVPCIDs {
		if !vpcIDRE.MatchString(v) {
			bad("attest-vpc-ids", "%q is not a VPC id", v)
		}
	}
	if k, _, _ := strings.Cut(c.AttestInstanceTag, "="); c.AttestInstanceTag != "" && c.AttestInstanceTag != "none" && (k == "" || len(k) > 128) {
		bad("attest-instance-tag", "%q: want key or key=value (a key of 1..128 characters), or none", c.AttestInstanceTag)
	}
	if c.AttestMaxInstanceAge < 0 {
		bad("attest-max-instance-age", "must not be negative")
	}
	if c.AttestNodeName != "private-dns" && c.AttestNodeName != "instance-id" {
		bad("attest-node-name", "%q is neither private-dns nor instance-id", c.AttestNodeName)
	}
	if (c.IssuerCertFile == "") != (c.IssuerKeyFile == "") {
		bad("issuer-cert-file", "--issuer-cert-file and --issuer-key-file go together")
	}
	if c.IssuerCertFile != "" && c.Transport() == TransportPlaintext {
		bad("issuer-cert-file", "attestation needs TLS on gRPC (--tls-cert-file, --tls-key-file, --tls-client-ca-file)")
	}
	if c.NodeCertLifetime.D() < MinNodeCertLifetime {
		bad("node-cert-lifetime", "must be at least %s, got %s", MinNodeCertLifetime, c.NodeCertLifetime.D())
	}
}
