package allocator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

// maxProposalItems bounds one release proposal.
const maxProposalItems = 64

// refusalBackoff is the least time between an ack that refused items and the node's next
// proposal.
const refusalBackoff = 2 * time.Second

// maybePropose proposes surplus for release once it has lasted the release delay. Nothing is
// proposed to a node whose agent is not connected or has not reported usage: only an agent that
// can answer may be asked.
func (a *Allocator) maybePropose(ctx context.Context, ns *nodeState) {
	rec, ok := a.led.Node(ns.name)
	if !ok || rec.Proposal != nil {
		return
	}
	prefix := rec.Mode == ledger.ModePrefix
	a.mu.Lock()
	if len(ns.subs) == 0 || ns.usage == nil {
		ns.surplusSince = time.Time{}
		a.mu.Unlock()
		return
	}
	t := a.targetsLocked(ns, rec)
	inUse := map[string]bool{}
	for _, p := range ns.usage.InUse {
		inUse[p.IP.String()] = true
	}
	want := t.WantAddresses
	if prefix {
		want = t.WantPrefixes
	}
	surplus := heldItems(rec, prefix, true) - want
	now := a.now()
	delay := t.ReleaseDelay
	if a.subnetTight(rec.SubnetID) {
		delay = 0
	}
	if surplus <= 0 {
		ns.surplusSince = time.Time{}
		a.mu.Unlock()
		return
	}
	if ns.surplusSince.IsZero() {
		ns.surplusSince = now
	}
	due := now.Sub(ns.surplusSince) >= delay && !now.Before(ns.noProposalBefore)
	a.mu.Unlock()
	if !due {
		return
	}
	items := chooseRelease(rec, prefix, inUse, min(surplus, maxProposalItems))
	if len(items) == 0 {
		return
	}
	p := &ledger.ReleaseProposal{ID: a.newProposalID(), ProposedAt: now, Items: items}
	chosen := map[string]bool{}
	for _, it := range items {
		chosen[it] = true
	}
	_, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
		if r.Proposal != nil {
			return fmt.Errorf("allocator: node %s already has a proposal", r.Name)
		}
		setStates(r, chosen, ledger.LeaseActive, ledger.LeaseReleaseProposed)
		r.Proposal = p
		return nil
	})
	if err != nil {
		a.log.Warn("propose release", "node", ns.name, "err", err)
		return
	}
	a.mu.Lock()
	for s := range ns.subs {
		s.sendProposal(*p)
	}
	ns.surplusSince = time.Time{}
	a.mu.Unlock()
	a.log.Debug("proposed release", "node", ns.name, "items", len(items), "proposal", p.ID)
}

// chooseRelease picks up to n active items that no pod uses: first from the managed ENIs with
// the fewest leases (so they empty and can be deleted), then from the /28 blocks with the fewest
// of the node's addresses (so broken blocks heal).
func chooseRelease(rec ledger.NodeRecord, prefix bool, inUse map[string]bool, n int) []string {
	type cand struct {
		item       string
		managed    bool
		eniLoad    int
		blockLoad  int
		deviceIdx  int
		sortTiebrk string
	}
	blockLoad := map[netip.Prefix]int{}
	for _, e := range rec.ENIs {
		for _, ad := range e.Addresses {
			b, _ := ad.IP.Prefix(28)
			blockLoad[b]++
		}
	}
	var cands []cand
	for _, e := range rec.ENIs {
		load := usedSlots(e)
		if prefix {
			for _, p := range e.Prefixes {
				if p.State != ledger.LeaseActive || prefixInUse(p.Prefix, inUse) {
					continue
				}
				cands = append(cands, cand{p.Prefix.String(), e.Managed, load, 0, e.DeviceIndex, p.Prefix.String()})
			}
			continue
		}
		for _, ad := range e.Addresses {
			if ad.State != ledger.LeaseActive || inUse[ad.IP.String()] {
				continue
			}
			b, _ := ad.IP.Prefix(28)
			cands = append(cands, cand{ad.IP.String(), e.Managed, load, blockLoad[b], e.DeviceIndex, ad.IP.String()})
		}
	}
	sort.Slice(cands, func(i, j int) bool {
		ci, cj := cands[i], cands[j]
		if ci.managed != cj.managed {
			return ci.managed
		}
		if ci.eniLoad != cj.eniLoad {
			return ci.eniLoad < cj.eniLoad
		}
		if ci.deviceIdx != cj.deviceIdx {
			return ci.deviceIdx > cj.deviceIdx
		}
		if ci.blockLoad != cj.blockLoad {
			return ci.blockLoad < cj.blockLoad
		}
		return ci.sortTiebrk < cj.sortTiebrk
	})
	var out []string
	for i := 0; i < len(cands) && len(out) < n; i++ {
		out = append(out, cands[i].item)
	}
	return out
}

func prefixInUse(p netip.Prefix, inUse map[string]bool) bool {
	for ip := range inUse {
		if a, err := netip.ParseAddr(ip); err == nil && p.Contains(a) {
			return true
		}
	}
	return false
}

// setStates moves the chosen items from one state to another.
func setStates(r *ledger.NodeRecord, chosen map[string]bool, from, to ledger.LeaseState) {
	for i := range r.ENIs {
		e := &r.ENIs[i]
		for j := range e.Addresses {
			if chosen[e.Addresses[j].IP.String()] && e.Addresses[j].State == from {
				e.Addresses[j].State = to
			}
		}
		for j := range e.Prefixes {
			if chosen[e.Prefixes[j].Prefix.String()] && e.Prefixes[j].State == from {
				e.Prefixes[j].State = to
			}
		}
	}
}

func (a *Allocator) newProposalID() string { return "rp-" + a.randomHex(8) }

// AckRelease applies an agent's answer to a release proposal: confirmed items become RELEASING
// (then the release lane unassigns them), refused items become ACTIVE again.
func (a *Allocator) AckRelease(ctx context.Context, node string, ack ReleaseAck) error {
	ns, ok := a.node(node)
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	if ack.ProposalID == "" {
		return invalid("release_ack.proposal_id", "empty")
	}
	confirmed := map[string]bool{}
	for _, it := range ack.Confirmed {
		confirmed[it] = true
	}
	stale := false
	_, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
		if r.Proposal == nil || r.Proposal.ID != ack.ProposalID {
			stale = true
			return errStale
		}
		if err := checkAckItems(r.Proposal.Items, ack); err != nil {
			return err
		}
		toRelease := map[string]bool{}
		back := map[string]bool{}
		for _, it := range r.Proposal.Items {
			if confirmed[it] {
				toRelease[it] = true
			} else {
				back[it] = true
			}
		}
		setStates(r, toRelease, ledger.LeaseReleaseProposed, ledger.LeaseReleasing)
		setStates(r, back, ledger.LeaseReleaseProposed, ledger.LeaseActive)
		r.Proposal = nil
		return nil
	})
	if stale {
		// An answer to a proposal that was cancelled or already answered changes nothing.
		a.log.Debug("stale release ack", "node", node, "proposal", ack.ProposalID)
		return nil
	}
	if err != nil {
		return err
	}
	a.met.acks.WithLabelValues("confirmed").Add(float64(len(ack.Confirmed)))
	a.met.acks.WithLabelValues("refused").Add(float64(len(ack.Refused)))
	if len(ack.Refused) > 0 {
		a.mu.Lock()
		ns.noProposalBefore = a.now().Add(refusalBackoff)
		a.mu.Unlock()
	}
	a.kick(ns.name)
	return nil
}

var errStale = errors.New("allocator: stale proposal")

// checkAckItems refuses an ack that names items the proposal does not hold, names one twice,
// or names more items than the proposal has: an agent answers exactly what it was asked.
func checkAckItems(proposed []string, ack ReleaseAck) error {
	if n := len(ack.Confirmed) + len(ack.Refused); n > len(proposed) {
		return invalid("release_ack", "%d items answer a proposal of %d", n, len(proposed))
	}
	inProposal := make(map[string]bool, len(proposed))
	for _, it := range proposed {
		inProposal[it] = true
	}
	seen := make(map[string]bool, len(proposed))
	for _, list := range []struct {
		field string
		items []string
	}{{"release_ack.confirmed", ack.Confirmed}, {"release_ack.refused", ack.Refused}} {
		for i, it := range list.items {
			if !inProposal[it] {
				return invalid(fmt.Sprintf("%s[%d]", list.field, i), "%q is not in proposal %s", it, ack.ProposalID)
			}
			if seen[it] {
				return invalid(fmt.Sprintf("%s[%d]", list.field, i), "%q is answered twice", it)
			}
			seen[it] = true
		}
	}
	return nil
}

// cancelProposal takes an open proposal back: every proposed item is ACTIVE again.
func (a *Allocator) cancelProposal(ctx context.Context, ns *nodeState, why string) error {
	_, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
		if r.Proposal == nil {
			return nil
		}
		back := map[string]bool{}
		for _, it := range r.Proposal.Items {
			back[it] = true
		}
		setStates(r, back, ledger.LeaseReleaseProposed, ledger.LeaseActive)
		a.log.Debug("proposal cancelled", "node", r.Name, "proposal", r.Proposal.ID, "why", why)
		r.Proposal = nil
		return nil
	})
	return err
}

// expireProposal cancels a proposal the agent has not answered in time.
func (a *Allocator) expireProposal(ctx context.Context, ns *nodeState) {
	rec, ok := a.led.Node(ns.name)
	if !ok || rec.Proposal == nil || a.now().Sub(rec.Proposal.ProposedAt) < a.cfg.ProposalTimeout {
		return
	}
	if err := a.cancelProposal(ctx, ns, "no answer"); err != nil {
		a.log.Warn("expire proposal", "node", ns.name, "err", err)
	}
}

// releaseWork reports whether a node has release work: RELEASING items to unassign, new ENIs
// without DeleteOnTermination, or empty ENIs to delete. It runs on the release workers
// (releaseNode) so that slow, low-priority EC2 calls never hold up supply.
func releaseWork(rec ledger.NodeRecord, empty []ledger.ENIRecord) bool {
	if len(empty) > 0 || hasReleasing(rec) {
		return true
	}
	for _, e := range rec.ENIs {
		if e.Managed && !e.DeleteOnTermination {
			return true
		}
	}
	return false
}

func (a *Allocator) releaseLane(ctx context.Context, ns *nodeState) {
	rec, ok := a.led.Node(ns.name)
	if !ok {
		return
	}
	for _, e := range rec.ENIs {
		var addrs []netip.Addr
		var prefixes []netip.Prefix
		for _, ad := range e.Addresses {
			if ad.State == ledger.LeaseReleasing {
				addrs = append(addrs, ad.IP)
			}
		}
		for _, p := range e.Prefixes {
			if p.State == ledger.LeaseReleasing {
				prefixes = append(prefixes, p.Prefix)
			}
		}
		if len(addrs)+len(prefixes) == 0 {
			continue
		}
		err := a.gw.UnassignAddresses(ctx, ec2gw.PriorityRelease, e.ID, addrs, prefixes)
		a.met.leaseOp("release", err)
		if err != nil && ec2gw.OutcomeUnknown(err) {
			// EC2 may have unassigned them all the same: read the ENI at once and commit what
			// it no longer has (the rest is tried again on the next pass).
			if !a.releasedPerEC2(ctx, e.ID, &addrs, &prefixes) || len(addrs)+len(prefixes) == 0 {
				a.log.Info("unassign outcome unknown; will retry", "node", ns.name, "eni", e.ID, "err", err)
				return
			}
			err = nil
		}
		if err != nil && !errors.Is(err, ec2gw.ErrInvalidRequest) {
			a.log.Info("unassign failed; will retry", "node", ns.name, "eni", e.ID, "err", err)
			return
		}
		if err != nil {
			// EC2 refused: some item is probably gone already. Find out what the ENI holds.
			if !a.releasedPerEC2(ctx, e.ID, &addrs, &prefixes) {
				return
			}
		}
		gone := map[string]bool{}
		for _, ip := range addrs {
			gone[ip.String()] = true
		}
		for _, p := range prefixes {
			gone[p.String()] = true
		}
		if _, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
			removeItems(r, e.ID, gone)
			return nil
		}); err != nil {
			a.log.Warn("commit release", "node", ns.name, "err", err)
			return
		}
		a.led.Released(e.SubnetID, addrs, prefixes, a.now())
	}
	a.setDeleteOnTermination(ctx, ns)
	rec, _ = a.led.Node(ns.name)
	for _, e := range a.emptyENIs(ns, rec) {
		if err := a.deleteENI(ctx, ns, e); err != nil {
			a.log.Info("delete empty ENI failed; will retry", "node", ns.name, "eni", e.ID, "err", err)
			return
		}
	}
}

// releasedPerEC2 narrows a release to the items EC2 no longer has on the ENI after an
// InvalidParameterValue (they were unassigned by an earlier attempt).
func (a *Allocator) releasedPerEC2(ctx context.Context, eniID string, addrs *[]netip.Addr, prefixes *[]netip.Prefix) bool {
	enis, err := a.gw.DescribeNetworkInterfaces(ctx, ec2gw.PriorityRelease, ec2gw.ENIFilter{IDs: []string{eniID}})
	if err != nil || len(enis) != 1 {
		return false
	}
	on := map[string]bool{}
	for _, ip := range enis[0].SecondaryIPs {
		on[ip.String()] = true
	}
	for _, p := range enis[0].Prefixes {
		on[p.String()] = true
	}
	var ga []netip.Addr
	var gp []netip.Prefix
	for _, ip := range *addrs {
		if !on[ip.String()] {
			ga = append(ga, ip)
		}
	}
	for _, p := range *prefixes {
		if !on[p.String()] {
			gp = append(gp, p)
		}
	}
	*addrs, *prefixes = ga, gp
	return len(ga)+len(gp) > 0
}

func removeItems(r *ledger.NodeRecord, eniID string, gone map[string]bool) {
	for i := range r.ENIs {
		e := &r.ENIs[i]
		if eniID != "" && e.ID != eniID {
			continue
		}
		addrs := e.Addresses[:0]
		for _, ad := range e.Addresses {
			if !gone[ad.IP.String()] {
				addrs = append(addrs, ad)
			}
		}
		e.Addresses = addrs
		prefixes := e.Prefixes[:0]
		for _, p := range e.Prefixes {
			if !gone[p.Prefix.String()] {
				prefixes = append(prefixes, p)
			}
		}
		e.Prefixes = prefixes
	}
}

// setDeleteOnTermination marks new ENIs' attachments so EC2 deletes them with the instance.
func (a *Allocator) setDeleteOnTermination(ctx context.Context, ns *nodeState) {
	rec, ok := a.led.Node(ns.name)
	if !ok {
		return
	}
	for _, e := range rec.ENIs {
		if !e.Managed || e.DeleteOnTermination || e.AttachmentID == "" {
			continue
		}
		if err := a.gw.SetDeleteOnTermination(ctx, ec2gw.PriorityRelease, e.ID, e.AttachmentID, true); err != nil {
			a.log.Info("set DeleteOnTermination failed; will retry", "eni", e.ID, "err", err)
			return
		}
		id := e.ID
		if _, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
			for i := range r.ENIs {
				if r.ENIs[i].ID == id {
					r.ENIs[i].DeleteOnTermination = true
				}
			}
			return nil
		}); err != nil {
			return
		}
	}
}

// emptyENIs are managed ENIs with no lease left that the node's target does not need: the
// node's remaining ENIs hold the target without them.
func (a *Allocator) emptyENIs(ns *nodeState, rec ledger.NodeRecord) []ledger.ENIRecord {
	if ns.typ.Name == "" {
		return nil
	}
	a.mu.Lock()
	t := a.targetsLocked(ns, rec)
	a.mu.Unlock()
	prefix := rec.Mode == ledger.ModePrefix
	want := t.WantAddresses
	if prefix {
		want = t.WantPrefixes
	}
	slots := ns.typ.SecondaryIPsPerENI()
	capacity := 0
	var empty []ledger.ENIRecord
	for _, e := range rec.ENIs {
		if e.Managed && usedSlots(e) == 0 {
			empty = append(empty, e)
			continue
		}
		capacity += slots
	}
	// Keep as many empty ENIs as the target still needs room for, highest device index goes first.
	sort.Slice(empty, func(i, j int) bool { return empty[i].DeviceIndex > empty[j].DeviceIndex })
	held := heldItems(rec, prefix, false)
	for len(empty) > 0 && capacity < want && held < want {
		capacity += slots
		empty = empty[1:]
	}
	return empty
}

// deleteENI detaches and deletes an empty managed ENI, then drops it from the node.
func (a *Allocator) deleteENI(ctx context.Context, ns *nodeState, e ledger.ENIRecord) error {
	// From the detach on, supply must not assign to the ENI (EC2 lets one assign to a detached
	// ENI; its addresses would then be leased on an ENI no instance has). It stays marked until
	// it is gone from the node's record.
	a.mu.Lock()
	a.deleting[e.ID] = true
	a.mu.Unlock()
	if e.AttachmentID != "" {
		err := a.gw.DetachENI(ctx, ec2gw.PriorityRelease, e.AttachmentID, false)
		if err != nil && !errors.Is(err, ec2gw.ErrNotFound) {
			return err
		}
	}
	deadline := a.clk.Now().Add(30 * time.Second)
	for {
		err := a.gw.DeleteENI(ctx, ec2gw.PriorityRelease, e.ID)
		if err == nil || errors.Is(err, ec2gw.ErrNotFound) {
			break
		}
		if !errors.Is(err, ec2gw.ErrENIInUse) || a.clk.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.clk.After(500 * time.Millisecond):
		}
	}
	a.met.leaseOp("delete-eni", nil)
	_, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
		kept := r.ENIs[:0]
		for _, x := range r.ENIs {
			if x.ID != e.ID {
				kept = append(kept, x)
			}
		}
		r.ENIs = kept
		return nil
	})
	if err == nil {
		a.mu.Lock()
		delete(a.deleting, e.ID)
		a.mu.Unlock()
	}
	return err
}

// Drain stops giving a node addresses and releases everything it holds that no pod uses.
func (a *Allocator) Drain(ctx context.Context, node string, undo bool) error {
	ns, ok := a.node(node)
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	if _, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
		r.Draining = !undo
		return nil
	}); err != nil {
		return err
	}
	a.mu.Lock()
	ns.surplusSince = time.Time{}
	a.mu.Unlock()
	a.kick(ns.name)
	return nil
}

// subnetTight reports whether a subnet has so little headroom that surplus on nodes should be
// reclaimed without the release delay.
func (a *Allocator) subnetTight(subnet string) bool {
	b, err := a.led.Budget(subnet, a.now())
	if err != nil {
		return false
	}
	return b.Headroom < max(16, b.Size/50)
}

// reclaimInSubnet asks every other node of the subnet to give back its surplus now.
func (a *Allocator) reclaimInSubnet(subnet, except string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for name, ns := range a.nodes {
		if name == except {
			continue
		}
		if rec, ok := a.led.Node(name); ok && rec.SubnetID == subnet {
			if ns.surplusSince.IsZero() {
				ns.surplusSince = a.now().Add(-24 * time.Hour)
			}
			a.kick(ns.name)
		}
	}
}
