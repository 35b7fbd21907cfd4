package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ledger"
)

// loadPageSize is how many keys one Get of Load returns; node records can be tens of kB.
const loadPageSize = 256

// Store is a connection to etcd scoped to one cluster's prefix. It is safe for concurrent use.
type Store struct {
	cfg    Config
	keys   keyspace
	client *clientv3.Client
	log    *slog.Logger
	seen   revTracker
	inc    *incarnation

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // goroutines started by ObserveLeader and Campaign
}

// Open connects to etcd and checks that it answers a linearizable read within DialTimeout.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	inc := newIncarnation(cfg.Logger.With("component", "store"))
	cli, err := clientv3.New(clientv3.Config{
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(inc.interceptor())},
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         cfg.TLS,
		Username:    cfg.Username,
		Password:    cfg.Password,
		// The client's warnings are retries during outages; only errors are worth forwarding.
		Logger: newZapLogger(ctx, cfg.Logger.With("component", "etcd-client"), zapcore.ErrorLevel, nil),
	})
	if err != nil {
		return nil, fmt.Errorf("store: connect to etcd %v: %w: %w", cfg.Endpoints, ErrUnavailable, err)
	}
	s := &Store{cfg: cfg, keys: newKeyspace(cfg.ClusterName), client: cli, log: cfg.Logger, inc: inc}
	hctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if err := s.Health(hctx); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("store: connect to etcd %v: %w", cfg.Endpoints, err)
	}
	s.goroutine(func() { s.probe(cli.Ctx(), cfg.SessionTTL) })
	return s, nil
}

// Close ends the store's background work (leader observers, leadership monitors) and closes the
// client. Leaderships still held lose their sessions; their leases expire after the TTL.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	err := s.client.Close()
	s.wg.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// goroutine runs f on a goroutine that Close waits for; false when the store is closed.
func (s *Store) goroutine(f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f()
	}()
	return true
}

// Prefix is "/ipledger/<cluster>/", under which every key of the cluster lives.
func (s *Store) Prefix() string { return s.keys.prefix }

// Client is the underlying etcd client (for tests and tools; writes must go through Commit).
func (s *Store) Client() *clientv3.Client { return s.client }

// Health does a linearizable read; ErrUnavailable when etcd cannot answer before ctx ends.
func (s *Store) Health(ctx context.Context) error {
	_, err := s.client.Get(ctx, s.keys.prefix, clientv3.WithCountOnly())
	return classify("store: health", err)
}

// State is the whole durable state of a cluster at one revision.
type State struct {
	Revision int64
	Nodes    map[string]ledger.NodeRecord
	Subnets  map[string]ledger.SubnetRecord
	Policies map[string]*ipledgerv1.NodePolicy
	Prewarms map[string]ledger.PrewarmRecord
	// Identities are the nodes' attestations by instance id.
	Identities map[string]*ipledgerv1.NodeIdentity
}

func (st *State) add(t RecordType, name string, d decoded) {
	switch t {
	case RecordNode:
		st.Nodes[name] = *d.node
	case RecordSubnet:
		st.Subnets[name] = *d.subnet
	case RecordPolicy:
		st.Policies[name] = d.policy
	case RecordPrewarm:
		st.Prewarms[name] = *d.prewarm
	case RecordIdentity:
		st.Identities[name] = d.identity
	}
}

// Load reads every record of the cluster at one revision (a linearizable read, paginated). A
// value that cannot be parsed fails the Load with ErrInvalid.
func (s *Store) Load(ctx context.Context) (*State, error) {
	for attempt := 1; ; attempt++ {
		st, err := s.load(ctx)
		// A compaction between two pages loses the revision; start over at a new one.
		if errors.Is(err, ErrCompacted) && attempt < 3 {
			continue
		}
		if err != nil {
			return nil, err
		}
		s.seen.note(st.Revision)
		return st, nil
	}
}

func (s *Store) load(ctx context.Context) (*State, error) {
	st := &State{
		Nodes:    map[string]ledger.NodeRecord{},
		Subnets:  map[string]ledger.SubnetRecord{},
		Policies: map[string]*ipledgerv1.NodePolicy{},
		Prewarms: map[string]ledger.PrewarmRecord{},

		Identities: map[string]*ipledgerv1.NodeIdentity{},
	}
	end := clientv3.GetPrefixRangeEnd(s.keys.prefix)
	from := s.keys.prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(loadPageSize)}
		if st.Revision != 0 {
			opts = append(opts, clientv3.WithRev(st.Revision))
		}
		resp, err := s.client.Get(ctx, from, opts...)
		if err != nil {
			return nil, classify("store: load", err)
		}
		if st.Revision == 0 {
			st.Revision = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			t, name, ok, err := s.keys.parse(string(kv.Key))
			if err != nil {
				return nil, fmt.Errorf("store: load: %w", err)
			}
			if !ok {
				continue
			}
			d, err := decode(t, name, kv.Value)
			if err != nil {
				return nil, fmt.Errorf("store: load: %w", err)
			}
			st.add(t, name, d)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return st, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Event is one change of a record.
type Event struct {
	Revision int64
	Type     RecordType
	Name     string // node name, subnet id, policy name, pre-warm id
	Deleted  bool
	// The record matching Type, nil when Deleted.
	Node     *ledger.NodeRecord
	Subnet   *ledger.SubnetRecord
	Policy   *ipledgerv1.NodePolicy
	Prewarm  *ledger.PrewarmRecord
	Identity *ipledgerv1.NodeIdentity
}

// Watch delivers every record change after afterRev, in revision order, calling apply for each
// event; the events of one transaction are delivered one after another in the order of the
// transaction. It blocks until ctx ends (returning ctx.Err()) or an error: ErrCompacted when the
// history after afterRev is gone (reload with Load and watch from its revision), ErrInvalid
// (wrapped) for a value that cannot be parsed, the error of apply (wrapped), ErrUnavailable when
// the store is closed. Losing the connection or the etcd member's leader is not an error: Watch
// resumes from the last revision it delivered.
func (s *Store) Watch(ctx context.Context, afterRev int64, apply func(Event) error) error {
	if afterRev < 0 {
		return fmt.Errorf("store: watch: %w: negative revision %d", ErrInvalid, afterRev)
	}
	next := afterRev + 1
	backoff := newBackoff()
	replaced := s.Replaced()
	for {
		before := next
		err := s.watchOnce(ctx, replaced, &next, apply)
		if next > before {
			backoff.reset()
		}
		if !errors.Is(err, errResume) {
			return err
		}
		s.log.Warn("etcd watch interrupted; resuming", "prefix", s.keys.prefix, "revision", next, "err", err)
		if err := backoff.wait(ctx); err != nil {
			return err
		}
	}
}

// errResume marks a watch interruption after which Watch resumes.
var errResume = errors.New("store: watch interrupted")

func (s *Store) watchOnce(ctx context.Context, replaced <-chan struct{}, next *int64, apply func(Event) error) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := s.client.Watch(wctx, s.keys.prefix, clientv3.WithPrefix(), clientv3.WithRev(*next))
	for {
		var resp clientv3.WatchResponse
		var ok bool
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-replaced:
			return fmt.Errorf("store: watch from revision %d: %w", *next, ErrReplaced)
		case resp, ok = <-wch:
		}
		if !ok {
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case s.client.Ctx().Err() != nil:
				return fmt.Errorf("store: watch: %w: client closed", ErrUnavailable)
			}
			return errResume
		}
		s.inc.observe(resp.Header, -1)
		select {
		case <-replaced:
			return fmt.Errorf("store: watch from revision %d: %w", *next, ErrReplaced)
		default:
		}
		if resp.CompactRevision != 0 {
			return fmt.Errorf("store: watch from revision %d: %w (compacted up to %d)", *next, ErrCompacted, resp.CompactRevision)
		}
		if err := resp.Err(); err != nil {
			if errors.Is(err, rpctypes.ErrNoLeader) {
				return fmt.Errorf("%w: %w", errResume, err)
			}
			return fmt.Errorf("store: watch: %w: %w", ErrUnavailable, err)
		}
		for i, ev := range resp.Events {
			rev := ev.Kv.ModRevision
			if rev < *next {
				continue // already delivered before a resume
			}
			t, name, ok, err := s.keys.parse(string(ev.Kv.Key))
			if err != nil {
				return fmt.Errorf("store: watch: revision %d: %w", rev, err)
			}
			if ok {
				e := Event{Revision: rev, Type: t, Name: name, Deleted: ev.Type == clientv3.EventTypeDelete}
				if !e.Deleted {
					d, err := decode(t, name, ev.Kv.Value)
					if err != nil {
						return fmt.Errorf("store: watch: revision %d: %w", rev, err)
					}
					e.Node, e.Subnet, e.Policy, e.Prewarm, e.Identity = d.node, d.subnet, d.policy, d.prewarm, d.identity
				}
				if err := apply(e); err != nil {
					return fmt.Errorf("store: watch: apply %s %q at revision %d: %w", t, name, rev, err)
				}
			}
			// A revision is complete once its last event is applied.
			if i == len(resp.Events)-1 || resp.Events[i+1].Kv.ModRevision != rev {
				*next = rev + 1
				s.seen.note(rev)
			}
		}
	}
}

// WaitForRevision returns once the store has handed its caller every change up to revision rev:
// through Load (its State.Revision) or through a running Watch (so a Watch must be running, or
// a Load must have happened, or it waits until ctx ends). It first does a linearizable read, so
// it fails with ErrUnavailable without quorum, and with ErrInvalid when rev is ahead of etcd.
// rev must be a revision at which a key under the prefix changed (Leadership.WonRevision, a
// Commit's or an Event's revision) or a Load's revision; any other revision is only passed once
// a later change under the prefix arrives. A new leader calls it with its WonRevision so that it
// holds every write of the previous leader before it acts.
func (s *Store) WaitForRevision(ctx context.Context, rev int64) error {
	if s.seen.get() >= rev {
		return nil
	}
	resp, err := s.client.Get(ctx, s.keys.prefix, clientv3.WithCountOnly())
	if err != nil {
		return classify(fmt.Sprintf("store: wait for revision %d", rev), err)
	}
	if resp.Header.Revision < rev {
		return fmt.Errorf("store: wait for revision %d: %w: etcd is only at revision %d", rev, ErrInvalid, resp.Header.Revision)
	}
	if err := s.seen.wait(ctx, rev); err != nil {
		return fmt.Errorf("store: wait for revision %d (seen %d): %w", rev, s.seen.get(), err)
	}
	return nil
}

// revTracker is the highest revision handed to the store's callers.
type revTracker struct {
	mu      sync.Mutex
	rev     int64
	changed chan struct{}
}

func (t *revTracker) get() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.rev
}

func (t *revTracker) note(rev int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if rev > t.rev {
		t.rev = rev
		if t.changed != nil {
			close(t.changed)
			t.changed = nil
		}
	}
}

func (t *revTracker) wait(ctx context.Context, rev int64) error {
	for {
		t.mu.Lock()
		if t.rev >= rev {
			t.mu.Unlock()
			return nil
		}
		if t.changed == nil {
			t.changed = make(chan struct{})
		}
		ch := t.changed
		t.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// backoff is a capped exponential delay for retries.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

func (b *backoff) reset() { b.d = 100 * time.Millisecond }

func (b *backoff) wait(ctx context.Context) error {
	t := time.NewTimer(b.d)
	defer t.Stop()
	b.d = min(2*b.d, 5*time.Second)
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
