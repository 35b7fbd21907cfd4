package ctl

import (
	"crypto/sha256"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/ipledger/ipledger/internal/atomicfile"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/servertest"
	"github.com/ipledger/ipledger/server/store/snapshot"
)

// boltKeys reads the keys of an etcd snapshot with bbolt alone (not package snapshot, which
// the command uses): every key of every revision in etcd's "key" bucket.
func boltKeys(t *testing.T, path string) map[string]bool {
	t.Helper()
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatalf("bbolt cannot open the backup: %v", err)
	}
	defer db.Close()
	out := map[string]bool{}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("key"))
		if b == nil {
			t.Fatal("no key bucket: not an etcd database")
		}
		return b.ForEach(func(_, v []byte) error {
			kv := &mvccpb.KeyValue{}
			if err := proto.Unmarshal(v, kv); err != nil {
				return err
			}
			out[string(kv.Key)] = true
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// backup writes a valid etcd snapshot holding ipledger's keys, atomically; it says what it
// wrote; mistakes change nothing.
func TestBackup(t *testing.T) {
	c := startCluster(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "ipledger.db")
	head := func() int64 {
		t.Helper()
		resp, err := c.s.Store().Client().Get(t.Context(), "/ipledger/dev/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.GetRevision()
	}
	before := head()
	r := mustCtl(t, 0, c.addr, "backup", "-f", file)
	after := head()
	m := regexp.MustCompile(`^wrote (\S+): [\d.]+ [KM]iB \((\d+) bytes\), etcd revision (\d+), (\d+) keys, (\d+) of them ipledger's \(/ipledger/dev/\) of cluster dev, from (\S+)\n$`).FindStringSubmatch(r.stdout)
	if m == nil || m[1] != file || m[6] != c.addr {
		t.Fatalf("backup says:\n%s", r.stdout)
	}
	st, err := os.Stat(file)
	if err != nil || st.Mode().Perm() != 0o600 || m[2] != strconv.FormatInt(st.Size(), 10) {
		t.Fatalf("the file: %v %v (the command says %s bytes)", st, err, m[2])
	}
	// A valid etcd snapshot: the SHA-256 etcd appends matches, and bbolt opens it.
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(b)%512 != sha256.Size {
		t.Fatalf("%d bytes: no SHA-256 appended", len(b))
	}
	if sum := sha256.Sum256(b[:len(b)-sha256.Size]); string(sum[:]) != string(b[len(b)-sha256.Size:]) {
		t.Fatal("the appended SHA-256 does not match")
	}
	keys := boltKeys(t, file)
	for _, a := range c.agents {
		if !keys["/ipledger/dev/nodes/"+a.Name()] {
			t.Errorf("the backup lacks node %s", a.Name())
		}
	}
	for _, sn := range servertest.Running(c.s.Sim()) {
		if !keys["/ipledger/dev/subnets/"+sn.SubnetID] {
			t.Errorf("the backup lacks subnet %s", sn.SubnetID)
		}
	}
	// The revision is the store's as of when the backup began, or later, and not beyond.
	if rev, _ := strconv.ParseInt(m[3], 10, 64); rev < before || rev > after {
		t.Fatalf("revision %d, the store was at %d before and %d after", rev, before, after)
	}

	// etcd's own tool reads it and finds the same revision.
	t.Run("etcdctl snapshot status", func(t *testing.T) {
		etcdctl, err := exec.LookPath("etcdctl")
		if err != nil {
			t.Skip("etcdctl is not installed (make deps installs Debian's etcd-client)")
		}
		out, err := exec.CommandContext(t.Context(), etcdctl, "snapshot", "status", file, "-w", "json").Output()
		var status struct {
			Revision  int64 `json:"revision"`
			TotalSize int64 `json:"totalSize"`
		}
		if err != nil || json.Unmarshal(out, &status) != nil {
			t.Fatalf("etcdctl snapshot status: %v\n%s", err, out)
		}
		if strconv.FormatInt(status.Revision, 10) != m[3] || status.TotalSize != st.Size()-sha256.Size {
			t.Fatalf("etcdctl says revision %d, size %d; ipledgerctl said revision %s of a %d-byte file", status.Revision, status.TotalSize, m[3], st.Size())
		}
	})

	// JSON says the same; a second backup replaces the file whole.
	var doc BackupDoc
	decode(t, mustCtl(t, 0, c.addr, "backup", "-f", file, "-o", "json"), &doc)
	ins, err := snapshot.Inspect(file, "/ipledger/dev/")
	if err != nil {
		t.Fatal(err)
	}
	if doc.File != file || doc.Bytes != ins.Bytes || doc.Revision != ins.Revision || doc.ClusterKeys != len(ins.PrefixKeys) || doc.ClusterKeys < len(c.agents)+6 ||
		doc.ClusterName != "dev" || doc.Replica != c.addr {
		t.Fatalf("backup -o json %+v, the file %+v", doc, ins)
	}
	if tmps := atomicfile.Temps(file); len(tmps) != 0 {
		t.Fatalf("temporary files left: %v", tmps)
	}

	// Mistakes: no -f, a directory, a directory that does not exist (exit 2, nothing asked).
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"backup"}, "backup: -f FILE is required"},
		{[]string{"backup", "-f", dir}, "is a directory"},
		{[]string{"backup", "-f", filepath.Join(dir, "no", "x.db")}, "does not exist"},
	} {
		if r := ctl(t, c.addr, tc.args...); r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%v: want exit 2 saying %q, got %s", tc.args, tc.want, r)
		}
	}
}

// Only an admin may take a backup: the snapshot holds every lease and identity.
func TestBackupNeedsAnAdmin(t *testing.T) {
	s := servertest.StartDev(t, func(c *config.Config) { c.Insecure = false })
	dev := s.DevCerts()
	node := servertest.Running(s.Sim())[0].PrivateDNSName
	file := filepath.Join(t.TempDir(), "b.db")
	env := map[string]string{EnvServer: s.GRPCAddr(), EnvDevCerts: dev.Dir}
	r := ctlEnv(t, env, "--tls-cert", dev.Node(node).Cert, "--tls-key", dev.Node(node).Key, "backup", "-f", file)
	if r.code != ExitError || !strings.Contains(r.stderr, "PermissionDenied (ADMIN_REQUIRED") {
		t.Fatalf("a node's certificate: %s", r)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("a refused backup left %s: %v", file, err)
	}
	if r := ctlEnv(t, env, "backup", "-f", file); r.code != 0 {
		t.Fatalf("the admin: %s", r)
	}
	if _, err := snapshot.Inspect(file, ""); err != nil {
		t.Fatal(err)
	}
}
