package api

import (
	"errors"
	"fmt"
	"io"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/store"
)

// BackupChunkBytes is the size of the snapshot's pieces on the stream (well under the 4 MiB
// message limit).
const BackupChunkBytes = 256 << 10

// StoreReplica is what a replica offers for backups (server.Server does): its etcd store, nil
// until it has reached etcd.
type StoreReplica interface {
	Store() *store.Store
}

// Backup implements AdminService: it streams etcd's snapshot (Maintenance.Snapshot through the
// replica's own client) as it comes. Reads only; any replica answers.
func (s *AdminServer) Backup(_ *ipledgerv1.BackupRequest, stream ipledgerv1.AdminService_BackupServer) error {
	ctx := stream.Context()
	sr, ok := s.replica.(StoreReplica)
	var st *store.Store
	if ok {
		st = sr.Store()
	}
	if st == nil {
		return withInfo(codes.Unavailable, "backup: this replica has not reached etcd yet", ipledgerv1.Reason_STORE_UNAVAILABLE, nil)
	}
	cli := st.Client()
	// A linearizable read first: it fails fast without quorum and names the revision the
	// snapshot holds at least.
	head, err := cli.Get(ctx, st.Prefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return withInfo(codes.Unavailable, fmt.Sprintf("backup: etcd: %v", err), ipledgerv1.Reason_STORE_UNAVAILABLE, nil)
	}
	rc, err := cli.Snapshot(ctx)
	if err != nil {
		return withInfo(codes.Unavailable, fmt.Sprintf("backup: etcd snapshot: %v", err), ipledgerv1.Reason_STORE_UNAVAILABLE, nil)
	}
	defer rc.Close()
	status := s.replica.ClusterStatus(ctx)
	first := &ipledgerv1.BackupChunk{Replica: status.GetReplica(), ClusterName: status.GetClusterName(), Revision: head.Header.GetRevision()}
	buf := make([]byte, BackupChunkBytes)
	sent := false
	for {
		n, rerr := io.ReadFull(rc, buf)
		if n > 0 || !sent {
			msg := &ipledgerv1.BackupChunk{}
			if !sent {
				msg = first
			}
			msg.Data = buf[:n]
			if err := stream.Send(msg); err != nil {
				return err
			}
			sent = true
		}
		switch {
		case errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF):
			return nil
		case rerr != nil:
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return withInfo(codes.Unavailable, fmt.Sprintf("backup: etcd snapshot interrupted: %v", rerr), ipledgerv1.Reason_STORE_UNAVAILABLE, nil)
		}
	}
}
