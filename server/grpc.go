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
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
)

type ec2Credentials = aws.CredentialsProvider

// MaxMessageBytes bounds every gRPC message the server accepts.
const MaxMessageBytes = 4 << 20

// newGRPCServer builds the gRPC server: recovery (a panic becomes INTERNAL, never a crash),
// logging, message size limits, keepalive, and the services.
func (s *Server) newGRPCServer() *grpc.Server {
	logOpts := []logging.Option{logging.WithLogOnEvents(logging.FinishCall)}
	onPanic := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		s.log.Error("panic in gRPC handler", "panic", p, "stack", string(debug.Stack()))
		return status.Errorf(codes.Internal, "internal error")
	})
	srv := grpc.NewServer(
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.ChainUnaryInterceptor(
			recovery.UnaryServerInterceptor(onPanic),
			logging.UnaryServerInterceptor(slogAdapter(s.log), logOpts...),
		),
		grpc.ChainStreamInterceptor(
			recovery.StreamServerInterceptor(onPanic),
			logging.StreamServerInterceptor(slogAdapter(s.log), logOpts...),
		),
	)
	ipledgerv1.RegisterNodeServiceServer(srv, api.NewNodeServer(s, nil))
	ipledgerv1.RegisterAdminServiceServer(srv, api.NewAdminServer(s))
	s.health = health.NewServer()
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(ipledgerv1.AdminService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	// NodeService serves only on the leader; lead() marks it SERVING.
	s.health.SetServingStatus(ipledgerv1.NodeService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, s.health)
	return srv
}

// slogAdapter logs finished calls at debug, failed ones at info.
func slogAdapter(l *slog.Logger) logging.Logger {
	return logging.LoggerFunc(func(ctx context.Context, lvl logging.Level, msg string, fields ...any) {
		level := slog.Level(lvl)
		if level < slog.LevelWarn {
			level = slog.LevelDebug
		}
		l.Log(ctx, level, msg, fields...)
	})
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
