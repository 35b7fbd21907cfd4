// Package snapshot reads an etcd snapshot file, what etcd's Maintenance.Snapshot streams and
// `etcdctl snapshot save` writes (etcd's bbolt database with its SHA-256 appended), without
// etcd: it checks the hash and finds the revision and the live keys, as `etcdutl snapshot
// status` does, and which of them lie under a prefix (ipledger's /ipledger/<cluster>/). It
// owns reading such files only: it must never write one, change one or talk to etcd.
package snapshot

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"
)

// ErrInvalid: the file is not a complete etcd snapshot.
var ErrInvalid = errors.New("snapshot: not a valid etcd snapshot")

// Status is what a snapshot holds.
type Status struct {
	// Bytes is the file's size, the appended hash included.
	Bytes int64
	// Revision is the highest revision in the snapshot (etcdutl's "revision").
	Revision int64
	// Keys counts the live keys (etcdutl's "total keys" counts every revision kept).
	Keys int
	// PrefixKeys are the live keys under the prefix Inspect was given, sorted.
	PrefixKeys []string
}

// Inspect checks the snapshot at path (its SHA-256, then its database) and reads its status;
// prefix selects PrefixKeys ("" for none).
func Inspect(path, prefix string) (Status, error) {
	var st Status
	fi, err := os.Stat(path)
	if err != nil {
		return st, fmt.Errorf("snapshot: %w", err)
	}
	st.Bytes = fi.Size()
	if err := checkHash(path, fi.Size()); err != nil {
		return st, err
	}
	db, err := bolt.Open(path, 0o400, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return st, fmt.Errorf("%w: %s: open the database: %v", ErrInvalid, path, err)
	}
	defer func() { _ = db.Close() }()
	live := map[string]bool{}
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("key"))
		if b == nil {
			return fmt.Errorf("%w: %s has no key bucket", ErrInvalid, path)
		}
		return b.ForEach(func(k, v []byte) error {
			// A revision: 8 bytes main, '_', 8 bytes sub, and 't' for a deletion.
			if len(k) < 17 || k[8] != '_' {
				return fmt.Errorf("%w: %s: key %x is not a revision", ErrInvalid, path, k)
			}
			if rev := int64(binary.BigEndian.Uint64(k[:8])); rev > st.Revision {
				st.Revision = rev
			}
			kv := mvccpb.KeyValue{}
			if err := proto.Unmarshal(v, &kv); err != nil {
				return fmt.Errorf("%w: %s: revision %x: %v", ErrInvalid, path, k, err)
			}
			live[string(kv.Key)] = len(k) == 17 // in revision order: the last one decides
			return nil
		})
	})
	if err != nil {
		return st, err
	}
	for k, alive := range live {
		if !alive {
			continue
		}
		st.Keys++
		if prefix != "" && strings.HasPrefix(k, prefix) {
			st.PrefixKeys = append(st.PrefixKeys, k)
		}
	}
	sort.Strings(st.PrefixKeys)
	return st, nil
}

// checkHash verifies the SHA-256 etcd appends to a snapshot (the database's size is a multiple
// of its 512-byte alignment, so the hash is what is left over).
func checkHash(path string, size int64) error {
	if size%512 != sha256.Size {
		return fmt.Errorf("%w: %s: %d bytes, no SHA-256 appended (a truncated or partial snapshot?)", ErrInvalid, path, size)
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.CopyN(h, f, size-sha256.Size); err != nil {
		return fmt.Errorf("snapshot: read %s: %w", path, err)
	}
	want := make([]byte, sha256.Size)
	if _, err := io.ReadFull(f, want); err != nil {
		return fmt.Errorf("snapshot: read %s: %w", path, err)
	}
	if !bytes.Equal(h.Sum(nil), want) {
		return fmt.Errorf("%w: %s: the SHA-256 does not match the content (corrupted)", ErrInvalid, path)
	}
	return nil
}
