package store

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// ErrConflict: a condition of CommitIf failed (the record changed since it was read); nothing
// was written. Read again and decide again.
var ErrConflict = errors.New("store: record changed since it was read")

// Identity reads one node attestation (identities/<instanceID>) with a linearizable read. It
// returns nil and the revision 0 when there is none; rev is the record's mod revision, for a
// CommitIf condition.
func (s *Store) Identity(ctx context.Context, instanceID string) (id *ipledgerv1.NodeIdentity, rev int64, err error) {
	if err := validName(RecordIdentity, instanceID); err != nil {
		return nil, 0, fmt.Errorf("store: identity: %w", err)
	}
	resp, err := s.client.Get(ctx, s.keys.record(RecordIdentity, instanceID))
	if err != nil {
		return nil, 0, classify("store: identity "+instanceID, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	d, err := decode(RecordIdentity, instanceID, resp.Kvs[0].Value)
	if err != nil {
		return nil, 0, fmt.Errorf("store: identity: %w", err)
	}
	return d.identity, resp.Kvs[0].ModRevision, nil
}

// Identities reads every node attestation with a linearizable read (one Get of the folder: an
// attestation is a few hundred bytes, one per node).
func (s *Store) Identities(ctx context.Context) ([]*ipledgerv1.NodeIdentity, error) {
	prefix := s.keys.prefix + identityFolder
	resp, err := s.client.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, classify("store: identities", err)
	}
	out := make([]*ipledgerv1.NodeIdentity, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		t, name, ok, err := s.keys.parse(string(kv.Key))
		if err != nil || !ok || t != RecordIdentity {
			return nil, fmt.Errorf("store: identities: %w: key %q", ErrInvalid, kv.Key)
		}
		d, err := decode(t, name, kv.Value)
		if err != nil {
			return nil, fmt.Errorf("store: identities: %w", err)
		}
		out = append(out, d.identity)
	}
	return out, nil
}

// Cond is a condition of CommitIf: the record's mod revision must be Revision (0: the record
// must not exist), as a read returned it.
type Cond struct {
	Type     RecordType
	Name     string
	Revision int64
}

// CommitIf is Commit with conditions on records read before: the transaction is
// If(fence).Then(Txn(If(conds...).Then(ops...))). ErrNotLeader when the fence fails, ErrConflict
// when a condition does (in both cases nothing was written), the other errors as Commit's.
func (l *Leadership) CommitIf(ctx context.Context, conds []Cond, ops ...Op) (int64, error) {
	if l.resigned.Load() {
		return 0, fmt.Errorf("store: commit: %w: leadership resigned", ErrNotLeader)
	}
	select {
	case <-l.done:
		return 0, fmt.Errorf("store: commit: %w: leadership lost", ErrNotLeader)
	default:
	}
	if len(ops)+len(conds) > MaxOpsPerCommit {
		return 0, fmt.Errorf("store: commit: %w: %d ops and conditions, etcd takes at most %d", ErrInvalid, len(ops)+len(conds), MaxOpsPerCommit)
	}
	cmps := make([]clientv3.Cmp, 0, len(conds))
	for i, c := range conds {
		if err := validName(c.Type, c.Name); err != nil || folders[c.Type] == "" {
			return 0, fmt.Errorf("store: commit: condition %d: %w: %s %q", i, ErrInvalid, c.Type, c.Name)
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(l.store.keys.record(c.Type, c.Name)), "=", c.Revision))
	}
	writes, err := l.writesOf(ops)
	if err != nil {
		return 0, err
	}
	resp, err := l.store.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)).
		Then(clientv3.OpTxn(cmps, thenOps(writes), nil)).
		Commit()
	if err != nil {
		return 0, classify(fmt.Sprintf("store: commit %d ops", len(ops)), err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("store: commit: %w: election key %s is not the one created at revision %d", ErrNotLeader, l.key, l.rev)
	}
	if len(resp.Responses) != 1 || !resp.Responses[0].GetResponseTxn().GetSucceeded() {
		return 0, fmt.Errorf("store: commit: %w", ErrConflict)
	}
	l.note(writes, resp.Header.Revision)
	return resp.Header.Revision, nil
}
