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
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/ipledger/ipledger/internal/mtls"
	"github.com/ipledger/ipledger/internal/version"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/dashboard"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/identity"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/store"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// Server is one running ipledger-server replica.
type Server struct {
	cfg      config.Config
	log      *slog.Logger
	reg      *prometheus.Registry
	sim      *ec2sim.Server
	etcd     *store.Embedded
	st       *store.Store
	gw       *ec2gw.Gateway
	grpc     *grpc.Server
	health   *health.Server
	grpcLis  net.Listener
	httpSrv  *http.Server
	httpLis  net.Listener
	forecast *allocator.Forecaster
	dash     *dashboard.Dashboard
	policies []*ipledgerv1.NodePolicy // from the policy file
	advert   string
	grpcMet  *grpcMetrics
	tls      *mtls.Source   // the server's certificate and client CA (nil: plaintext)
	devCerts *mtls.DevCerts // --dev's certificates (nil without them)
	ident    *identity.Service

	cancel context.CancelFunc
	wg     sync.WaitGroup
	done   chan struct{}
	errMu  sync.Mutex
	err    error

	mu         sync.RWMutex
	led        *ledger.Ledger
	alloc      *allocator.Allocator
	leader     string
	known      map[string]*ipledgerv1.NodePolicy
	revision   int64
	connected  bool   // the store was opened and the state loaded
	connectMsg string // why not, while it is not
}

var _ api.Replica = (*Server)(nil)

// Options are what a caller can inject besides the configuration.
type Options struct {
	Logger *slog.Logger
	// Getenv reads environment variables (default os.Getenv).
	Getenv func(string) string
}

// Start brings up a replica: EC2 (the in-process simulator with --dev), etcd (embedded or
// external), the gRPC and HTTP listeners, and the election loop. It returns once the listeners
// are bound; Wait blocks until the replica stops.
func Start(ctx context.Context, cfg config.Config, opts Options) (_ *Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
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
	s := &Server{cfg: cfg, log: opts.Logger, reg: prometheus.NewRegistry(), policies: policies, done: make(chan struct{}), known: map[string]*ipledgerv1.NodePolicy{}}
	s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	defer func() {
		if err != nil {
			s.closeResources()
		}
	}()

	var creds = credentialsFor(cfg)
	if cfg.Dev && cfg.EC2Endpoint == "" {
		scen := ec2sim.DefaultScenario()
		if cfg.SimScenario != "" {
			if scen, err = ec2sim.LoadScenario(cfg.SimScenario); err != nil {
				return nil, fmt.Errorf("sim-scenario: %w", err)
			}
		}
		s.sim, err = ec2sim.Start(ec2sim.Config{Scenario: scen, Seed: cfg.SimSeed, Throttle: cfg.SimThrottle, TimeScale: cfg.TimeScale,
			Logger: s.log.With("component", "ec2sim"), InstanceTags: simInstanceTags(cfg)}, "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("start EC2 simulator: %w", err)
		}
		s.cfg.EC2Endpoint = s.sim.Endpoint()
		if len(s.cfg.Subnets) == 0 {
			for _, sn := range s.sim.Sim().Snapshot().Subnets {
				s.cfg.Subnets = append(s.cfg.Subnets, sn.ID)
			}
		}
		s.log.Info("EC2 simulator started", "endpoint", s.sim.Endpoint())
	}

	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		s.etcd, err = store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: filepath.Join(cfg.DataDir, "etcd"), Logger: s.log.With("component", "etcd")})
		if err != nil {
			return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.DataDir, err)
		}
		endpoints = s.etcd.Endpoints()
		s.log.Info("embedded etcd started", "dir", filepath.Join(cfg.DataDir, "etcd"), "endpoints", endpoints)
	}
	storeCfg := store.Config{Endpoints: endpoints, ClusterName: cfg.ClusterName, SessionTTL: cfg.SessionTTL.D(), Logger: s.log.With("component", "store")}
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
		Region: cfg.Region, Endpoint: s.cfg.EC2Endpoint, Credentials: creds, Buckets: buckets,
		TimeScale: cfg.TimeScale, Registerer: s.reg, Logger: s.log.With("component", "ec2gw"),
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
	s.forecast = allocator.NewForecaster(s.Ledger, time.Hour, time.Now)
	s.reg.MustRegister(newStateCollector(s))
	s.grpc = s.newGRPCServer(grpcCreds)
	s.dash = dashboard.New(api.NewAdminServer(s), dashboard.Options{Logger: s.log.With("component", "dashboard")})
	s.httpSrv = &http.Server{Handler: s.httpHandler(), ReadHeaderTimeout: 10 * time.Second}

	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.led = ledger.New(ledger.Options{})
	s.setStoreStatus(false, "connecting to etcd")
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
	s.goRun(func() error { return s.connectAndLead(runCtx, storeCfg) }, "store")
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
		go s.shutdown()
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

var shutdownOnce sync.Map

func (s *Server) shutdown() {
	if _, loaded := shutdownOnce.LoadOrStore(s, true); loaded {
		return
	}
	s.cancel()
	s.grpc.Stop()
	sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
	_ = s.httpSrv.Shutdown(sctx)
	c()
	s.wg.Wait()
	s.closeResources()
	close(s.done)
}

func (s *Server) closeResources() {
	if s.gw != nil {
		s.gw.Close()
	}
	if st := s.Store(); st != nil {
		_ = st.Close()
	}
	if s.etcd != nil {
		_ = s.etcd.Close()
	}
	if s.sim != nil {
		_ = s.sim.Close()
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

// Sim is the in-process EC2 simulator (--dev), or nil.
func (s *Server) Sim() *ec2sim.Server { return s.sim }

// Store is the replica's etcd store.
// It is nil until the replica has reached etcd.
func (s *Server) Store() *store.Store {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.st
}

// Registry is the replica's Prometheus registry.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// IsLeader reports whether this replica leads and its allocator runs.
func (s *Server) IsLeader() bool { return s.Allocator() != nil }

// Allocator implements api.Replica.
func (s *Server) Allocator() *allocator.Allocator {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.alloc
}

// Ledger implements api.Replica.
func (s *Server) Ledger() *ledger.Ledger {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.led
}

// LeaderAddress implements api.Replica.
func (s *Server) LeaderAddress() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.leader
}

// Policies implements api.Replica.
func (s *Server) Policies() []*ipledgerv1.NodePolicy {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*ipledgerv1.NodePolicy, 0, len(s.known)+1)
	hasDefault := false
	for _, p := range s.known {
		out = append(out, p)
		hasDefault = hasDefault || p.GetName() == allocator.DefaultPolicyName
	}
	if !hasDefault {
		out = append(out, allocator.DefaultPolicy())
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetOrder() != out[j].GetOrder() {
			return out[i].GetOrder() < out[j].GetOrder()
		}
		return out[i].GetName() < out[j].GetName()
	})
	return out
}

// Forecaster implements api.Replica.
func (s *Server) Forecaster() *allocator.Forecaster { return s.forecast }

// ClusterStatus implements api.Replica.
func (s *Server) ClusterStatus(ctx context.Context) *ipledgerv1.ClusterStatus {
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	herr := s.storeHealth(hctx)
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := &ipledgerv1.ClusterStatus{
		Replica:      s.advert,
		IsLeader:     s.alloc != nil,
		Leader:       s.leader,
		StoreHealthy: herr == nil,
		Revision:     s.revision,
		ClusterName:  s.cfg.ClusterName,
		Nodes:        uint32(len(s.led.Nodes())),
		Subnets:      uint32(len(s.led.Subnets())),
		Version:      version.Get().Version,
		Commit:       version.Get().Commit,
	}
	if s.alloc != nil {
		st.Revision = s.alloc.Revision()
	}
	if herr != nil {
		st.StoreMessage = herr.Error()
	} else {
		st.StoreMessage = "etcd quorum reachable"
	}
	return st
}

// storeHealth says whether etcd answers a linearizable read (and why not).
func (s *Server) storeHealth(ctx context.Context) error {
	s.mu.RLock()
	st, connected, msg := s.st, s.connected, s.connectMsg
	s.mu.RUnlock()
	if !connected || st == nil {
		return errors.New(msg)
	}
	return st.Health(ctx)
}

// install replaces the in-memory state with what etcd holds.
func (s *Server) install(state *store.State) error {
	led, err := BuildLedger(state)
	if err != nil {
		return fmt.Errorf("rebuild state from etcd: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.led = led
	s.known = map[string]*ipledgerv1.NodePolicy{}
	for name, p := range state.Policies {
		s.known[name] = p
	}
	s.revision = state.Revision
	return nil
}

// BuildLedger builds a ledger from etcd's records: subnets first, then nodes and reservations.
func BuildLedger(state *store.State) (*ledger.Ledger, error) {
	led := ledger.New(ledger.Options{})
	for _, id := range sortedKeys(state.Subnets) {
		if err := led.PutSubnet(state.Subnets[id]); err != nil {
			return nil, fmt.Errorf("subnet %s: %w", id, err)
		}
	}
	for _, name := range sortedKeys(state.Nodes) {
		if err := led.PutNode(state.Nodes[name]); err != nil {
			return nil, fmt.Errorf("node %s: %w", name, err)
		}
	}
	for _, id := range sortedKeys(state.Prewarms) {
		if err := led.PutPrewarm(state.Prewarms[id]); err != nil {
			return nil, fmt.Errorf("pre-warm %s: %w", id, err)
		}
	}
	return led, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// apply follows one change of etcd on a standby.
func (s *Server) apply(ev store.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	led := s.led
	var err error
	switch ev.Type {
	case store.RecordNode:
		if ev.Deleted {
			led.DeleteNode(ev.Name)
		} else {
			err = led.PutNode(*ev.Node)
		}
	case store.RecordSubnet:
		if ev.Deleted {
			err = led.DeleteSubnet(ev.Name)
		} else {
			err = led.PutSubnet(*ev.Subnet)
		}
	case store.RecordPolicy:
		if ev.Deleted {
			delete(s.known, ev.Name)
		} else {
			s.known[ev.Name] = ev.Policy
		}
	case store.RecordPrewarm:
		if ev.Deleted {
			led.DeletePrewarm(ev.Name)
		} else {
			err = led.PutPrewarm(*ev.Prewarm)
		}
	}
	if err != nil {
		return fmt.Errorf("apply %s %s at revision %d: %w", ev.Type, ev.Name, ev.Revision, err)
	}
	s.revision = ev.Revision
	return nil
}

// follow keeps the in-memory state in step with etcd until ctx ends, reloading when the watch
// falls behind compaction or a change cannot be applied.
func (s *Server) follow(ctx context.Context, from int64) {
	for ctx.Err() == nil {
		err := s.st.Watch(ctx, from, s.apply)
		if ctx.Err() != nil {
			return
		}
		s.log.Warn("reloading state from etcd", "reason", err)
		state, lerr := s.st.Load(ctx)
		if lerr != nil {
			s.log.Warn("reload failed; retrying", "err", lerr)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		if ierr := s.install(state); ierr != nil {
			s.log.Error("state in etcd cannot be loaded", "err", ierr)
		}
		from = state.Revision
	}
}

// connectAndLead connects to etcd (waiting as long as it takes: a replica that cannot reach
// etcd stays up, answers /healthz and says why it is not ready, instead of crash-looping), loads
// the state, and then follows, campaigns and leads.
func (s *Server) connectAndLead(ctx context.Context, cfg store.Config) error {
	wait := 200 * time.Millisecond
	var st *store.Store
	for {
		var err error
		st, err = store.Open(ctx, cfg)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		s.setStoreStatus(false, "waiting for etcd: "+err.Error())
		s.log.Warn("etcd unreachable; retrying", "endpoints", cfg.Endpoints, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
	s.mu.Lock()
	s.st = st
	s.mu.Unlock()
	var state *store.State
	for {
		var err error
		if state, err = st.Load(ctx); err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		s.setStoreStatus(false, "cannot load state from etcd: "+err.Error())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	if err := s.install(state); err != nil {
		return err
	}
	s.setStoreStatus(true, "")
	s.goRun(func() error { s.observeLeader(ctx); return nil }, "leader-observer")
	return s.lead(ctx, state.Revision)
}

func (s *Server) setStoreStatus(connected bool, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connected, s.connectMsg = connected, msg
}

// lead follows etcd as a standby while campaigning; once elected it catches up with every write
// of the previous leader, stops following and runs the allocator until leadership ends, which
// ends the replica (its supervisor restarts it as a standby).
func (s *Server) lead(ctx context.Context, from int64) error {
	fctx, stopFollow := context.WithCancel(ctx)
	followed := make(chan struct{})
	go func() { defer close(followed); s.follow(fctx, from) }()
	defer func() { stopFollow(); <-followed }()

	var lead *store.Leadership
	for {
		var err error
		lead, err = s.st.Campaign(ctx, s.advert)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		s.log.Warn("campaign failed; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	wonAt := time.Now()
	if err := s.st.WaitForRevision(ctx, lead.WonRevision()); err != nil {
		_ = lead.Resign(context.Background())
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("catch up after winning the election: %w", err)
	}
	stopFollow()
	<-followed

	if len(s.Ledger().Nodes()) > 0 {
		// A previous leader served this cluster and may have just used up the account's EC2
		// buckets: pace from empty rather than be throttled on the first calls.
		s.gw.AssumeDrained()
	}
	s.mu.RLock()
	state := &store.State{Revision: s.revision, Policies: map[string]*ipledgerv1.NodePolicy{}}
	for k, v := range s.known {
		state.Policies[k] = v
	}
	led := s.led
	s.mu.RUnlock()
	alloc, err := allocator.New(allocator.Config{
		ClusterName: s.cfg.ClusterName, Ledger: led, Leadership: lead, Gateway: s.gw, State: state,
		Policies: s.policies, SecurityGroups: s.cfg.SecurityGroups, Subnets: s.cfg.Subnets,
		ReleaseDelay: s.cfg.ReleaseDelay.D(), ProposalTimeout: s.cfg.ProposalTimeout.D(),
		ReconcileInterval: s.cfg.ReconcileInterval.D(), InstanceCheckInterval: s.cfg.InstanceCheckInterval.D(),
		DriftGrace: s.cfg.DriftGrace.D(), TimeScale: s.cfg.TimeScale, Logger: s.log, Registerer: s.reg,
	})
	if err != nil {
		_ = lead.Resign(context.Background())
		return err
	}
	runErr := make(chan error, 1)
	go func() { runErr <- alloc.Run(ctx) }()
	select {
	case <-alloc.Started():
	case err := <-runErr:
		_ = lead.Resign(context.Background())
		return fmt.Errorf("allocator: %w", err)
	}
	s.mu.Lock()
	s.alloc = alloc
	s.leader = s.advert
	s.mu.Unlock()
	s.health.SetServingStatus(ipledgerv1.NodeService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	s.log.Info("leading", "revision", state.Revision, "takeover", time.Since(wonAt).Round(time.Millisecond))

	err = <-runErr
	s.mu.Lock()
	s.alloc = nil
	s.mu.Unlock()
	rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = lead.Resign(rctx)
	cancel()
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("leadership ended: %w", err)
}

// observeLeader keeps the leader's address for NOT_LEADER answers.
func (s *Server) observeLeader(ctx context.Context) {
	for addr := range s.st.ObserveLeader(ctx) {
		s.mu.Lock()
		if s.alloc == nil {
			s.leader = addr
		}
		s.mu.Unlock()
	}
}

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
		p := &ipledgerv1.NodePolicy{}
		if err := protojson.Unmarshal(r, p); err != nil {
			return nil, fmt.Errorf("policy-file %s: policy %d: %w", path, i, err)
		}
		if err := allocator.ValidatePolicy(p); err != nil {
			return nil, fmt.Errorf("policy-file %s: policy %d: %w", path, i, err)
		}
		if seen[p.GetName()] {
			return nil, fmt.Errorf("policy-file %s: policy %q appears twice", path, p.GetName())
		}
		seen[p.GetName()] = true
		out = append(out, p)
	}
	return out, nil
}
