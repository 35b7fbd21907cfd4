package servertest

import (
	"context"
	"fmt"

	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/store"
)

// Consistent reports the first disagreement between EC2 (the simulator) and etcd for cluster:
// an address on two ENIs, an address leased twice, a lease EC2 does not have on the leased ENI,
// an address on a managed ENI that is not leased, or an ENI tagged for the cluster that no node
// owns.
func Consistent(ctx context.Context, sim *ec2sim.Sim, st *store.Store, cluster string) error {
	return consistent(ctx, sim, st, cluster, false)
}

// ConsistentMidRelease is Consistent, except that a RELEASING lease EC2 no longer has on the
// leased ENI is accepted: the release is on its way out. For tests that check while releases
// may be in flight.
func ConsistentMidRelease(ctx context.Context, sim *ec2sim.Sim, st *store.Store, cluster string) error {
	return consistent(ctx, sim, st, cluster, true)
}

func consistent(ctx context.Context, sim *ec2sim.Sim, st *store.Store, cluster string, releasingMayBeGone bool) error {
	snap := sim.Snapshot()
	state, err := st.Load(ctx)
	if err != nil {
		return fmt.Errorf("load etcd: %w", err)
	}
	onENI := map[string]string{}
	for _, e := range snap.ENIs {
		for _, ip := range append([]string{e.PrimaryIP}, e.SecondaryIPs...) {
			if other, ok := onENI[ip]; ok {
				return fmt.Errorf("EC2 has %s on %s and %s", ip, other, e.ID)
			}
			onENI[ip] = e.ID
		}
	}
	owned := map[string]string{}
	leased := map[string]string{}
	for _, n := range state.Nodes {
		for _, e := range n.ENIs {
			owned[e.ID] = n.Name
			for _, ad := range e.Addresses {
				ip := ad.IP.String()
				if other, ok := leased[ip]; ok {
					return fmt.Errorf("etcd leases %s to %s and %s", ip, other, n.Name)
				}
				leased[ip] = n.Name
				if onENI[ip] != e.ID && !(releasingMayBeGone && ad.State == ledger.LeaseReleasing) {
					return fmt.Errorf("etcd leases %s on %s to %s, EC2 has it on %q", ip, e.ID, n.Name, onENI[ip])
				}
			}
		}
	}
	for _, e := range snap.ENIs {
		if e.Tags[allocator.TagCluster] == cluster {
			if _, ok := owned[e.ID]; !ok {
				return fmt.Errorf("ENI %s (%s) is tagged for cluster %s but no node owns it", e.ID, e.Status, cluster)
			}
		}
		if _, ok := owned[e.ID]; ok {
			for _, ip := range e.SecondaryIPs {
				if _, ok := leased[ip]; !ok {
					return fmt.Errorf("EC2 has %s on managed ENI %s, etcd leases it to nobody", ip, e.ID)
				}
			}
		}
	}
	return nil
}
