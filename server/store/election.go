package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// errLostWhileCampaigning: the session's key vanished before Campaign returned; campaign again.
var errLostWhileCampaigning = errors.New("store: election key lost while campaigning")

// Campaign blocks until this replica leads the cluster or ctx ends. advertise is the address
// other replicas and agents are sent to (the value of the election key). The session lease has
// Config.SessionTTL; the leadership ends when the lease is lost (Leadership.Done).
func (s *Store) Campaign(ctx context.Context, advertise string) (*Leadership, error) {
	if advertise == "" {
		return nil, fmt.Errorf("store: campaign: %w: empty advertise address", ErrInvalid)
	}
	for {
		l, err := s.campaignAsync(ctx, advertise)
		if !errors.Is(err, errLostWhileCampaigning) {
			return l, err
		}
		s.log.Warn("election key lost while campaigning; campaigning again", "prefix", s.keys.prefix)
	}
}

type campaignResult struct {
	l   *Leadership
	err error
}

// campaignAsync runs one campaign on a goroutine owned by the store, so that a cancelled ctx
// returns at once even when etcd is unreachable (concurrency.Election resigns with the client's
// context when its Campaign is cancelled, which blocks until etcd answers or the store closes).
// A leadership won after the caller gave up is resigned.
func (s *Store) campaignAsync(ctx context.Context, advertise string) (*Leadership, error) {
	var mu sync.Mutex
	abandoned := false
	resc := make(chan campaignResult, 1)
	started := s.goroutine(func() {
		l, err := s.campaignOnce(ctx, advertise)
		mu.Lock()
		gaveUp := abandoned
		if !gaveUp {
			resc <- campaignResult{l, err}
		}
		mu.Unlock()
		if gaveUp && l != nil {
			l.release() // resigning talks to etcd: not under mu
		}
	})
	if !started {
		return nil, fmt.Errorf("store: campaign: %w: store closed", ErrUnavailable)
	}
	select {
	case r := <-resc:
		return r.l, r.err
	case <-ctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	select {
	case r := <-resc:
		return r.l, r.err
	default:
		abandoned = true
		return nil, fmt.Errorf("store: campaign: %w", ctx.Err())
	}
}

func (s *Store) campaignOnce(ctx context.Context, advertise string) (*Leadership, error) {
	ttl := int(s.cfg.SessionTTL / time.Second)
	// A leadership is won in one incarnation of etcd and ends with it (incarnation.go).
	replaced := s.Replaced()
	// Grant with the caller's ctx: NewSession would grant with the client's context and block
	// while etcd is unreachable.
	grant, err := s.client.Grant(ctx, int64(ttl))
	if err != nil {
		return nil, classify("store: campaign: grant session lease", err)
	}
	sess, err := concurrency.NewSession(s.client, concurrency.WithLease(grant.ID), concurrency.WithTTL(ttl))
	if err != nil {
		s.revokeBounded(grant.ID)
		return nil, classify("store: campaign: session", err)
	}
	el := concurrency.NewElection(sess, s.keys.election())
	if err := el.Campaign(ctx, advertise); err != nil {
		_ = sess.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("store: campaign: %w", ctx.Err())
		}
		return nil, classify("store: campaign", err)
	}
	// Campaign returns once every older candidate is gone; make sure our own key outlived the
	// wait (the lease can expire while etcd is unreachable).
	resp, err := s.client.Get(ctx, el.Key())
	if err != nil {
		_ = el.Resign(ctx)
		_ = sess.Close()
		return nil, classify("store: campaign: check election key", err)
	}
	if len(resp.Kvs) != 1 || resp.Kvs[0].CreateRevision != el.Rev() || clientv3.LeaseID(resp.Kvs[0].Lease) != sess.Lease() {
		_ = sess.Close()
		return nil, errLostWhileCampaigning
	}
	// Our key was created when we joined the queue, possibly long before the previous leader's
	// last write. Re-put it (fenced, keeping its create revision) to get a revision under the
	// prefix that comes after every write of every previous leader: a Watch delivers it, so
	// WaitForRevision(WonRevision()) means "caught up with the previous leader".
	if err := el.Proclaim(ctx, advertise); err != nil {
		_ = sess.Close()
		if errors.Is(err, concurrency.ErrElectionNotLeader) {
			return nil, errLostWhileCampaigning
		}
		return nil, classify("store: campaign: mark won revision", err)
	}
	l := &Leadership{
		store:     s,
		session:   sess,
		election:  el,
		key:       el.Key(),
		rev:       el.Rev(),
		wonRev:    el.Header().Revision,
		advertise: advertise,
		replaced:  replaced,
		done:      make(chan struct{}),
	}
	if err := l.loadRevisions(ctx); err != nil {
		_ = el.Resign(ctx)
		_ = sess.Close()
		return nil, err
	}
	mctx, stop := context.WithCancel(sess.Ctx())
	l.stop = stop
	l.monitorDone = make(chan struct{})
	if !s.goroutine(func() {
		defer close(l.monitorDone)
		l.monitor(mctx)
	}) {
		stop()
		close(l.monitorDone)
		l.release()
		return nil, fmt.Errorf("store: campaign: %w: store closed", ErrUnavailable)
	}
	s.log.Info("won leader election", "key", l.key, "revision", l.rev, "won_revision", l.wonRev, "advertise", advertise)
	return l, nil
}

// revokeBounded revokes a lease, waiting at most the session TTL (after that it has expired).
func (s *Store) revokeBounded(id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(s.client.Ctx(), s.cfg.SessionTTL)
	defer cancel()
	_, _ = s.client.Revoke(ctx, id)
}

// Leadership is this replica's hold on the election. Every write of the leader goes through its
// Commit, fenced by the election key's create revision.
type Leadership struct {
	store     *Store
	session   *concurrency.Session
	election  *concurrency.Election
	key       string
	rev       int64
	wonRev    int64
	advertise string
	replaced  <-chan struct{} // closed when the etcd it was won in is restored or replaced

	// known is the mod revision of every record key as of this leader's last commit or
	// check (0: the key does not exist); each commit compares against it (commit.go).
	knownMu sync.Mutex
	known   map[string]int64

	done        chan struct{}
	doneOnce    sync.Once
	stop        context.CancelFunc // ends the monitor
	monitorDone chan struct{}
	resigned    atomic.Bool
}

// Revision is the create revision of the election key: the fence of every Commit. It can be
// older than the previous leader's last write (the key is created when the replica starts to
// campaign); to catch up, use WonRevision.
func (l *Leadership) Revision() int64 { return l.rev }

// WonRevision is the revision at which this replica won: every write of every previous leader
// has a lower revision, and it is a change under the prefix (the election key), so a Watch
// delivers it. A new leader calls Store.WaitForRevision(ctx, WonRevision()) with its Watch
// running before it acts on its in-memory state.
func (l *Leadership) WonRevision() int64 { return l.wonRev }

// Key is the election key, "/ipledger/<cluster>/election/<lease-id>".
func (l *Leadership) Key() string { return l.key }

// Done is closed when the leadership is lost: the session lease expired or was revoked, etcd was
// unreachable for longer than the TTL, the election key was deleted, or Resign was called.
// Commit's fence is what guarantees safety; Done is the signal to stop leading.
func (l *Leadership) Done() <-chan struct{} { return l.done }

func (l *Leadership) markDone() { l.doneOnce.Do(func() { close(l.done) }) }

// etcdReplaced reports whether the etcd this leadership was won in has been restored or
// replaced since (incarnation.go).
func (l *Leadership) etcdReplaced() bool {
	select {
	case <-l.replaced:
		return true
	default:
		return false
	}
}

// writable refuses a write once Done is closed, or once the etcd the leadership was won in
// was restored or replaced (its records may be older than the leader's state: a new leader
// must load them and reconcile first). Commit and PutMeta call it before they send anything.
func (l *Leadership) writable(what string) error {
	select {
	case <-l.done:
		// Once Done has told the caller to stop leading, nothing more is written, even if the
		// key might still exist (etcd renews leases when it restarts).
		return fmt.Errorf("%s: %w: leadership lost", what, ErrNotLeader)
	default:
	}
	if l.etcdReplaced() {
		return fmt.Errorf("%s: %w: etcd was restored or replaced since this leadership was won", what, ErrNotLeader)
	}
	return nil
}

// monitor closes Done when the session ends or the election key is deleted or replaced.
func (l *Leadership) monitor(ctx context.Context) {
	defer l.markDone()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-l.replaced:
			cancel()
		case <-ctx.Done():
		}
	}()
	cli := l.store.client
	from := l.rev + 1
	backoff := newBackoff()
	for {
		if l.watchKey(ctx, &from) {
			return
		}
		if ctx.Err() != nil {
			switch {
			case l.etcdReplaced():
				l.store.log.Warn("etcd was restored or replaced; leadership lost", "key", l.key)
			case !l.resigned.Load():
				l.store.log.Warn("election session ended; leadership lost", "key", l.key)
			}
			return
		}
		// The watch broke (compaction, member lost its leader): look at the key itself.
		resp, err := cli.Get(ctx, l.key)
		if err != nil {
			_ = backoff.wait(ctx) // the loop ends at the top once ctx is done
			continue
		}
		if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != l.rev {
			l.store.log.Warn("election key gone; leadership lost", "key", l.key)
			return
		}
		from = resp.Header.Revision + 1
		backoff.reset()
	}
}

// watchKey watches the election key from *from until it is deleted or replaced (true) or the
// watch ends (false).
func (l *Leadership) watchKey(ctx context.Context, from *int64) bool {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range l.store.client.Watch(wctx, l.key, clientv3.WithRev(*from)) {
		if resp.Err() != nil {
			return false
		}
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete || ev.Kv.CreateRevision != l.rev {
				if l.resigned.Load() {
					// Our own Resign deleted it: expected, not a loss.
					l.store.log.Debug("election key deleted after resigning", "key", l.key, "revision", ev.Kv.ModRevision)
				} else {
					l.store.log.Warn("election key deleted; leadership lost", "key", l.key, "revision", ev.Kv.ModRevision)
				}
				return true
			}
			*from = ev.Kv.ModRevision + 1
		}
	}
	return false
}

// Resign gives up the leadership: deletes the election key (fenced) and revokes the session
// lease, so another replica can win at once. Done is closed when it returns. Safe to call more
// than once.
func (l *Leadership) Resign(ctx context.Context) error {
	if !l.resigned.CompareAndSwap(false, true) {
		<-l.monitorDone
		return nil
	}
	err := l.election.Resign(ctx)
	l.session.Orphan()
	_, rerr := l.store.client.Revoke(ctx, l.session.Lease())
	if errors.Is(rerr, rpctypes.ErrLeaseNotFound) {
		rerr = nil // already expired or revoked
	}
	l.stop()
	<-l.monitorDone
	if err := errors.Join(err, rerr); err != nil {
		return classify("store: resign", err)
	}
	l.store.log.Info("resigned leadership", "key", l.key)
	return nil
}

// release resigns without a caller's context (a leadership nobody took), bounded by the TTL.
func (l *Leadership) release() {
	ctx, cancel := context.WithTimeout(l.store.client.Ctx(), l.store.cfg.SessionTTL)
	defer cancel()
	_ = l.Resign(ctx)
}

// MaxOpsPerCommit is what fits etcd's default limit of 128 operations and 128 compares in one
// transaction (--max-txn-ops): a commit compares the fence and each key's revision. A
// transaction is also limited to etcd's request size (--max-request-bytes, default 1.5 MiB),
// which large node records can reach first.
const MaxOpsPerCommit = 127

// Leader returns the current leader's advertised address; ErrNoLeader when nobody leads.
func (s *Store) Leader(ctx context.Context) (string, error) {
	resp, err := s.client.Get(ctx, s.keys.electionDir(), clientv3.WithFirstCreate()...)
	if err != nil {
		return "", classify("store: leader", err)
	}
	if len(resp.Kvs) == 0 {
		return "", ErrNoLeader
	}
	return string(resp.Kvs[0].Value), nil
}

// ObserveLeader sends the leader's advertised address each time it changes ("" when nobody
// leads), starting with the current one. While etcd is unreachable it keeps the last value and
// retries. The channel is closed when ctx ends or the store is closed.
func (s *Store) ObserveLeader(ctx context.Context) <-chan string {
	ch := make(chan string)
	ctx, cancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(s.client.Ctx(), cancel)
	started := s.goroutine(func() {
		defer close(ch)
		defer cancel()
		defer stopOnClose()
		s.observeLeader(ctx, ch)
	})
	if !started {
		stopOnClose()
		cancel()
		close(ch)
	}
	return ch
}

func (s *Store) observeLeader(ctx context.Context, ch chan<- string) {
	sent, last := false, ""
	backoff := newBackoff()
	for ctx.Err() == nil {
		resp, err := s.client.Get(ctx, s.keys.electionDir(), clientv3.WithFirstCreate()...)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("observe leader: read election", "err", err)
			}
			_ = backoff.wait(ctx)
			continue
		}
		backoff.reset()
		leader := ""
		if len(resp.Kvs) > 0 {
			leader = string(resp.Kvs[0].Value)
		}
		if !sent || leader != last {
			select {
			case ch <- leader:
				sent, last = true, leader
			case <-ctx.Done():
				return
			}
		}
		// Wait for any change of the election folder, then read the leader again.
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := s.client.Watch(wctx, s.keys.electionDir(), clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
		for wresp := range wch {
			if len(wresp.Events) > 0 || wresp.Err() != nil {
				break
			}
		}
		wcancel()
	}
}
