package harness

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/store"
)

// ErrTwice marks a violation that must never happen, not even for a moment: an address on two
// ENIs in EC2, an address or prefix leased twice in etcd, an address used by two pods. Other
// violations (a lease EC2 does not have yet, an ENI not yet deleted) may be transient while the
// leader works or reconciles; these may not.
var ErrTwice = errors.New("harness: an address has two owners")

// Invariants compares EC2 (the simulator) with etcd for cluster and returns every violation of
// ipledger's invariants it finds (joined), or nil:
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
// It is stricter than servertest.ConsistentMidRelease (prefixes, attachments, terminated instances) and reports all
// problems at once.
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
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	enis := map[string]ec2sim.ENIInfo{}
	onENI := map[netip.Addr]string{}
	claim := func(a netip.Addr, eni string) {
		if other, ok := onENI[a]; ok && other != eni {
			bad("%w: EC2 has %s on %s and %s", ErrTwice, a, other, eni)
		}
		onENI[a] = eni
	}
	for _, e := range snap.ENIs {
		enis[e.ID] = e
		for _, s := range append([]string{e.PrimaryIP}, e.SecondaryIPs...) {
			if a, err := netip.ParseAddr(s); err == nil {
				claim(a, e.ID)
			}
		}
		for _, s := range e.Prefixes {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				bad("EC2 ENI %s has a bad prefix %q", e.ID, s)
				continue
			}
			for a := p.Addr(); p.Contains(a); a = a.Next() {
				claim(a, e.ID)
			}
		}
	}
	instances := map[string]ec2sim.InstanceInfo{}
	for _, in := range snap.Instances {
		instances[in.ID] = in
	}

	owned := map[string]string{}    // ENI -> node
	reserved := map[string]string{} // ENI -> pre-warm reservation
	leasedAddr := map[netip.Addr]string{}
	leasedPfx := map[netip.Prefix]string{}
	for _, name := range sortedNames(state.Nodes) {
		n := state.Nodes[name]
		switch in, ok := instances[n.InstanceID]; {
		case !ok:
			bad("node %s: instance %s is unknown to EC2", name, n.InstanceID)
		case in.State != "running":
			bad("node %s: instance %s is %s", name, n.InstanceID, in.State)
		}
		for _, e := range n.ENIs {
			owned[e.ID] = name
			ec2e, onEC2 := enis[e.ID]
			switch {
			case !onEC2:
				bad("node %s: ENI %s is not on EC2", name, e.ID)
			case ec2e.Attachment == nil || ec2e.Attachment.InstanceID != n.InstanceID:
				bad("node %s: ENI %s is not attached to %s on EC2 (%+v)", name, e.ID, n.InstanceID, ec2e.Attachment)
			}
			for _, ad := range e.Addresses {
				if other, ok := leasedAddr[ad.IP]; ok {
					bad("%w: etcd leases %s to %s and %s", ErrTwice, ad.IP, other, name)
				}
				leasedAddr[ad.IP] = name
				if ad.State != ledger.LeaseReleasing && onENI[ad.IP] != e.ID {
					bad("etcd leases %s (%s) on %s to %s, EC2 has it on %q", ad.IP, ad.State, e.ID, name, onENI[ad.IP])
				}
			}
			for _, p := range e.Prefixes {
				if other, ok := leasedPfx[p.Prefix]; ok {
					bad("%w: etcd leases %s to %s and %s", ErrTwice, p.Prefix, other, name)
				}
				leasedPfx[p.Prefix] = name
				if p.State != ledger.LeaseReleasing && (!onEC2 || !containsString(ec2e.Prefixes, p.Prefix.String())) {
					bad("etcd leases %s (%s) on %s to %s, EC2 does not have it there", p.Prefix, p.State, e.ID, name)
				}
			}
		}
	}
	// A subnet's foreign addresses (from the last EC2 scan) belong to nobody in the cluster.
	for _, name := range sortedNames(state.Nodes) {
		for _, e := range state.Nodes[name].ENIs {
			sn, ok := state.Subnets[e.SubnetID]
			if !ok {
				bad("node %s: ENI %s is in subnet %s, which etcd does not know", name, e.ID, e.SubnetID)
				continue
			}
			mine := []netip.Addr{e.PrimaryIP}
			for _, ad := range e.Addresses {
				mine = append(mine, ad.IP)
			}
			for _, p := range e.Prefixes {
				for a := p.Prefix.Masked().Addr(); p.Prefix.Contains(a); a = a.Next() {
					mine = append(mine, a)
				}
			}
			for _, a := range mine {
				for _, r := range sn.Foreign {
					if r.First.Compare(a) <= 0 && a.Compare(r.Last) <= 0 {
						bad("%w: etcd counts %s as foreign in %s (range %s-%s) and gives it to node %s on %s", ErrTwice, a, e.SubnetID, r.First, r.Last, name, e.ID)
					}
				}
			}
		}
	}
	for a, node := range leasedAddr {
		for p, pnode := range leasedPfx {
			if p.Contains(a) {
				bad("%w: etcd leases %s to %s and the prefix %s holding it to %s", ErrTwice, a, node, p, pnode)
			}
		}
	}
	for _, id := range sortedNames(state.Prewarms) {
		for _, e := range state.Prewarms[id].ENIs {
			if e.ID != "" {
				reserved[e.ID] = id
			}
		}
	}
	for _, e := range snap.ENIs {
		owner, ok := owned[e.ID]
		_, isReserved := reserved[e.ID]
		if e.Tags[allocator.TagCluster] == cluster && !ok && !isReserved {
			bad("ENI %s (%s, node tag %q) is tagged for cluster %s but nobody owns it", e.ID, e.Status, e.Tags[allocator.TagNode], cluster)
		}
		if !ok {
			continue // not a node's (a reservation's ENI holds what its record lists)
		}
		for _, s := range e.SecondaryIPs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			if _, ok := leasedAddr[a]; !ok {
				bad("EC2 has %s on %s (node %s), etcd leases it to nobody", a, e.ID, owner)
			}
		}
		for _, s := range e.Prefixes {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				continue
			}
			if _, ok := leasedPfx[p]; !ok {
				bad("EC2 has prefix %s on %s (node %s), etcd leases it to nobody", p, e.ID, owner)
			}
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
