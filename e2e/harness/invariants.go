package harness

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/servertest"
	"github.com/ipledger/ipledger/server/store"
)

// ErrTwice marks a violation that must never happen, not even for a moment: an address on two
// ENIs in EC2, an address or prefix leased twice in etcd, an address used by two pods. Other
// violations (a lease EC2 does not have yet, an ENI not yet deleted) may be transient while the
// leader works or reconciles; these may not.
var ErrTwice = errors.New("harness: an address has two owners")

// Invariants compares EC2 (the simulator) with etcd for cluster with the allocator's own
// comparison (diff.Diff, through servertest.Diff) and returns every difference it finds
// (joined), or nil:
//
//   - EC2 has no address on two ENIs (addresses inside assigned prefixes included);
//   - etcd leases no address or prefix twice, no leased address lies in a leased prefix, and no
//     address of a node's ENI (primary, leased, in a leased prefix) is also among its subnet's
//     foreign addresses;
//   - every lease that is not RELEASING is on EC2, on the ENI etcd names, and that ENI is
//     attached to the node's instance;
//   - every secondary address and prefix EC2 has on an ENI a node owns is leased in etcd (no
//     leaked address);
//   - every ENI tagged for the cluster is owned by a node or a pre-warm reservation (no leaked
//     ENI);
//   - no node is registered whose instance is terminated or unknown to EC2.
//
// A difference that gives an address two owners wraps ErrTwice; the others may be transient
// while the leader works or reconciles.
func Invariants(ctx context.Context, sim *ec2sim.Sim, st *store.Store, cluster string) error {
	snap := sim.Snapshot()
	state, err := st.Load(ctx)
	if err != nil {
		return fmt.Errorf("load etcd: %w", err)
	}
	return invariants(snap, state, cluster)
}

func invariants(snap ec2sim.State, state *store.State, cluster string) error {
	var errs []error
	for _, f := range servertest.Diff(snap, state, cluster, true) {
		switch {
		case f.Kind == diff.LeasedNotOnEC2 && f.State == ledger.LeaseReleasing:
			// on its way out
		case f.Twice():
			errs = append(errs, fmt.Errorf("%w: %s", ErrTwice, f))
		default:
			errs = append(errs, errors.New(f.String()))
		}
	}
	return errors.Join(errs...)
}

// PodsLeased checks what the agents hand out against etcd and EC2: no address is used by two
// pods (on one node or on two), and every address a pod uses is leased in etcd to the pod's
// node and is on EC2 on that node's ENI. views maps node names to their agents' pool views.
func PodsLeased(ctx context.Context, sim *ec2sim.Sim, st *store.Store, views map[string]agent.PoolView) error {
	state, err := st.Load(ctx)
	if err != nil {
		return fmt.Errorf("load etcd: %w", err)
	}
	snap := sim.Snapshot()
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	user := map[string]string{}
	for _, node := range sortedNames(views) {
		rec, ok := state.Nodes[node]
		if !ok {
			if len(views[node].Pods) > 0 {
				bad("node %s: %d pods in use but etcd has no such node", node, len(views[node].Pods))
			}
			continue
		}
		for _, p := range views[node].Pods {
			who := node + "/" + p.ContainerID
			if other, ok := user[p.IP]; ok {
				bad("%w: %s is used by %s and %s", ErrTwice, p.IP, other, who)
			}
			user[p.IP] = who
			a, err := netip.ParseAddr(p.IP)
			if err != nil {
				bad("%s: bad address %q", who, p.IP)
				continue
			}
			eni, leased := leasedENI(rec, a)
			if !leased {
				bad("%s uses %s, which etcd does not lease to %s", who, a, node)
				continue
			}
			if !ec2Holds(snap, eni, a) {
				bad("%s uses %s, leased on %s, which EC2 does not have there", who, a, eni)
			}
		}
	}
	return errors.Join(errs...)
}

func leasedENI(rec ledger.NodeRecord, a netip.Addr) (string, bool) {
	for _, e := range rec.ENIs {
		for _, ad := range e.Addresses {
			if ad.IP == a {
				return e.ID, true
			}
		}
		for _, p := range e.Prefixes {
			if p.Prefix.Contains(a) {
				return e.ID, true
			}
		}
	}
	return "", false
}

func ec2Holds(snap ec2sim.State, eni string, a netip.Addr) bool {
	e, ok := snap.ENI(eni)
	if !ok {
		return false
	}
	if containsString(e.SecondaryIPs, a.String()) {
		return true
	}
	for _, s := range e.Prefixes {
		if p, err := netip.ParsePrefix(s); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
