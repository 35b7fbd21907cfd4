package allocator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/store"
	"google.golang.org/protobuf/types/known/timestamppb"
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
// worked out here, under the lock registration holds, from who owns what now: a node that
// registered after the scan was taken must not have its addresses written back as foreign.
func (a *Allocator) updateForeign(ctx context.Context, subnet string, scanned []ec2gw.ENI) error {
	a.budgetMu.Lock()
	defer a.budgetMu.Unlock()
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
	if _, err := a.commit(ctx, store.PutSubnet(rec)); err != nil {
		return err
	}
	return a.led.PutSubnet(rec)
}

// mutateNodeUnforeign is mutateNode for a change that gives the node addresses the ledger may
// count as foreign: those leave the subnet's foreign set in the same transaction.
func (a *Allocator) mutateNodeUnforeign(ctx context.Context, ns *nodeState, subnet string, addrs map[netip.Addr]bool, fn func(*ledger.NodeRecord) error) error {
	foreign := map[netip.Addr]bool{}
	for ip := range addrs {
		if o, taken := a.led.OwnerOf(ip); taken && (o.Kind == ledger.OwnerForeign || o.Foreign) {
			foreign[ip] = true
		}
	}
	if len(foreign) == 0 || subnet == "" {
		_, err := a.mutateNode(ctx, ns, fn)
		return err
	}
	a.budgetMu.Lock()
	defer a.budgetMu.Unlock()
	rec, ok := a.led.Subnet(subnet)
	if !ok {
		return fmt.Errorf("%w: subnet %s", ErrNotFound, subnet)
	}
	reduced := rec
	reduced.Foreign = subtractRanges(rec.Foreign, foreign)
	if _, err := a.mutateNode(ctx, ns, fn, store.PutSubnet(reduced)); err != nil {
		return err
	}
	if err := a.led.PutSubnet(reduced); err != nil {
		a.fail(fmt.Errorf("allocator: ledger diverged from etcd: %w", err))
		return err
	}
	return nil
}

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

// drift is one difference between etcd and EC2, with what repairs it.
type drift struct {
	finding *ipledgerv1.Finding
	key     string
	// immediate repairs need no grace period (e.g. finishing a release EC2 already did).
	immediate bool
	// recheck: no repair now, but the reconcile loop comes back one grace later to look again.
	recheck bool
	repair  func(ctx context.Context) error
}

// reconcileLoop runs reconcileAll at once, then every ReconcileInterval, and sooner when a
// difference with a repair is waiting out its drift grace: a crashed leader's half-done work
// (an address assigned on EC2 but never committed) is adopted one grace after the takeover,
// not one whole interval later.
func (a *Allocator) reconcileLoop(ctx context.Context) {
	for {
		next := a.cfg.ReconcileInterval
		pending, err := a.reconcileAll(ctx)
		if err != nil && ctx.Err() == nil {
			a.log.Warn("loop failed", "loop", "reconcile", "err", err)
		}
		if pending && a.cfg.DriftGrace < next {
			// A little over the grace, so the difference has surely persisted for it.
			next = a.cfg.DriftGrace + a.cfg.DriftGrace/10 + 10*time.Millisecond
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// reconcileAll compares every subnet the cluster uses, and every ENI tagged for the cluster,
// with EC2, and repairs differences that persisted for the drift grace. pending says whether a
// difference with a repair is still waiting out its grace.
func (a *Allocator) reconcileAll(ctx context.Context) (pending bool, err error) {
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
		if !d.immediate && now.Sub(first) < a.cfg.DriftGrace {
			pending = true
			continue
		}
		if err := d.repair(ctx); err != nil {
			a.log.Warn("repair failed", "kind", d.finding.GetKind().String(), "node", d.finding.GetNodeName(), "eni", d.finding.GetEniId(), "address", d.finding.GetAddress(), "err", err)
			pending = true // tried again one grace later
			continue
		}
		a.log.Info("repaired drift", "kind", d.finding.GetKind().String(), "node", d.finding.GetNodeName(), "eni", d.finding.GetEniId(), "address", d.finding.GetAddress(), "detail", d.finding.GetDetail())
		a.met.repairs.WithLabelValues(d.finding.GetKind().String()).Inc()
		a.mu.Lock()
		delete(a.drift, d.key)
		a.mu.Unlock()
	}
	return pending, nil
}

// collectDrift reads EC2 and lists every difference with its repair.
func (a *Allocator) collectDrift(ctx context.Context, prio ec2gw.Priority) ([]drift, error) {
	var out []drift
	seenENI := map[string]bool{}
	for _, s := range a.led.Subnets() {
		enis, err := a.gw.DescribeNetworkInterfaces(ctx, prio, ec2gw.ENIFilter{SubnetID: s.ID})
		if err != nil {
			return nil, ec2Err(err, s.ID)
		}
		for _, e := range enis {
			seenENI[e.ID] = true
		}
		out = append(out, a.diffSubnet(s.ID, enis)...)
		sid, scanned := s.ID, enis
		if !equalRanges(s.Foreign, toRanges(a.foreignOf(enis))) {
			out = append(out, drift{
				finding:   &ipledgerv1.Finding{SubnetId: sid, Detail: "foreign addresses changed since the last scan"},
				key:       "foreign|" + sid,
				immediate: true,
				repair:    func(ctx context.Context) error { return a.updateForeign(ctx, sid, scanned) },
			})
		}
	}
	// ENIs tagged for the cluster outside the subnets scanned above.
	tagged, err := a.gw.DescribeNetworkInterfaces(ctx, prio, ec2gw.ENIFilter{Tags: map[string]string{TagCluster: a.cfg.ClusterName}})
	if err != nil {
		return nil, ec2Err(err, "")
	}
	owned := a.ownedENIs()
	for _, e := range tagged {
		if seenENI[e.ID] {
			continue
		}
		if _, ok := owned[e.ID]; ok {
			continue
		}
		out = append(out, a.leakedENI(e))
	}
	return out, nil
}

// diffSubnet compares one subnet's ENIs on EC2 with the ledger.
func (a *Allocator) diffSubnet(subnet string, enis []ec2gw.ENI) []drift {
	var out []drift
	owned := a.ownedENIs()
	byID := map[string]ec2gw.ENI{}
	for _, e := range enis {
		byID[e.ID] = e
	}
	for _, e := range enis {
		o, ok := owned[e.ID]
		switch {
		case ok && o.node != "":
			out = append(out, a.diffENI(o.node, o.rec, e)...)
		case ok:
			// Pre-warm ENIs are checked by the pre-warm loop.
		case e.Tags[TagCluster] == a.cfg.ClusterName:
			out = append(out, a.leakedENI(e))
		}
	}
	for _, n := range a.led.Nodes() {
		for _, er := range n.ENIs {
			if er.SubnetID != subnet {
				continue
			}
			if _, ok := byID[er.ID]; ok {
				continue
			}
			node, eni := n.Name, er
			d := drift{
				finding: &ipledgerv1.Finding{Kind: ipledgerv1.FindingKind_ENI_MISMATCH, SubnetId: subnet, NodeName: node, EniId: eni.ID,
					Detail: "leased ENI not found on EC2"},
				key: "enimissing|" + eni.ID,
			}
			if eni.Managed && !a.eniInUse(node, eni) {
				d.repair = func(ctx context.Context) error { return a.dropENI(ctx, node, eni.ID) }
			}
			out = append(out, d)
		}
	}
	return out
}

// eniInUse reports whether pods of the node use addresses of the ENI.
func (a *Allocator) eniInUse(node string, e ledger.ENIRecord) bool {
	used := map[netip.Addr]bool{}
	for _, ip := range a.led.Usage(node) {
		used[ip] = true
	}
	for _, ad := range e.Addresses {
		if used[ad.IP] {
			return true
		}
	}
	for _, p := range e.Prefixes {
		for ip := range used {
			if p.Prefix.Contains(ip) {
				return true
			}
		}
	}
	return false
}

// diffENI compares a node's ENI record with EC2's view of it.
func (a *Allocator) diffENI(node string, er ledger.ENIRecord, e ec2gw.ENI) []drift {
	var out []drift
	onEC2 := map[string]bool{}
	for _, ip := range e.SecondaryIPs {
		onEC2[ip.String()] = true
	}
	for _, p := range e.Prefixes {
		onEC2[p.String()] = true
	}
	leased := map[string]ledger.LeaseState{}
	for _, ad := range er.Addresses {
		leased[ad.IP.String()] = ad.State
	}
	for _, p := range er.Prefixes {
		leased[p.Prefix.String()] = p.State
	}
	inUse := map[string]bool{}
	for _, ip := range a.led.Usage(node) {
		inUse[ip.String()] = true
	}
	if e.Attachment != nil {
		if rec, ok := a.led.Node(node); ok && e.Attachment.InstanceID != rec.InstanceID {
			out = append(out, drift{
				finding: &ipledgerv1.Finding{Kind: ipledgerv1.FindingKind_ENI_MISMATCH, SubnetId: er.SubnetID, NodeName: node, EniId: er.ID,
					Detail: fmt.Sprintf("attached to %s, not to the node's instance %s", e.Attachment.InstanceID, rec.InstanceID)},
				key: "eniattach|" + er.ID,
			})
		}
	}
	for item, state := range leased {
		if onEC2[item] {
			continue
		}
		it := item
		if state == ledger.LeaseReleasing {
			out = append(out, drift{
				finding:   &ipledgerv1.Finding{Kind: ipledgerv1.FindingKind_LEASED_NOT_ON_EC2, SubnetId: er.SubnetID, NodeName: node, EniId: er.ID, Address: it, Detail: "release already done on EC2"},
				key:       "released|" + er.ID + "|" + it,
				immediate: true,
				repair:    func(ctx context.Context) error { return a.dropItems(ctx, node, er.ID, er.SubnetID, []string{it}, true) },
			})
			continue
		}
		d := drift{
			finding: &ipledgerv1.Finding{Kind: ipledgerv1.FindingKind_LEASED_NOT_ON_EC2, SubnetId: er.SubnetID, NodeName: node, EniId: er.ID, Address: it,
				Detail: "leased but not assigned to the ENI on EC2"},
			key: "leasednotec2|" + er.ID + "|" + it,
		}
		if inUseItem(it, inUse) {
			d.finding.Detail += "; a pod uses it, so it is assigned again"
			d.repair = func(ctx context.Context) error { return a.reassign(ctx, er.ID, it) }
		} else {
			d.repair = func(ctx context.Context) error {
				return a.dropItems(ctx, node, er.ID, er.SubnetID, []string{it}, false)
			}
		}
		out = append(out, d)
	}
	for item := range onEC2 {
		if _, ok := leased[item]; ok {
			continue
		}
		addr := itemAddr(item)
		if o, ok := a.led.OwnerOf(addr); ok && o.Kind == ledger.OwnerPending && o.Node == node {
			// An assignment of this leader is in flight; look again one grace later, when it
			// has landed or failed (an orphan of a dead leader it placed again).
			out = append(out, drift{key: "ec2pending|" + er.ID + "|" + item, recheck: true,
				// Not a finding of Check (no kind): an assignment in flight is no inconsistency.
				finding: &ipledgerv1.Finding{SubnetId: er.SubnetID, NodeName: node, EniId: er.ID, Address: item,
					Detail: "assigned on EC2 while an assignment of it is in flight"}})
			continue
		}
		it := item
		out = append(out, drift{
			finding: &ipledgerv1.Finding{Kind: ipledgerv1.FindingKind_ON_EC2_NOT_LEASED, SubnetId: er.SubnetID, NodeName: node, EniId: er.ID, Address: it,
				Detail: "assigned on EC2 to a managed ENI but not leased; adopted into the node's pool"},
			key:    "ec2notleased|" + er.ID + "|" + it,
			repair: func(ctx context.Context) error { return a.adopt(ctx, node, er.ID, it) },
		})
	}
	for item, state := range leased {
		if state == ledger.LeaseReleasing && onEC2[item] {
			if ns, ok := a.node(node); ok {
				ns.kickNow()
			}
		}
	}
	return out
}

func inUseItem(item string, inUse map[string]bool) bool {
	if inUse[item] {
		return true
	}
	if p, err := netip.ParsePrefix(item); err == nil {
		return prefixInUse(p, inUse)
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

// leakedENI is an ENI tagged for the cluster that nobody owns: adopted if it is attached to a
// registered node's instance, else deleted (detached first) after the grace period.
func (a *Allocator) leakedENI(e ec2gw.ENI) drift {
	d := drift{
		finding: &ipledgerv1.Finding{Kind: ipledgerv1.FindingKind_LEAKED_ENI, SubnetId: e.SubnetID, EniId: e.ID, NodeName: e.Tags[TagNode],
			Detail: fmt.Sprintf("tagged for cluster %s, owned by no node or reservation (status %s)", a.cfg.ClusterName, e.Status)},
		key: "leaked|" + e.ID,
	}
	if e.Attachment != nil {
		if rec, ok := a.led.NodeByInstance(e.Attachment.InstanceID); ok {
			d.finding.Detail = "attached to node " + rec.Name + " but not leased; adopted"
			d.finding.NodeName = rec.Name
			name := rec.Name
			d.repair = func(ctx context.Context) error { return a.adoptENI(ctx, name, e) }
			return d
		}
	}
	d.repair = func(ctx context.Context) error { return a.deleteLeaked(ctx, e) }
	return d
}

func (a *Allocator) deleteLeaked(ctx context.Context, e ec2gw.ENI) error {
	if e.Tags[TagPrewarm] != "" {
		if _, ok := a.led.Prewarm(e.Tags[TagPrewarm]); ok {
			return nil // the reservation may still record it; the pre-warm loop decides
		}
	}
	if e.Attachment != nil && e.Attachment.ID != "" {
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

// sweepLoop deletes ENIs left behind by removed nodes (those without DeleteOnTermination).
func (a *Allocator) sweepLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.sweep:
		}
		enis, err := a.gw.DescribeNetworkInterfaces(ctx, ec2gw.PriorityRelease, ec2gw.ENIFilter{
			Tags: map[string]string{TagCluster: a.cfg.ClusterName}, Status: "available",
		})
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("sweep for leftover ENIs failed", "err", err)
			}
			continue
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
	}
}

// Check compares etcd (the ledger), the agents' reports and, optionally, EC2, and lists every
// inconsistency without repairing anything.
func (a *Allocator) Check(ctx context.Context, includeEC2 bool) (*ipledgerv1.CheckReport, error) {
	rep := &ipledgerv1.CheckReport{CheckedAt: timestamppb.New(a.now())}
	for _, c := range a.led.Conflicts() {
		rep.Findings = append(rep.Findings, conflictFinding(c))
	}
	nodes := a.led.Nodes()
	rep.NodesChecked = uint32(len(nodes))
	for _, n := range nodes {
		rep.EnisChecked += uint32(len(n.ENIs))
		for _, e := range n.ENIs {
			rep.AddressesChecked += uint32(len(e.Addresses) + 16*len(e.Prefixes) + 1)
		}
	}
	if includeEC2 {
		// A lease committed between the EC2 scan and the comparison looks like drift for a
		// moment; a second scan confirms what is real: only findings seen twice are reported.
		first, err := a.collectDrift(ctx, ec2gw.PriorityReconcile)
		if err != nil {
			return nil, err
		}
		seen := map[string]bool{}
		for _, d := range first {
			seen[d.key] = true
		}
		if len(seen) > 0 {
			second, err := a.collectDrift(ctx, ec2gw.PriorityReconcile)
			if err != nil {
				return nil, err
			}
			for _, d := range second {
				if seen[d.key] && d.finding.GetKind() != ipledgerv1.FindingKind_FINDING_KIND_UNSPECIFIED {
					rep.Findings = append(rep.Findings, d.finding)
				}
			}
		}
	}
	sort.Slice(rep.Findings, func(i, j int) bool {
		fi, fj := rep.Findings[i], rep.Findings[j]
		if fi.Kind != fj.Kind {
			return fi.Kind < fj.Kind
		}
		if fi.NodeName != fj.NodeName {
			return fi.NodeName < fj.NodeName
		}
		return fi.Address < fj.Address
	})
	rep.Ok = len(rep.Findings) == 0
	return rep, nil
}

func conflictFinding(c ledger.Conflict) *ipledgerv1.Finding {
	kind := ipledgerv1.FindingKind_DOUBLE_OWNER
	switch c.Kind {
	case "in-use-not-leased":
		kind = ipledgerv1.FindingKind_IN_USE_NOT_LEASED
	case "double-use":
		kind = ipledgerv1.FindingKind_DOUBLE_USE
	}
	detail := c.Detail
	if c.OtherOwner != "" {
		detail = fmt.Sprintf("%s (other owner: %s)", detail, c.OtherOwner)
	}
	return &ipledgerv1.Finding{Kind: kind, SubnetId: c.SubnetID, NodeName: c.Node, EniId: c.ENI, Address: c.Address, Detail: detail}
}
