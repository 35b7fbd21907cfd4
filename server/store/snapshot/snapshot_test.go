package snapshot

import (
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ipledger/ipledger/server/store"
)

// A snapshot of a real etcd: its revision, its live keys (a deleted key is not one) and those
// under a prefix; truncated, corrupted and foreign files are refused.
func TestInspect(t *testing.T) {
	emb, err := store.StartEmbedded(t.Context(), store.EmbeddedConfig{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: emb.Endpoints(), DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := t.Context()
	for _, k := range []string{"/ipledger/t/nodes/a", "/ipledger/t/nodes/b", "/ipledger/t/subnets/s", "/other/x"} {
		if _, err := cli.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, "/ipledger/t/nodes/a", "v2"); err != nil {
		t.Fatal(err)
	}
	del, err := cli.Delete(ctx, "/ipledger/t/nodes/b")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	if err := os.WriteFile(good, b, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := Inspect(good, "/ipledger/t/")
	if err != nil {
		t.Fatal(err)
	}
	if st.Bytes != int64(len(b)) || st.Revision != del.Header.GetRevision() || st.Keys != 3 ||
		!reflect.DeepEqual(st.PrefixKeys, []string{"/ipledger/t/nodes/a", "/ipledger/t/subnets/s"}) {
		t.Fatalf("status %+v (the delete was at revision %d)", st, del.Header.GetRevision())
	}
	for name, content := range map[string][]byte{
		"truncated": b[:len(b)/2],
		"corrupted": append(append(append([]byte{}, b[:100]...), b[100]^0xff), b[101:]...),
		"no hash":   b[:len(b)-sha256.Size],
		"not etcd":  make([]byte, 512+sha256.Size),
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Inspect(p, ""); err == nil {
			t.Errorf("%s: Inspect accepts it", name)
		}
	}
}
