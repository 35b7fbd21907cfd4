package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/ipledger/ipledger/internal/clock"
	"github.com/ipledger/ipledger/internal/mtls"
	"github.com/ipledger/ipledger/internal/version"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/dashboard"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/identity"
	"github.com/ipledger/ipledger/server/kube"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/replica"
	"github.com/ipledger/ipledger/server/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// Server is one running ipledger-server replica: its listeners, services and metrics around a
// replica (package replica), which follows the store and leads.
type Server struct {
	cfg      config.Config
	clk      clock.Clock
	log      *slog.Logger
	reg      *prometheus.Registry
	backends Backends
	gw       *ec2gw.Gateway
	rep      *replica.Replica
	kube     *kube.Watcher
	grpc     *grpc.Server
	health   *health.Server
	grpcLis  net.Listener
	httpSrv  *http.Server
	httpLis  net.Listener
	forecast *allocator.Forecaster
	dash     *dashboard.Dashboard
	advert   string
	grpcMet  *grpcMetrics
	tls      *mtls.Source   // the server's certificate and client CA (nil: plaintext)
	devCerts *mtls.DevCerts // --dev's certificates (nil without them)
	ident    *identity.Service

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	done     chan struct{}
	shutdown sync.Once
	errMu    sync.Mutex
	err      error
}

var _ api.Replica = (*Server)(nil)

// Backends are what a composition (package dev) started for the replica before it: the EC2
// simulator, embedded etcd. The server closes them after its own resources.
type Backends interface {
	// Sim is the in-process EC2 simulator, or nil.
	Sim() *ec2sim.Server
	// Instances are the node names --dev certificates are issued for.
	Instances() []string
	Close() error
}

// Options are what a caller can inject besides the configuration.
type Options struct {
	Logger *slog.Logger
	// Getenv reads environment variables (default os.Getenv).
	Getenv func(string) string
	// Backends started for this replica (package dev); nil in production.
	Backends Backends
	// Cluster, when set, is the view of Kubernetes the allocator uses instead of a client of
	// --kubeconfig (tests give an in-memory one).
	Cluster allocator.Cluster
}

// ErrNeedsBackends is returned by Start for a configuration that needs what only the dev
// composition starts: --dev's EC2 simulator, or embedded etcd (no --etcd-endpoints).
var ErrNeedsBackends = errors.New("server: the configuration needs the EC2 simulator or embedded etcd, which package server/dev starts (ipledger-server does)")

// Start brings up a replica against the EC2 endpoint and etcd endpoints of cfg: the EC2
// gateway, the gRPC and HTTP listeners, and the replica (connect, follow, campaign, lead). It
// returns once the listeners are bound; Wait blocks until the replica stops. It starts no
// simulator and no etcd: package dev does, for --dev, tests and the demo.
func Start(ctx context.Context, cfg config.Config, opts Options) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if (cfg.Dev && cfg.EC2Endpoint == "") || len(cfg.EtcdEndpoints) == 0 {
		return nil, ErrNeedsBackends
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	policies, err := LoadPolicyFile(cfg.PolicyFile)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, clk: clock.Scaled(clock.Real(), cfg.TimeScale), log: opts.Logger, reg: prometheus.NewRegistry(),
		backends: opts.Backends, done: make(chan struct{})}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	defer func() {
		if err != nil {
			s.closeResources()
		}
	}()

	storeCfg := store.Config{Endpoints: cfg.EtcdEndpoints, ClusterName: cfg.ClusterName, SessionTTL: cfg.SessionTTL.D(), Logger: s.log.With("component", "store")}
	if cfg.EtcdCAFile != "" || cfg.EtcdCertFile != "" {
		if storeCfg.TLS, err = etcdTLS(cfg); err != nil {
			return nil, err
		}
	}

	var buckets []ec2gw.BucketConfig
	for _, b := range cfg.EC2Buckets {
		buckets = append(buckets, ec2gw.BucketConfig{Name: b.Name, Capacity: b.Capacity, RefillPerSecond: b.RefillPerSecond, Actions: b.Actions})
	}
	if len(buckets) > 0 {
		buckets = mergeBuckets(ec2gw.DefaultBuckets(), buckets)
	}
	s.gw, err = ec2gw.New(ctx, ec2gw.Config{
		Region: cfg.Region, Endpoint: cfg.EC2Endpoint, Credentials: credentialsFor(cfg), Buckets: buckets,
		Clock: s.clk, Registerer: s.reg, Logger: s.log.With("component", "ec2gw"),
	})
	if err != nil {
		return nil, fmt.Errorf("EC2 gateway: %w", err)
	}

	s.grpcMet = newGRPCMetrics(s.reg)
	grpcCreds, err := s.transportCredentials()
	if err != nil {
		return nil, err
	}
	if err := s.newIdentity(ctx); err != nil {
		return nil, err
	}

	if s.grpcLis, err = net.Listen("tcp", cfg.GRPCListen); err != nil {
		return nil, fmt.Errorf("grpc-listen %s: %w", cfg.GRPCListen, err)
	}
	if s.httpLis, err = net.Listen("tcp", cfg.HTTPListen); err != nil {
		return nil, fmt.Errorf("http-listen %s: %w", cfg.HTTPListen, err)
	}
	s.advert = cfg.Advertise(s.grpcLis.Addr().String(), opts.Getenv)
	cluster := opts.Cluster
	if cluster == nil {
		rc, kerr := kube.RestConfig(cfg.Kubeconfig)
		switch {
		case kerr == nil:
			if s.kube, err = kube.New(kube.Config{Rest: rc, Clock: s.clk, Logger: s.log}); err != nil {
				return nil, err
			}
			cluster = s.kube
		case !errors.Is(kerr, kube.ErrNoConfig):
			return nil, kerr
		}
	}
	s.rep = replica.New(replica.Config{
		Store: storeCfg, Advertise: s.advert, Gateway: s.gw, Logger: s.log,
		RebuildFromEC2: cfg.RebuildFromEC2, Version: version.Version,
		Ledger: ledger.Options{ReleaseCooldown: cfg.ReleaseCooldown.D()},
		Allocator: allocator.Config{
			ClusterName: cfg.ClusterName, EC2: s.gw, Policies: policiesOf(policies), SecurityGroups: cfg.SecurityGroups, Subnets: cfg.Subnets,
			ReleaseDelay: cfg.ReleaseDelay.D(), ProposalTimeout: cfg.ProposalTimeout.D(),
			ReconcileInterval: cfg.ReconcileInterval.D(), InstanceCheckInterval: cfg.InstanceCheckInterval.D(),
			DriftGrace: cfg.DriftGrace.D(), Clock: s.clk, Logger: s.log, Registerer: s.reg,
			Trend:   func(subnet string) float64 { return s.forecast.Forecast(subnet, 0).HeldPerHour },
			Cluster: cluster, Lookahead: cfg.KubeLookahead, StalePodGrace: cfg.KubeStalePodGrace.D(),
			PendingTag: pendingTag(cfg), PendingDiscoveryInterval: cfg.PendingDiscoveryInterval.D(), NodeNames: cfg.AttestNodeName,
		},
		OnLead: func() {
			s.health.SetServingStatus(ipledgerv1.NodeService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
		},
	})
	s.forecast = allocator.NewForecaster(s.Ledger, time.Hour, s.clk)
	s.reg.MustRegister(newStateCollector(s))
	s.grpc = s.newGRPCServer(grpcCreds)
	s.dash = dashboard.New(api.NewAdminServer(s), dashboard.Options{Logger: s.log.With("component", "dashboard")})
	s.httpSrv = &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: 10 * time.Second}

	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.goRun(func() error { return s.grpc.Serve(s.grpcLis) }, "grpc")
	s.goRun(func() error {
		if err := s.httpSrv.Serve(s.httpLis); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}, "http")
	s.goRun(func() error { return s.forecast.Run(runCtx, 30*time.Second) }, "forecast")
	s.goRun(func() error { return s.dash.Run(runCtx) }, "dashboard")
	s.goRun(func() error { return s.ident.Run(runCtx) }, "identity")
	s.goRun(func() error { return s.rep.Run(runCtx) }, "replica")
	if s.kube != nil {
		// Every replica keeps warm caches; only the leader's allocator acts on them.
		s.goRun(func() error {
			if err := s.kube.Start(runCtx); err != nil && runCtx.Err() == nil {
				s.log.Warn("kubernetes caches", "err", err)
			}
			<-runCtx.Done()
			return nil
		}, "kube")
	}
	s.log.Info("replica started", "grpc", s.GRPCAddr(), "http", s.HTTPAddr(), "advertise", s.advert, "cluster", cfg.ClusterName,
		"transport", cfg.Transport().String())
	return s, nil
}

func credentialsFor(cfg config.Config) ec2Credentials {
	if cfg.Dev {
		// The simulator accepts any signature; never send real credentials to it.
		return credentials.NewStaticCredentialsProvider("ipledger-dev", "ipledger-dev", "")
	}
	return nil
}

// mergeBuckets replaces default buckets by name and adds new ones.
func mergeBuckets(def, over []ec2gw.BucketConfig) []ec2gw.BucketConfig {
	byName := map[string]int{}
	for i, b := range def {
		byName[b.Name] = i
	}
	for _, o := range over {
		if i, ok := byName[o.Name]; ok {
			if len(o.Actions) == 0 {
				o.Actions = def[i].Actions
			}
			def[i] = o
			continue
		}
		def = append(def, o)
	}
	return def
}

// goRun runs a component until it returns; an error ends the replica.
func (s *Server) goRun(f func() error, name string) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := f(); err != nil {
			s.stop(fmt.Errorf("%s: %w", name, err))
		}
	}()
}

// stop records why the replica ends (the first reason wins) and shuts it down.
func (s *Server) stop(err error) {
	s.errMu.Lock()
	first := s.err == nil && !s.closed()
	if first {
		s.err = err
	}
	s.errMu.Unlock()
	if first {
		if err != nil {
			s.log.Error("replica stopping", "err", err)
		}
		go s.stopAll()
	}
}

func (s *Server) closed() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *Server) stopAll() {
	s.shutdown.Do(func() {
		s.cancel()
		s.grpc.Stop()
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.httpSrv.Shutdown(sctx)
		c()
		s.wg.Wait()
		s.closeResources()
		close(s.done)
	})
}

func (s *Server) closeResources() {
	if s.gw != nil {
		s.gw.Close()
	}
	if s.rep != nil {
		_ = s.rep.Close()
	}
	if s.backends != nil {
		_ = s.backends.Close()
	}
	if s.grpcLis != nil && s.grpc == nil {
		_ = s.grpcLis.Close()
	}
	if s.httpLis != nil && s.httpSrv == nil {
		_ = s.httpLis.Close()
	}
}

// Close stops the replica (a leader resigns first so a standby takes over at once).
func (s *Server) Close() error {
	s.stop(nil)
	<-s.done
	return nil
}

// Wait blocks until the replica has stopped and returns why (nil after Close).
func (s *Server) Wait() error {
	<-s.done
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

// Done is closed when the replica has stopped.
func (s *Server) Done() <-chan struct{} { return s.done }

// GRPCAddr is the bound gRPC address.
func (s *Server) GRPCAddr() string { return s.grpcLis.Addr().String() }

// HTTPAddr is the bound HTTP address.
func (s *Server) HTTPAddr() string { return s.httpLis.Addr().String() }

// Advertise is the address other replicas send agents to when this one leads.
func (s *Server) Advertise() string { return s.advert }

// DevCerts are the certificates --dev created (nil when gRPC does not use them).
func (s *Server) DevCerts() *mtls.DevCerts { return s.devCerts }

// TLS is the source of the server's certificate and client CA (nil with plaintext gRPC).
func (s *Server) TLS() *mtls.Source { return s.tls }

// Sim is the in-process EC2 simulator (--dev through package dev), or nil.
func (s *Server) Sim() *ec2sim.Server {
	if s.backends == nil {
		return nil
	}
	return s.backends.Sim()
}

// Store is the replica's etcd store.
// It is nil until the replica has reached etcd.
func (s *Server) Store() *store.Store { return s.rep.Store() }

// Registry is the replica's Prometheus registry.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// IsLeader reports whether this replica leads and its allocator runs.
func (s *Server) IsLeader() bool { return s.Allocator() != nil }

// Allocator implements api.Replica.
func (s *Server) Allocator() *allocator.Allocator { return s.rep.Allocator() }

// Ledger implements api.Replica.
func (s *Server) Ledger() *ledger.Ledger { return s.rep.Ledger() }

// LeaderAddress implements api.Replica.
func (s *Server) LeaderAddress() string { return s.rep.LeaderAddress() }

// Policies implements api.Replica.
func (s *Server) Policies() []policy.Policy { return s.rep.Policies() }

// LimiterState implements api.Replica.
func (s *Server) LimiterState() ec2gw.LimiterState { return s.gw.LimiterState() }

// Clock implements api.Replica: the real clock, scaled by --time-scale.
func (s *Server) Clock() clock.Clock { return s.clk }

// Forecaster implements api.Replica.
func (s *Server) Forecaster() *allocator.Forecaster { return s.forecast }

// ClusterStatus implements api.Replica.
func (s *Server) ClusterStatus(ctx context.Context) *ipledgerv1.ClusterStatus {
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	herr := s.rep.Health(hctx)
	led := s.rep.Ledger()
	st := &ipledgerv1.ClusterStatus{
		Replica:      s.advert,
		IsLeader:     s.IsLeader(),
		Leader:       s.rep.LeaderAddress(),
		StoreHealthy: herr == nil,
		Revision:     s.rep.Revision(),
		ClusterName:  s.cfg.ClusterName,
		Nodes:        uint32(len(led.Nodes())),
		Subnets:      uint32(len(led.Subnets())),
		Version:      version.Get().Version,
		Commit:       version.Get().Commit,
	}
	if herr != nil {
		st.StoreMessage = herr.Error()
	} else {
		st.StoreMessage = "etcd quorum reachable"
	}
	return st
}

// storeHealth says whether etcd answers a linearizable read (and why not).
func (s *Server) storeHealth(ctx context.Context) error { return s.rep.Health(ctx) }

// LoadPolicyFile reads a YAML or JSON list of NodePolicy objects and validates each.
func LoadPolicyFile(path string) ([]*ipledgerv1.NodePolicy, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy-file: %w", err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("policy-file %s: %w", path, err)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(j, &raw); err != nil {
		return nil, fmt.Errorf("policy-file %s: want a list of policies: %w", path, err)
	}
	seen := map[string]bool{}
	var out []*ipledgerv1.NodePolicy
	for i, r := range raw {
		wire := &ipledgerv1.NodePolicy{}
		if err := protojson.Unmarshal(r, wire); err != nil {
			return nil, fmt.Errorf("policy-file %s: policy %d: %w", path, i, err)
		}
		p, err := api.PolicyFromProto(wire)
		if err == nil {
			err = p.Validate()
		}
		if err != nil {
			return nil, fmt.Errorf("policy-file %s: policy %d: %w", path, i, err)
		}
		if seen[p.Name] {
			return nil, fmt.Errorf("policy-file %s: policy %q appears twice", path, p.Name)
		}
		seen[p.Name] = true
		out = append(out, wire)
	}
	return out, nil
}

// policiesOf converts the policy file's policies (LoadPolicyFile validated them).
func policiesOf(wire []*ipledgerv1.NodePolicy) []policy.Policy {
	out := make([]policy.Policy, 0, len(wire))
	for _, w := range wire {
		p, _ := api.PolicyFromProto(w)
		out = append(out, p)
	}
	return out
}
