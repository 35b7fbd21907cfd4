package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

type ec2Credentials = aws.CredentialsProvider

// MaxMessageBytes bounds every gRPC message the server accepts.
const MaxMessageBytes = 4 << 20

// MaxStreamsPerConnection bounds the concurrent calls of one client connection (an agent has
// one Sync stream and a few unary calls; ipledgerctl one call at a time).
const MaxStreamsPerConnection = 128

// newGRPCServer builds the gRPC server: transport credentials (mutual TLS, or none), then the
// interceptors, outermost first: metrics (every call, refused ones included), recovery (a
// panic becomes INTERNAL, never a crash), logging, authentication (go-grpc-middleware's auth,
// skipped for the health service), the per-node rate limit; message size limits, keepalive,
// and the services.
func (s *Server) newGRPCServer(creds credentials.TransportCredentials) *grpc.Server {
	logOpts := []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithFieldsFromContext(func(ctx context.Context) logging.Fields {
			if id, err := mtls.PeerIdentity(ctx); err == nil {
				return logging.Fields{"identity", id.String()}
			}
			return nil
		}),
	}
	onPanic := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		s.log.Error("panic in gRPC handler", "panic", p, "stack", string(debug.Stack()))
		return status.Errorf(codes.Internal, "internal error")
	})
	authz := api.Authorizer{Required: creds != nil}
	notHealth := selector.MatchFunc(func(_ context.Context, c interceptors.CallMeta) bool {
		return c.Service != healthpb.Health_ServiceDesc.ServiceName
	})
	// One bucket per node for unary calls, one for Sync messages: usage reports never take the
	// tokens of an urgent RequestAddresses.
	limiter := api.NewNodeLimiter(s.cfg.NodeRateLimit, s.cfg.NodeRateBurst)
	limiter.OnLimited = func(method string) { s.grpcMet.limited.WithLabelValues(method).Inc() }
	syncLimiter := api.NewNodeLimiter(s.cfg.NodeRateLimit, s.cfg.NodeRateBurst)
	syncLimiter.OnLimited = limiter.OnLimited
	streams := api.NewStreamGuard()
	streams.OnRefused = func(why string) { s.grpcMet.streamsRefused.WithLabelValues(why).Inc() }
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
		// Per connection; the StreamGuard bounds Sync streams per caller across connections.
		grpc.MaxConcurrentStreams(MaxStreamsPerConnection),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(
			interceptors.UnaryServerInterceptor(s.grpcMet.reportable()),
			recovery.UnaryServerInterceptor(onPanic),
			logging.UnaryServerInterceptor(slogAdapter(s.log), logOpts...),
			selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(authz.Authenticate), notHealth),
			limiter.UnaryServerInterceptor(),
		),
		grpc.ChainStreamInterceptor(
			interceptors.StreamServerInterceptor(s.grpcMet.reportable()),
			recovery.StreamServerInterceptor(onPanic),
			logging.StreamServerInterceptor(slogAdapter(s.log), logOpts...),
			selector.StreamServerInterceptor(auth.StreamServerInterceptor(authz.Authenticate), notHealth),
		),
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	srv := grpc.NewServer(opts...)
	ipledgerv1.RegisterNodeServiceServer(srv, api.NewNodeServer(s, api.NodeOptions{Authorize: authz.AuthorizeNode, SyncLimiter: syncLimiter, Streams: streams, Identity: s.ident}))
	ipledgerv1.RegisterIdentityServiceServer(srv, api.NewIdentityServer(s, s.ident))
	ipledgerv1.RegisterAdminServiceServer(srv, api.NewAdminServer(s))
	s.health = health.NewServer()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(ipledgerv1.AdminService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	// NodeService serves only on the leader; lead() marks it SERVING.
	s.health.SetServingStatus(ipledgerv1.NodeService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, s.health)
	return srv
}

// transportCredentials secures gRPC as the configuration says: the TLS files, or the --dev
// certificates (created in <data-dir>/certs with one per simulated instance), or nothing
// (plaintext, which Validate allows on loopback or with --insecure only).
func (s *Server) transportCredentials() (credentials.TransportCredentials, error) {
	var files mtls.Files
	switch s.cfg.Transport() {
	case config.TransportPlaintext:
		level := slog.LevelInfo
		if s.cfg.Insecure {
			level = slog.LevelWarn
		}
		s.log.Log(context.Background(), level, "gRPC is plaintext: no client certificates, no identity checks", "grpc", s.cfg.GRPCListen, "insecure", s.cfg.Insecure)
		return nil, nil
	case config.TransportTLSFiles:
		files = mtls.Files{Cert: s.cfg.TLSCertFile, Key: s.cfg.TLSKeyFile, CA: s.cfg.TLSClientCAFile}
	case config.TransportDevCerts:
		var nodes []string
		if s.backends != nil {
			nodes = s.backends.Instances()
		}
		// Node certificates are still made for tools and tests that want one (agents attest
		// and do not use them).
		dev, err := mtls.EnsureDevCerts(s.cfg.DevCertsDir(), nodes, time.Now())
		if err != nil {
			return nil, fmt.Errorf("--dev certificates: %w", err)
		}
		s.devCerts = &dev
		files = dev.Server()
		s.log.Info("--dev certificates ready", "dir", dev.Dir, "ca", dev.CA(), "admin", dev.Admin().Cert, "nodes", len(nodes))
	}
	src, err := mtls.NewSource(files, mtls.SourceOptions{Logger: s.log.With("component", "tls")})
	if err != nil {
		return nil, fmt.Errorf("gRPC TLS: %w", err)
	}
	if id, err := mtls.IdentityOf(src.Leaf()); err != nil || id != mtls.ServerIdentity {
		s.log.Warn("the server certificate does not carry the URI SAN ipledger://server; agents and ipledgerctl will refuse it",
			"cert", files.Cert, "identity", id.String(), "err", err)
	}
	s.tls = src
	return mtls.NewServerCredentials(src, mtls.ServerOptions{Logger: s.log.With("component", "tls"),
		Observe: func(error) { s.grpcMet.handshakes.Inc() }, AllowAnonymous: s.cfg.AttestationOn()})
}

// slogAdapter logs finished calls at debug, failed ones at warn and above. Refusals over a
// rate limit (RESOURCE_EXHAUSTED) are logged at most once a second, as refused TLS handshakes
// are: a flooding client must not flood the log too (ipledger_grpc_rate_limited_total and
// ipledger_grpc_streams_refused_total count every one).
func slogAdapter(l *slog.Logger) logging.Logger {
	limited := &rate.Sometimes{Interval: time.Second}
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		level := slog.Level(lvl)
		if level < slog.LevelWarn {
			level = slog.LevelDebug
		}
		if level >= slog.LevelWarn && hasField(fields, "grpc.code", codes.ResourceExhausted.String()) {
			limited.Do(func() {
				l.Log(ctx, level, msg+" (further refusals within a second are not logged)", fields...)
			})
			return
		}
		l.Log(ctx, level, msg, fields...)
	})
}

// hasField reports whether the key/value list holds key with the value.
func hasField(fields []any, key, value string) bool {
	for i := 0; i+1 < len(fields); i += 2 {
		if k, ok := fields[i].(string); ok && k == key {
			v, _ := fields[i+1].(string)
			return v == value
		}
	}
	return false
}

// etcdTLS builds the client TLS config for an external etcd.
func etcdTLS(cfg config.Config) (*tls.Config, error) {
	t := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.EtcdCAFile != "" {
		pem, err := os.ReadFile(cfg.EtcdCAFile)
		if err != nil {
			return nil, fmt.Errorf("etcd-ca-file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd-ca-file %s: no certificates found", cfg.EtcdCAFile)
		}
		t.RootCAs = pool
	}
	if cfg.EtcdCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.EtcdCertFile, cfg.EtcdKeyFile)
		if err != nil {
			return nil, fmt.Errorf("etcd-cert-file/etcd-key-file: %w", err)
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, nil
}
