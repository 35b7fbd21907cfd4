package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Commit retries: the first pause after a failed attempt, doubling up to the cap.
const (
	commitRetryFirst = 20 * time.Millisecond
	commitRetryMax   = 250 * time.Millisecond
)

// Commit writes ops in one etcd transaction fenced by the leadership and by every key's
// revision: If(CreateRevision(Key()) == Revision(), ModRevision(k) == known(k) for each key k of
// ops).Then(ops...). It returns the revision of the write. Errors: ErrInvalid when an Op is
// invalid or two Ops name the same record (nothing is sent); ErrNotLeader when the fence fails
// (deposed: nothing was written); ErrUnavailable when etcd cannot be reached or has no quorum
// before ctx ends, in which case the write may or may not have happened. With no ops, Commit
// only checks the fence.
//
// Each attempt waits at most CommitAttemptTimeout and requires the etcd member to have a raft
// leader, so a write sent while etcd elects a new leader is not stuck for etcd's own request
// timeout. An attempt that fails without an answer is checked by reading its keys: when they
// hold what it wrote, it was committed; otherwise it is sent again. The key revisions in the
// compare make this safe when a timed-out attempt commits late: it can no longer succeed once
// another write of those keys (a retry of the same ops, or a later commit) has landed, so an
// old write never overwrites a newer one.
func (l *Leadership) Commit(ctx context.Context, ops ...Op) (int64, error) {
	if l.resigned.Load() {
		return 0, fmt.Errorf("store: commit: %w: leadership resigned", ErrNotLeader)
	}
	if err := l.writable("store: commit"); err != nil {
		return 0, err
	}
	if len(ops) > MaxOpsPerCommit {
		return 0, fmt.Errorf("store: commit: %w: %d ops, etcd takes at most %d per transaction", ErrInvalid, len(ops), MaxOpsPerCommit)
	}
	writes, err := l.writesOf(ops)
	if err != nil {
		return 0, err
	}
	what := fmt.Sprintf("store: commit %d ops", len(ops))
	pause := commitRetryFirst
	for {
		rev, done, err := l.attempt(ctx, writes)
		if done {
			return rev, err
		}
		if ctx.Err() != nil {
			return 0, classify(what, errors.Join(err, ctx.Err()))
		}
		if !transient(err) {
			return 0, classify(what, err)
		}
		// No answer: the attempt may have committed. Look before sending it again.
		if rev, ok, rerr := l.landed(ctx, writes); rerr == nil && ok {
			return rev, nil
		}
		l.store.log.Debug("commit attempt failed; trying again", "ops", len(ops), "err", err, "in", pause)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, classify(what, errors.Join(err, ctx.Err()))
		case <-t.C:
		}
		pause = min(2*pause, commitRetryMax)
	}
}

// transient reports failures after which an attempt may succeed (and may have succeeded): no
// answer in time, no raft leader, a lost or refused connection. Refusals of the request itself
// (too large, too many operations, permission denied) are not.
func transient(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, errKeyMoved) {
		return true
	}
	switch {
	case errors.Is(err, rpctypes.ErrNoLeader), errors.Is(err, rpctypes.ErrLeaderChanged),
		errors.Is(err, rpctypes.ErrTimeout), errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost), errors.Is(err, rpctypes.ErrTimeoutWaitAppliedIndex),
		errors.Is(err, rpctypes.ErrNotCapable), errors.Is(err, rpctypes.ErrTooManyRequests):
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.ResourceExhausted:
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		switch ee.Code() {
		case codes.Unavailable, codes.DeadlineExceeded:
			return true
		}
	}
	return false
}

// writesOf checks ops and turns them into the keys they write, refusing invalid ones and two
// ops on one record.
func (l *Leadership) writesOf(ops []Op) ([]write, error) {
	writes := make([]write, 0, len(ops))
	seen := make(map[string]bool, len(ops))
	for i, op := range ops {
		if op.err != nil {
			return nil, fmt.Errorf("store: commit: op %d: %w", i, op.err)
		}
		if op.typ == "" {
			return nil, fmt.Errorf("store: commit: op %d: %w: zero Op", i, ErrInvalid)
		}
		key := l.store.keys.record(op.typ, op.name)
		if seen[key] {
			return nil, fmt.Errorf("store: commit: op %d: %w: %s %q written twice in one commit", i, ErrInvalid, op.typ, op.name)
		}
		seen[key] = true
		writes = append(writes, write{key: key, value: op.value, del: op.IsDelete()})
	}
	return writes, nil
}

// thenOps are the etcd operations of writes.
func thenOps(writes []write) []clientv3.Op {
	out := make([]clientv3.Op, 0, len(writes))
	for _, w := range writes {
		if w.del {
			out = append(out, clientv3.OpDelete(w.key))
		} else {
			out = append(out, clientv3.OpPut(w.key, string(w.value)))
		}
	}
	return out
}

// write is one key of a commit.
type write struct {
	key   string
	value []byte
	del   bool
}

// attempt sends the transaction once. done is false when the outcome is unknown (no answer
// within the attempt's deadline, no raft leader, a lost connection): the caller checks with
// landed and tries again.
func (l *Leadership) attempt(ctx context.Context, writes []write) (rev int64, done bool, err error) {
	cmps := make([]clientv3.Cmp, 0, len(writes)+1)
	cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev))
	l.knownMu.Lock()
	for _, w := range writes {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(w.key), "=", l.known[w.key]))
	}
	l.knownMu.Unlock()
	thens := thenOps(writes)
	actx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), l.store.cfg.CommitAttemptTimeout)
	defer cancel()
	resp, err := l.store.client.Txn(actx).If(cmps...).Then(thens...).Else(clientv3.OpGet(l.key, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return 0, false, err
	}
	if resp.Succeeded {
		l.note(writes, resp.Header.Revision)
		return resp.Header.Revision, true, nil
	}
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) != 1 || kvs[0].CreateRevision != l.rev {
		return 0, true, fmt.Errorf("store: commit: %w: election key %s is not the one created at revision %d", ErrNotLeader, l.key, l.rev)
	}
	// The fence held but a key moved: an attempt that had timed out committed after all (this
	// call's, then the keys hold its values; or an earlier call's, then this one is newer and
	// goes again against the keys' revisions now).
	rev, ok, rerr := l.landed(ctx, writes)
	switch {
	case rerr != nil:
		return 0, false, rerr
	case ok:
		return rev, true, nil
	}
	return 0, false, errKeyMoved
}

// errKeyMoved: a key of the commit changed since this leader last wrote it (a late commit of
// one of its own earlier attempts); the commit goes again against the key's revision now.
var errKeyMoved = errors.New("store: commit: a record changed since this leader last wrote it (a late commit of its own)")

// landed reads the keys of writes and reports whether they hold what writes would have made
// them, written after this leader last knew them; rev is the revision of that write. Either
// way it records the keys' current revisions, so the next attempt compares against them.
func (l *Leadership) landed(ctx context.Context, writes []write) (rev int64, ok bool, err error) {
	gets := make([]clientv3.Op, 0, len(writes))
	for _, w := range writes {
		gets = append(gets, clientv3.OpGet(w.key))
	}
	actx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), l.store.cfg.CommitAttemptTimeout)
	defer cancel()
	resp, err := l.store.client.Txn(actx).Then(gets...).Commit()
	if err != nil {
		return 0, false, err
	}
	l.knownMu.Lock()
	defer l.knownMu.Unlock()
	ok = true
	for i, w := range writes {
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		var cur int64
		if len(kvs) == 1 {
			cur = kvs[0].ModRevision
		}
		switch {
		case w.del:
			// Deleted by this write if it existed when the leader last knew it.
			ok = ok && len(kvs) == 0 && l.known[w.key] != 0
		default:
			ok = ok && len(kvs) == 1 && string(kvs[0].Value) == string(w.value) && cur > l.known[w.key]
			rev = max(rev, cur)
		}
		l.known[w.key] = cur
	}
	if ok && rev == 0 {
		rev = resp.Header.Revision // only deletes: at or after the write
	}
	return rev, ok, nil
}

// note records the revision a successful write gave its keys.
func (l *Leadership) note(writes []write, rev int64) {
	l.knownMu.Lock()
	defer l.knownMu.Unlock()
	for _, w := range writes {
		if w.del {
			l.known[w.key] = 0
		} else {
			l.known[w.key] = rev
		}
	}
}

// loadRevisions reads the revision of every record key under the prefix (keys only), once
// this replica won: the base of every commit's compares.
func (l *Leadership) loadRevisions(ctx context.Context) error {
	known := map[string]int64{}
	prefix := l.store.keys.prefix
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	for {
		resp, err := l.store.client.Get(ctx, from, clientv3.WithRange(end), clientv3.WithKeysOnly(),
			clientv3.WithLimit(4*loadPageSize), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return classify("store: campaign: read record revisions", err)
		}
		for _, kv := range resp.Kvs {
			known[string(kv.Key)] = kv.ModRevision
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	l.knownMu.Lock()
	l.known = known
	l.knownMu.Unlock()
	return nil
}
