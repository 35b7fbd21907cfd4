package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/credentials"
)

// ServerConfig is the server's mutual TLS: its certificate and the client CA come from src at
// every handshake (so a rotated file is used by the next connection), and every client must
// present a certificate that chains to the client CA, is within its validity period and allows
// client authentication. Who the client is, and what it may do, is decided after the handshake
// (IdentityOf, server/api).
func ServerConfig(src *Source) (*tls.Config, error) { return serverConfig(src, false) }

// serverConfig is ServerConfig; with anonymous, a client may also connect without a
// certificate (a certificate it presents must still verify): the authorization interceptor then
// allows it only the calls that need no identity (IdentityService.Attest, health).
func serverConfig(src *Source, anonymous bool) (*tls.Config, error) {
	if src.Certificate() == nil {
		return nil, errors.New("mtls: the server needs a certificate and key")
	}
	auth := tls.RequireAndVerifyClientCert
	if anonymous {
		auth = tls.VerifyClientCertIfGiven
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*src.Certificate()},
				ClientAuth:   auth,
				ClientCAs:    src.CAs(),
			}, nil
		},
	}, nil
}

// ClientConfig is a client's TLS: it presents src's certificate (when it has one) and accepts
// only a server whose certificate chains to src's CA, is valid now, allows server
// authentication and carries the identity want (normally ServerIdentity). Host names are not
// checked: the identity takes their place (see the package comment).
func ClientConfig(src *Source, want Identity) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c := src.Certificate()
			if c == nil {
				return &tls.Certificate{}, nil // none: the server will refuse the handshake
			}
			// With TLS 1.3 a client learns that the server refused its certificate only from a
			// later read (or a broken pipe); say what is wrong with it here instead.
			if err := usableClientCert(c.Leaf, time.Now()); err != nil {
				return nil, fmt.Errorf("mtls: client certificate %s: %w", src.Files().Cert, err)
			}
			return c, nil
		},
		// The standard verification checks host names, which replicas reached by pod IP cannot
		// all carry; VerifyConnection does the chain and identity checks instead.
		InsecureSkipVerify: true, //nolint:gosec // verified in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(cs, src.CAs(), want)
		},
	}
}

// usableClientCert checks what a client can know about its own certificate: its validity
// period and that it allows client authentication.
func usableClientCert(leaf *x509.Certificate, now time.Time) error {
	switch {
	case leaf == nil:
		return errors.New("does not parse")
	case now.After(leaf.NotAfter):
		return fmt.Errorf("expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return errors.New("does not allow client authentication (extended key usage)")
	}
	return nil
}

// verifyServer checks the server's chain against roots and its identity.
func verifyServer(cs tls.ConnectionState, roots *x509.CertPool, want Identity) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("mtls: the server presented no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("mtls: server certificate %q: %w", leaf.Subject.String(), err)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return fmt.Errorf("mtls: server certificate: %w", err)
	}
	if id != want {
		return fmt.Errorf("mtls: the server's certificate names %s, want %s", id, want)
	}
	return nil
}

// HandshakeObserver hears about every failed server-side handshake (for a metric).
type HandshakeObserver func(err error)

// ServerCredentials are gRPC transport credentials for the server: ServerConfig, plus a log
// line (at most one a second, so a flood of bad clients cannot flood the log) and an observer
// call for every handshake a client fails: an unknown CA, an expired certificate, no
// certificate, plaintext.
func ServerCredentials(src *Source, log *slog.Logger, observe HandshakeObserver) (credentials.TransportCredentials, error) {
	return NewServerCredentials(src, ServerOptions{Logger: log, Observe: observe})
}

// ServerOptions tune NewServerCredentials.
type ServerOptions struct {
	Logger  *slog.Logger
	Observe HandshakeObserver
	// AllowAnonymous lets clients without a certificate complete the handshake (for node
	// attestation); a certificate a client presents must still verify.
	AllowAnonymous bool
}

// NewServerCredentials is ServerCredentials with options.
func NewServerCredentials(src *Source, opts ServerOptions) (credentials.TransportCredentials, error) {
	log, observe := opts.Logger, opts.Observe
	cfg, err := serverConfig(src, opts.AllowAnonymous)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &loggingCreds{TransportCredentials: credentials.NewTLS(cfg), log: log, observe: observe, every: &rate.Sometimes{Interval: time.Second}}, nil
}

// ClientCredentials are gRPC transport credentials for a client of the server.
func ClientCredentials(src *Source) credentials.TransportCredentials {
	return credentials.NewTLS(ClientConfig(src, ServerIdentity))
}

type loggingCreds struct {
	credentials.TransportCredentials
	log     *slog.Logger
	observe HandshakeObserver
	every   *rate.Sometimes
}

func (c *loggingCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		if c.observe != nil {
			c.observe(err)
		}
		c.every.Do(func() {
			c.log.Warn("TLS handshake refused (further ones within a second are not logged)", "remote", conn.RemoteAddr().String(), "err", err)
		})
	}
	return out, info, err
}

func (c *loggingCreds) Clone() credentials.TransportCredentials {
	return &loggingCreds{TransportCredentials: c.TransportCredentials.Clone(), log: c.log, observe: c.observe, every: c.every}
}

// Ensure the wrapper still is transport credentials.
var _ credentials.TransportCredentials = (*loggingCreds)(nil)

// contextKey carries an Identity in a context.
type contextKey struct{}

// WithIdentity returns ctx carrying id (the server's auth interceptor stores the caller's).
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, contextKey{}, id)
}

// IdentityFrom returns the identity WithIdentity stored.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(contextKey{}).(Identity)
	return id, ok
}
