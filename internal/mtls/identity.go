package mtls

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Scheme is the URI scheme of ipledger identities.
const Scheme = "ipledger"

// Kind is the kind of party an identity names.
type Kind string

// Kinds of identities.
const (
	// KindNode is a node's agent: it may act for that node only.
	KindNode Kind = "node"
	// KindAdmin is an operator or tool using AdminService.
	KindAdmin Kind = "admin"
	// KindServer is an ipledger-server replica.
	KindServer Kind = "server"
)

// Errors.
var (
	// ErrNoIdentity: the certificate carries no ipledger:// URI SAN.
	ErrNoIdentity = errors.New("mtls: certificate carries no ipledger identity")
	// ErrBadIdentity: an ipledger:// URI SAN is malformed, or there is more than one.
	ErrBadIdentity = errors.New("mtls: malformed ipledger identity")
	// ErrNoPeerCertificate: the connection is not TLS or the peer sent no verified certificate.
	ErrNoPeerCertificate = errors.New("mtls: no verified peer certificate")
)

// Identity is who a certificate says its holder is.
type Identity struct {
	Kind Kind
	// Name is the node name (KindNode), the admin's name (KindAdmin), "" for KindServer.
	Name string
}

// NodeIdentity is the identity of node name's agent.
func NodeIdentity(name string) Identity { return Identity{Kind: KindNode, Name: name} }

// AdminIdentity is the identity of an administrator.
func AdminIdentity(name string) Identity { return Identity{Kind: KindAdmin, Name: name} }

// ServerIdentity is the identity every ipledger-server replica presents.
var ServerIdentity = Identity{Kind: KindServer}

// URI is the identity as a certificate's URI SAN: ipledger://node/<name>,
// ipledger://admin/<name> or ipledger://server.
func (id Identity) URI() *url.URL {
	if id.Kind == KindServer {
		return &url.URL{Scheme: Scheme, Host: string(KindServer)}
	}
	return &url.URL{Scheme: Scheme, Host: string(id.Kind), Path: "/" + id.Name}
}

// String is the URI form.
func (id Identity) String() string { return id.URI().String() }

// IsZero reports an empty identity.
func (id Identity) IsZero() bool { return id.Kind == "" }

// nameRE is a DNS-1123 subdomain: Kubernetes node names, and the names admins get.
var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// ValidName reports whether name can be a node's or an admin's name in an identity.
func ValidName(name string) error {
	if len(name) == 0 || len(name) > 253 || !nameRE.MatchString(name) {
		return fmt.Errorf("%q is not a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', at most 253)", name)
	}
	return nil
}

// ParseIdentity reads an identity URI.
func ParseIdentity(u *url.URL) (Identity, error) {
	if u == nil || u.Scheme != Scheme {
		return Identity{}, fmt.Errorf("%w: %v is not an %s:// URI", ErrBadIdentity, u, Scheme)
	}
	if u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return Identity{}, fmt.Errorf("%w: %s has parts an identity does not have", ErrBadIdentity, u)
	}
	var id Identity
	switch Kind(u.Host) {
	case KindServer:
		if u.Path != "" && u.Path != "/" {
			return Identity{}, fmt.Errorf("%w: %s: the server identity has no name", ErrBadIdentity, u)
		}
		id = ServerIdentity
	case KindNode, KindAdmin:
		if len(u.Path) < 2 || u.Path[0] != '/' {
			return Identity{}, fmt.Errorf("%w: %s: no name", ErrBadIdentity, u)
		}
		name := u.Path[1:]
		if err := ValidName(name); err != nil {
			return Identity{}, fmt.Errorf("%w: %s: %v", ErrBadIdentity, u, err)
		}
		id = Identity{Kind: Kind(u.Host), Name: name}
	default:
		return Identity{}, fmt.Errorf("%w: %s: unknown kind %q (want node, admin or server)", ErrBadIdentity, u, u.Host)
	}
	// Only the one spelling URI writes: "ipledger://node/%69p-1" decodes to ip-1, but a name
	// that reaches the same identity by two spellings would let a CA's name constraints or an
	// auditor's grep see one name while ipledger acts on another.
	if got, want := u.String(), id.String(); got != want {
		return Identity{}, fmt.Errorf("%w: %s is not in canonical form (want %s)", ErrBadIdentity, got, want)
	}
	return id, nil
}

// IdentityOf returns the identity a certificate carries: exactly one ipledger:// URI SAN. Other
// SANs (DNS names, IP addresses, other URIs such as SPIFFE IDs) are ignored.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != Scheme {
			continue
		}
		id, err := ParseIdentity(u)
		if err != nil {
			return Identity{}, err
		}
		found = append(found, id)
	}
	switch len(found) {
	case 0:
		return Identity{}, fmt.Errorf("%w (subject %q)", ErrNoIdentity, cert.Subject.String())
	case 1:
		return found[0], nil
	}
	return Identity{}, fmt.Errorf("%w: the certificate names %d ipledger identities; it must name one", ErrBadIdentity, len(found))
}

// PeerCertificate returns the verified leaf certificate of a gRPC call's peer.
// ErrNoPeerCertificate when the connection is not TLS or carries no verified chain.
func PeerCertificate(ctx context.Context) (*x509.Certificate, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return nil, ErrNoPeerCertificate
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil, fmt.Errorf("%w: the connection uses %s, not TLS", ErrNoPeerCertificate, p.AuthInfo.AuthType())
	}
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil, ErrNoPeerCertificate
	}
	return info.State.VerifiedChains[0][0], nil
}

// PeerIdentity returns the identity of a gRPC call's peer from its verified TLS certificate.
// ErrNoPeerCertificate when the connection is not TLS or carries no verified chain.
func PeerIdentity(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return Identity{}, ErrNoPeerCertificate
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return Identity{}, fmt.Errorf("%w: the connection uses %s, not TLS", ErrNoPeerCertificate, p.AuthInfo.AuthType())
	}
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, ErrNoPeerCertificate
	}
	return IdentityOf(info.State.VerifiedChains[0][0])
}
