package ctl

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// errorDomain is the ErrorInfo domain of ipledger's errors.
const errorDomain = "ipledger.io"

// dialOptions are the gRPC options for every connection the command opens, the redirect to the
// leader included: mutual TLS with the admin certificate when one is given (the server is
// verified by its identity ipledger://server, so any replica's address works), else plaintext.
func (c *cli) dialOptions() ([]grpc.DialOption, error) {
	cert, key, ca := c.g.tlsFiles()
	if cert == "" {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, nil
	}
	src, err := mtls.NewSource(mtls.Files{Cert: cert, Key: key, CA: ca}, mtls.SourceOptions{})
	if err != nil {
		if c.g.certsFromCx {
			return nil, &usageError{msg: fmt.Sprintf("the certificates of context %s (%s): %v; a context the demo wrote goes away when the demo stops "+
				"(ipledgerctl config delete-context %s, or --context another one)", c.g.ctxName, c.g.ctxFile, err, c.g.ctxName)}
		}
		return nil, &usageError{msg: fmt.Sprintf("--tls-cert, --tls-key, --tls-ca: %v", err)}
	}
	if id, err := mtls.IdentityOf(src.Leaf()); err != nil {
		fmt.Fprintf(c.stderr, "ipledgerctl: warning: %s is not an admin certificate (%v); the server will refuse AdminService calls\n", cert, err)
	} else if id.Kind != mtls.KindAdmin {
		fmt.Fprintf(c.stderr, "ipledgerctl: warning: %s names %s, not an admin; the server will refuse AdminService calls\n", cert, id)
	}
	return []grpc.DialOption{grpc.WithTransportCredentials(mtls.ClientCredentials(src))}, nil
}

// tlsHint says what to try when a plaintext connection fails.
func (c *cli) tlsHint() string {
	if cert, _, _ := c.g.tlsFiles(); cert != "" {
		return ""
	}
	return "; if the server runs mutual TLS, give --tls-cert, --tls-key and --tls-ca (or --dev-certs DIR)"
}

// connPool keeps one connection per address for the life of a command.
type connPool struct {
	opts  func() ([]grpc.DialOption, error)
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newConnPool(opts func() ([]grpc.DialOption, error)) *connPool {
	return &connPool{opts: opts, conns: map[string]*grpc.ClientConn{}}
}

func (p *connPool) get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cc, ok := p.conns[addr]; ok {
		return cc, nil
	}
	opts, err := p.opts()
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("server address %q: %w", addr, err)
	}
	p.conns[addr] = cc
	return cc, nil
}

func (p *connPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, cc := range p.conns {
		_ = cc.Close()
		delete(p.conns, addr)
	}
}

// call runs one AdminService method against --server. A replica that is not the leader answers
// changes (and leader-only reads) with UNAVAILABLE / NOT_LEADER and the leader's address; call
// follows that redirect once. Reads a standby can serve are answered by the standby.
func call[T any](ctx context.Context, c *cli, what string, f func(context.Context, ipledgerv1.AdminServiceClient) (T, error)) (T, error) {
	addr := c.g.server
	res, err := callAt(ctx, c, addr, f)
	if err != nil {
		if leader, ok := notLeader(err); ok && leader != "" && leader != addr {
			fmt.Fprintf(c.stderr, "ipledgerctl: %s is not the leader; sending %s to the leader at %s\n", addr, escapeText(what), escapeText(leader))
			addr = leader
			res, err = callAt(ctx, c, addr, f)
		}
	}
	if err != nil {
		var zero T
		var ue *usageError
		if errors.As(err, &ue) {
			return zero, err
		}
		return zero, c.explain(ctx, what, addr, err)
	}
	return res, nil
}

func callAt[T any](ctx context.Context, c *cli, addr string, f func(context.Context, ipledgerv1.AdminServiceClient) (T, error)) (T, error) {
	cc, err := c.conns.get(addr)
	if err != nil {
		var zero T
		return zero, err
	}
	return f(ctx, ipledgerv1.NewAdminServiceClient(cc))
}

// errorInfo returns the ipledger ErrorInfo of a status error, if any.
func errorInfo(err error) (*errdetails.ErrorInfo, bool) {
	st, ok := status.FromError(err)
	if !ok {
		return nil, false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain {
			return info, true
		}
	}
	return nil, false
}

// notLeader reports whether err is a NOT_LEADER answer, and the leader's address it names.
func notLeader(err error) (leader string, ok bool) {
	if status.Code(err) != codes.Unavailable {
		return "", false
	}
	info, ok := errorInfo(err)
	if !ok || info.GetReason() != ipledgerv1.Reason_NOT_LEADER.String() {
		return "", false
	}
	return info.GetMetadata()["leader"], true
}

// explain turns a failed call into what the user should do. A connection that failed before
// any answer (UNAVAILABLE without an ipledger reason) is looked at first: without a certificate
// against a server that speaks TLS, the answer is "this server requires mutual TLS" and what to
// pass, not "is it running?"; with certificates against a plaintext server, to leave them out.
func (c *cli) explain(ctx context.Context, what, addr string, err error) error {
	st, ok := status.FromError(err)
	if _, hasInfo := errorInfo(err); ok && st.Code() == codes.Unavailable && !hasInfo {
		cert, _, _ := c.g.tlsFiles()
		switch {
		case cert != "" && strings.Contains(st.Message(), "first record does not look like a TLS handshake"):
			return fmt.Errorf("%s: ipledger-server at %s speaks plaintext, not TLS (a server on loopback without certificates, or with --insecure): "+
				"leave out the certificates (%s)", what, addr, c.certSource())
		case cert == "" && !strings.Contains(st.Message(), "connection refused") && speaksTLS(ctx, addr):
			return fmt.Errorf("%s: this server requires mutual TLS: ipledger-server at %s speaks TLS and ipledgerctl has no certificate. "+
				"Give an admin certificate (URI SAN ipledger://admin/<name>) with --tls-cert, --tls-key and --tls-ca (or $%s, $%s, $%s), "+
				"or --dev-certs DIR for ipledger-server --dev (its <data-dir>/certs, $%s), or --context NAME of a context that names them (ipledgerctl config view)",
				what, addr, EnvTLSCert, EnvTLSKey, EnvTLSCA, EnvDevCerts)
		}
	}
	return rpcError(ctx, what, addr, c.g.timeout, c.tlsHint(), err)
}

// probeTimeout bounds the TLS probe of explain.
const probeTimeout = 2 * time.Second

// speaksTLS reports whether addr completes a TLS handshake, or refuses one with a TLS alert (a
// mutual-TLS server that wants a certificate does either). It only looks: nothing is sent over
// the connection, so the server's certificate is not verified here.
func speaksTLS(ctx context.Context, addr string) bool {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}}} //nolint:gosec // a probe: it sends nothing
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err == nil {
		_ = conn.Close()
		return true
	}
	var alert tls.AlertError
	return errors.As(err, &alert)
}

// rpcError says what failed, where, with the gRPC code and the server's reason.
func rpcError(ctx context.Context, what, addr string, timeout time.Duration, hint string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %s: %w", what, addr, err)
	}
	switch {
	case st.Code() == codes.DeadlineExceeded && errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%s: no answer from ipledger-server at %s within --timeout %s: %s", what, addr, timeout, st.Message())
	case st.Code() == codes.Canceled && ctx.Err() != nil:
		return fmt.Errorf("%s: cancelled: %w", what, ctx.Err())
	}
	info, hasInfo := errorInfo(err)
	if st.Code() == codes.Unavailable && !hasInfo {
		why := st.Message()
		if strings.Contains(why, "connection refused") {
			why = "connection refused"
		}
		return fmt.Errorf("%s: cannot reach ipledger-server at %s: %s (is it running? set --server or %s%s)", what, addr, why, EnvServer, hint)
	}
	if st.Code() == codes.Unimplemented {
		return fmt.Errorf("%s: ipledger-server at %s answered Unimplemented: it does not offer this yet (%s)", what, addr, st.Message())
	}
	reason := ""
	if hasInfo {
		reason = " (" + info.GetReason()
		for _, k := range sortedKeys(info.GetMetadata()) {
			reason += ", " + k + "=" + info.GetMetadata()[k]
		}
		reason += ")"
	}
	return fmt.Errorf("%s: ipledger-server at %s answered %s%s: %s", what, addr, st.Code(), reason, st.Message())
}
