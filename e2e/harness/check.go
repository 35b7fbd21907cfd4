package harness

import (
	"context"
	"fmt"
	"slices"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/store"
)

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
