package api

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/identity"
	"github.com/ipledger/ipledger/server/store"
)

var instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)

// identityTable maps the identity service's refusals to a gRPC code and a Reason.
var identityTable = []struct {
	err    error
	code   codes.Code
	reason ipledgerv1.Reason
}{
	{identity.ErrDisabled, codes.FailedPrecondition, ipledgerv1.Reason_ATTESTATION_DISABLED},
	{identity.ErrInvalid, codes.Unauthenticated, ipledgerv1.Reason_ATTESTATION_INVALID},
	{identity.ErrForeign, codes.PermissionDenied, ipledgerv1.Reason_ATTESTATION_FOREIGN},
	{identity.ErrMismatch, codes.FailedPrecondition, ipledgerv1.Reason_INSTANCE_MISMATCH},
	{identity.ErrNotRunning, codes.FailedPrecondition, ipledgerv1.Reason_INSTANCE_NOT_RUNNING},
	{identity.ErrTooLate, codes.FailedPrecondition, ipledgerv1.Reason_ATTESTATION_TOO_LATE},
	{identity.ErrAlreadyAttested, codes.AlreadyExists, ipledgerv1.Reason_INSTANCE_ALREADY_ATTESTED},
	{identity.ErrRateLimited, codes.ResourceExhausted, ipledgerv1.Reason_RATE_LIMITED},
	{identity.ErrNotAttested, codes.PermissionDenied, ipledgerv1.Reason_WRONG_NODE_IDENTITY},
	{identity.ErrNotFound, codes.NotFound, ipledgerv1.Reason_REASON_UNSPECIFIED},
	{identity.ErrUnavailable, codes.Unavailable, ipledgerv1.Reason_STORE_UNAVAILABLE},
}

// identityStatus converts an error of the identity service (NOT_LEADER is the caller's).
func identityStatus(err error) error {
	var re *identity.RefusedError
	md := map[string]string{}
	if errors.As(err, &re) {
		for k, v := range re.Meta {
			md[k] = v
		}
	}
	for _, row := range identityTable {
		if errors.Is(err, row.err) {
			return withInfo(row.code, err.Error(), row.reason, md)
		}
	}
	return Status(err)
}

// IdentityReplica is what a replica offers when it attests nodes (server.Server does).
type IdentityReplica interface {
	Identity() *identity.Service
	Store() *store.Store
}

func identityOf(r Replica) (*identity.Service, *store.Store) {
	ir, ok := r.(IdentityReplica)
	if !ok {
		return nil, nil
	}
	return ir.Identity(), ir.Store()
}

// IdentityServer implements IdentityService.
type IdentityServer struct {
	ipledgerv1.UnimplementedIdentityServiceServer
	replica Replica
	svc     *identity.Service
}

var _ ipledgerv1.IdentityServiceServer = (*IdentityServer)(nil)

// NewIdentityServer serves IdentityService with svc for a replica.
func NewIdentityServer(r Replica, svc *identity.Service) *IdentityServer {
	return &IdentityServer{replica: r, svc: svc}
}

func (s *IdentityServer) answer(out *ipledgerv1.NodeCertificate, err error) (*ipledgerv1.NodeCertificate, error) {
	if errors.Is(err, identity.ErrNotLeader) {
		return nil, NotLeader(s.replica.LeaderAddress())
	}
	if err != nil {
		return nil, identityStatus(err)
	}
	return out, nil
}

// Attest implements IdentityService (no client certificate needed).
func (s *IdentityServer) Attest(ctx context.Context, req *ipledgerv1.AttestRequest) (*ipledgerv1.NodeCertificate, error) {
	if s.replica.Allocator() == nil && s.svc.Enabled() {
		return nil, NotLeader(s.replica.LeaderAddress())
	}
	return s.answer(s.svc.Attest(ctx, req))
}

// Renew implements IdentityService (the caller's node certificate is the proof).
func (s *IdentityServer) Renew(ctx context.Context, req *ipledgerv1.RenewRequest) (*ipledgerv1.NodeCertificate, error) {
	cert, err := mtls.PeerCertificate(ctx)
	if err != nil {
		return nil, withInfo(codes.PermissionDenied, "renewal needs the node's current certificate: "+err.Error(), ipledgerv1.Reason_WRONG_NODE_IDENTITY, nil)
	}
	if s.replica.Allocator() == nil && s.svc.Enabled() {
		return nil, NotLeader(s.replica.LeaderAddress())
	}
	return s.answer(s.svc.Renew(ctx, cert, req))
}

// ListIdentities implements AdminService.
func (s *AdminServer) ListIdentities(ctx context.Context, _ *ipledgerv1.ListIdentitiesRequest) (*ipledgerv1.ListIdentitiesResponse, error) {
	svc, st := identityOf(s.replica)
	if svc == nil {
		return &ipledgerv1.ListIdentitiesResponse{}, nil
	}
	all, err := svc.List(ctx, st)
	if err != nil {
		return nil, identityStatus(err)
	}
	return &ipledgerv1.ListIdentitiesResponse{Identities: all}, nil
}

// ForgetIdentity implements AdminService.
func (s *AdminServer) ForgetIdentity(ctx context.Context, req *ipledgerv1.ForgetIdentityRequest) (*ipledgerv1.NodeIdentity, error) {
	switch {
	case (req.GetNodeName() == "") == (req.GetInstanceId() == ""):
		return nil, invalidArg("node_name", "give a node name or an instance id")
	case req.GetNodeName() != "" && mtls.ValidName(req.GetNodeName()) != nil:
		return nil, invalidArg("node_name", fmt.Sprintf("%q is not a node name", req.GetNodeName()))
	case req.GetInstanceId() != "" && !instanceIDRE.MatchString(req.GetInstanceId()):
		return nil, invalidArg("instance_id", fmt.Sprintf("%q is not an instance id", req.GetInstanceId()))
	}
	svc, _ := identityOf(s.replica)
	if svc == nil {
		return nil, identityStatus(identity.ErrDisabled)
	}
	out, err := svc.Forget(ctx, req.GetNodeName(), req.GetInstanceId())
	if errors.Is(err, identity.ErrNotLeader) {
		return nil, NotLeader(s.replica.LeaderAddress())
	}
	if err != nil {
		return nil, identityStatus(err)
	}
	return out, nil
}

// identityColumns fills the identity fields of node summaries: the attestation records (one
// etcd read), else the certificate the node's agent presented to this replica.
func (s *AdminServer) identityColumns(ctx context.Context, sums []*ipledgerv1.NodeSummary) {
	svc, st := identityOf(s.replica)
	if svc == nil {
		return
	}
	byNode := map[string]*ipledgerv1.NodeIdentity{}
	if all, err := svc.List(ctx, st); err == nil {
		for _, r := range all {
			byNode[r.GetNodeName()] = r
		}
	}
	for _, sum := range sums {
		if r, ok := byNode[sum.GetNodeName()]; ok && r.GetInstanceId() == sum.GetInstanceId() {
			sum.IdentityMethod = r.GetMethod()
			sum.CertificateNotAfter = r.GetCertificateNotAfter()
			continue
		}
		if notAfter, attested, ok := svc.Seen(sum.GetNodeName()); ok {
			sum.IdentityMethod = "certificate"
			if attested {
				sum.IdentityMethod = identity.MethodAWSIID
			}
			sum.CertificateNotAfter = timestamppb.New(notAfter)
		}
	}
}

// bindInstance holds a node whose certificate was issued by attestation to its own instance
// (the certificate's aws-iid URI SAN), and remembers the certificate the node presented.
func bindInstance(ctx context.Context, svc *identity.Service, node, instanceID string) error {
	cert, err := mtls.PeerCertificate(ctx)
	if err != nil {
		return nil // plaintext: no identities
	}
	if svc != nil {
		svc.ObservePeer(node, cert)
	}
	in, ok := mtls.AttestedInstanceOf(cert)
	if !ok || instanceID == "" || in.ID == instanceID {
		return nil
	}
	return withInfo(codes.PermissionDenied,
		fmt.Sprintf("the caller's certificate was issued to instance %s and may not act for instance %s", in.ID, instanceID),
		ipledgerv1.Reason_WRONG_NODE_IDENTITY, map[string]string{"instance_id": instanceID, "attested_instance": in.ID})
}
