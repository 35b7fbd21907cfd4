package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/identity/iid"
	"github.com/ipledger/ipledger/server/store"
)

// MethodAWSIID is the method of identities attested with an EC2 instance identity document.
const MethodAWSIID = "aws-iid"

// Node name sources (Config.NodeName).
const (
	NodeNamePrivateDNS = "private-dns"
	NodeNameInstanceID = "instance-id"
)

// Defaults.
const (
	DefaultLifetime       = 24 * time.Hour
	DefaultMaxInstanceAge = 2 * time.Hour
	DefaultSweepInterval  = 10 * time.Minute
	// Attestations are rare (one per node start and after an expiry): these buckets bound what
	// a flood of documents costs, far above a healthy cluster's rate.
	globalRate, globalBurst         = 20, 100
	perInstanceRate, perInstanceBur = 1, 5
)

// Errors. Package api maps each to a gRPC status and a Reason.
var (
	ErrDisabled        = errors.New("identity: attestation is off (no issuing CA)")
	ErrInvalid         = errors.New("identity: attestation does not verify")
	ErrForeign         = errors.New("identity: instance is not this cluster's")
	ErrMismatch        = errors.New("identity: EC2 does not confirm the document")
	ErrNotRunning      = errors.New("identity: instance is not running")
	ErrTooLate         = errors.New("identity: instance launched too long ago for a first attestation")
	ErrAlreadyAttested = errors.New("identity: instance already attested with another key")
	ErrRateLimited     = errors.New("identity: too many attestations")
	ErrNotLeader       = errors.New("identity: not the leader")
	ErrNotFound        = errors.New("identity: no such identity")
	ErrUnavailable     = errors.New("identity: store or EC2 unavailable")
	ErrNotAttested     = errors.New("identity: the caller's certificate is not an attested one")
)

// RefusedError carries what a refusal names (ErrorInfo metadata).
type RefusedError struct {
	Err  error
	Msg  string
	Meta map[string]string
}

func (e *RefusedError) Error() string { return e.Msg }

// Unwrap returns the sentinel.
func (e *RefusedError) Unwrap() error { return e.Err }

func refuse(sentinel error, meta map[string]string, format string, args ...any) error {
	return &RefusedError{Err: sentinel, Msg: fmt.Sprintf(format, args...), Meta: meta}
}

// EC2 is the part of the gateway the service uses.
type EC2 interface {
	DescribeInstances(ctx context.Context, p ec2gw.Priority, ids []string) ([]ec2gw.Instance, error)
}

// Leader gives the leadership to fence writes with (nil when this replica does not lead) and
// the store to read from.
type Leader interface {
	Leadership() *store.Leadership
	Store() *store.Store
}

// Config is the service's settings.
type Config struct {
	// Region is the server's region: documents of other regions are foreign.
	Region string
	// Accounts accepted (empty: any account whose instance EC2 of the server's own credentials
	// describes, which in practice is the server's account).
	Accounts []string
	// VPCs accepted (empty: any).
	VPCs []string
	// InstanceTag the instance must carry: "key" (any value) or "key=value" ("" no check).
	InstanceTag string
	// MaxInstanceAge bounds the time from launch to a first attestation (0: no bound).
	MaxInstanceAge time.Duration
	// NodeName is NodeNamePrivateDNS (default) or NodeNameInstanceID.
	NodeName string
	// Lifetime of node certificates (default DefaultLifetime).
	Lifetime time.Duration
	// SweepInterval between sweeps of identities whose instance is gone (default 10 min).
	SweepInterval time.Duration
	Trust         *iid.Trust
	// Issuer signs node certificates (nil: attestation is off).
	Issuer *mtls.Issuer
	Logger *slog.Logger
	Now    func() time.Time
}

// Service attests nodes.
type Service struct {
	cfg    Config
	gw     EC2
	leader Leader
	log    *slog.Logger
	global *rate.Limiter

	mu   sync.Mutex
	per  map[string]*rate.Limiter // by instance id
	seen map[string]seenCert      // node name -> the certificate its agent last presented
}

type seenCert struct {
	notAfter time.Time
	attested bool
}

// New builds a service.
func New(cfg Config, gw EC2, leader Leader) *Service {
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.NodeName == "" {
		cfg.NodeName = NodeNamePrivateDNS
	}
	if cfg.Trust == nil {
		cfg.Trust = iid.AWS()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Service{cfg: cfg, gw: gw, leader: leader, log: cfg.Logger,
		global: rate.NewLimiter(globalRate, globalBurst), per: map[string]*rate.Limiter{}, seen: map[string]seenCert{}}
}

// Enabled says whether the service can issue certificates.
func (s *Service) Enabled() bool { return s.cfg.Issuer != nil }

// Lifetime is the lifetime of the certificates it issues.
func (s *Service) Lifetime() time.Duration { return s.cfg.Lifetime }

// Attest verifies an attestation and returns the node's certificate (see the package comment).
func (s *Service) Attest(ctx context.Context, req *ipledgerv1.AttestRequest) (*ipledgerv1.NodeCertificate, error) {
	if s.cfg.Issuer == nil {
		return nil, refuse(ErrDisabled, nil, "this server does not attest nodes: it has no issuing CA (--issuer-cert-file, --issuer-key-file)")
	}
	if !s.global.Allow() {
		return nil, refuse(ErrRateLimited, nil, "more than %d attestations a second; retry later", globalRate)
	}
	var format iid.Format
	switch req.GetSignatureFormat() {
	case ipledgerv1.SignatureFormat_SIGNATURE_FORMAT_RSA2048:
		format = iid.FormatRSA2048
	case ipledgerv1.SignatureFormat_SIGNATURE_FORMAT_SIGNATURE:
		format = iid.FormatSignature
	default:
		return nil, refuse(ErrInvalid, map[string]string{"field": "signature_format"}, "signature_format %s: want RSA2048 or SIGNATURE", req.GetSignatureFormat())
	}
	doc, err := s.cfg.Trust.Verify(req.GetDocument(), req.GetSignature(), format)
	if err != nil {
		return nil, refuse(ErrInvalid, map[string]string{"field": "signature"}, "%v", err)
	}
	csr, err := mtls.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, refuse(ErrInvalid, map[string]string{"field": "csr"}, "%v", err)
	}
	meta := map[string]string{"instance_id": doc.InstanceID, "account_id": doc.AccountID, "region": doc.Region}
	if len(s.cfg.Accounts) > 0 && !slices.Contains(s.cfg.Accounts, doc.AccountID) {
		return nil, refuse(ErrForeign, meta, "instance %s belongs to account %s; this cluster accepts %s", doc.InstanceID, doc.AccountID, strings.Join(s.cfg.Accounts, ", "))
	}
	if doc.Region != s.cfg.Region {
		return nil, refuse(ErrForeign, meta, "instance %s is in region %s; this cluster is in %s", doc.InstanceID, doc.Region, s.cfg.Region)
	}
	if !s.instanceLimiter(doc.InstanceID).Allow() {
		return nil, refuse(ErrRateLimited, meta, "too many attestations of %s; retry in a second", doc.InstanceID)
	}
	fp, err := mtls.KeyFingerprint(csr.PublicKey)
	if err != nil {
		return nil, refuse(ErrInvalid, map[string]string{"field": "csr"}, "csr key: %v", err)
	}
	for attempt := 0; ; attempt++ {
		out, err := s.attestOnce(ctx, doc, csr, fp, meta)
		if errors.Is(err, store.ErrConflict) && attempt < 2 {
			continue // another attestation of the instance committed meanwhile: decide again
		}
		return out, err
	}
}

func (s *Service) lead() (*store.Leadership, *store.Store, error) {
	l, st := s.leader.Leadership(), s.leader.Store()
	if l == nil || st == nil {
		return nil, nil, ErrNotLeader
	}
	return l, st, nil
}

func (s *Service) attestOnce(ctx context.Context, doc iid.Document, csr *x509.CertificateRequest, fp string, meta map[string]string) (*ipledgerv1.NodeCertificate, error) {
	l, st, err := s.lead()
	if err != nil {
		return nil, err
	}
	rec, rev, err := st.Identity(ctx, doc.InstanceID)
	if err != nil {
		return nil, fmt.Errorf("%w: read the attestation of %s: %w", ErrUnavailable, doc.InstanceID, err)
	}
	if rec != nil && rec.GetKeySha256() != fp {
		m := map[string]string{"instance_id": doc.InstanceID, "node": rec.GetNodeName()}
		return nil, refuse(ErrAlreadyAttested, m,
			"instance %s was attested as node %s at %s with another key; a node that lost its key needs an admin: ipledgerctl node forget-identity %s",
			doc.InstanceID, rec.GetNodeName(), rec.GetAttestedAt().AsTime().UTC().Format(time.RFC3339), rec.GetNodeName())
	}
	inst, err := s.describe(ctx, doc.InstanceID)
	if err != nil {
		return nil, err
	}
	if err := s.check(doc, inst, rec == nil, meta); err != nil {
		return nil, err
	}
	name, err := s.nodeName(inst)
	if err != nil {
		return nil, err
	}
	if rec != nil && rec.GetNodeName() != name {
		return nil, refuse(ErrMismatch, meta, "instance %s was attested as %s but is now named %s", doc.InstanceID, rec.GetNodeName(), name)
	}
	issued, err := s.cfg.Issuer.IssueNode(csr, name, mtls.Instance{Account: doc.AccountID, Region: doc.Region, ID: doc.InstanceID}, s.cfg.Lifetime)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	now := s.cfg.Now()
	next := &ipledgerv1.NodeIdentity{
		InstanceId: doc.InstanceID, NodeName: name, Method: MethodAWSIID, AccountId: doc.AccountID, Region: doc.Region,
		KeySha256: fp, AttestedAt: timestamppb.New(now), PendingTime: timestamppb.New(doc.PendingTime),
	}
	if rec != nil {
		// The same key again (its certificate expired while the node was off): keep the history.
		next = proto.Clone(rec).(*ipledgerv1.NodeIdentity)
		next.RenewedAt = timestamppb.New(now)
		next.Renewals++
	}
	next.CertificateSerial = issued.Cert.SerialNumber.String()
	next.CertificateNotAfter = timestamppb.New(issued.Cert.NotAfter)
	if _, err := l.CommitIf(ctx, []store.Cond{{Type: store.RecordIdentity, Name: doc.InstanceID, Revision: rev}}, store.PutIdentity(next)); err != nil {
		return nil, commitErr(err)
	}
	s.log.Info("node attested", "node", name, "instance", doc.InstanceID, "account", doc.AccountID, "first", rec == nil,
		"serial", next.CertificateSerial, "not_after", issued.Cert.NotAfter)
	return &ipledgerv1.NodeCertificate{NodeName: name, CertificateChain: issued.ChainPEM, NotAfter: timestamppb.New(issued.Cert.NotAfter), Method: MethodAWSIID}, nil
}

func commitErr(err error) error {
	switch {
	case errors.Is(err, store.ErrConflict):
		return err
	case errors.Is(err, store.ErrNotLeader):
		return fmt.Errorf("%w: %w", ErrNotLeader, err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func (s *Service) describe(ctx context.Context, id string) (ec2gw.Instance, error) {
	insts, err := s.gw.DescribeInstances(ctx, ec2gw.PriorityNodeStart, []string{id})
	if errors.Is(err, ec2gw.ErrNotFound) || (err == nil && len(insts) == 0) {
		return ec2gw.Instance{}, refuse(ErrMismatch, map[string]string{"instance_id": id}, "EC2 does not know instance %s in this account", id)
	}
	if err != nil {
		return ec2gw.Instance{}, fmt.Errorf("%w: DescribeInstances %s: %w", ErrUnavailable, id, err)
	}
	return insts[0], nil
}

// check holds the document against EC2's view of the instance.
func (s *Service) check(doc iid.Document, in ec2gw.Instance, first bool, meta map[string]string) error {
	if in.State != "running" && in.State != "pending" {
		return refuse(ErrNotRunning, meta, "instance %s is %s", in.ID, in.State)
	}
	if in.OwnerID != "" && in.OwnerID != doc.AccountID {
		return refuse(ErrForeign, meta, "instance %s belongs to account %s, not the document's %s", in.ID, in.OwnerID, doc.AccountID)
	}
	if len(s.cfg.VPCs) > 0 && !slices.Contains(s.cfg.VPCs, in.VPCID) {
		return refuse(ErrForeign, meta, "instance %s is in %s; this cluster accepts %s", in.ID, in.VPCID, strings.Join(s.cfg.VPCs, ", "))
	}
	if key, want, hasValue := strings.Cut(s.cfg.InstanceTag, "="); key != "" {
		got, ok := in.Tags[key]
		if !ok || (hasValue && got != want) {
			return refuse(ErrForeign, meta, "instance %s does not carry the cluster tag %s", in.ID, s.cfg.InstanceTag)
		}
	}
	if !in.LaunchTime.Truncate(time.Second).Equal(doc.PendingTime.Truncate(time.Second)) {
		return refuse(ErrMismatch, meta, "the document's pendingTime %s is not instance %s's launch time %s",
			doc.PendingTime.UTC().Format(time.RFC3339), in.ID, in.LaunchTime.UTC().Format(time.RFC3339))
	}
	if doc.PrivateIP != "" && in.PrivateIP.IsValid() && doc.PrivateIP != in.PrivateIP.String() {
		return refuse(ErrMismatch, meta, "the document's private address %s is not instance %s's %s", doc.PrivateIP, in.ID, in.PrivateIP)
	}
	if doc.InstanceType != "" && doc.InstanceType != in.Type {
		return refuse(ErrMismatch, meta, "the document's instance type %s is not instance %s's %s", doc.InstanceType, in.ID, in.Type)
	}
	if age := s.cfg.Now().Sub(in.LaunchTime); first && s.cfg.MaxInstanceAge > 0 && age > s.cfg.MaxInstanceAge {
		return refuse(ErrTooLate, meta, "instance %s was launched %s ago; a first attestation must come within %s (--attest-max-instance-age)",
			in.ID, age.Round(time.Second), s.cfg.MaxInstanceAge)
	}
	return nil
}

func (s *Service) nodeName(in ec2gw.Instance) (string, error) {
	name := in.PrivateDNSName
	if s.cfg.NodeName == NodeNameInstanceID {
		name = in.ID
	}
	if err := mtls.ValidName(name); err != nil {
		return "", refuse(ErrMismatch, map[string]string{"instance_id": in.ID}, "instance %s has no usable node name (%s): %v", in.ID, s.cfg.NodeName, err)
	}
	return name, nil
}

func (s *Service) instanceLimiter(id string) *rate.Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.per) > 10000 {
		clear(s.per) // bounded memory; a flood of distinct instances is bounded by the global bucket
	}
	l, ok := s.per[id]
	if !ok {
		l = rate.NewLimiter(perInstanceRate, perInstanceBur)
		s.per[id] = l
	}
	return l
}

// Renew issues a new certificate to the node whose attested certificate peer is (the caller's,
// verified by the TLS handshake), for the key it attested with.
func (s *Service) Renew(ctx context.Context, peer *x509.Certificate, req *ipledgerv1.RenewRequest) (*ipledgerv1.NodeCertificate, error) {
	if s.cfg.Issuer == nil {
		return nil, refuse(ErrDisabled, nil, "this server does not issue node certificates (no issuing CA)")
	}
	id, err := mtls.IdentityOf(peer)
	if err != nil || id.Kind != mtls.KindNode {
		return nil, refuse(ErrNotAttested, nil, "renewal needs a node certificate (the caller is %v)", id)
	}
	in, ok := mtls.AttestedInstanceOf(peer)
	if !ok {
		return nil, refuse(ErrNotAttested, map[string]string{"node": id.Name},
			"%s's certificate was not issued by attestation; renew it with the PKI that issued it", id.Name)
	}
	csr, err := mtls.ParseCSR(req.GetCsr())
	if err != nil {
		return nil, refuse(ErrInvalid, map[string]string{"field": "csr"}, "%v", err)
	}
	fp, err := mtls.KeyFingerprint(csr.PublicKey)
	if err != nil {
		return nil, refuse(ErrInvalid, map[string]string{"field": "csr"}, "csr key: %v", err)
	}
	peerFP, _ := mtls.KeyFingerprint(peer.PublicKey)
	l, st, err := s.lead()
	if err != nil {
		return nil, err
	}
	rec, rev, err := st.Identity(ctx, in.ID)
	if err != nil {
		return nil, fmt.Errorf("%w: read the attestation of %s: %w", ErrUnavailable, in.ID, err)
	}
	meta := map[string]string{"instance_id": in.ID, "node": id.Name}
	switch {
	case rec == nil:
		return nil, refuse(ErrNotFound, meta, "no attestation of %s is recorded (forgotten?); attest again", in.ID)
	case rec.GetNodeName() != id.Name || rec.GetKeySha256() != peerFP:
		return nil, refuse(ErrAlreadyAttested, meta, "instance %s is attested as %s with another key than this certificate's", in.ID, rec.GetNodeName())
	case fp != rec.GetKeySha256():
		return nil, refuse(ErrInvalid, map[string]string{"field": "csr"}, "the CSR is for another key than the one %s attested with", id.Name)
	}
	inst, err := s.describe(ctx, in.ID)
	if err != nil {
		return nil, err
	}
	if inst.State != "running" && inst.State != "pending" {
		return nil, refuse(ErrNotRunning, meta, "instance %s is %s", in.ID, inst.State)
	}
	issued, err := s.cfg.Issuer.IssueNode(csr, id.Name, in, s.cfg.Lifetime)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	next := proto.Clone(rec).(*ipledgerv1.NodeIdentity)
	next.RenewedAt = timestamppb.New(s.cfg.Now())
	next.Renewals++
	next.CertificateSerial = issued.Cert.SerialNumber.String()
	next.CertificateNotAfter = timestamppb.New(issued.Cert.NotAfter)
	if _, err := l.CommitIf(ctx, []store.Cond{{Type: store.RecordIdentity, Name: in.ID, Revision: rev}}, store.PutIdentity(next)); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("%w: the attestation of %s changed meanwhile; retry", ErrUnavailable, in.ID)
		}
		return nil, commitErr(err)
	}
	s.log.Info("node certificate renewed", "node", id.Name, "instance", in.ID, "serial", next.CertificateSerial, "not_after", issued.Cert.NotAfter)
	return &ipledgerv1.NodeCertificate{NodeName: id.Name, CertificateChain: issued.ChainPEM, NotAfter: timestamppb.New(issued.Cert.NotAfter), Method: MethodAWSIID}, nil
}

// List returns every recorded attestation (a linearizable read; any replica may serve it).
func (s *Service) List(ctx context.Context, st *store.Store) ([]*ipledgerv1.NodeIdentity, error) {
	if st == nil {
		return nil, fmt.Errorf("%w: not connected to etcd", ErrUnavailable)
	}
	out, err := st.Identities(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetNodeName() < out[j].GetNodeName() })
	return out, nil
}

// Forget deletes the attestation of a node (by name) or instance, so that the instance may
// attest again with a new key.
func (s *Service) Forget(ctx context.Context, node, instanceID string) (*ipledgerv1.NodeIdentity, error) {
	l, st, err := s.lead()
	if err != nil {
		return nil, err
	}
	if instanceID == "" {
		all, err := s.List(ctx, st)
		if err != nil {
			return nil, err
		}
		for _, r := range all {
			if r.GetNodeName() == node {
				instanceID = r.GetInstanceId()
			}
		}
		if instanceID == "" {
			return nil, refuse(ErrNotFound, map[string]string{"node": node}, "no attestation of node %s is recorded", node)
		}
	}
	rec, rev, err := st.Identity(ctx, instanceID)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if rec == nil || (node != "" && rec.GetNodeName() != node) {
		return nil, refuse(ErrNotFound, map[string]string{"instance_id": instanceID, "node": node}, "no attestation of %s %s is recorded", node, instanceID)
	}
	if _, err := l.CommitIf(ctx, []store.Cond{{Type: store.RecordIdentity, Name: instanceID, Revision: rev}}, store.DeleteIdentity(instanceID)); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return nil, fmt.Errorf("%w: the attestation of %s changed meanwhile; retry", ErrUnavailable, instanceID)
		}
		return nil, commitErr(err)
	}
	s.log.Warn("node identity forgotten by an admin: the instance may attest again with a new key; certificates issued before stay valid until they expire",
		"node", rec.GetNodeName(), "instance", instanceID, "not_after", rec.GetCertificateNotAfter().AsTime())
	return rec, nil
}

// Sweep deletes the attestations of instances EC2 reports terminated or no longer knows (at
// reconcile priority, 100 ids a call). It runs on the leader only.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	l, st, err := s.lead()
	if err != nil {
		return 0, err
	}
	all, err := st.Identities(ctx)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	gone := 0
	for start := 0; start < len(all); start += 100 {
		batch := all[start:min(start+100, len(all))]
		ids := make([]string, len(batch))
		for i, r := range batch {
			ids[i] = r.GetInstanceId()
		}
		insts, err := s.gw.DescribeInstances(ctx, ec2gw.PriorityReconcile, ids)
		if err != nil && !errors.Is(err, ec2gw.ErrNotFound) {
			return gone, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		if errors.Is(err, ec2gw.ErrNotFound) {
			// One unknown id fails the whole call; look them up one by one.
			insts = insts[:0]
			for _, id := range ids {
				got, err := s.gw.DescribeInstances(ctx, ec2gw.PriorityReconcile, []string{id})
				if err == nil {
					insts = append(insts, got...)
				} else if !errors.Is(err, ec2gw.ErrNotFound) {
					return gone, fmt.Errorf("%w: %w", ErrUnavailable, err)
				}
			}
		}
		alive := map[string]bool{}
		for _, in := range insts {
			if in.State != "terminated" {
				alive[in.ID] = true
			}
		}
		for _, r := range batch {
			if alive[r.GetInstanceId()] {
				continue
			}
			_, rev, err := st.Identity(ctx, r.GetInstanceId())
			if err != nil || rev == 0 {
				continue
			}
			if _, err := l.CommitIf(ctx, []store.Cond{{Type: store.RecordIdentity, Name: r.GetInstanceId(), Revision: rev}}, store.DeleteIdentity(r.GetInstanceId())); err != nil {
				if errors.Is(err, store.ErrNotLeader) {
					return gone, commitErr(err)
				}
				continue
			}
			gone++
			s.log.Info("identity of a gone instance deleted", "node", r.GetNodeName(), "instance", r.GetInstanceId())
		}
	}
	return gone, nil
}

// Run sweeps every SweepInterval while this replica leads, until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if l := s.leader.Leadership(); l == nil {
			continue
		}
		if n, err := s.Sweep(ctx); err != nil && !errors.Is(err, ErrNotLeader) && ctx.Err() == nil {
			s.log.Warn("identity sweep failed; next one in an interval", "err", err, "swept", n)
		}
	}
}

// ObservePeer remembers the certificate a node's agent presented (for the node listing's expiry
// of nodes with certificates from files).
func (s *Service) ObservePeer(node string, cert *x509.Certificate) {
	if cert == nil {
		return
	}
	_, attested := mtls.AttestedInstanceOf(cert)
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev, ok := s.seen[node]; ok && prev.notAfter.Equal(cert.NotAfter) {
		return
	}
	if len(s.seen) > 100000 {
		clear(s.seen)
	}
	s.seen[node] = seenCert{notAfter: cert.NotAfter, attested: attested}
}

// Seen is what ObservePeer remembers of node: the expiry of the certificate its agent last
// presented and whether it was an attested one.
func (s *Service) Seen(node string) (notAfter time.Time, attested, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.seen[node]
	return c.notAfter, c.attested, ok
}
