package server

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/ipledger/ipledger/internal/mtls"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/identity"
	"github.com/ipledger/ipledger/server/identity/iid"
	"github.com/ipledger/ipledger/server/store"
)

var (
	_ identity.Leader = (*Server)(nil)
)

// Identity is the node attestation service (Enabled() false without an issuing CA).
func (s *Server) Identity() *identity.Service { return s.ident }

// Leadership is the leadership of this replica's allocator (nil unless it leads).
func (s *Server) Leadership() *store.Leadership { return s.rep.Leadership() }

// SimInstanceTags are the tags --dev's simulator puts on every instance: the cluster tag the
// attestation checks, so that its instances are the cluster's.
func SimInstanceTags(cfg config.Config) map[string]string {
	key, val, hasVal := strings.Cut(cfg.AttestTag(), "=")
	if key == "" {
		return nil
	}
	if !hasVal {
		val = "owned"
	}
	return map[string]string{key: val}
}

// pendingTag is the tag by which the leader finds the cluster's pending instances: the
// attestation's instance tag ("" with --attest-instance-tag=none or discovery off).
func pendingTag(cfg config.Config) string {
	if cfg.PendingDiscoveryInterval <= 0 {
		return ""
	}
	return cfg.AttestTag()
}

// newIdentity builds the attestation service: AWS's certificates plus --attest-trust-file and,
// with --dev, the simulator's; the issuing CA from --issuer-cert-file/--issuer-key-file or the
// --dev CA. Without an issuing CA the service refuses every attestation (ATTESTATION_DISABLED).
func (s *Server) newIdentity(ctx context.Context) error {
	trust := iid.AWS()
	if s.cfg.AttestTrustFile != "" {
		if err := trust.AddPEMFile(s.cfg.AttestTrustFile); err != nil {
			return fmt.Errorf("attest-trust-file: %w", err)
		}
	}
	accounts, vpcs := s.cfg.AttestAccountIDs, s.cfg.AttestVPCIDs
	if s.cfg.Dev {
		if c, err := s.simIIDCertificate(ctx); err != nil {
			s.log.Warn("--dev: no instance identity certificate from the EC2 simulator; its documents will not verify", "err", err)
		} else {
			trust.AddAnyRegion(c)
		}
		if s.Sim() != nil {
			snap := s.Sim().Sim().Snapshot()
			if len(accounts) == 0 {
				accounts = []string{snap.AccountID}
			}
			if len(vpcs) == 0 {
				vpcs = []string{snap.VPC.ID}
			}
		}
	}
	var issuer *mtls.Issuer
	var err error
	switch {
	case s.cfg.IssuerCertFile != "":
		if issuer, err = mtls.NewIssuer(s.cfg.IssuerCertFile, s.cfg.IssuerKeyFile, nil); err != nil {
			return fmt.Errorf("issuer-cert-file: %w", err)
		}
	case s.devCerts != nil:
		if issuer, err = mtls.NewIssuer(s.devCerts.CA(), s.devCerts.CAKey(), nil); err != nil {
			return fmt.Errorf("--dev issuing CA: %w", err)
		}
	}
	if issuer != nil && s.tls != nil {
		if _, err := issuer.CA().Verify(x509.VerifyOptions{Roots: s.tls.CAs(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			s.log.Warn("the issuing CA does not chain to --tls-client-ca-file: the server will refuse the node certificates it issues",
				"issuer", issuer.CA().Subject.String(), "err", err)
		}
	}
	if issuer != nil && len(vpcs) == 0 {
		s.log.Warn("attestation accepts instances of any VPC: set --attest-vpc-ids to the cluster's VPC")
	}
	s.ident = identity.New(identity.Config{
		Region: s.cfg.Region, Accounts: accounts, VPCs: vpcs, InstanceTag: s.cfg.AttestTag(),
		MaxInstanceAge: s.cfg.AttestMaxInstanceAge.D(), NodeName: s.cfg.AttestNodeName, Lifetime: s.cfg.NodeCertLifetime.D(),
		Trust: trust, Issuer: issuer, Logger: s.log.With("component", "identity"),
	}, s.gw, s)
	if issuer != nil {
		s.log.Info("node attestation on", "issuer", issuer.CA().Subject.String(), "lifetime", s.cfg.NodeCertLifetime.D(),
			"accounts", accounts, "vpcs", vpcs, "tag", s.cfg.AttestTag(), "node_name", s.cfg.AttestNodeName)
	}
	return nil
}

// simIIDCertificate is --dev's simulator certificate: the in-process one's, or the one an
// external simulator (--ec2-endpoint) publishes on its control API.
func (s *Server) simIIDCertificate(ctx context.Context) (*x509.Certificate, error) {
	b, err := s.simIIDCertificatePEM(ctx)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func (s *Server) simIIDCertificatePEM(ctx context.Context) ([]byte, error) {
	if s.Sim() != nil {
		return s.Sim().Sim().IIDCertificatePEM()
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(s.cfg.EC2Endpoint, "/")+"/_sim/iid-certificate", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /_sim/iid-certificate: %s", resp.Status)
	}
	return b, nil
}

// dashboardGuard lets the dashboard and its JSON answer clients on loopback (kubectl
// port-forward, a shell on the node) and, with --dashboard-token-file, others that send
// "Authorization: Bearer <token>" (read at every request, so a rotated Secret applies at once).
func (s *Server) dashboardGuard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if ip, err := netip.ParseAddr(host); err == nil && ip.Unmap().IsLoopback() {
			h.ServeHTTP(w, r)
			return
		}
		if s.cfg.DashboardTokenFile != "" {
			want, err := os.ReadFile(s.cfg.DashboardTokenFile)
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			tok := strings.TrimSpace(string(want))
			if err == nil && ok && tok != "" && subtle.ConstantTimeCompare([]byte(got), []byte(tok)) == 1 {
				h.ServeHTTP(w, r)
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="ipledger dashboard"`)
			http.Error(w, "the dashboard needs Authorization: Bearer <token of --dashboard-token-file>", http.StatusUnauthorized)
			return
		}
		http.Error(w, "the dashboard answers loopback only: kubectl -n kube-system port-forward <ipledger-server pod> 7401, "+
			"then http://127.0.0.1:7401/ (or set --dashboard-token-file)", http.StatusForbidden)
	})
}
