package store

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
)

// incarnation is the etcd cluster the store talks to, as its answers describe it: the cluster
// id of every response header, and the highest revision a linearizable key-value answer gave.
// When etcd is restored from a snapshot (`etcdutl snapshot restore` with a new cluster token)
// the cluster id changes; when it is restored keeping its id, the revision goes back. Either
// way the records in etcd may be older than what this replica holds in memory, what EC2 has and
// what the agents were told: every leadership won before ends, and watches return
// ErrReplaced so the state is loaded again.
type incarnation struct {
	log *slog.Logger

	mu        sync.Mutex
	clusterID uint64
	rev       int64
	replaced  chan struct{} // closed when this incarnation ends; a new one is made
}

func newIncarnation(log *slog.Logger) *incarnation {
	return &incarnation{log: log, replaced: make(chan struct{})}
}

// current is the channel closed when the incarnation seen now ends.
func (in *incarnation) current() <-chan struct{} {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.replaced
}

// revision is the highest revision a linearizable answer has given so far.
func (in *incarnation) revision() int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.rev
}

// observe checks one answer's header. before is the highest revision known when the request was
// sent, or -1 when the answer need not be ordered after it (a serializable read, a watch, a
// lease or maintenance call): a linearizable answer to a request sent after another answer
// cannot have a lower revision, unless etcd went back in time.
func (in *incarnation) observe(h *etcdserverpb.ResponseHeader, before int64) {
	if h == nil || h.ClusterId == 0 {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	switch {
	case in.clusterID == 0:
		in.clusterID = h.ClusterId
	case h.ClusterId != in.clusterID:
		in.endLocked(fmt.Sprintf("etcd cluster id changed from %x to %x", in.clusterID, h.ClusterId), h)
		return
	case before >= 0 && h.Revision > 0 && h.Revision < before:
		in.endLocked(fmt.Sprintf("etcd revision went back from %d to %d", before, h.Revision), h)
		return
	}
	if before >= 0 && h.Revision > in.rev {
		in.rev = h.Revision
	}
}

func (in *incarnation) endLocked(why string, h *etcdserverpb.ResponseHeader) {
	in.log.Warn("etcd is not the one this replica knew: it was restored from a snapshot or replaced; leadership ends and the state is loaded again",
		"why", why, "cluster_id", fmt.Sprintf("%x", h.ClusterId), "revision", h.Revision)
	close(in.replaced)
	in.replaced = make(chan struct{})
	in.clusterID, in.rev = h.ClusterId, h.Revision
}

// headered is every etcd response: each carries the header of the member that answered.
type headered interface {
	GetHeader() *etcdserverpb.ResponseHeader
}

// interceptor checks every unary answer of etcd (reads, writes, transactions, lease grants).
func (in *incarnation) interceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		before := int64(-1)
		switch r := req.(type) {
		case *etcdserverpb.RangeRequest:
			if !r.Serializable {
				before = in.revision()
			}
		case *etcdserverpb.PutRequest, *etcdserverpb.DeleteRangeRequest, *etcdserverpb.TxnRequest:
			before = in.revision()
		}
		err := invoker(ctx, method, req, reply, cc, opts...)
		if err == nil {
			if h, ok := reply.(headered); ok {
				in.observe(h.GetHeader(), before)
			}
		}
		return err
	}
}

// probe reads etcd every interval, so a restore is seen even when the replica has nothing to
// read or write and its watches wait quietly for a revision the restored etcd has not reached.
func (s *Store) probe(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, every)
		_, _ = s.client.Get(pctx, s.keys.meta(), clientv3.WithCountOnly()) // the interceptor checks it
		cancel()
	}
}

// Replaced is closed when the etcd the store talks to turns out to be another incarnation than
// the one seen so far (restored from a snapshot, or replaced): its records may be older than
// this replica's state. Call it again for the channel of the new incarnation.
func (s *Store) Replaced() <-chan struct{} { return s.inc.current() }
