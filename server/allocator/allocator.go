package allocator

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"golang.org/x/time/rate"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ipledger/ipledger/internal/clock"
	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"
)

// Tags ipledger puts on every ENI it creates.
const (
	TagCluster = diff.TagCluster
	TagNode    = diff.TagNode
	TagPrewarm = diff.TagPrewarm
)

// How nodes are named (Config.NodeNames).
const (
	NodeNamesPrivateDNS = "private-dns"
	NodeNamesInstanceID = "instance-id"
)

// Config wires an Allocator. Ledger, Store and EC2 are required.
type Config struct {
	ClusterName string
	// Ledger holds what the store held when this replica took over.
	Ledger *ledger.Ledger
	// Store commits the leader's changes; EC2 is the way to EC2.
	Store Store
	EC2   EC2
	// Revision is the store's revision the ledger reflects; StoredPolicies the policies stored.
	Revision       int64
	StoredPolicies map[string]policy.Policy
	// Policies from the policy file, upserted when the allocator starts.
	Policies []policy.Policy
	// SecurityGroups for new ENIs; empty copies the node's primary ENI's groups.
	SecurityGroups []string
	// Subnets the cluster uses before nodes register there; learned from EC2 at start.
	Subnets []string
	// Trend is the held-address trend of a subnet (addresses per hour; the Forecaster's),
	// which placement across pod subnets weighs. Nil: no trend.
	Trend func(subnet string) float64

	ReleaseDelay          time.Duration // default 60 s
	ProposalTimeout       time.Duration // default 60 s
	ReconcileInterval     time.Duration // default 5 min
	InstanceCheckInterval time.Duration // default 60 s
	DriftGrace            time.Duration // default 60 s
	// ReconcileBeforeServing: the records may be older than EC2 (etcd restored from a snapshot)
	// or empty (etcd lost, --rebuild-from-ec2). Run compares them with EC2 and repairs every
	// difference at once, without the drift grace, before it serves: addresses EC2 has on a
	// node's ENIs are leased to it again, leases EC2 no longer has are dropped, nodes whose
	// instances are gone are removed. Nodes missing from the records register again (their
	// agents are told UNKNOWN_NODE), and registration adopts what EC2 has on their instances.
	ReconcileBeforeServing bool
	// Tick is how often every node is looked at without an event (default 1 s).
	Tick time.Duration
	// Workers run nodes' supply and proposals (default 64); ReleaseWorkers their releases
	// (default 16). Nodes wait in a queue for them: no goroutine per node.
	Workers, ReleaseWorkers int
	// PassTimeout bounds one pass of a worker or a loop (wall time; default 2 min): no EC2 call
	// or commit of the allocator waits without a deadline.
	PassTimeout time.Duration

	// Clock is the allocator's time: every interval, delay and time stamp above is read on it
	// (default the real clock; a scaled clock for a simulator run faster than real time).
	Clock clock.Clock
	// Rand is the source of ids and client tokens (default crypto/rand).
	Rand       io.Reader
	Logger     *slog.Logger
	Registerer prometheus.Registerer

	// Cluster is the Kubernetes API's view (nil: none; agents' reports only). With Lookahead,
	// pods bound to a node that hold no address yet count as demand at once.
	Cluster   Cluster
	Lookahead bool
	// StalePodGrace is how long a pod the API deleted may keep the address its agent reports
	// before the agent is asked to give it back (its CNI DEL never came; default 2 min).
	StalePodGrace time.Duration
	// PendingTag is the tag ("key" or "key=value") of the cluster's instances: instances EC2
	// lists as pending with it are pre-registered every PendingDiscoveryInterval (default 5 s)
	// before their agents register. Empty: no discovery.
	PendingTag               string
	PendingDiscoveryInterval time.Duration
	// NodeNames is how nodes are named: NodeNamesPrivateDNS (default, EKS's and Karpenter's
	// names) or NodeNamesInstanceID; pre-registration names nodes the way their agents will.
	NodeNames string

	// observer, set by the package's tests, watches the allocator's locks.
	observer lockObserver
}

func (c *Config) setDefaults() error {
	if c.Ledger == nil || c.Store == nil || c.EC2 == nil {
		return errors.New("allocator: Ledger, Store and EC2 are required")
	}
	if c.ClusterName == "" {
		return errors.New("allocator: ClusterName is required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.ReleaseDelay < 0 {
		c.ReleaseDelay = 0
	}
	def(&c.ProposalTimeout, time.Minute)
	def(&c.ReconcileInterval, 5*time.Minute)
	def(&c.InstanceCheckInterval, time.Minute)
	def(&c.DriftGrace, time.Minute)
	def(&c.StalePodGrace, 2*time.Minute)
	def(&c.PendingDiscoveryInterval, 5*time.Second)
	switch c.NodeNames {
	case "":
		c.NodeNames = NodeNamesPrivateDNS
	case NodeNamesPrivateDNS, NodeNamesInstanceID:
	default:
		return fmt.Errorf("allocator: NodeNames %q is neither %s nor %s", c.NodeNames, NodeNamesPrivateDNS, NodeNamesInstanceID)
	}
	def(&c.Tick, time.Second)
	if c.PassTimeout <= 0 {
		c.PassTimeout = 2 * time.Minute
	}
	if c.Workers <= 0 {
		c.Workers = 64
	}
	if c.ReleaseWorkers <= 0 {
		c.ReleaseWorkers = 16
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Allocator is the leader's control loop. Create it with New once this replica leads, and Run
// it until leadership ends.
type Allocator struct {
	cfg Config
	log *slog.Logger
	led *ledger.Ledger
	gw  EC2
	st  Store
	clk clock.Clock
	now func() time.Time
	met *metrics

	// refusalLog paces the warning about usage reports naming other nodes' addresses.
	refusalLog rate.Sometimes

	slots    *slots     // commit slots of records (see doc.go for the lock order)
	work     *workQueue // nodes whose worker should run: supply, proposals
	releases *workQueue // nodes with release work: unassigns, ENI deletes
	learn    singleflight.Group

	mu             mutex // guards the fields below and every nodeState's runtime fields
	nodes          map[string]*nodeState
	bySubnet       map[string]map[string]*nodeState // subnet -> its nodes (addNodeLocked, dropNodeLocked)
	reclaimed      map[string]time.Time             // subnet -> its last reclaim (reclaimInSubnet)
	policies       map[string]policy.Policy
	types          map[string]instancetypes.Type
	drift          map[string]time.Time
	attaching      map[string]bool // pre-warmed ENIs being attached to a node
	deleting       map[string]bool // empty ENIs being detached and deleted: supply leaves them
	prewarmChosen  map[string][]netip.Addr
	preregistering map[string]bool               // instances announced by Kubernetes or found pending, being registered
	preregFailed   map[string]time.Time          // instances whose pre-registration failed, and when
	leads          leadSamples                   // how long before their ADD pods are seen bound (lookahead)
	starts         policy.StartPrior             // new nodes' first-minute pod starts, cluster-wide
	policyStarts   map[string]*policy.StartPrior // the same, per node group policy (launch hints)

	started     chan struct{}
	fatal       chan error
	wg          sync.WaitGroup
	describer   *instanceBatcher
	sweep       chan struct{}
	prewarmKick chan struct{}

	events   events       // recent events for admins (a leaf lock)
	randMu   mutex        // guards reads of cfg.Rand
	revision atomic.Int64 // store revision of the last commit (or of the state taken over)
}

// nodeState is the leader's runtime view of one node; its fields are guarded by Allocator.mu.
type nodeState struct {
	name   string
	subnet string // the node's subnet (it never changes)

	generation   uint64
	usage        *Usage
	lastReport   time.Time
	rate         policy.RateTracker
	waiting      int
	subs         map[*Subscription]struct{}
	changed      chan struct{}
	problem      error
	problemAt    time.Time
	surplusSince time.Time
	// assumedInUse stands in for the agent's report until the first one arrives.
	assumedInUse int
	// fresh: this leader registered the node (it is new), so its first minute teaches the
	// cluster's start prior; priorDone once it has.
	fresh      bool
	registered time.Time
	priorDone  bool
	// noProposalBefore holds the next proposal back after the agent refused items: without
	// it, a surplus the agent keeps refusing (cooling addresses; a tight subnet, where the
	// release delay is 0) would be proposed again at once, in a loop of etcd writes.
	noProposalBefore time.Time
	typ              instancetypes.Type
	policy           policy.Policy
	modeMsg          string
	nextSupply       time.Time
	backoff          time.Duration
	uncommitted      []uncommitted
	removed          bool
	// signalKey is the waiting signal last sent to the Cluster ("" none).
	signalKey string
	// leadSeen: pods of the last usage report whose lead (binding seen to address in use) was
	// sampled, by key.
	leadSeen map[string]bool
	// goneSince: pods the agent reports holding an address that the Kubernetes API no longer
	// has, by key (uid, or namespace/name), since when; staleSentAt: when they were last named
	// to the agent.
	goneSince   map[string]time.Time
	staleSentAt time.Time
}

// uncommitted is EC2 work that succeeded but whose store commit failed; retried by the worker.
type uncommitted struct {
	eni      string
	addrs    []netip.Addr
	prefixes []netip.Prefix
}

// New prepares an allocator from the state the ledger already holds.
func New(cfg Config) (*Allocator, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	obs := cfg.observer
	a := &Allocator{
		refusalLog: rate.Sometimes{Interval: time.Minute},
		cfg:        cfg,
		log:        cfg.Logger.With("component", "allocator"),
		led:        cfg.Ledger,
		gw:         cfg.EC2,
		st:         cfg.Store,
		clk:        cfg.Clock,
		now:        cfg.Clock.Now,
		slots:      newSlots(obs),
		work:       newWorkQueue("work queue", obs),
		releases:   newWorkQueue("release queue", obs),

		mu:             mutex{name: "allocator", obs: obs},
		nodes:          map[string]*nodeState{},
		bySubnet:       map[string]map[string]*nodeState{},
		reclaimed:      map[string]time.Time{},
		policies:       map[string]policy.Policy{},
		policyStarts:   map[string]*policy.StartPrior{},
		types:          map[string]instancetypes.Type{},
		drift:          map[string]time.Time{},
		attaching:      map[string]bool{},
		deleting:       map[string]bool{},
		prewarmChosen:  map[string][]netip.Addr{},
		preregistering: map[string]bool{},
		preregFailed:   map[string]time.Time{},

		started:     make(chan struct{}),
		fatal:       make(chan error, 1),
		sweep:       make(chan struct{}, 1),
		prewarmKick: make(chan struct{}, 1),
		randMu:      mutex{name: "rand", obs: obs},
		events:      events{mu: mutex{name: "events", obs: obs}},
	}
	a.met = newMetrics(cfg.Registerer)
	a.describer = newInstanceBatcher(cfg.EC2, obs)
	a.revision.Store(cfg.Revision)
	for name, p := range cfg.StoredPolicies {
		a.policies[name] = p
	}
	for _, rec := range a.led.Nodes() {
		ns := a.newNodeStateLocked(rec)
		ns.generation = uint64(cfg.Revision)
		a.addNodeLocked(ns)
	}
	return a, nil
}

func (a *Allocator) newNodeStateLocked(rec ledger.NodeRecord) *nodeState {
	ns := &nodeState{
		name:    rec.Name,
		subnet:  rec.SubnetID,
		subs:    map[*Subscription]struct{}{},
		changed: make(chan struct{}),
	}
	ns.typ, _ = instancetypes.Lookup(rec.InstanceType)
	ns.policy = a.policyByNameLocked(rec.Policy)
	ns.assumedInUse = activeAddresses(rec)
	return ns
}

// addNodeLocked makes ns the node of its name, in the indices.
func (a *Allocator) addNodeLocked(ns *nodeState) {
	if old, ok := a.nodes[ns.name]; ok {
		a.dropNodeLocked(old.name)
	}
	a.nodes[ns.name] = ns
	m := a.bySubnet[ns.subnet]
	if m == nil {
		m = map[string]*nodeState{}
		a.bySubnet[ns.subnet] = m
	}
	m[ns.name] = ns
}

// dropNodeLocked forgets the node of a name, in the indices.
func (a *Allocator) dropNodeLocked(name string) {
	ns, ok := a.nodes[name]
	if !ok {
		return
	}
	delete(a.nodes, name)
	if m := a.bySubnet[ns.subnet]; m != nil {
		delete(m, name)
		if len(m) == 0 {
			delete(a.bySubnet, ns.subnet)
		}
	}
}

// ErrLostLeadership is returned by Run when the leadership behind the store ended.
var ErrLostLeadership = errors.New("allocator: leadership lost")

// Run drives the allocator until ctx ends or leadership is lost. It applies the policy file,
// learns the configured subnets, and runs the node workers, the release workers, the tick that
// looks at every node, and the reconcile, instance-check, sweep and pre-warm loops.
func (a *Allocator) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, p := range a.cfg.Policies {
		if _, err := a.SetPolicy(ctx, p); err != nil {
			return fmt.Errorf("allocator: policy file: %w", err)
		}
	}
	if err := a.learnSubnets(ctx); err != nil {
		return err
	}
	if a.cfg.ReconcileBeforeServing {
		if err := a.reconcileFirst(ctx); err != nil {
			return err
		}
	}
	a.wg.Add(6)
	go func() { defer a.wg.Done(); a.work.run(ctx, a.cfg.Workers, a.stepNode) }()
	go func() { defer a.wg.Done(); a.releases.run(ctx, a.cfg.ReleaseWorkers, a.releaseNode) }()
	go func() { defer a.wg.Done(); a.tickLoop(ctx) }()
	go func() { defer a.wg.Done(); a.reconcileLoop(ctx) }()
	go func() { defer a.wg.Done(); a.sweepLoop(ctx) }()
	go func() { defer a.wg.Done(); a.prewarmLoop(ctx) }()
	a.goLoop(ctx, "instances", a.cfg.InstanceCheckInterval, a.checkInstances)
	if a.cfg.PendingTag != "" {
		a.goEvery(ctx, "pending instances", a.cfg.PendingDiscoveryInterval, a.discoverPending)
	}
	if a.cfg.Cluster != nil {
		a.wg.Add(1)
		go func() { defer a.wg.Done(); a.watchCluster(ctx) }()
		a.goLoop(ctx, "stale pods", staleCheckEvery(a.cfg.StalePodGrace), a.checkStalePods)
	}
	nodes := a.kickAll()
	close(a.started)
	a.log.Info("allocator running", "nodes", nodes, "revision", a.cfg.Revision, "workers", a.cfg.Workers)

	var err error
	select {
	case <-ctx.Done():
		err = ctx.Err()
	case <-a.st.Done():
		err = ErrLostLeadership
	case err = <-a.fatal:
	}
	cancel()
	a.wg.Wait()
	a.mu.Lock()
	for _, ns := range a.nodes {
		for s := range ns.subs {
			s.end(ErrNotLeader)
		}
	}
	a.mu.Unlock()
	return err
}

// reconcileFirst is the reconciliation a leader runs before it serves records that may be
// behind EC2 (ReconcileBeforeServing). It tries until one pass reads EC2 whole.
func (a *Allocator) reconcileFirst(ctx context.Context) error {
	start := a.clk.Now()
	for attempt := 1; ; attempt++ {
		err := a.checkInstances(ctx)
		if err == nil {
			_, err = a.reconcileWithin(ctx, 0)
		}
		if err == nil {
			a.log.Warn("records reconciled against EC2 before serving", "nodes", len(a.led.Nodes()), "took", a.clk.Since(start).Round(time.Millisecond))
			return nil
		}
		a.log.Warn("reconciling against EC2 before serving failed; retrying", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.clk.After(2 * time.Second):
		}
	}
}

// learnSubnets records the configured subnets the cluster does not know yet.
func (a *Allocator) learnSubnets(ctx context.Context) error {
	for _, id := range a.cfg.Subnets {
		if err := a.learnSubnet(ctx, id, ec2gw.PriorityReconcile); err != nil {
			return fmt.Errorf("allocator: subnet %s: %w", id, err)
		}
	}
	return nil
}

// Revision is the store revision of the allocator's last commit.
func (a *Allocator) Revision() int64 { return a.revision.Load() }

// Started is closed once Run has started serving.
func (a *Allocator) Started() <-chan struct{} { return a.started }

// goLoop runs fn every interval until ctx ends, each pass under the pass deadline.
func (a *Allocator) goLoop(ctx context.Context, name string, every time.Duration, fn func(context.Context) error) {
	a.goEvery(ctx, name, every, func(ctx context.Context) error { return a.pass(ctx, fn) })
}

// goEvery runs fn every interval until ctx ends, with ctx itself: for a fn that sets its own
// deadlines because it starts work that outlives one pass (discoverPending).
func (a *Allocator) goEvery(ctx context.Context, name string, every time.Duration, fn func(context.Context) error) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t := a.clk.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.Chan():
				if err := fn(ctx); err != nil && ctx.Err() == nil {
					a.log.Warn("loop failed", "loop", name, "err", err)
				}
			}
		}
	}()
}

// tickLoop queues every node for its worker once a Tick: each node is looked at without an
// event, by the bounded workers, not by a goroutine of its own.
func (a *Allocator) tickLoop(ctx context.Context) {
	t := a.clk.NewTicker(a.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.Chan():
			a.kickAll()
		}
	}
}

// kickAll queues every node for its worker and returns how many there are.
func (a *Allocator) kickAll() int {
	a.mu.Lock()
	names := make([]string, 0, len(a.nodes))
	for name := range a.nodes {
		names = append(names, name)
	}
	a.mu.Unlock()
	for _, n := range names {
		a.work.add(n)
	}
	return len(names)
}

// kick queues a node for its worker.
func (a *Allocator) kick(node string) { a.work.add(node) }

// stepNode is a node worker's pass: it brings the node towards its target (commits left over
// from a failed commit, expired proposals, supply, new release proposals) and queues its
// release work.
func (a *Allocator) stepNode(ctx context.Context, node string) {
	ns, ok := a.node(node)
	if !ok || ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.PassTimeout)
	defer cancel()
	if _, ok := a.led.Node(node); !ok {
		return
	}
	a.retryUncommitted(ctx, ns)
	a.expireProposal(ctx, ns)
	a.supply(ctx, ns)
	a.maybePropose(ctx, ns)
	if rec, ok := a.led.Node(node); ok && releaseWork(rec, a.emptyENIs(ns, rec)) {
		a.releases.add(node)
	}
}

// releaseNode is a release worker's pass over one node: slow, low-priority EC2 calls on
// workers of their own, so they never hold up supply.
func (a *Allocator) releaseNode(ctx context.Context, node string) {
	if ns, ok := a.node(node); ok && ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(ctx, a.cfg.PassTimeout)
		defer cancel()
		a.releaseLane(ctx, ns)
	}
}

// pass runs one pass of a loop within PassTimeout.
func (a *Allocator) pass(ctx context.Context, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.PassTimeout)
	defer cancel()
	return fn(ctx)
}

// fail ends Run with err (used when a commit says this replica is no longer the leader).
func (a *Allocator) fail(err error) {
	select {
	case a.fatal <- err:
	default:
	}
}

// node returns the runtime state of a registered node.
func (a *Allocator) node(name string) (*nodeState, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ns, ok := a.nodes[name]
	return ns, ok && !ns.removed
}

// BuildLedger builds a ledger from the store's records: subnets first, then nodes and
// reservations (a node's record takes over addresses its subnet's last scan counted as foreign).
// It fails on records that give an address two owners.
func BuildLedger(r diff.Records, opts ledger.Options) (*ledger.Ledger, error) {
	led := ledger.New(opts)
	for _, s := range r.Subnets {
		if err := led.PutSubnet(s); err != nil {
			return nil, fmt.Errorf("subnet %s: %w", s.ID, err)
		}
	}
	for _, n := range r.Nodes {
		if err := led.PutNode(n); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	for _, p := range r.Prewarms {
		if err := led.PutPrewarm(settlePrewarm(led, p)); err != nil {
			return nil, fmt.Errorf("pre-warm %s: %w", p.ID, err)
		}
	}
	return led, nil
}

// settlePrewarm gives up the addresses a reservation chose for an ENI it has not created yet
// when someone else holds them now (EC2 gave one to a node's instance meanwhile, so that create
// cannot succeed): the ENI chooses again, under a new ClientToken.
func settlePrewarm(led *ledger.Ledger, p ledger.PrewarmRecord) ledger.PrewarmRecord {
	p.ENIs = slices.Clone(p.ENIs)
	for i, e := range p.ENIs {
		if e.ID == "" && e.State == ledger.PrewarmENICreating && len(e.Addresses) > 0 && heldByOthers(led, p.ID, e) {
			p.ENIs[i].PrimaryIP, p.ENIs[i].Addresses = netip.Addr{}, nil
			p.ENIs[i].ClientToken = e.ClientToken + "-again"
		}
	}
	return p
}

// heldByOthers reports whether a node, another reservation or AWS holds an address the
// reservation chose for the ENI.
func heldByOthers(led *ledger.Ledger, id string, e ledger.PrewarmENI) bool {
	for _, ip := range append([]netip.Addr{e.PrimaryIP}, e.Addresses...) {
		switch o, _ := led.OwnerOf(ip); {
		case o.Kind == ledger.OwnerENIPrimary, o.Kind == ledger.OwnerLeased, o.Kind == ledger.OwnerReserved,
			o.Kind == ledger.OwnerPrewarm && o.Prewarm != id:
			return true
		}
	}
	return false
}

// nodeAndRecord returns a registered node's runtime state and record.
func (a *Allocator) nodeAndRecord(node string) (*nodeState, ledger.NodeRecord, error) {
	ns, ok := a.node(node)
	if !ok {
		return nil, ledger.NodeRecord{}, fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	rec, ok := a.led.Node(node)
	if !ok {
		return nil, ledger.NodeRecord{}, fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	return ns, rec, nil
}

// commit writes changes in one transaction of the store (fenced by the leadership in
// production) and maps its errors. The caller holds the commit slots of the records.
func (a *Allocator) commit(ctx context.Context, changes ...Change) (int64, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rev, err := a.st.Commit(cctx, changes...)
	switch {
	case err == nil:
		for {
			cur := a.revision.Load()
			if rev <= cur || a.revision.CompareAndSwap(cur, rev) {
				break
			}
		}
		return rev, nil
	case errors.Is(err, ErrNotLeader):
		a.fail(ErrLostLeadership)
		return 0, err
	default:
		return 0, fmt.Errorf("%w: %v", ErrStoreUnavailable, err)
	}
}

// mutateNode applies fn to the node's current record, checks the result against the ledger,
// commits it, applies it to the ledger, and only then tells the agent.
func (a *Allocator) mutateNode(ctx context.Context, ns *nodeState, fn func(rec *ledger.NodeRecord) error) (ledger.NodeRecord, error) {
	return a.updateNode(ctx, ns, nil, func(rec *ledger.NodeRecord) ([]Change, func() error, error) {
		return nil, nil, fn(rec)
	})
}

// updateNode is mutateNode for a change that writes other records in the same transaction:
// under the commit slots of the node and of also, fn changes the node's record and returns
// the other records' changes and what applies them to the ledger once committed (after the
// node's record).
func (a *Allocator) updateNode(ctx context.Context, ns *nodeState, also []string,
	fn func(rec *ledger.NodeRecord) (extra []Change, apply func() error, err error)) (ledger.NodeRecord, error) {
	return a.updateNodeShared(ctx, ns, also, nil, fn)
}

// updateNodeShared is updateNode that also holds the slots of shared shared: records fn reads
// and must not see change (a subnet's foreign set), but does not write.
func (a *Allocator) updateNodeShared(ctx context.Context, ns *nodeState, also, shared []string,
	fn func(rec *ledger.NodeRecord) (extra []Change, apply func() error, err error)) (ledger.NodeRecord, error) {
	release, err := a.slots.acquireShared(ctx, append([]string{nodeKey(ns.name)}, also...), shared)
	if err != nil {
		return ledger.NodeRecord{}, err
	}
	defer release()
	rec, ok := a.led.Node(ns.name)
	if !ok {
		return ledger.NodeRecord{}, fmt.Errorf("%w: %s", ErrUnknownNode, ns.name)
	}
	extra, apply, err := fn(&rec)
	if err != nil {
		return ledger.NodeRecord{}, err
	}
	if err := rec.Validate(); err != nil {
		return ledger.NodeRecord{}, err
	}
	if err := a.led.CheckNode(rec); err != nil {
		return ledger.NodeRecord{}, fmt.Errorf("allocator: refusing to commit node %s: %w", ns.name, err)
	}
	rev, err := a.commit(ctx, append([]Change{PutNode(rec)}, extra...)...)
	if err != nil {
		return ledger.NodeRecord{}, err
	}
	if err := a.led.PutNode(rec); err != nil {
		// CheckNode passed under the node's commit slot, so this means the ledger and the
		// store diverged: end leadership and let a fresh leader rebuild from the store.
		a.log.Error("ledger refused a committed node record", "node", ns.name, "err", err)
		a.fail(fmt.Errorf("allocator: ledger diverged from the store: %w", err))
		return ledger.NodeRecord{}, err
	}
	if apply != nil {
		if err := apply(); err != nil {
			a.fail(fmt.Errorf("allocator: ledger diverged from the store: %w", err))
			return ledger.NodeRecord{}, err
		}
	}
	a.mu.Lock()
	ns.generation = uint64(rev)
	a.publishLocked(ns, rec)
	a.mu.Unlock()
	return rec, nil
}

// publishLocked pushes the node's pool to its subscribers and wakes waiters.
func (a *Allocator) publishLocked(ns *nodeState, rec ledger.NodeRecord) {
	pool := a.poolLocked(ns, rec)
	for s := range ns.subs {
		s.sendPool(pool)
	}
	close(ns.changed)
	ns.changed = make(chan struct{})
}

// setProblem records why supply failed (or nil when it succeeded) and wakes waiters.
func (a *Allocator) setProblem(ns *nodeState, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil && ns.problem == nil {
		return
	}
	ns.problem = err
	ns.problemAt = a.now()
	close(ns.changed)
	ns.changed = make(chan struct{})
}

// Pool returns the node's current pool as the agent sees it.
func (a *Allocator) Pool(node string) (*Pool, error) {
	ns, rec, err := a.nodeAndRecord(node)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.poolLocked(ns, rec), nil
}

// poolLocked is the node's pool as agents receive it, subnet CIDRs included (every pool the
// allocator hands out is built here).
func (a *Allocator) poolLocked(ns *nodeState, rec ledger.NodeRecord) *Pool {
	return &Pool{Node: rec, Generation: ns.generation, Targets: a.targetsLocked(ns, rec), SubnetCIDRs: a.subnetCIDRs(rec)}
}

// subnetCIDRs are the CIDRs of the subnets of a node's ENIs.
func (a *Allocator) subnetCIDRs(rec ledger.NodeRecord) map[string]netip.Prefix {
	out := map[string]netip.Prefix{}
	for _, e := range rec.ENIs {
		if s, ok := a.led.Subnet(e.SubnetID); ok {
			out[e.SubnetID] = s.CIDR
		}
	}
	return out
}

// targetsLocked computes the node's targets from its policy and what the agent reported.
func (a *Allocator) targetsLocked(ns *nodeState, rec ledger.NodeRecord) policy.Targets {
	in := a.inputsLocked(ns, rec)
	in.Draining = rec.Draining
	shape := policy.ShapeOf(ns.typ, rec.Mode)
	shape.PrimaryUnused = ns.policy.ExcludesPrimaryENI()
	return policy.Compute(ns.policy, shape, in, a.cfg.ReleaseDelay)
}

// inputsLocked is what the policy sees of a node. Until the node's agent has reported to this
// leader (after a takeover it reconnects within seconds), the leases it had when this leader
// took over (or when it registered) count as in use: guessing "free" would leave waiting pods
// unserved, guessing "used" costs a warm address or two that the release handshake returns once
// the report arrives.
func (a *Allocator) inputsLocked(ns *nodeState, rec ledger.NodeRecord) policy.Inputs {
	in := policy.Inputs{Waiting: ns.waiting}
	if u := ns.usage; u != nil {
		in.InUse = len(u.InUse) + u.Cooling
		in.Waiting = max(in.Waiting, u.PodsWaiting)
	} else {
		in.InUse = ns.assumedInUse
	}
	// Pods the scheduler bound to the node and that hold no address yet: their CNI ADD is on
	// its way (waiting pods are among them, so the larger count is the demand).
	in.Waiting = max(in.Waiting, len(a.lookaheadLocked(ns)))
	now := a.now()
	in.StartRate = ns.rate.Rate(now, policy.RateMinSpan)
	in.RefillLatency = a.gw.EstimateWait("AssignPrivateIpAddresses", ec2gw.PriorityWarmRefill)
	var since time.Time
	if ns.fresh {
		since = ns.registered.Add(policy.StartWindow)
	}
	in.PeakBurst = ns.rate.Peak(policy.BurstSpan+2*in.RefillLatency, since)
	if ns.fresh && now.Sub(ns.registered) < policy.StartWindow {
		in.StartPrior = a.startPriorLocked(ns.policy.Name)
	}
	a.discountAnnouncedLocked(&in)
	return in
}

// startPriorLocked is what a new node of the policy is expected to start in its first minute:
// what the policy's new nodes started, else (before its first) what the cluster's did.
func (a *Allocator) startPriorLocked(policyName string) int {
	if sp := a.policyStarts[policyName]; sp != nil && sp.Len() > 0 {
		return sp.Prior()
	}
	return a.starts.Prior()
}

// activeAddresses counts a node's active leased addresses (a prefix counts 16).
func activeAddresses(rec ledger.NodeRecord) int {
	n := 0
	for _, e := range rec.ENIs {
		for _, ad := range e.Addresses {
			if ad.State == ledger.LeaseActive {
				n++
			}
		}
		for _, p := range e.Prefixes {
			if p.State == ledger.LeaseActive {
				n += 16
			}
		}
	}
	return n
}

func (a *Allocator) policyByNameLocked(name string) policy.Policy {
	if p, ok := a.policies[name]; ok {
		return p
	}
	// The built-in default, or a deleted policy: the default until the node is re-matched.
	return policy.Default()
}

// ReportUsage records an agent's usage report.
func (a *Allocator) ReportUsage(node string, u Usage) error {
	ns, ok := a.node(node)
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	ips := make([]netip.Addr, 0, len(u.InUse))
	for i, p := range u.InUse {
		if !p.IP.Is4() {
			return invalid(fmt.Sprintf("usage.in_use[%d].ip", i), "%q is not an IPv4 address", p.IP)
		}
	}
	// Addresses another node holds are not this node's usage, whatever its agent says: taking
	// them would make this node's pods look like they use the other node's addresses (and keep
	// ipledgerctl check failing). They are left out, counted, and the agent is told.
	var refused []netip.Addr
	kept := u.InUse[:0:0]
	for _, p := range u.InUse {
		if o, taken := a.led.OwnerOf(p.IP); taken && o.Node != "" && o.Node != node &&
			(o.Kind == ledger.OwnerLeased || o.Kind == ledger.OwnerPending || o.Kind == ledger.OwnerENIPrimary) {
			refused = append(refused, p.IP)
			continue
		}
		kept = append(kept, p)
		ips = append(ips, p.IP)
	}
	if len(refused) > 0 {
		u.InUse = kept
		a.met.usageRefused.WithLabelValues(node).Add(float64(len(refused)))
		r := UsageRefusal{Addresses: refused, Reason: "these addresses are leased to other nodes; pods cannot use them here"}
		a.mu.Lock()
		for s := range ns.subs {
			s.sendRefusal(r)
		}
		a.mu.Unlock()
		a.refusalLog.Do(func() {
			a.log.Warn("usage report names other nodes' addresses; left out (further ones within a minute are not logged)", "node", node, "addresses", refused)
		})
	}
	now := a.now()
	a.mu.Lock()
	prev := ns.usage
	ns.usage = &u
	ns.lastReport = now
	ns.rate.Observe(now, u.AddsTotal, policy.AdaptiveWindow(ns.policy))
	a.sampleLeadsLocked(ns, now)
	if ns.fresh && !ns.priorDone && now.Sub(ns.registered) >= policy.StartWindow {
		// The agent started with the node, so its adds counter is the node's pod starts.
		ns.priorDone = true
		a.starts.Add(int(u.AddsTotal))
		sp := a.policyStarts[ns.policy.Name]
		if sp == nil {
			sp = &policy.StartPrior{}
			a.policyStarts[ns.policy.Name] = sp
		}
		sp.Add(int(u.AddsTotal))
	}
	a.mu.Unlock()
	a.led.SetUsage(node, ips)
	if prev == nil || u.PodsWaiting > 0 || len(prev.InUse) != len(u.InUse) || prev.Cooling != u.Cooling {
		a.kick(ns.name)
	}
	return nil
}
