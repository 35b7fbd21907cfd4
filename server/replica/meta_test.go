package replica

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ipledger/ipledger/server/store"
)

func metaOf(t *testing.T, cli *clientv3.Client) (store.Meta, bool) {
	t.Helper()
	resp, err := cli.Get(t.Context(), "/ipledger/replica-test/meta")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return store.Meta{}, false
	}
	var m store.Meta
	if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil {
		t.Fatal(err)
	}
	return m, true
}

func etcdClient(t *testing.T, eps []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// A new cluster's first leader writes the meta record: this binary's schema and the etcd
// cluster it was written in.
func TestFirstLeaderWritesTheSchema(t *testing.T) {
	eps := startEtcd(t)
	a := start(t, eps, "10.0.0.1:7400", nil)
	waitFor(t, 15*time.Second, "a to lead", func() bool { return a.r.Allocator() != nil })
	m, ok := metaOf(t, etcdClient(t, eps))
	if !ok || m.Schema != store.SchemaVersion || m.EtcdClusterID == 0 || m.Created.IsZero() || !m.Rebuilt.IsZero() {
		t.Fatalf("meta after the first lead: %+v (found %v)", m, ok)
	}
}

// A store written by a newer ipledger (a higher schema) is never led by this binary: Run ends
// with ErrNewerSchema, saying what to do, and nothing is written.
func TestNewerSchemaIsNotLed(t *testing.T) {
	eps := startEtcd(t)
	cli := etcdClient(t, eps)
	newer, _ := json.Marshal(store.Meta{Schema: store.SchemaVersion + 1, WrittenBy: "v9.9.9", Created: time.Now()})
	if _, err := cli.Put(t.Context(), "/ipledger/replica-test/meta", string(newer)); err != nil {
		t.Fatal(err)
	}
	a := start(t, eps, "10.0.0.1:7400", nil)
	select {
	case err := <-a.done:
		if !errors.Is(err, store.ErrNewerSchema) || !strings.Contains(err.Error(), "v9.9.9") || !strings.Contains(err.Error(), "restore") {
			t.Fatalf("Run returned %v, want ErrNewerSchema naming the version and what to do", err)
		}
		a.done <- err
	case <-time.After(15 * time.Second):
		t.Fatal("Run did not refuse a newer schema")
	}
	if a.r.Allocator() != nil {
		t.Fatal("the replica leads a newer schema")
	}
	if m, _ := metaOf(t, cli); m.Schema != store.SchemaVersion+1 {
		t.Fatalf("the meta was rewritten: %+v", m)
	}
}

// A meta written in another etcd cluster (a restored snapshot) makes the leader reconcile
// before it serves, and the meta is rewritten for this etcd.
func TestRestoredSnapshotIsReconciledFirst(t *testing.T) {
	eps := startEtcd(t)
	cli := etcdClient(t, eps)
	old, _ := json.Marshal(store.Meta{Schema: store.SchemaVersion, EtcdClusterID: 42, Created: time.Now().Add(-time.Hour)})
	if _, err := cli.Put(t.Context(), "/ipledger/replica-test/meta", string(old)); err != nil {
		t.Fatal(err)
	}
	a := start(t, eps, "10.0.0.1:7400", nil)
	waitFor(t, 15*time.Second, "a to lead", func() bool { return a.r.Allocator() != nil })
	m, _ := metaOf(t, cli)
	if m.EtcdClusterID == 42 || m.EtcdClusterID == 0 || m.Rebuilt.IsZero() {
		t.Fatalf("meta after leading a restored store: %+v", m)
	}
}
