package harness

import (
	"context"
	"fmt"
	"slices"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/store"
)

// Consistent reports the first disagreement between EC2 (the simulator) and etcd for cluster:
// an address on two ENIs, an address leased twice, a lease EC2 does not have on the leased ENI
// (RELEASING ones excepted: they are on their way out), an address on a managed ENI that is
// not leased, or an ENI tagged for the cluster that no node owns.
func Consistent(ctx context.Context, sim *ec2sim.Sim, st *store.Store, cluster string) error {
	snap := sim.Snapshot()
	state, err := st.Load(ctx)
	if err != nil {
		return fmt.Errorf("load etcd: %w", err)
	}
	return consistent(snap, state, cluster)
}

func consistent(snap ec2sim.State, state *store.State, cluster string) error {
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
				if onENI[ip] != e.ID && ad.State != ledger.LeaseReleasing {
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

// BudgetsAddUp checks every subnet's totals: size = reserved + foreign + held + prewarm + free
// and held = eni_primary + in_use + idle.
func BudgetsAddUp(ctx context.Context, admin ipledgerv1.AdminServiceClient) error {
	resp, err := admin.ListSubnets(ctx, &ipledgerv1.ListSubnetsRequest{})
	if err != nil {
		return fmt.Errorf("ListSubnets: %w", err)
	}
	for _, b := range resp.GetSubnets() {
		if b.Size != b.Reserved+b.Foreign+b.Held+b.PrewarmReserved+b.Free || b.Held != b.EniPrimary+b.InUse+b.Idle {
			return fmt.Errorf("budget of %s does not add up: %+v", b.SubnetId, b)
		}
	}
	return nil
}

// LeasedTo returns the addresses etcd leases to a node (every state), sorted.
func LeasedTo(ctx context.Context, st *store.Store, node string) ([]string, error) {
	state, err := st.Load(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range state.Nodes[node].ENIs {
		for _, ad := range e.Addresses {
			out = append(out, ad.IP.String())
		}
	}
	slices.Sort(out)
	return out, nil
}

// PoolAddresses lists a pool's addresses in a lease state (every state when state is 0), and
// the ENI each is on.
func PoolAddresses(p *ipledgerv1.NodePool, state ipledgerv1.LeaseState) map[string]*ipledgerv1.NetworkInterface {
	out := map[string]*ipledgerv1.NetworkInterface{}
	for _, ni := range p.GetInterfaces() {
		for _, ad := range ni.GetAddresses() {
			if state == 0 || ad.GetState() == state {
				out[ad.GetIp()] = ni
			}
		}
	}
	return out
}
