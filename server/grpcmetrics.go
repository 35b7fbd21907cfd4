package server

import (
	"context"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// grpcMetrics are the server's gRPC metrics, fed by go-grpc-middleware's reporting
// interceptors: requests by service, method and code (a stream counts once, when it ends, with
// its final code), their duration, refusals of the per-node rate limit and failed TLS
// handshakes.
type grpcMetrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	limited    *prometheus.CounterVec
	handshakes prometheus.Counter
	// streamsRefused counts Sync streams the stream guard refused or ended, by why.
	streamsRefused *prometheus.CounterVec
}

func newGRPCMetrics(reg prometheus.Registerer) *grpcMetrics {
	m := &grpcMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_grpc_requests_total",
			Help: "gRPC requests the server finished, by service, method and status code (a stream counts when it ends).",
		}, []string{"service", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ipledger_grpc_request_duration_seconds",
			Help:    "Duration of gRPC requests (unary calls; streams last as long as the agent is connected).",
			Buckets: []float64{0.001, 0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30},
		}, []string{"service", "method"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_grpc_rate_limited_total",
			Help: "NodeService calls and Sync messages refused by the per-node rate limit, by method.",
		}, []string{"method"}),
		streamsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_grpc_streams_refused_total",
			Help: "Sync streams refused or ended before their hello: too_many_streams (a caller over its open-stream limit), no_hello (no SyncHello in time).",
		}, []string{"why"}),
		handshakes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ipledger_grpc_tls_handshake_failures_total",
			Help: "TLS handshakes the gRPC server refused (unknown CA, expired or missing client certificate, plaintext).",
		}),
	}
	reg.MustRegister(m.requests, m.duration, m.limited, m.handshakes, m.streamsRefused)
	return m
}

// reportable is the interceptors.ServerReportable of the metrics.
func (m *grpcMetrics) reportable() interceptors.ServerReportable {
	return interceptors.CommonReportableFunc(func(ctx context.Context, c interceptors.CallMeta) (interceptors.Reporter, context.Context) {
		return &callReporter{m: m, meta: c}, ctx
	})
}

type callReporter struct {
	interceptors.NoopReporter
	m    *grpcMetrics
	meta interceptors.CallMeta
}

func (r *callReporter) PostCall(err error, d time.Duration) {
	code := codes.OK
	if err != nil {
		st, ok := status.FromError(err)
		if !ok {
			st = status.FromContextError(err)
		}
		code = st.Code()
	}
	r.m.requests.WithLabelValues(r.meta.Service, r.meta.Method, code.String()).Inc()
	if r.meta.Typ == interceptors.Unary {
		r.m.duration.WithLabelValues(r.meta.Service, r.meta.Method).Observe(d.Seconds())
	}
}
