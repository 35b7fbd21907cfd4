package api

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Full service names the authorizer knows.
var (
	nodeService     = ipledgerv1.NodeService_ServiceDesc.ServiceName
	adminService    = ipledgerv1.AdminService_ServiceDesc.ServiceName
	identityService = ipledgerv1.IdentityService_ServiceDesc.ServiceName
)

// Authorizer decides who may call what. With mutual TLS (Required) every call but the health
// service's needs a client certificate carrying an ipledger identity:
//
//	NodeService              a node identity, equal to the node the request names (AuthorizeNode)
//	AdminService             an admin identity
//	IdentityService.Attest   no identity at all (the attestation is the proof); a certificate
//	                         the caller presents anyway is verified by the handshake
//	IdentityService.Renew    a node identity
//	anything else refused
//
// Without TLS (plaintext on loopback or with --insecure) there are no identities and no
// checks.
type Authorizer struct {
	// Required: the server runs mutual TLS and checks identities.
	Required bool
}

// Authenticate is the server's auth.AuthFunc (go-grpc-middleware): it reads the caller's
// identity from its verified certificate, checks that the identity's kind may use the
// service, and stores it in the returned context for AuthorizeNode.
func (a Authorizer) Authenticate(ctx context.Context) (context.Context, error) {
	if !a.Required {
		return ctx, nil
	}
	method, _ := grpc.Method(ctx)
	service, name := splitMethod(method)
	if service == identityService && name == "Attest" {
		return ctx, nil
	}
	id, err := mtls.PeerIdentity(ctx)
	if err != nil {
		reason := ipledgerv1.Reason_ADMIN_REQUIRED
		if service == nodeService || service == identityService {
			reason = ipledgerv1.Reason_WRONG_NODE_IDENTITY
		}
		return nil, withInfo(codes.PermissionDenied, fmt.Sprintf("%s: %v", method, err), reason, nil)
	}
	switch {
	case (service == nodeService || service == identityService) && id.Kind != mtls.KindNode:
		return nil, withInfo(codes.PermissionDenied,
			fmt.Sprintf("%s needs a node's certificate (%s://node/<node-name>); the caller is %s", method, mtls.Scheme, id),
			ipledgerv1.Reason_WRONG_NODE_IDENTITY, map[string]string{"identity": id.String()})
	case service == adminService && id.Kind != mtls.KindAdmin:
		return nil, withInfo(codes.PermissionDenied,
			fmt.Sprintf("%s needs an admin certificate (%s://admin/<name>); the caller is %s", method, mtls.Scheme, id),
			ipledgerv1.Reason_ADMIN_REQUIRED, map[string]string{"identity": id.String()})
	case service != nodeService && service != adminService && service != identityService:
		return nil, withInfo(codes.PermissionDenied, fmt.Sprintf("%s: no identity may call this service", method),
			ipledgerv1.Reason_REASON_UNSPECIFIED, nil)
	}
	return mtls.WithIdentity(ctx, id), nil
}

// AuthorizeNode is the NodeAuthorizer: the caller's identity must be the node the request names.
func (a Authorizer) AuthorizeNode(ctx context.Context, node string) error {
	if !a.Required {
		return nil
	}
	id, ok := mtls.IdentityFrom(ctx)
	if !ok {
		return withInfo(codes.PermissionDenied, "no caller identity (the authentication interceptor did not run)",
			ipledgerv1.Reason_WRONG_NODE_IDENTITY, nil)
	}
	if id.Kind != mtls.KindNode || id.Name != node {
		return withInfo(codes.PermissionDenied,
			fmt.Sprintf("the caller is %s and may not act for node %s", id, node),
			ipledgerv1.Reason_WRONG_NODE_IDENTITY, map[string]string{"identity": id.String(), "node": node})
	}
	return nil
}

// NodeKey is the name a NodeService call is accounted to: the caller's node identity with
// mutual TLS, else the node the request names ("" when it names none).
func NodeKey(ctx context.Context, req any) string {
	if id, ok := mtls.IdentityFrom(ctx); ok && id.Kind == mtls.KindNode {
		return id.Name
	}
	if r, ok := req.(interface{ GetNodeName() string }); ok {
		return r.GetNodeName()
	}
	return ""
}

// splitMethod splits "/pkg.Service/Method".
func splitMethod(full string) (service, method string) {
	full = strings.TrimPrefix(full, "/")
	service, method, _ = strings.Cut(full, "/")
	return service, method
}
