package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// SchemaVersion is the version of the etcd layout this binary reads and writes. A leader that
// finds a newer one refuses to lead (ErrNewerSchema); one that finds none writes it. Bump it
// when a release changes the layout in a way an older release would misread, and name the
// change under "Upgrade notes" in CHANGELOG.md.
//
//	1: nodes/, subnets/, policies/, prewarm/, identities/, election/ and meta. ipledger 0.1.0
//	   (commit 117a7bd) wrote this layout without the meta record; the first leader of a
//	   later release writes it (e2e/upgrade_test.go upgrades a 0.1.0 cluster).
const SchemaVersion = 1

// ErrNewerSchema: etcd holds a layout written by a newer ipledger than this binary.
var ErrNewerSchema = errors.New("store: etcd holds a newer schema")

// metaKey is the cluster's meta record: /ipledger/<cluster>/meta (outside every record folder,
// so Load and Watch skip it).
func (k keyspace) meta() string { return k.prefix + "meta" }

// Meta describes the cluster's state in etcd as a whole.
type Meta struct {
	// Schema is the SchemaVersion of the binary that last wrote the layout.
	Schema int `json:"schema"`
	// EtcdClusterID is the etcd cluster the meta was written in. It changes when etcd is
	// restored from a snapshot (etcdutl snapshot restore makes a new cluster), which tells a new
	// leader that the records may be older than EC2 and the agents.
	EtcdClusterID uint64 `json:"etcd_cluster_id"`
	// Created is when a leader first wrote the meta; Rebuilt when a leader last rebuilt the
	// records from EC2 and the agents (etcd lost, or restored).
	Created time.Time `json:"created"`
	Rebuilt time.Time `json:"rebuilt,omitzero"`
	// Recovering: a leader found the records possibly behind EC2 (etcd restored or rebuilt)
	// and has not yet finished reconciling them before serving; the next leader does it again.
	Recovering bool `json:"recovering,omitempty"`
	// WrittenBy is the version of the binary that last wrote the meta.
	WrittenBy string `json:"written_by,omitempty"`
}

// Meta reads the cluster's meta record. found is false when there is none (a new cluster, an
// etcd that was lost, or a store written before meta existed). clusterID is the etcd cluster
// answering now.
func (s *Store) Meta(ctx context.Context) (m Meta, found bool, clusterID uint64, err error) {
	resp, err := s.client.Get(ctx, s.keys.meta())
	if err != nil {
		return Meta{}, false, 0, classify("store: meta", err)
	}
	clusterID = resp.Header.ClusterId
	if len(resp.Kvs) == 0 {
		return Meta{}, false, clusterID, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil || m.Schema < 1 {
		return Meta{}, false, clusterID, fmt.Errorf("store: meta: %w: %q is not a meta record (%v)", ErrInvalid, resp.Kvs[0].Value, err)
	}
	return m, true, clusterID, nil
}

// CheckSchema refuses a meta written by a newer layout than this binary's.
func CheckSchema(m Meta) error {
	if m.Schema > SchemaVersion {
		by := ""
		if m.WrittenBy != "" {
			by = " (ipledger " + m.WrittenBy + ")"
		}
		return fmt.Errorf("%w: etcd holds schema %d, written by a newer ipledger%s; this binary reads schema %d at most: run the newer release, or restore the etcd snapshot taken before the upgrade (docs/deploy.md, \"Upgrade and rollback\")",
			ErrNewerSchema, m.Schema, by, SchemaVersion)
	}
	return nil
}

// PutMeta writes the meta record, fenced by the leadership like every commit.
func (l *Leadership) PutMeta(ctx context.Context, m Meta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("store: put meta: %w: %w", ErrInvalid, err)
	}
	if err := l.writable("store: put meta"); err != nil {
		return err
	}
	resp, err := l.store.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.rev)).
		Then(clientv3.OpPut(l.store.keys.meta(), string(b))).
		Commit()
	if err != nil {
		return classify("store: put meta", err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("store: put meta: %w: election key %s is not the one created at revision %d", ErrNotLeader, l.key, l.rev)
	}
	return nil
}
