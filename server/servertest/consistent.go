package servertest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/store"
)

// Consistent reports every difference (diff.Diff, the allocator's own comparison) between EC2
// (the simulator) and etcd for cluster: an address on two ENIs, an address leased twice or held
// as foreign, a lease EC2 does not have on the leased ENI, an address on a node's ENI that is
// not leased, a node's ENI missing or attached elsewhere, an ENI tagged for the cluster that
// nobody owns.
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
	var errs []error
	for _, f := range Diff(snap, state, cluster, false) {
		if releasingMayBeGone && f.Kind == diff.LeasedNotOnEC2 && f.State == ledger.LeaseReleasing {
			continue
		}
		errs = append(errs, errors.New(f.String()))
	}
	return errors.Join(errs...)
}

// Diff compares a snapshot of the simulator with etcd's records (diff.Diff); withInstances
// also reports nodes whose instance is gone.
func Diff(snap ec2sim.State, state *store.State, cluster string, withInstances bool) []diff.Finding {
	view := EC2View(snap)
	if !withInstances {
		view.Instances = nil
	}
	return diff.Diff(cluster, Records(state), view)
}

// Records are etcd's records in the form diff.Diff reads.
func Records(state *store.State) diff.Records {
	return diff.RecordsOf(state.Nodes, state.Subnets, state.Prewarms)
}

// EC2View is the simulator's snapshot as the EC2 gateway would report it.
func EC2View(snap ec2sim.State) diff.EC2 {
	view := diff.EC2{Instances: []ec2gw.Instance{}}
	for _, e := range snap.ENIs {
		g := ec2gw.ENI{ID: e.ID, SubnetID: e.SubnetID, VPCID: e.VPCID, AvailabilityZone: e.AvailabilityZone, MAC: e.MAC,
			Description: e.Description, Status: e.Status, Tags: e.Tags}
		g.PrimaryIP, _ = netip.ParseAddr(e.PrimaryIP)
		for _, s := range e.SecondaryIPs {
			if a, err := netip.ParseAddr(s); err == nil {
				g.SecondaryIPs = append(g.SecondaryIPs, a)
			}
		}
		for _, s := range e.Prefixes {
			if p, err := netip.ParsePrefix(s); err == nil {
				g.Prefixes = append(g.Prefixes, p)
			}
		}
		if a := e.Attachment; a != nil {
			g.Attachment = &ec2gw.Attachment{ID: a.ID, InstanceID: a.InstanceID, Status: a.Status, DeviceIndex: a.DeviceIndex,
				NetworkCardIndex: a.NetworkCardIndex, DeleteOnTermination: a.DeleteOnTermination}
		}
		view.ENIs = append(view.ENIs, g)
	}
	for _, in := range snap.Instances {
		g := ec2gw.Instance{ID: in.ID, Type: in.InstanceType, AvailabilityZone: in.AvailabilityZone, SubnetID: in.SubnetID,
			State: in.State, PrivateDNSName: in.PrivateDNSName, Tags: in.Tags}
		g.PrivateIP, _ = netip.ParseAddr(in.PrivateIP)
		view.Instances = append(view.Instances, g)
	}
	return view
}
