package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/store"
)

// ErrEtcdLost: etcd holds nothing for the cluster while EC2 holds ENIs tagged for it, and the
// server was not started with --rebuild-from-ec2.
var ErrEtcdLost = errors.New("replica: etcd holds no state for a cluster EC2 knows")

// checkMeta runs once a replica has won the election, before its allocator serves. It reads
// the store's meta record and decides:
//
//   - a newer schema than this binary's: refuse to lead (store.ErrNewerSchema);
//   - no meta, records present: a store of a release before meta; write it;
//   - no meta, no records, no ENI tagged for the cluster on EC2: a new cluster; write it;
//   - no meta, no records, tagged ENIs on EC2: etcd was lost or wiped. Refuse (ErrEtcdLost)
//     unless RebuildFromEC2; then rebuild: reconcile against EC2 before serving;
//   - meta written in another etcd cluster (a restored snapshot): reconcile before serving.
//
// recoverFirst says the allocator must reconcile against EC2 before it serves.
func (r *Replica) checkMeta(ctx context.Context, st *store.Store, lead *store.Leadership) (recoverFirst bool, err error) {
	m, found, clusterID, err := st.Meta(ctx)
	if err != nil {
		return false, fmt.Errorf("read the store's meta record: %w", err)
	}
	if found {
		if err := store.CheckSchema(m); err != nil {
			return false, err
		}
	}
	stamp := func(rebuilt bool) store.Meta {
		out := m
		out.Schema, out.EtcdClusterID, out.WrittenBy = store.SchemaVersion, clusterID, r.cfg.Version
		if out.Created.IsZero() {
			out.Created = time.Now().UTC()
		}
		if rebuilt {
			out.Rebuilt = time.Now().UTC()
		}
		return out
	}
	switch {
	case found && m.EtcdClusterID == clusterID:
		if m.Schema < store.SchemaVersion || m.WrittenBy != r.cfg.Version {
			return false, lead.PutMeta(ctx, stamp(false))
		}
		return false, nil
	case found:
		// Written in another etcd cluster: this is a restored snapshot (or a copy). EC2 and
		// the agents may be ahead of it; the allocator reconciles before it serves, and the
		// meta is rewritten once it does.
		r.log.Warn("etcd was restored from a snapshot (its cluster id changed): reconciling the records against EC2 before serving",
			"meta_etcd_cluster", fmt.Sprintf("%x", m.EtcdClusterID), "etcd_cluster", fmt.Sprintf("%x", clusterID))
		return true, lead.PutMeta(ctx, stamp(true))
	}
	r.mu.RLock()
	empty := len(r.led.Nodes()) == 0 && len(r.led.Subnets()) == 0 && len(r.led.Prewarms()) == 0 && len(r.known) == 0
	r.mu.RUnlock()
	if !empty {
		return false, lead.PutMeta(ctx, stamp(false))
	}
	tagged, err := r.taggedENIs(ctx)
	if err != nil {
		return false, fmt.Errorf("etcd holds no state for cluster %s; checking EC2 for its ENIs: %w", r.cfg.Allocator.ClusterName, err)
	}
	if tagged == 0 {
		return false, lead.PutMeta(ctx, stamp(false))
	}
	if !r.cfg.RebuildFromEC2 {
		return false, fmt.Errorf("%w: etcd holds no state for cluster %q, but EC2 holds %d ENIs tagged %s=%s: etcd was lost or wiped, or --etcd-endpoints or --cluster-name point elsewhere. If etcd was lost, start the server with --rebuild-from-ec2 to rebuild the ledger from EC2 and the agents' reports (docs/resilience.md, \"Total etcd loss\")",
			ErrEtcdLost, r.cfg.Allocator.ClusterName, tagged, allocator.TagCluster, r.cfg.Allocator.ClusterName)
	}
	r.log.Warn("etcd holds no state but EC2 holds ENIs of this cluster: rebuilding the ledger from EC2 and the agents (--rebuild-from-ec2)",
		"cluster", r.cfg.Allocator.ClusterName, "tagged_enis", tagged)
	return true, lead.PutMeta(ctx, stamp(true))
}

// taggedENIs counts the ENIs EC2 holds with the cluster's tag.
func (r *Replica) taggedENIs(ctx context.Context) (int, error) {
	gw := r.cfg.Allocator.EC2
	if gw == nil {
		return 0, errors.New("no EC2 gateway configured")
	}
	enis, err := gw.DescribeNetworkInterfaces(ctx, ec2gw.PriorityReconcile, ec2gw.ENIFilter{Tags: map[string]string{allocator.TagCluster: r.cfg.Allocator.ClusterName}})
	if err != nil {
		return 0, err
	}
	return len(enis), nil
}
