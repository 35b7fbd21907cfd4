package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/ipledger/ipledger/agent/attest"
	"github.com/ipledger/ipledger/agent/cniserver"
	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/pool"
	"github.com/ipledger/ipledger/agent/serverconn"
	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// netRetry is the pause before the ENI configuration is tried again after a failure.
const netRetry = 10 * time.Second

// recoveredCheck is how often the networking loop looks whether the pods of recovered addresses
// are gone while there are any (a Del of an attachment the pool does not know looks at once).
const recoveredCheck = 5 * time.Second

// Agent is one node agent. Many may run in one process (each with its own socket, checkpoint,
// metrics registry and HTTP address).
type Agent struct {
	cfg     Config
	log     *slog.Logger
	reg     *prometheus.Registry
	ready   chan struct{}
	netKick chan struct{}
	acks    *prometheus.CounterVec
	tls     *mtls.Source   // the node's certificate and the server CA (nil: plaintext or Credentials given)
	attest  *attest.Client // attestation and renewal (nil: certificate files, plaintext or Credentials given)
	cniDone atomic.Bool    // the conflist is installed

	mu       sync.Mutex
	started  bool
	inst     Instance
	nodeName string
	pool     *pool.Pool
	conn     *serverconn.Conn
	cni      *cniserver.Server
	netm     *netconf.Manager
	httpAddr string
}

var (
	_ serverconn.Handler  = (*Agent)(nil)
	_ cniserver.Supplier  = (*serverconn.Conn)(nil)
	_ prometheus.Gatherer = (*prometheus.Registry)(nil)
)

// New validates cfg and returns an agent; Run starts it.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent: invalid config: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Servers = append([]string(nil), cfg.Servers...)
	cfg.Labels = maps.Clone(cfg.Labels)
	var tlsSrc *mtls.Source
	var att *attest.Client
	if cfg.Attests() {
		var err error
		att, err = attest.New(attest.Config{Dir: cfg.IdentityDir, CAFile: cfg.TLSCAFile, Servers: cfg.Servers,
			IMDSEndpoint: cfg.IMDSEndpoint, Format: cfg.AttestSignature, Logger: cfg.Logger.With("component", "attest")})
		if err != nil {
			return nil, fmt.Errorf("agent: --identity-dir %s: %w", cfg.IdentityDir, err)
		}
		tlsSrc = att.Source()
		cfg.Credentials = mtls.ClientCredentials(tlsSrc)
	}
	if cfg.Credentials == nil && cfg.TLSCertFile != "" {
		src, err := mtls.NewSource(mtls.Files{Cert: cfg.TLSCertFile, Key: cfg.TLSKeyFile, CA: cfg.TLSCAFile},
			mtls.SourceOptions{Logger: cfg.Logger.With("component", "tls")})
		if err != nil {
			return nil, fmt.Errorf("agent: --tls-cert-file, --tls-key-file, --tls-ca-file: %w", err)
		}
		tlsSrc = src
		cfg.Credentials = mtls.ClientCredentials(src)
	}
	return &Agent{
		tls:     tlsSrc,
		attest:  att,
		cfg:     cfg,
		log:     cfg.Logger,
		reg:     prometheus.NewRegistry(),
		ready:   make(chan struct{}),
		netKick: make(chan struct{}, 1),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_agent_release_acks_total",
			Help: "Items of release proposals the agent answered, by result.",
		}, []string{"result"}),
	}, nil
}

// Ready is closed when the agent serves its CNI socket (and HTTP endpoint).
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// SocketPath is the CNI socket.
func (a *Agent) SocketPath() string { return a.cfg.SocketPath }

// MetricsAddr is the address the HTTP endpoint listens on ("" before Ready or when off).
func (a *Agent) MetricsAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.httpAddr
}

// Gatherer returns the agent's own metrics registry.
func (a *Agent) Gatherer() prometheus.Gatherer { return a.reg }

// NodeName is the node name in use ("" before discovery).
func (a *Agent) NodeName() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nodeName
}

// Run discovers the instance, loads the checkpoint, serves the CNI socket and HTTP endpoint,
// keeps the allocator connection and the node's ENIs, and blocks until ctx ends. It returns nil
// after a clean stop (socket removed, streams closed) and an error when it cannot start or a
// part fails.
func (a *Agent) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.started {
		a.mu.Unlock()
		return errors.New("agent: Run called twice")
	}
	a.started = true
	a.mu.Unlock()

	inst, err := a.discover(ctx)
	if err != nil {
		return err
	}
	nodeName := a.cfg.NodeName
	if nodeName == "" {
		nodeName = inst.LocalHostname
		if err := ValidNodeName(nodeName); err != nil {
			return fmt.Errorf("agent: node name from IMDS local-hostname: %w; set --node-name", err)
		}
	}
	log := a.log.With("node", nodeName)
	a.log = log
	if a.tls != nil && a.attest == nil {
		// The server refuses every call of a certificate that names another node; say so now.
		if id, err := mtls.IdentityOf(a.tls.Leaf()); err != nil || id != mtls.NodeIdentity(nodeName) {
			return fmt.Errorf("agent: --tls-cert-file %s names %q, not this node %s (want the URI SAN %s): %v",
				a.cfg.TLSCertFile, id.String(), nodeName, mtls.NodeIdentity(nodeName), err)
		}
	}

	conn, err := serverconn.New(serverconn.Config{
		Servers:     a.cfg.Servers,
		Credentials: a.cfg.Credentials,
		Identity: serverconn.Identity{
			NodeName: nodeName, InstanceID: inst.InstanceID, InstanceType: inst.InstanceType,
			AvailabilityZone: inst.AvailabilityZone, SubnetID: inst.SubnetID, PrimaryENIID: inst.ENIID,
			PrimaryIP: inst.LocalIPv4, Labels: a.cfg.Labels, AgentVersion: a.cfg.AgentVersion,
		},
		Handler:       a,
		Logger:        log.With("component", "serverconn"),
		UsageInterval: a.cfg.UsageInterval,
		UsageDebounce: a.cfg.UsageDebounce,
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	p, err := pool.Open(pool.Config{
		CheckpointPath: a.cfg.CheckpointPath,
		NodeName:       nodeName,
		InstanceID:     inst.InstanceID,
		Cooldown:       a.cfg.Cooldown,
		RestoreWait:    a.cfg.RestoreWait,
		Now:            a.cfg.Now,
		OnChange:       conn.NotifyUsage,
		Logger:         log.With("component", "pool"),
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	metrics, err := cniserver.NewMetrics(a.reg)
	if err != nil {
		return fmt.Errorf("agent: metrics: %w", err)
	}
	var onUnknownDel func()
	if a.cfg.ManageNetworking {
		// The plugin removed the pod's rules before its Del: a recovered address may be free.
		onUnknownDel = a.kickNet
	}
	cni, err := cniserver.New(cniserver.Config{
		SocketPath:      a.cfg.SocketPath,
		SocketGroup:     a.cfg.SocketGroup,
		Pool:            p,
		Supplier:        conn,
		AddWait:         a.cfg.AddWait,
		Metrics:         metrics,
		OnWaitingChange: conn.NotifyUsage,
		OnUnknownDel:    onUnknownDel,
		Logger:          log.With("component", "cni"),
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	var netm *netconf.Manager
	if a.cfg.ManageNetworking {
		netm, err = netconf.New(netconf.Config{NetNS: a.cfg.NetNS, SimulateENILinks: a.cfg.SimulateENILinks,
			Logger: log.With("component", "netconf")})
		if err != nil {
			return fmt.Errorf("agent: node networking: %w", err)
		}
		defer func() { _ = netm.Close() }()
		if err := a.restoreNetworking(netm, p); err != nil {
			return err
		}
		if err := a.applySNAT(netm, inst); err != nil {
			return err
		}
		if !a.cfg.ExternalSNAT {
			// What the agent programmed goes with it (a restart programs it again at once).
			defer func() {
				if err := netm.RemoveSNAT(); err != nil {
					log.Warn("removing source NAT failed", "err", err)
				}
			}()
		}
	}
	a.mu.Lock()
	a.inst, a.nodeName, a.pool, a.conn, a.cni, a.netm = inst, nodeName, p, conn, cni, netm
	a.mu.Unlock()
	if err := a.registerMetrics(); err != nil {
		return fmt.Errorf("agent: metrics: %w", err)
	}

	var httpLn net.Listener
	if a.cfg.MetricsListen != "" {
		if httpLn, err = net.Listen("tcp", a.cfg.MetricsListen); err != nil {
			return fmt.Errorf("agent: --metrics-listen: %w", err)
		}
		a.mu.Lock()
		a.httpAddr = httpLn.Addr().String()
		a.mu.Unlock()
	}
	log.Info("agent starting", "instance", inst.InstanceID, "type", inst.InstanceType, "az", inst.AvailabilityZone,
		"subnet", inst.SubnetID, "checkpoint_restored", p.Restored(), "generation", p.Generation(),
		"assignments", len(p.Assignments()), "recovered", len(p.Recovered()), "restore_wait", a.cfg.RestoreWait,
		"socket", a.cfg.SocketPath, "http", a.MetricsAddr())

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return cni.Run(gctx) })
	g.Go(func() error {
		select {
		case <-cni.Ready():
			close(a.ready)
		case <-gctx.Done():
		}
		return nil
	})
	g.Go(func() error {
		if a.attest != nil {
			// The CNI socket is served meanwhile (ADDs wait, then try again later); the node has
			// no conflist, so it is not Ready, until the agent is attested and registered.
			if err := a.ensureIdentity(gctx, nodeName); err != nil {
				return err
			}
			g.Go(func() error { return a.attest.Run(gctx) })
		}
		return conn.Run(gctx)
	})
	if netm != nil {
		g.Go(func() error { return a.netLoop(gctx, netm, p) })
	}
	if httpLn != nil {
		srv := &http.Server{Handler: a.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			if err := srv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("agent: http: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			return nil
		})
	}
	err = g.Wait()
	if ferr := p.Close(); ferr != nil {
		log.Error("final checkpoint write failed", "err", ferr)
	}
	if err != nil && ctx.Err() == nil {
		return err
	}
	log.Info("agent stopped")
	return nil
}

// discover asks IMDS until it answers or DiscoveryTimeout passes.
func (a *Agent) discover(ctx context.Context) (Instance, error) {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.DiscoveryTimeout)
	defer cancel()
	// 200 ms doubling up to 5 s, without jitter (one agent asks its own IMDS); the deadline is
	// ctx's.
	bo := &backoff.ExponentialBackOff{InitialInterval: 200 * time.Millisecond, Multiplier: 2, MaxInterval: 5 * time.Second}
	var last error
	inst, err := backoff.Retry(ctx, func() (Instance, error) {
		inst, err := Discover(ctx, a.cfg.IMDSEndpoint)
		if err != nil {
			last = err
		}
		return inst, err
	}, backoff.WithBackOff(bo), backoff.WithMaxElapsedTime(0), backoff.WithNotify(func(err error, wait time.Duration) {
		a.log.Warn("instance discovery failed; retrying", "err", err, "in", wait)
	}))
	if err != nil {
		return Instance{}, fmt.Errorf("agent: gave up discovering the instance after %v: %w", a.cfg.DiscoveryTimeout, last)
	}
	return inst, nil
}

// ApplyPool applies a pool from the allocator (serverconn.Handler). The first one applied
// (the node is registered, so it has its identity) installs the conflist.
func (a *Agent) ApplyPool(np *ipledgerv1.NodePool, force bool) error {
	res, err := a.pool.Apply(np, force)
	if err != nil {
		return err
	}
	a.installConflist()
	if res.Applied {
		a.kickNet()
		if len(res.Unlocked) > 0 {
			a.log.Info("release locks ended", "items", res.Unlocked, "generation", res.Generation)
		}
	}
	return nil
}

// AnswerRelease answers a release proposal (serverconn.Handler).
func (a *Agent) AnswerRelease(p *ipledgerv1.ReleaseProposal) (*ipledgerv1.ReleaseAck, error) {
	ack, err := a.pool.Answer(p)
	if err != nil {
		return nil, err
	}
	a.acks.WithLabelValues("confirmed").Add(float64(len(ack.GetConfirmed())))
	a.acks.WithLabelValues("refused").Add(float64(len(ack.GetRefused())))
	a.log.Info("release proposal answered", "proposal", p.GetProposalId(),
		"confirmed", ack.GetConfirmed(), "refused", ack.GetRefused())
	return ack, nil
}

// StalePods gives back the addresses of pods the Kubernetes API deleted whose CNI DEL never
// came (serverconn.Handler), once the agent's own state agrees the pod is gone: with node
// networking, an address whose host route still leads to the pod's veth is kept (the sandbox
// is still there; its DEL will come), and the pod rules left of the others are removed first.
// Without node networking the agent cannot see sandboxes and trusts the server's grace.
func (a *Agent) StalePods(uids []string) {
	want := make(map[string]bool, len(uids))
	for _, u := range uids {
		want[u] = true
	}
	a.mu.Lock()
	p, netm := a.pool, a.netm
	a.mu.Unlock()
	var cands []pool.Assignment
	for _, as := range p.Assignments() {
		if as.Recovered {
			continue
		}
		if (as.Pod.UID != "" && want[as.Pod.UID]) || want[as.Pod.Namespace+"/"+as.Pod.Name] {
			cands = append(cands, as)
		}
	}
	if len(cands) == 0 {
		return
	}
	var kernel map[netip.Addr]netconf.PodRoute
	var rules []netconf.PodRoute
	if netm != nil {
		var err error
		if kernel, rules, err = kernelPods(netm); err != nil {
			a.log.Error("checking the pods the server says are deleted failed; keeping their addresses", "err", err)
			return
		}
	}
	var released, kept []string
	for _, as := range cands {
		if r, ok := kernel[as.IP]; ok {
			kept = append(kept, as.IP.String()+" via "+r.HostVeth)
			continue
		}
		if netm != nil && slices.ContainsFunc(rules, func(r netconf.PodRoute) bool { return r.IP == as.IP }) {
			if err := netm.DelPodRules(as.IP); err != nil {
				a.log.Error("removing the rules of a deleted pod failed; keeping its address", "ip", as.IP, "err", err)
				continue
			}
		}
		if _, _, err := p.Release(as.Key); err != nil {
			a.log.Error("giving back the address of a deleted pod failed", "ip", as.IP, "attachment", as.Key.String(), "err", err)
			continue
		}
		released = append(released, as.IP.String()+"="+as.Pod.Namespace+"/"+as.Pod.Name)
	}
	if len(released) > 0 {
		a.log.Warn("addresses of pods deleted in Kubernetes whose CNI DEL never came given back", "released", released)
	}
	if len(kept) > 0 {
		a.log.Info("pods the server says are deleted still have their veth on the node; keeping their addresses until their DEL", "kept", kept)
	}
}

// Usage is the usage report (serverconn.Handler).
func (a *Agent) Usage() *ipledgerv1.UsageReport {
	u := a.pool.Usage()
	u.PodsWaiting = uint32(a.cni.Waiting())
	return u
}

// KnownGeneration is the applied pool's generation (serverconn.Handler).
func (a *Agent) KnownGeneration() uint64 { return a.pool.Generation() }

// RestorePods restores, after the first registration, the pods the server says the node last
// reported in use that the checkpoint lacks (serverconn.Handler). Disagreements between the
// report and the checkpoint are logged as errors: one of them was stale.
func (a *Agent) RestorePods(pods []*ipledgerv1.PodAddress) {
	res, err := a.pool.Restore(pods)
	if err != nil {
		a.log.Error("restoring the pods the server knows failed", "err", err)
	}
	if res.Ignored {
		return
	}
	for _, n := range res.Notes {
		if n.Conflict {
			a.log.Error("the server's report and the checkpoint disagree about a pod's address; keeping the newer assignment",
				"ip", n.IP, "attachment", n.Key.String(), "kept", n.Kept, "why", n.Reason)
		} else {
			a.log.Warn("a pod the server reported is not restored", "ip", n.IP, "attachment", n.Key.String(), "why", n.Reason)
		}
	}
	for _, as := range res.Replaced {
		a.log.Error("checkpointed assignment superseded by a newer one the server reported", "ip", as.IP,
			"attachment", as.Key.String(), "assigned_at", as.AssignedAt)
	}
	if len(res.Restored) > 0 || len(res.Upgraded) > 0 {
		a.log.Warn("restored pods the checkpoint lacked from the server's last report (the checkpoint was stale or lost)",
			"restored", assignmentNames(res.Restored), "recovered_now_known", assignmentNames(res.Upgraded))
	} else {
		a.log.Info("the server's last report holds no pod the checkpoint lacks", "reported", len(pods))
	}
}

// assignmentNames lists assignments as ip=attachment.
func assignmentNames(as []pool.Assignment) []string {
	out := make([]string, 0, len(as))
	for _, x := range as {
		out = append(out, x.IP.String()+"="+x.Key.String())
	}
	return out
}

func (a *Agent) kickNet() {
	select {
	case a.netKick <- struct{}{}:
	default:
	}
}

// toNetconfENI converts a pool ENI; false when it lacks what netconf needs.
func (a *Agent) toNetconfENI(e pool.ENI) (netconf.ENI, error) {
	out := netconf.ENI{ID: e.ID, MAC: e.MAC, DeviceIndex: int(e.DeviceIndex), MTU: a.cfg.ENIMTU}
	if e.SubnetCIDR != "" {
		p, err := netip.ParsePrefix(e.SubnetCIDR)
		if err != nil {
			return out, fmt.Errorf("ENI %s: subnet %q: %w", e.ID, e.SubnetCIDR, err)
		}
		out.SubnetCIDR = p
	}
	if e.PrimaryIP != "" {
		ip, err := netip.ParseAddr(e.PrimaryIP)
		if err != nil {
			return out, fmt.Errorf("ENI %s: primary %q: %w", e.ID, e.PrimaryIP, err)
		}
		out.PrimaryIP = ip
	}
	return out, out.Validate()
}

// poolENIs are the ENIs of the applied pool netconf looks after: secondary ENIs, and the primary
// when its link is simulated.
func (a *Agent) poolENIs(p *pool.Pool) map[string]pool.ENI {
	out := map[string]pool.ENI{}
	for _, nif := range p.NodePool().GetInterfaces() {
		if nif.GetDeviceIndex() == 0 && !a.cfg.SimulateENILinks {
			continue
		}
		out[nif.GetEniId()] = pool.ENI{ID: nif.GetEniId(), MAC: nif.GetMacAddress(), DeviceIndex: nif.GetDeviceIndex(),
			SubnetID: nif.GetSubnetId(), SubnetCIDR: nif.GetSubnetCidr(), PrimaryIP: nif.GetPrimaryIp()}
	}
	return out
}

// kernelPods returns the pods the node namespace routes: addresses with pod rules and a /32
// route to a host link (a pod's veth). A rule without such a route is no pod's.
func kernelPods(netm *netconf.Manager) (map[netip.Addr]netconf.PodRoute, []netconf.PodRoute, error) {
	rules, err := netm.Rules()
	if err != nil {
		return nil, nil, err
	}
	pods := make(map[netip.Addr]netconf.PodRoute, len(rules))
	for _, r := range rules {
		if r.HostVeth != "" {
			pods[r.IP] = r
		}
	}
	return pods, rules, nil
}

// restoreNetworking runs before the CNI socket serves anything. It holds every address a pod
// on the node uses (its rules and host route) that the checkpoint gives to no attachment — the
// checkpoint may be older than the pods, or lost — gives back recovered addresses whose pods
// went while the agent was down, and, after a restart with a checkpoint, puts back the rules of
// the checkpointed and recovered assignments and removes the pod rules of no one.
// applySNAT programs the source NAT of pods' traffic leaving the VPC, or, with --external-snat,
// removes what an earlier run programmed.
func (a *Agent) applySNAT(netm *netconf.Manager, inst Instance) error {
	if a.cfg.ExternalSNAT {
		if err := netm.RemoveSNAT(); err != nil {
			return fmt.Errorf("agent: --external-snat: %w", err)
		}
		return nil
	}
	s, err := a.cfg.SNATConfig.snat(inst)
	if err != nil {
		return err
	}
	if err := netm.EnsureSNAT(s); err != nil {
		return fmt.Errorf("agent: source NAT: %w", err)
	}
	return nil
}

func (a *Agent) restoreNetworking(netm *netconf.Manager, p *pool.Pool) error {
	if err := netm.EnableIPv4Forwarding(); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	pods, rules, err := kernelPods(netm)
	if err != nil {
		return fmt.Errorf("agent: read pod rules: %w", err)
	}
	var gone []netip.Addr
	for _, ip := range p.Recovered() {
		if _, ok := pods[ip]; !ok {
			gone = append(gone, ip)
		}
	}
	released, err := p.ReleaseRecovered(gone)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if len(released) > 0 {
		a.log.Info("recovered addresses given back: their pods went while the agent was down", "ips", gone)
	}
	cand := make([]netip.Addr, 0, len(pods))
	for ip := range pods {
		cand = append(cand, ip)
	}
	recovered, err := p.Recover(cand)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if len(recovered) > 0 {
		var list []string
		for _, r := range recovered {
			list = append(list, r.IP.String()+" via "+pods[r.IP].HostVeth)
		}
		a.log.Warn("pods on the node use addresses the checkpoint gives to no attachment (it is stale or lost): holding them until their rules go",
			"recovered", list)
	}
	if !p.Restored() {
		// Cold start: no assignments to put back, and no rules of ours to judge.
		a.log.Info("pod rules left as they are (no checkpoint)", "rules", len(rules), "recovered", len(recovered))
		return nil
	}
	var routes []netconf.PodRoute
	for _, as := range p.Assignments() {
		if as.Recovered {
			routes = append(routes, netconf.PodRoute{IP: as.IP, Table: pods[as.IP].Table})
			continue
		}
		routes = append(routes, netconf.PodRoute{IP: as.IP, Table: int(cniserver.RouteTable(as.ENI.DeviceIndex))})
	}
	if err := netm.SyncPodRules(routes); err != nil {
		return fmt.Errorf("agent: restore pod rules: %w", err)
	}
	a.log.Info("pod rules restored from the checkpoint and the kernel", "pods", len(routes), "recovered", len(p.Recovered()))
	return nil
}

// checkRecovered gives back the recovered addresses whose pods are gone: no pod rule, or no host
// route any more (the rules left of such an address are removed first).
func (a *Agent) checkRecovered(netm *netconf.Manager, p *pool.Pool) {
	rec := p.Recovered()
	if len(rec) == 0 {
		return
	}
	pods, rules, err := kernelPods(netm)
	if err != nil {
		a.log.Error("checking the pods of recovered addresses failed", "err", err)
		return
	}
	var gone []netip.Addr
	for _, ip := range rec {
		if _, ok := pods[ip]; ok {
			continue
		}
		if slices.ContainsFunc(rules, func(r netconf.PodRoute) bool { return r.IP == ip }) {
			// Rules without the pod's veth: the pod went without its DEL (which removes them).
			if err := netm.DelPodRules(ip); err != nil {
				a.log.Error("removing the rules of a recovered address whose pod is gone failed", "ip", ip, "err", err)
				continue
			}
		}
		gone = append(gone, ip)
	}
	if len(gone) == 0 {
		return
	}
	released, err := p.ReleaseRecovered(gone)
	if err != nil {
		a.log.Error("giving back recovered addresses failed", "ips", gone, "err", err)
		return
	}
	a.log.Info("recovered addresses given back: their pods' rules are gone", "ips", assignmentIPs(released))
}

func assignmentIPs(as []pool.Assignment) []string {
	out := make([]string, 0, len(as))
	for _, x := range as {
		out = append(out, x.IP.String())
	}
	return out
}

// netLoop keeps the ENIs of the applied pool configured: EnsureENI for new or changed ones,
// RemoveENI for those that left, retried after a failure. Every pass (and every recoveredCheck
// while there are recovered addresses) gives back the recovered addresses whose pods are gone.
func (a *Agent) netLoop(ctx context.Context, netm *netconf.Manager, p *pool.Pool) error {
	done := map[string]pool.ENI{} // configured since start
	known := a.poolENIs(p)        // from the checkpoint: configured before the restart, maybe
	var retry, recheck <-chan time.Time
	a.kickNet()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.netKick:
		case <-retry:
		case <-recheck:
		}
		retry, recheck = nil, nil
		a.checkRecovered(netm, p)
		if len(p.Recovered()) > 0 {
			recheck = time.After(recoveredCheck)
		}
		want := a.poolENIs(p)
		failed := false
		for id, e := range want {
			if prev, ok := done[id]; ok && prev == e {
				continue
			}
			ne, err := a.toNetconfENI(e)
			if err == nil {
				err = netm.EnsureENI(ctx, ne)
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				a.log.Error("configuring ENI failed", "eni", id, "device", e.DeviceIndex, "err", err)
				failed = true
				continue
			}
			done[id] = e
			a.log.Info("ENI configured", "eni", id, "device", e.DeviceIndex, "table", netconf.TableForDevice(int(e.DeviceIndex)))
		}
		gone := map[string]pool.ENI{}
		maps.Copy(gone, known)
		maps.Copy(gone, done)
		for id, e := range gone {
			if _, ok := want[id]; ok || e.DeviceIndex == 0 {
				continue
			}
			ne, err := a.toNetconfENI(e)
			if err == nil {
				err = netm.RemoveENI(ctx, ne)
			}
			if err != nil {
				a.log.Error("removing ENI failed", "eni", id, "err", err)
				failed = true
				continue
			}
			delete(done, id)
			delete(known, id)
			a.log.Info("ENI removed", "eni", id)
		}
		if failed {
			retry = time.After(netRetry)
		}
	}
}
