package store

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Candidate is one replica in the election queue: its key, the session lease that keeps the key
// alive, and its advertised address. The first by create revision leads.
type Candidate struct {
	Key            string
	Lease          int64
	Advertise      string
	CreateRevision int64
}

// Candidates lists the election queue, the leader first.
func (s *Store) Candidates(ctx context.Context) ([]Candidate, error) {
	resp, err := s.client.Get(ctx, s.keys.electionDir(), clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, classify("store: election candidates", err)
	}
	out := make([]Candidate, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		out = append(out, Candidate{Key: string(kv.Key), Lease: kv.Lease, Advertise: string(kv.Value), CreateRevision: kv.CreateRevision})
	}
	return out, nil
}

// Depose ends a candidate's session by revoking its lease, if the candidate still holds key with
// that lease: its election key goes with it, so the next candidate leads at once, and every
// write it might still attempt fails its fence. It is how a standby replaces a leader whose
// process it knows is gone without waiting for the session TTL; it is safe even when wrong (a
// live leader deposed this way loses its leadership, never its writes' fence).
func (s *Store) Depose(ctx context.Context, c Candidate) error {
	resp, err := s.client.Get(ctx, c.Key)
	if err != nil {
		return classify("store: depose", err)
	}
	if len(resp.Kvs) != 1 || resp.Kvs[0].Lease != c.Lease || resp.Kvs[0].CreateRevision != c.CreateRevision {
		return nil // already gone, or another campaign's key
	}
	if _, err := s.client.Revoke(ctx, clientv3.LeaseID(c.Lease)); err != nil {
		return fmt.Errorf("store: depose %s: %w", c.Key, classify("revoke its session", err))
	}
	return nil
}
