package allocator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

// scanForeign lists a subnet's ENIs and returns the addresses used by ENIs that no registered
// node or pre-warm reservation owns and that do not carry this cluster's tag.
func (a *Allocator) scanForeign(ctx context.Context, prio ec2gw.Priority, subnet string) ([]ledger.AddrRange, error) {
	enis, err := a.gw.DescribeNetworkInterfaces(ctx, prio, ec2gw.ENIFilter{SubnetID: subnet})
	if err != nil {
		return nil, ec2Err(err, subnet)
	}
	return toRanges(a.foreignOf(enis)), nil
}

// foreignOf collects the addresses the ledger must not place: those of ENIs no node or
// reservation owns. That includes ENIs tagged for this cluster that nobody owns yet (a crashed
// leader's work): they stay occupied until reconciliation adopts or deletes them.
//
// On a node's own ENIs, addresses EC2 has but the lease lacks (assigned by a leader that crashed
// before committing) are occupied too, unless they are pending for that node (an assignment in
// flight): reconciliation adopts them into the node's lease.
func (a *Allocator) foreignOf(enis []ec2gw.ENI) map[netip.Addr]bool {
	owned := a.ownedENIs()
	set := map[netip.Addr]bool{}
	for _, e := range enis {
		if o, ok := owned[e.ID]; ok {
			if o.node != "" {
				a.unleasedOn(set, o, e)
			}
			continue
		}
		if e.Attachment != nil {
			if rec, ok := a.led.NodeByInstance(e.Attachment.InstanceID); ok && e.ID == rec.PrimaryENI {
				continue
			}
		}
		// An ENI being adopted into a node's record has its addresses pending for that node
		// until the adoption's commit: they are not foreign (counting them so would race the
		// adoption and leave etcd holding them as both foreign and leased).
		onENI := map[netip.Addr]bool{}
		addENIAddrs(onENI, e)
		for ip := range onENI {
			if own, taken := a.led.OwnerOf(ip); taken && own.Kind == ledger.OwnerPending && own.Node != "" {
				continue
			}
			set[ip] = true
		}
	}
	return set
}

// unleasedOn adds to set the addresses EC2 has on a node's ENI that its lease lacks.
func (a *Allocator) unleasedOn(set map[netip.Addr]bool, o eniOwner, e ec2gw.ENI) {
	leased := map[netip.Addr]bool{o.rec.PrimaryIP: true}
	for _, ad := range o.rec.Addresses {
		leased[ad.IP] = true
	}
	for _, p := range o.rec.Prefixes {
		for ip := p.Prefix.Masked().Addr(); p.Prefix.Contains(ip); ip = ip.Next() {
			leased[ip] = true
		}
	}
	onEC2 := map[netip.Addr]bool{}
	addENIAddrs(onEC2, e)
	for ip := range onEC2 {
		if leased[ip] {
			continue
		}
		if own, taken := a.led.OwnerOf(ip); taken && own.Kind == ledger.OwnerPending && own.Node == o.node {
			continue
		}
		set[ip] = true
	}
}

// claim reserves for owner.Node the given addresses and prefixes that are free in the ledger.
// Those the ledger counts as foreign are left for the node's record to take over (a node's
// record wins over a foreign scan), and those pending for the same node are its already; an
// address anybody else holds is an error. It returns what undoes the reservation.
func (a *Allocator) claim(subnet string, owner ledger.Owner, addrs []netip.Addr, prefixes []netip.Prefix) (func(), error) {
	var freeA []netip.Addr
	var freeP []netip.Prefix
	check := func(ip netip.Addr) (free bool, err error) {
		o, taken := a.led.OwnerOf(ip)
		switch {
		case !taken:
			return true, nil
		case o.Kind == ledger.OwnerForeign && !o.Marked, o.Node == owner.Node && (o.Kind == ledger.OwnerPending || o.Kind == ledger.OwnerLeased || o.Kind == ledger.OwnerENIPrimary):
			return false, nil
		default:
			return false, fmt.Errorf("allocator: %s is held by %s %s%s in the ledger", ip, o.Kind, o.Node, o.Prewarm)
		}
	}
	for _, ip := range addrs {
		free, err := check(ip)
		if err != nil {
			return nil, err
		}
		if free {
			freeA = append(freeA, ip)
		}
	}
	for _, p := range prefixes {
		free, err := check(p.Addr())
		if err != nil {
			return nil, err
		}
		if free {
			freeP = append(freeP, p)
		}
	}
	if err := a.led.ReserveSpecific(subnet, freeA, freeP, owner); err != nil {
		return nil, err
	}
	return func() { a.led.CancelReservation(subnet, owner, freeA, freeP) }, nil
}

func addENIAddrs(set map[netip.Addr]bool, e ec2gw.ENI) {
	if e.PrimaryIP.IsValid() {
		set[e.PrimaryIP] = true
	}
	for _, ip := range e.SecondaryIPs {
		set[ip] = true
	}
	for _, p := range e.Prefixes {
		for ip := p.Masked().Addr(); p.Contains(ip); ip = ip.Next() {
			set[ip] = true
		}
	}
}

// eniOwner says who owns an ENI in the ledger.
type eniOwner struct {
	node    string
	prewarm string
	rec     ledger.ENIRecord
}

func (a *Allocator) ownedENIs() map[string]eniOwner {
	out := map[string]eniOwner{}
	for _, n := range a.led.Nodes() {
		for _, e := range n.ENIs {
			out[e.ID] = eniOwner{node: n.Name, rec: e}
		}
	}
	for _, p := range a.led.Prewarms() {
		for _, e := range p.ENIs {
			if e.ID != "" {
				out[e.ID] = eniOwner{prewarm: p.ID}
			}
		}
	}
	return out
}

// rescanSubnet learns the subnet's foreign addresses again and commits them.
func (a *Allocator) rescanSubnet(ctx context.Context, prio ec2gw.Priority, subnet string) error {
	enis, err := a.gw.DescribeNetworkInterfaces(ctx, prio, ec2gw.ENIFilter{SubnetID: subnet})
	if err != nil {
		return ec2Err(err, subnet)
	}
	return a.updateForeign(ctx, subnet, enis)
}

// updateForeign records the foreign addresses of a subnet from a scan of its ENIs. The set is
// worked out here, under the subnet's commit slot (which registration holds too), from who owns
// what now: a node that registered after the scan was taken must not have its addresses
// written back as foreign.
func (a *Allocator) updateForeign(ctx context.Context, subnet string, scanned []ec2gw.ENI) error {
	release, err := a.slots.acquire(ctx, subnetKey(subnet))
	if err != nil {
		return err
	}
	defer release()
	rec, ok := a.led.Subnet(subnet)
	if !ok {
		return fmt.Errorf("%w: subnet %s", ErrNotFound, subnet)
	}
	ranges := toRanges(a.foreignOf(scanned))
	if equalRanges(rec.Foreign, ranges) {
		return nil
	}
	rec.Foreign = ranges
	rec.ForeignScannedAt = a.now()
	if _, err := a.commit(ctx, PutSubnet(rec)); err != nil {
		return err
	}
	return a.led.PutSubnet(rec)
}

// mutateNodeUnforeign is mutateNode for a change that gives the node addresses the ledger may
// count as foreign: those leave the subnet's foreign set in the same transaction.
//
// The common case, none of them foreign, writes only the node's record and holds the subnet's
// slot shared (as registrations do): the subnet's foreign set cannot change meanwhile, and the
// leases of one subnet's nodes commit concurrently instead of one at a time. Only when some
// address is foreign is the subnet's slot taken exclusively to rewrite its record.
func (a *Allocator) mutateNodeUnforeign(ctx context.Context, ns *nodeState, subnet string, addrs map[netip.Addr]bool, fn func(*ledger.NodeRecord) error) error {
	if subnet == "" {
		_, err := a.mutateNode(ctx, ns, fn)
		return err
	}
	_, err := a.updateNodeShared(ctx, ns, nil, []string{subnetKey(subnet)}, func(r *ledger.NodeRecord) ([]Change, func() error, error) {
		for ip := range addrs {
			if o, taken := a.led.OwnerOf(ip); taken && (o.Kind == ledger.OwnerForeign || o.Foreign) {
				return nil, nil, errForeignInLease
			}
		}
		return nil, nil, fn(r)
	})
	if !errors.Is(err, errForeignInLease) {
		return err
	}
	_, err = a.updateNode(ctx, ns, []string{subnetKey(subnet)}, func(r *ledger.NodeRecord) ([]Change, func() error, error) {
		if err := fn(r); err != nil {
			return nil, nil, err
		}
		foreign := map[netip.Addr]bool{}
		for ip := range addrs {
			if o, taken := a.led.OwnerOf(ip); taken && (o.Kind == ledger.OwnerForeign || o.Foreign) {
				foreign[ip] = true
			}
		}
		if len(foreign) == 0 {
			return nil, nil, nil
		}
		rec, ok := a.led.Subnet(subnet)
		if !ok {
			return nil, nil, fmt.Errorf("%w: subnet %s", ErrNotFound, subnet)
		}
		reduced := rec
		reduced.Foreign = subtractRanges(rec.Foreign, foreign)
		return []Change{PutSubnet(reduced)}, func() error { return a.led.PutSubnet(reduced) }, nil
	})
	return err
}

// errForeignInLease: a lease names an address the subnet's record counts as foreign, so the
// subnet's record must be written too (mutateNodeUnforeign takes its slot exclusively).
var errForeignInLease = errors.New("allocator: lease names a foreign address")

func equalRanges(x, y []ledger.AddrRange) bool {
	if len(x) != len(y) {
		return false
	}
	for i := range x {
		if x[i] != y[i] {
			return false
		}
	}
	return true
}

// drift is one difference between the ledger and EC2, with what repairs it (none: it is only
// reported).
type drift struct {
	finding *diff.Finding // nil for a subnet's foreign addresses that changed (not reported)
	key     string
	// immediate repairs need no grace period (e.g. finishing a release EC2 already did).
	immediate bool
	// recheck: no repair now, but the reconcile loop comes back one grace later to look again.
	recheck bool
	repair  func(ctx context.Context) error
}

func (d drift) logAttrs() []any {
	if d.finding == nil {
		return []any{"kind", "foreign", "key", d.key}
	}
	f := d.finding
	return []any{"kind", f.Kind.String(), "node", f.Node, "eni", f.ENI, "address", f.Address, "detail", f.Detail}
}

// reconcileLoop runs reconcileAll at once, then every ReconcileInterval, and sooner when a
// difference with a repair is waiting out its drift grace: a crashed leader's half-done work
// (an address assigned on EC2 but never committed) is adopted one grace after the takeover,
// not one whole interval later.
func (a *Allocator) reconcileLoop(ctx context.Context) {
	for {
		next := a.cfg.ReconcileInterval
		var pending bool
		err := a.pass(ctx, func(ctx context.Context) (err error) {
			a.discoverPodSubnets(ctx)
			pending, err = a.reconcileAll(ctx)
			return err
		})
		if err != nil && ctx.Err() == nil {
			a.log.Warn("loop failed", "loop", "reconcile", "err", err)
		}
		if pending && a.cfg.DriftGrace < next {
			// A little over the grace, so the difference has surely persisted for it.
			next = a.cfg.DriftGrace + a.cfg.DriftGrace/10 + 10*time.Millisecond
		}
		t := a.clk.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.Chan():
		}
	}
}

// reconcileAll compares every subnet the cluster uses, and every ENI tagged for the cluster,
// with EC2, and repairs differences that persisted for the drift grace. pending says whether a
// difference with a repair is still waiting out its grace.
func (a *Allocator) reconcileAll(ctx context.Context) (pending bool, err error) {
	return a.reconcileWithin(ctx, a.cfg.DriftGrace)
}

// reconcileWithin is reconcileAll with a drift grace of its own (0: repair every difference
// now, as a leader does before it serves a restored or rebuilt store).
func (a *Allocator) reconcileWithin(ctx context.Context, grace time.Duration) (pending bool, err error) {
	drifts, err := a.collectDrift(ctx, ec2gw.PriorityReconcile)
	if err != nil {
		return false, err
	}
	now := a.now()
	seen := map[string]bool{}
	a.mu.Lock()
	for _, d := range drifts {
		seen[d.key] = true
		if _, ok := a.drift[d.key]; !ok {
			a.drift[d.key] = now
		}
	}
	for k := range a.drift {
		if !seen[k] {
			delete(a.drift, k)
		}
	}
	a.mu.Unlock()
	for _, d := range drifts {
		if d.recheck {
			pending = true
		}
		if d.repair == nil {
			continue
		}
		a.mu.Lock()
		first := a.drift[d.key]
		a.mu.Unlock()
		if !d.immediate && now.Sub(first) < grace {
			pending = true
			continue
		}
		if err := d.repair(ctx); err != nil {
			a.log.Warn("repair failed", append(d.logAttrs(), "err", err)...)
			pending = true // tried again one grace later
			continue
		}
		a.log.Info("repaired drift", d.logAttrs()...)
		kind := "foreign"
		if d.finding != nil {
			kind = d.finding.Kind.String()
		}
		a.met.repairs.WithLabelValues(kind).Inc()
		a.mu.Lock()
		delete(a.drift, d.key)
		a.mu.Unlock()
	}
	return pending, nil
}

// scanEC2 reads what EC2 has for the cluster: every ENI of every subnet the ledger knows and
// every ENI tagged for the cluster elsewhere, and the subnets' scans (for their foreign sets).
func (a *Allocator) scanEC2(ctx context.Context, prio ec2gw.Priority) (all []ec2gw.ENI, bySubnet map[string][]ec2gw.ENI, err error) {
	seen := map[string]bool{}
	bySubnet = map[string][]ec2gw.ENI{}
	for _, s := range a.led.Subnets() {
		enis, err := a.gw.DescribeNetworkInterfaces(ctx, prio, ec2gw.ENIFilter{SubnetID: s.ID})
		if err != nil {
			return nil, nil, ec2Err(err, s.ID)
		}
		bySubnet[s.ID] = enis
		for _, e := range enis {
			seen[e.ID] = true
			all = append(all, e)
		}
	}
	tagged, err := a.gw.DescribeNetworkInterfaces(ctx, prio, ec2gw.ENIFilter{Tags: map[string]string{TagCluster: a.cfg.ClusterName}})
	if err != nil {
		return nil, nil, ec2Err(err, "")
	}
	for _, e := range tagged {
		if !seen[e.ID] {
			all = append(all, e)
		}
	}
	return all, bySubnet, nil
}

// records is the ledger's view for diff.Diff.
func (a *Allocator) records() diff.Records {
	return diff.Records{Nodes: a.led.Nodes(), Subnets: a.led.Subnets(), Prewarms: a.led.Prewarms()}
}

// collectDrift reads EC2, compares it with the ledger (diff.Diff) and gives every difference its
// repair.
func (a *Allocator) collectDrift(ctx context.Context, prio ec2gw.Priority) ([]drift, error) {
	all, bySubnet, err := a.scanEC2(ctx, prio)
	if err != nil {
		return nil, err
	}
	var out []drift
	for _, s := range a.led.Subnets() {
		sid, scanned := s.ID, bySubnet[s.ID]
		if !equalRanges(s.Foreign, toRanges(a.foreignOf(scanned))) {
			out = append(out, drift{key: "foreign|" + sid, immediate: true,
				repair: func(ctx context.Context) error { return a.updateForeign(ctx, sid, scanned) }})
		}
	}
	byID := make(map[string]ec2gw.ENI, len(all))
	for _, e := range all {
		byID[e.ID] = e
	}
	for _, f := range diff.Diff(a.cfg.ClusterName, a.records(), diff.EC2{ENIs: all}) {
		if d, ok := a.repairOf(f, byID); ok {
			out = append(out, d)
		}
	}
	// A release EC2 has not done yet is the release lane's: wake it.
	for _, n := range a.led.Nodes() {
		if hasReleasing(n) {
			if ns, ok := a.node(n.Name); ok {
				a.kick(ns.name)
			}
		}
	}
	return out, nil
}

// repairOf is the drift of one finding: what repairs it, if anything does (false: the
// finding is not a difference, such as an assignment of this leader in flight).
func (a *Allocator) repairOf(f diff.Finding, enis map[string]ec2gw.ENI) (drift, bool) {
	d := drift{finding: &f, key: f.Key()}
	node, eni, item := f.Node, f.ENI, f.Address
	switch f.Kind {
	case diff.LeasedNotOnEC2:
		if f.State == ledger.LeaseReleasing {
			d.immediate = true
			d.repair = func(ctx context.Context) error { return a.dropItems(ctx, node, eni, f.Subnet, []string{item}, true) }
			break
		}
		if a.itemInUse(node, item) {
			f.Detail += "; a pod uses it, so it is assigned again"
			d.repair = func(ctx context.Context) error { return a.reassign(ctx, eni, item) }
		} else {
			d.repair = func(ctx context.Context) error { return a.dropItems(ctx, node, eni, f.Subnet, []string{item}, false) }
		}
	case diff.OnEC2NotLeased:
		if o, ok := a.led.OwnerOf(itemAddr(item)); ok && o.Kind == ledger.OwnerPending && o.Node == node {
			// An assignment of this leader is in flight; look again one grace later, when it
			// has landed or failed (an orphan of a dead leader it placed again). Not a finding
			// of Check: an assignment in flight is no inconsistency.
			return drift{key: "ec2pending|" + eni + "|" + item, recheck: true}, true
		}
		f.Detail += "; adopted into the node's pool"
		d.repair = func(ctx context.Context) error { return a.adopt(ctx, node, eni, item) }
	case diff.ENIAttachment:
		// A managed ENI EC2 has detached and nobody leases anything on (a delete that stopped
		// half-way, or a leader that died during it): finish the delete.
		if e := enis[eni]; e.Attachment == nil {
			if rec, ok := a.led.Node(node); ok {
				for _, er := range rec.ENIs {
					if er.ID == eni && er.Managed && usedSlots(er) == 0 {
						f.Detail += "; deleted"
						d.repair = func(ctx context.Context) error {
							ns, ok := a.node(node)
							if !ok {
								return fmt.Errorf("%w: %s", ErrUnknownNode, node)
							}
							return a.deleteENI(ctx, ns, er)
						}
					}
				}
			}
		}
	case diff.ENIMissing:
		if rec, ok := a.led.Node(node); ok {
			for _, er := range rec.ENIs {
				if er.ID == eni && er.Managed && !a.eniInUse(node, er) {
					d.repair = func(ctx context.Context) error { return a.dropENI(ctx, node, eni) }
				}
			}
		}
	case diff.LeakedENI:
		e := enis[eni]
		if e.Attachment != nil {
			if rec, ok := a.led.NodeByInstance(e.Attachment.InstanceID); ok {
				f.Detail = "attached to node " + rec.Name + " but not leased; adopted"
				f.Node = rec.Name
				name := rec.Name
				d.repair = func(ctx context.Context) error { return a.adoptENI(ctx, name, e) }
				break
			}
		}
		d.repair = func(ctx context.Context) error { return a.deleteLeaked(ctx, e) }
	case diff.ReservedENIAttached:
		// An attach of a pre-warmed ENI whose commit was lost (or a leader that died after the
		// attach): the node it is attached to gets it, as attachPrewarmed would have done.
		e := enis[eni]
		if rec, ok := a.led.NodeByInstance(e.Attachment.InstanceID); ok {
			f.Node = rec.Name
			f.Detail += "; adopted into node " + rec.Name
			name, pw := rec.Name, f.Other
			d.repair = func(ctx context.Context) error { return a.adoptPrewarmed(ctx, name, pw, e) }
		}
	}
	return d, true
}

func hasReleasing(rec ledger.NodeRecord) bool {
	for _, e := range rec.ENIs {
		for _, ad := range e.Addresses {
			if ad.State == ledger.LeaseReleasing {
				return true
			}
		}
		for _, p := range e.Prefixes {
			if p.State == ledger.LeaseReleasing {
				return true
			}
		}
	}
	return false
}

// eniInUse reports whether pods of the node use addresses of the ENI.
func (a *Allocator) eniInUse(node string, e ledger.ENIRecord) bool {
	for _, ad := range e.Addresses {
		if a.itemInUse(node, ad.IP.String()) {
			return true
		}
	}
	for _, p := range e.Prefixes {
		if a.itemInUse(node, p.Prefix.String()) {
			return true
		}
	}
	return false
}

// itemInUse reports whether a pod of the node uses the address, or an address of the prefix.
func (a *Allocator) itemInUse(node, item string) bool {
	p, err := netip.ParsePrefix(item)
	if err != nil {
		ip, err := netip.ParseAddr(item)
		if err != nil {
			return false
		}
		p = netip.PrefixFrom(ip, 32)
	}
	for _, ip := range a.led.Usage(node) {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

func itemAddr(item string) netip.Addr {
	if p, err := netip.ParsePrefix(item); err == nil {
		return p.Addr()
	}
	ip, _ := netip.ParseAddr(item)
	return ip
}

// errKeptLeak: a leaked ENI is attached to a running instance and is not deleted.
var errKeptLeak = errors.New("allocator: leaked ENI kept")

func (a *Allocator) deleteLeaked(ctx context.Context, e ec2gw.ENI) error {
	if e.Tags[TagPrewarm] != "" {
		if _, ok := a.led.Prewarm(e.Tags[TagPrewarm]); ok {
			return nil // the reservation may still record it; the pre-warm loop decides
		}
	}
	if e.Attachment != nil && e.Attachment.ID != "" {
		// Attached to an instance that still runs: its pods may use the addresses (after etcd
		// was lost or restored, the node has not registered again yet). Kept, and reported by
		// Check, until its agent registers (registration adopts it) or the instance ends.
		gone, err := a.instanceGone(ctx, e.Attachment.InstanceID, ec2gw.PriorityRelease)
		if err != nil {
			return err
		}
		if !gone {
			return fmt.Errorf("%w: %s is attached to %s, which runs: kept until its node registers or the instance ends", errKeptLeak, e.ID, e.Attachment.InstanceID)
		}
		if err := a.gw.DetachENI(ctx, ec2gw.PriorityRelease, e.Attachment.ID, true); err != nil && !errors.Is(err, ec2gw.ErrNotFound) {
			return err
		}
	}
	err := a.gw.DeleteENI(ctx, ec2gw.PriorityRelease, e.ID)
	if err != nil && !errors.Is(err, ec2gw.ErrNotFound) {
		return err
	}
	a.met.leaseOp("delete-leaked-eni", nil)
	return nil
}

// adoptENI adds an ENI attached to a node's instance (created by a leader that crashed before
// committing it) to the node's record.
func (a *Allocator) adoptENI(ctx context.Context, node string, e ec2gw.ENI) error {
	ns, ok := a.node(node)
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	owner := ledger.Owner{Node: node, ENI: e.ID, IgnoreBudget: true}
	release, err := a.claim(e.SubnetID, owner, append([]netip.Addr{e.PrimaryIP}, e.SecondaryIPs...), e.Prefixes)
	if err != nil {
		return err
	}
	er := ledger.ENIRecord{ID: e.ID, MAC: e.MAC, SubnetID: e.SubnetID, PrimaryIP: e.PrimaryIP, DeviceIndex: e.Attachment.DeviceIndex,
		NetworkCardIndex: e.Attachment.NetworkCardIndex, AttachmentID: e.Attachment.ID, Managed: true, DeleteOnTermination: e.Attachment.DeleteOnTermination}
	for _, ip := range e.SecondaryIPs {
		er.Addresses = append(er.Addresses, ledger.LeasedAddress{IP: ip, State: ledger.LeaseActive})
	}
	for _, p := range e.Prefixes {
		er.Prefixes = append(er.Prefixes, ledger.LeasedPrefix{Prefix: p, State: ledger.LeaseActive})
	}
	mine := map[netip.Addr]bool{}
	addENIAddrs(mine, e)
	if err := a.mutateNodeUnforeign(ctx, ns, e.SubnetID, mine, func(r *ledger.NodeRecord) error {
		for _, x := range r.ENIs {
			if x.ID == e.ID || x.DeviceIndex == er.DeviceIndex {
				return fmt.Errorf("allocator: node %s already has ENI %s or device index %d", node, e.ID, er.DeviceIndex)
			}
		}
		r.ENIs = append(r.ENIs, er)
		return nil
	}); err != nil {
		release()
		return err
	}
	return nil
}

// adopt adds one address or prefix EC2 has on a node's ENI to its lease.
func (a *Allocator) adopt(ctx context.Context, node, eniID, item string) error {
	ns, ok := a.node(node)
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	rec, _ := a.led.Node(node)
	var subnet string
	for _, e := range rec.ENIs {
		if e.ID == eniID {
			subnet = e.SubnetID
		}
	}
	var addrs []netip.Addr
	var prefixes []netip.Prefix
	if p, err := netip.ParsePrefix(item); err == nil {
		prefixes = append(prefixes, p)
	} else if ip, err := netip.ParseAddr(item); err == nil {
		addrs = append(addrs, ip)
	} else {
		return fmt.Errorf("allocator: bad item %q", item)
	}
	release, err := a.claim(subnet, ledger.Owner{Node: node, ENI: eniID, IgnoreBudget: true}, addrs, prefixes)
	if err != nil {
		return err
	}
	if err := a.commitAssigned(ctx, ns, eniID, addrs, prefixes); err != nil {
		// EC2 has them: they stay reserved and the node's worker retries the commit.
		_ = release
		return err
	}
	a.met.leaseOp("adopt", nil)
	return nil
}

// dropItems removes leased items EC2 no longer has from a node's record.
func (a *Allocator) dropItems(ctx context.Context, node, eniID, subnet string, items []string, released bool) error {
	ns, ok := a.node(node)
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	gone := map[string]bool{}
	var addrs []netip.Addr
	var prefixes []netip.Prefix
	for _, it := range items {
		gone[it] = true
		if p, err := netip.ParsePrefix(it); err == nil {
			prefixes = append(prefixes, p)
		} else if ip, err := netip.ParseAddr(it); err == nil {
			addrs = append(addrs, ip)
		}
	}
	if _, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
		removeItems(r, eniID, gone)
		return nil
	}); err != nil {
		return err
	}
	a.led.Released(subnet, addrs, prefixes, a.now())
	a.met.leaseOp("drop", nil)
	return nil
}

// dropENI removes a managed ENI EC2 no longer has from a node's record.
func (a *Allocator) dropENI(ctx context.Context, node, eniID string) error {
	ns, ok := a.node(node)
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	_, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
		kept := r.ENIs[:0]
		for _, e := range r.ENIs {
			if e.ID != eniID {
				kept = append(kept, e)
			}
		}
		r.ENIs = kept
		return nil
	})
	return err
}

// reassign assigns a leased address (that a pod uses) to its ENI again after EC2 lost it.
func (a *Allocator) reassign(ctx context.Context, eniID, item string) error {
	if p, err := netip.ParsePrefix(item); err == nil {
		return a.gw.AssignPrefixes(ctx, ec2gw.PriorityPodWaiting, eniID, []netip.Prefix{p})
	}
	ip, err := netip.ParseAddr(item)
	if err != nil {
		return err
	}
	return a.gw.AssignAddresses(ctx, ec2gw.PriorityPodWaiting, eniID, []netip.Addr{ip})
}

// checkInstances removes nodes whose instances are terminated or unknown to EC2.
func (a *Allocator) checkInstances(ctx context.Context) error {
	nodes := a.led.Nodes()
	byInstance := map[string]string{}
	var ids []string
	for _, n := range nodes {
		byInstance[n.InstanceID] = n.Name
		ids = append(ids, n.InstanceID)
	}
	sort.Strings(ids)
	for start := 0; start < len(ids); start += 100 {
		batch := ids[start:min(start+100, len(ids))]
		insts, err := a.gw.DescribeInstances(ctx, ec2gw.PriorityReconcile, batch)
		if errors.Is(err, ec2gw.ErrNotFound) {
			// One unknown id fails the whole call: ask one by one.
			for _, id := range batch {
				gone, err := a.instanceGone(ctx, id, ec2gw.PriorityReconcile)
				if err != nil {
					return err
				}
				if gone {
					if err := a.removeNode(ctx, byInstance[id], "instance gone"); err != nil {
						return err
					}
				}
			}
			continue
		}
		if err != nil {
			return ec2Err(err, "")
		}
		found := map[string]bool{}
		for _, in := range insts {
			found[in.ID] = true
			if in.State == "terminated" || in.State == "shutting-down" {
				if err := a.removeNode(ctx, byInstance[in.ID], "instance "+in.State); err != nil {
					return err
				}
			}
		}
		for _, id := range batch {
			if !found[id] {
				if err := a.removeNode(ctx, byInstance[id], "instance unknown to EC2"); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// sweepLoop deletes ENIs left behind by removed nodes (those without DeleteOnTermination)
// each time a node is removed.
func (a *Allocator) sweepLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.sweep:
		}
		if err := a.pass(ctx, a.sweepOnce); err != nil && ctx.Err() == nil {
			a.log.Warn("sweep for leftover ENIs failed", "err", err)
		}
	}
}

// sweepOnce deletes the detached ENIs tagged for the cluster whose node is not registered.
func (a *Allocator) sweepOnce(ctx context.Context) error {
	enis, err := a.gw.DescribeNetworkInterfaces(ctx, ec2gw.PriorityRelease, ec2gw.ENIFilter{
		Tags: map[string]string{TagCluster: a.cfg.ClusterName}, Status: "available",
	})
	if err != nil {
		return ec2Err(err, "")
	}
	owned := a.ownedENIs()
	for _, e := range enis {
		node := e.Tags[TagNode]
		if _, ok := owned[e.ID]; ok || node == "" || e.Tags[TagPrewarm] != "" {
			continue
		}
		if _, ok := a.led.Node(node); ok {
			continue // a registered node's ENI that is merely detached: reconciliation decides
		}
		if err := a.deleteLeaked(ctx, e); err != nil {
			a.log.Warn("delete leftover ENI", "eni", e.ID, "node", node, "err", err)
		} else {
			a.log.Info("deleted ENI left by a removed node", "eni", e.ID, "node", node)
		}
	}
	return nil
}

// Check compares the ledger, the agents' reports and, optionally, EC2 (diff.Diff), and lists
// every inconsistency without repairing anything.
func (a *Allocator) Check(ctx context.Context, includeEC2 bool) (CheckReport, error) {
	rep := CheckReport{CheckedAt: a.now()}
	for _, c := range a.led.Conflicts() {
		rep.Findings = append(rep.Findings, diff.FromConflict(c))
	}
	nodes := a.led.Nodes()
	rep.NodesChecked = len(nodes)
	for _, n := range nodes {
		rep.ENIsChecked += len(n.ENIs)
		for _, e := range n.ENIs {
			rep.AddressesChecked += len(e.Addresses) + 16*len(e.Prefixes) + 1
		}
	}
	if includeEC2 {
		// A lease committed between the EC2 scan and the comparison looks like drift for a
		// moment; a second scan confirms what is real: only findings seen twice are reported.
		first, err := a.collectDrift(ctx, ec2gw.PriorityReconcile)
		if err != nil {
			return CheckReport{}, err
		}
		seen := map[string]bool{}
		for _, d := range first {
			seen[d.key] = true
		}
		if len(seen) > 0 {
			second, err := a.collectDrift(ctx, ec2gw.PriorityReconcile)
			if err != nil {
				return CheckReport{}, err
			}
			for _, d := range second {
				if seen[d.key] && d.finding != nil {
					rep.Findings = append(rep.Findings, *d.finding)
				}
			}
		}
	}
	sort.SliceStable(rep.Findings, func(i, j int) bool {
		fi, fj := rep.Findings[i], rep.Findings[j]
		if fi.Kind != fj.Kind {
			return fi.Kind < fj.Kind
		}
		if fi.Node != fj.Node {
			return fi.Node < fj.Node
		}
		return fi.Address < fj.Address
	})
	rep.OK = len(rep.Findings) == 0
	return rep, nil
}
