package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/ipledger/ipledger/internal/atomicfile"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/store/snapshot"
)

func init() { register("", backupCmd) }

// BackupDoc is the output of backup.
type BackupDoc struct {
	// File is the snapshot written (absolute).
	File  string `json:"file"`
	Bytes int64  `json:"bytes"`
	// Revision is the highest etcd revision in the snapshot.
	Revision int64 `json:"revision"`
	// Keys counts the snapshot's live keys; ClusterKeys those of the cluster (/ipledger/<cluster_name>/).
	Keys        int    `json:"keys"`
	ClusterKeys int    `json:"cluster_keys"`
	ClusterName string `json:"cluster_name"`
	// Replica is the replica that streamed it.
	Replica string `json:"replica"`
}

func backupCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Save a snapshot of the server's etcd to a file (as etcdctl snapshot save)",
		Long: `
The replica --server names streams etcd's snapshot (AdminService.Backup, etcd's
Maintenance.Snapshot through the replica's own etcd client: the whole keyspace of that etcd,
ipledger's /ipledger/<cluster>/ included). ipledgerctl writes it to a temporary file beside
FILE, checks it (the SHA-256 etcd appends, then the database: its revision and ipledger's keys)
and only then renames it to FILE (mode 0600), so FILE is either the old file or a whole, valid
snapshot. Prints the size, the revision and the keys. The file is what 'etcdctl snapshot save'
writes: 'etcdutl snapshot status FILE' reads it, and docs/operations.md has the restore
procedure. Any replica answers (a standby's etcd is the same); --timeout bounds the whole
transfer (raise it for a large etcd). Exit 1 when the server refuses or the snapshot does not
check out (FILE is left as it was).`,
	}
	file := cmd.Flags().StringP("filename", "f", "", "the file to write the snapshot to (required)")
	_ = cmd.MarkFlagFilename("filename")
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		if *file == "" {
			return usagef("backup", "backup: -f FILE is required")
		}
		path, err := filepath.Abs(*file)
		if err != nil {
			return usagef("backup", "backup: -f %s: %v", *file, err)
		}
		if st, err := os.Stat(path); err == nil && st.IsDir() {
			return usagef("backup", "backup: -f %s is a directory: give a file name", *file)
		}
		if st, err := os.Stat(filepath.Dir(path)); err != nil || !st.IsDir() {
			return usagef("backup", "backup: -f %s: the directory %s does not exist", *file, filepath.Dir(path))
		}
		type got struct {
			first *ipledgerv1.BackupChunk
			bytes int64
		}
		var pending *atomicfile.Pending
		defer func() {
			if pending != nil {
				pending.Abort()
			}
		}()
		res, err := call(ctx, c, "backup", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (got, error) {
			var g got
			if pending != nil { // a second attempt (after a redirect) starts a new file
				pending.Abort()
				pending = nil
			}
			stream, err := a.Backup(ctx, &ipledgerv1.BackupRequest{})
			if err != nil {
				return g, err
			}
			for {
				chunk, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return g, nil
				}
				if err != nil {
					return g, err
				}
				if g.first == nil {
					g.first = chunk
					if pending, err = atomicfile.Create(path, 0o600); err != nil {
						return g, err
					}
				}
				if _, err := pending.Write(chunk.GetData()); err != nil {
					return g, err
				}
				g.bytes += int64(len(chunk.GetData()))
			}
		})
		if err != nil {
			return err
		}
		if res.first == nil || pending == nil {
			return fmt.Errorf("backup: ipledger-server at %s sent no snapshot", c.g.server)
		}
		prefix := ""
		if res.first.GetClusterName() != "" {
			prefix = "/ipledger/" + res.first.GetClusterName() + "/"
		}
		st, err := snapshot.Inspect(pending.TempName(), prefix)
		if err != nil {
			return fmt.Errorf("backup: the snapshot from %s does not check out, %s is unchanged: %w", res.first.GetReplica(), *file, err)
		}
		if st.Bytes != res.bytes {
			return fmt.Errorf("backup: received %d bytes, wrote %d; %s is unchanged", res.bytes, st.Bytes, *file)
		}
		if st.Revision < res.first.GetRevision() {
			return fmt.Errorf("backup: the snapshot holds revision %d, older than the %d the server had when it began; %s is unchanged", st.Revision, res.first.GetRevision(), *file)
		}
		if err := pending.Commit(); err != nil {
			return err
		}
		pending = nil
		doc := BackupDoc{File: path, Bytes: st.Bytes, Revision: st.Revision, Keys: st.Keys, ClusterKeys: len(st.PrefixKeys),
			ClusterName: res.first.GetClusterName(), Replica: res.first.GetReplica()}
		return c.emit(doc, func(w io.Writer) {
			row(w, fmt.Sprintf("wrote %s: %s (%d bytes), etcd revision %d, %d keys, %d of them ipledger's (%s) of cluster %s, from %s",
				doc.File, humanBytes(doc.Bytes), doc.Bytes, doc.Revision, doc.Keys, doc.ClusterKeys, orDash(prefix), orDash(doc.ClusterName), doc.Replica))
		})
	})
}

// humanBytes is a size in binary units ("3.2 MiB").
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
