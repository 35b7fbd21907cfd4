// Package replica is one ipledger-server replica's life over the store: it connects to etcd
// (waiting as long as it takes), loads the state, follows every change as a hot standby while
// it campaigns, and once elected catches up with every write of the previous leader and leads:
// it runs the allocator until leadership ends, then resigns and returns. It owns the replica's
// copy of the state (the ledger, the stored policies, the revision) and answers who leads.
//
// It never writes to the store except through the allocator it runs (fenced by the leadership),
// and never calls EC2 itself. Every call to etcd it makes has a deadline or its context; its
// retries back off (cenkalti/backoff).
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/store"
)

// Drainer is what a new leader tells the EC2 gateway: the previous leader may just have used
// up the account's buckets (*ec2gw.Gateway's AssumeDrained).
type Drainer interface{ AssumeDrained() }

// Config configures a Replica.
type Config struct {
	// Store is how to reach etcd.
	Store store.Config
	// Advertise is this replica's gRPC address, advertised in its campaign.
	Advertise string
	// Allocator is the allocator's configuration when this replica leads; Ledger, Store,
	// Revision and StoredPolicies are filled in then.
	Allocator allocator.Config
	// Gateway is told to pace from empty when this replica takes over a served cluster.
	Gateway Drainer
	// Ledger configures the ledgers built from the store.
	Ledger ledger.Options
	// OnLead, when set, runs once the allocator serves (the server marks its health SERVING).
	OnLead func()
	Logger *slog.Logger

	// Timeouts of the calls to etcd that wait: loading the state (per attempt), catching up
	// after winning an election, resigning (defaults 30 s, 60 s, 2 s).
	LoadTimeout, CatchUpTimeout, ResignTimeout time.Duration
	// RetryMin and RetryMax bound the back-off between attempts to reach etcd, load the state
	// and campaign (defaults 200 ms and 5 s).
	RetryMin, RetryMax time.Duration
	// LeaderProbe is how often a standby checks that the leader's process is alive, to depose
	// a dead one before its session expires (watchdog.go; default DefaultLeaderProbe,
	// negative: off, the session TTL alone decides).
	LeaderProbe time.Duration
	// RebuildFromEC2 lets a leader that finds etcd empty while EC2 holds ENIs tagged for the
	// cluster rebuild the records from EC2 and the agents (the server's --rebuild-from-ec2).
	// Without it such a leader refuses to lead: etcd was lost or wiped, or the server points at
	// the wrong etcd or cluster name, and an operator should say which.
	RebuildFromEC2 bool
	// Version is this binary's version, written into the store's meta record.
	Version string
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.LoadTimeout, 30*time.Second)
	def(&c.CatchUpTimeout, time.Minute)
	def(&c.ResignTimeout, 2*time.Second)
	def(&c.RetryMin, 200*time.Millisecond)
	def(&c.RetryMax, 5*time.Second)
	if c.LeaderProbe == 0 {
		c.LeaderProbe = DefaultLeaderProbe
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Replica is one replica's state. Its methods are safe for concurrent use.
type Replica struct {
	cfg Config
	log *slog.Logger

	mu         sync.RWMutex // never held across a call to etcd
	st         *store.Store
	led        *ledger.Ledger
	alloc      *allocator.Allocator
	leadership *store.Leadership // while alloc runs
	leader     string
	known      map[string]policy.Policy
	revision   int64
	connected  bool   // the store was opened and the state loaded
	connectMsg string // why not, while it is not
}

// New prepares a replica; Run brings it to life.
func New(cfg Config) *Replica {
	cfg.defaults()
	return &Replica{cfg: cfg, log: cfg.Logger, led: ledger.New(cfg.Ledger), known: map[string]policy.Policy{},
		connectMsg: "connecting to etcd"}
}

// ErrLeadershipEnded is returned by Run when this replica led and its leadership ended: the
// process should exit, and its supervisor restart it as a standby.
var ErrLeadershipEnded = errors.New("replica: leadership ended")

// Run connects to etcd, loads the state, follows it, campaigns and leads, until ctx ends (nil)
// or the leadership it won ends (ErrLeadershipEnded wrapping why).
func (r *Replica) Run(ctx context.Context) error {
	st, err := r.open(ctx)
	if err != nil || st == nil {
		return err
	}
	state, err := r.load(ctx, st)
	if err != nil || state == nil {
		return err
	}
	if err := r.install(state); err != nil {
		return err
	}
	r.setStatus(true, "")
	octx, stopObserving := context.WithCancel(ctx)
	observed := make(chan struct{})
	go func() { defer close(observed); r.observeLeader(octx, st) }()
	defer func() { stopObserving(); <-observed }()
	return r.lead(ctx, st, state.Revision)
}

// retry runs op until it succeeds or ctx ends, backing off between attempts; ok false means ctx
// ended first.
func (r *Replica) retry(ctx context.Context, what string, op func(context.Context) error) (ok bool) {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = r.cfg.RetryMin, r.cfg.RetryMax
	_, err := backoff.Retry(ctx, func() (struct{}, error) { return struct{}{}, op(ctx) },
		backoff.WithBackOff(b), backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, next time.Duration) {
			r.log.Warn(what+" failed; retrying", "in", next.Round(time.Millisecond), "err", err)
		}))
	return err == nil
}

// open connects to etcd, waiting as long as it takes: a replica that cannot reach etcd stays
// up, answers /healthz and says why it is not ready, instead of crash-looping.
func (r *Replica) open(ctx context.Context) (*store.Store, error) {
	var st *store.Store
	ok := r.retry(ctx, "connecting to etcd", func(ctx context.Context) error {
		var err error
		if st, err = store.Open(ctx, r.cfg.Store); err != nil {
			r.setStatus(false, "waiting for etcd: "+err.Error())
		}
		return err
	})
	if !ok {
		return nil, nil
	}
	r.mu.Lock()
	r.st = st
	r.mu.Unlock()
	return st, nil
}

// load reads the whole state, each attempt within LoadTimeout.
func (r *Replica) load(ctx context.Context, st *store.Store) (*store.State, error) {
	var state *store.State
	ok := r.retry(ctx, "loading the state from etcd", func(ctx context.Context) error {
		lctx, cancel := context.WithTimeout(ctx, r.cfg.LoadTimeout)
		defer cancel()
		var err error
		if state, err = st.Load(lctx); err != nil {
			r.setStatus(false, "cannot load state from etcd: "+err.Error())
		}
		return err
	})
	if !ok {
		return nil, nil
	}
	return state, nil
}

func (r *Replica) setStatus(connected bool, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.connected, r.connectMsg = connected, msg
}

// install replaces the in-memory state with what etcd holds.
func (r *Replica) install(state *store.State) error {
	led, err := allocator.BuildLedger(diff.RecordsOf(state.Nodes, state.Subnets, state.Prewarms), r.cfg.Ledger)
	if err != nil {
		return fmt.Errorf("rebuild state from etcd: %w", err)
	}
	known := map[string]policy.Policy{}
	for name, p := range state.Policies {
		if dp, err := api.PolicyFromProto(p); err == nil {
			known[name] = dp
		} else {
			r.log.Warn("a stored policy cannot be read; ignored", "policy", name, "err", err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.led, r.known, r.revision = led, known, state.Revision
	return nil
}

// apply follows one change of etcd on a standby.
func (r *Replica) apply(ev store.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	led := r.led
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
			delete(r.known, ev.Name)
		} else if dp, perr := api.PolicyFromProto(ev.Policy); perr == nil {
			r.known[ev.Name] = dp
		} else {
			r.log.Warn("a stored policy cannot be read; ignored", "policy", ev.Name, "err", perr)
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
	r.revision = ev.Revision
	return nil
}

// follow keeps the in-memory state in step with etcd until ctx ends, reloading when the watch
// falls behind compaction or a change cannot be applied.
func (r *Replica) follow(ctx context.Context, st *store.Store, from int64) {
	for ctx.Err() == nil {
		err := st.Watch(ctx, from, r.apply)
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("reloading state from etcd", "reason", err)
		state, _ := r.load(ctx, st)
		if state == nil {
			return // ctx ended
		}
		if ierr := r.install(state); ierr != nil {
			r.log.Error("state in etcd cannot be loaded", "err", ierr)
		}
		from = state.Revision
	}
}

// resign gives the leadership up within ResignTimeout, whatever ctx says (a replica that stops
// resigns so a standby takes over at once).
func (r *Replica) resign(lead *store.Leadership) {
	rctx, cancel := context.WithTimeout(context.Background(), r.cfg.ResignTimeout)
	defer cancel()
	if err := lead.Resign(rctx); err != nil {
		r.log.Warn("resign failed; the session expires instead", "err", err)
	}
}

// lead follows etcd as a standby while campaigning; once elected it catches up with every write
// of the previous leader, stops following and runs the allocator until leadership ends.
func (r *Replica) lead(ctx context.Context, st *store.Store, from int64) error {
	fctx, stopFollow := context.WithCancel(ctx)
	followed := make(chan struct{})
	go func() { defer close(followed); r.follow(fctx, st, from) }()
	defer func() { stopFollow(); <-followed }()

	var lead *store.Leadership
	wctx, stopWatching := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		if r.cfg.LeaderProbe > 0 {
			r.watchLeader(wctx, st, r.cfg.LeaderProbe)
		}
	}()
	campaigned := r.retry(ctx, "campaign", func(ctx context.Context) error {
		var err error
		lead, err = st.Campaign(ctx, r.cfg.Advertise)
		return err
	})
	stopWatching()
	<-watched
	if !campaigned {
		return nil
	}
	wonAt := time.Now()
	cctx, cancel := context.WithTimeout(ctx, r.cfg.CatchUpTimeout)
	err := st.WaitForRevision(cctx, lead.WonRevision())
	cancel()
	if err != nil {
		r.resign(lead)
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("catch up after winning the election: %w", err)
	}
	stopFollow()
	<-followed

	recoverFirst, err := r.checkMeta(ctx, st, lead)
	if err != nil {
		r.resign(lead)
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	r.mu.RLock()
	acfg := r.cfg.Allocator
	acfg.Ledger, acfg.Revision = r.led, r.revision
	acfg.ReconcileBeforeServing = recoverFirst
	acfg.StoredPolicies = make(map[string]policy.Policy, len(r.known))
	for k, v := range r.known {
		acfg.StoredPolicies[k] = v
	}
	r.mu.RUnlock()
	acfg.Store = leaderStore{lead}
	if len(acfg.Ledger.Nodes()) > 0 && r.cfg.Gateway != nil {
		// A previous leader served this cluster and may have just used up the account's EC2
		// buckets: pace from empty rather than be throttled on the first calls.
		r.cfg.Gateway.AssumeDrained()
	}
	alloc, err := allocator.New(acfg)
	if err != nil {
		r.resign(lead)
		return err
	}
	runErr := make(chan error, 1)
	go func() { runErr <- alloc.Run(ctx) }()
	select {
	case <-alloc.Started():
	case err := <-runErr:
		r.resign(lead)
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("allocator: %w", err)
	}
	r.mu.Lock()
	r.alloc, r.leadership, r.leader = alloc, lead, r.cfg.Advertise
	r.mu.Unlock()
	if r.cfg.OnLead != nil {
		r.cfg.OnLead()
	}
	r.log.Info("leading", "revision", acfg.Revision, "takeover", time.Since(wonAt).Round(time.Millisecond))

	err = <-runErr
	r.mu.Lock()
	r.alloc, r.leadership = nil, nil
	r.mu.Unlock()
	r.resign(lead)
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrLeadershipEnded, err)
}

// observeLeader keeps the leader's address for NOT_LEADER answers.
func (r *Replica) observeLeader(ctx context.Context, st *store.Store) {
	for addr := range st.ObserveLeader(ctx) {
		r.mu.Lock()
		if r.alloc == nil {
			r.leader = addr
		}
		r.mu.Unlock()
	}
}

// Store is the replica's etcd store (nil until it reached etcd).
func (r *Replica) Store() *store.Store {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.st
}

// Allocator is the running allocator (nil unless this replica leads).
func (r *Replica) Allocator() *allocator.Allocator {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.alloc
}

// Leadership is the leadership the running allocator writes under (nil unless this replica
// leads); other leader-only writers (the identity service) fence their records with it.
func (r *Replica) Leadership() *store.Leadership {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.leadership
}

// Ledger is this replica's copy of the state.
func (r *Replica) Ledger() *ledger.Ledger {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.led
}

// LeaderAddress is the leader's advertised address ("" when unknown).
func (r *Replica) LeaderAddress() string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.leader
}

// Policies are the stored policies, the default included, by order then name.
func (r *Replica) Policies() []policy.Policy {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return policy.List(r.known)
}

// Revision is the store revision of the replica's state (the allocator's last commit when it
// leads).
func (r *Replica) Revision() int64 {
	r.mu.RLock()
	alloc, rev := r.alloc, r.revision
	r.mu.RUnlock()
	if alloc != nil {
		return alloc.Revision()
	}
	return rev
}

// Health says whether etcd answers a linearizable read (and why not); ctx bounds the read.
func (r *Replica) Health(ctx context.Context) error {
	r.mu.RLock()
	st, connected, msg := r.st, r.connected, r.connectMsg
	r.mu.RUnlock()
	if !connected || st == nil {
		return errors.New(msg)
	}
	return st.Health(ctx)
}

// Close closes the connection to etcd (after Run returned).
func (r *Replica) Close() error {
	if st := r.Store(); st != nil {
		return st.Close()
	}
	return nil
}
