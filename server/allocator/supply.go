package allocator

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

// supply brings the node up to its target: first the free slots of its ENIs, then new ENIs.
func (a *Allocator) supply(ctx context.Context, ns *nodeState) {
	rec, ok := a.led.Node(ns.name)
	if !ok {
		return
	}
	a.mu.Lock()
	if a.now().Before(ns.nextSupply) {
		a.mu.Unlock()
		return
	}
	t := a.targetsLocked(ns, rec)
	waiting := ns.waiting
	if ns.usage != nil {
		waiting = max(waiting, ns.usage.PodsWaiting)
	}
	waiting = max(waiting, len(a.lookaheadLocked(ns)))
	a.mu.Unlock()
	if a.cfg.Cluster != nil {
		defer func() {
			a.mu.Lock()
			problem := ns.problem
			a.mu.Unlock()
			if rec.Draining {
				problem = fmt.Errorf("%w: %s", ErrDraining, ns.name)
			}
			a.signalWaiting(ns, problem)
		}()
	}

	if rec.Draining {
		if waiting > 0 {
			a.setProblem(ns, fmt.Errorf("%w: %s", ErrDraining, ns.name))
		}
		return
	}
	prefix := rec.Mode == ledger.ModePrefix
	have := heldItems(rec, prefix, false)
	want := t.WantAddresses
	if prefix {
		want = t.WantPrefixes
	}
	if rec.Proposal != nil && have < want+len(rec.Proposal.Items) {
		// Demand grew while a release was proposed: take the proposal back before anything
		// is unassigned (the agent keeps the items locked until it sees them ACTIVE again).
		if err := a.cancelProposal(ctx, ns, "demand grew"); err != nil {
			a.log.Warn("cancel proposal", "node", ns.name, "err", err)
			return
		}
		rec, _ = a.led.Node(ns.name)
	}
	have = heldItems(rec, prefix, true)
	deficit := want - have
	if deficit <= 0 {
		a.setProblem(ns, nil)
		return
	}
	prio := ec2gw.PriorityWarmRefill
	switch {
	case waiting > 0:
		prio = ec2gw.PriorityPodWaiting
	case have == 0:
		prio = ec2gw.PriorityNodeStart
	}
	err := a.fill(ctx, ns, rec, deficit, prio)
	a.setProblem(ns, err)
	a.mu.Lock()
	if err != nil {
		ns.backoff = min(max(2*ns.backoff, 200*time.Millisecond), 10*time.Second)
		if errors.Is(err, ErrThrottled) || errors.Is(err, ErrEC2) || errors.Is(err, ErrStoreUnavailable) {
			ns.nextSupply = a.now().Add(ns.backoff)
		} else {
			// Capacity problems: look again at the next tick, but do not hammer EC2.
			ns.nextSupply = a.now().Add(max(ns.backoff, a.cfg.Tick))
		}
	} else {
		ns.backoff = 0
		ns.nextSupply = time.Time{}
	}
	a.mu.Unlock()
	if err != nil && ctx.Err() == nil {
		a.log.Info("supply short", "node", ns.name, "deficit", deficit, "priority", int(prio), "err", err)
		if waiting > 0 && (errors.Is(err, ErrBudgetExhausted) || errors.Is(err, ErrSubnetExhausted) || errors.Is(err, ErrNoFreePrefixBlock)) {
			a.reclaimForWaiting(rec.SubnetID, ns.name)
		}
	}
}

// heldItems counts what the node holds in its mode: addresses (secondary) or prefixes.
// With activeOnly, items proposed for release or releasing are not counted.
func heldItems(rec ledger.NodeRecord, prefix, activeOnly bool) int {
	n := 0
	for _, e := range rec.ENIs {
		if prefix {
			for _, p := range e.Prefixes {
				if p.State == ledger.LeaseActive || (!activeOnly && p.State == ledger.LeaseReleaseProposed) {
					n++
				}
			}
			continue
		}
		for _, ad := range e.Addresses {
			if ad.State == ledger.LeaseActive || (!activeOnly && ad.State == ledger.LeaseReleaseProposed) {
				n++
			}
		}
	}
	return n
}

// usedSlots is how many of an ENI's IPv4 slots (besides its primary) are taken on EC2.
func usedSlots(e ledger.ENIRecord) int { return len(e.Addresses) + len(e.Prefixes) }

// fill adds deficit items (addresses or prefixes) to the node.
func (a *Allocator) fill(ctx context.Context, ns *nodeState, rec ledger.NodeRecord, deficit int, prio ec2gw.Priority) error {
	if ns.typ.Name == "" {
		return fmt.Errorf("%w: unknown instance type %q", ErrNodeAtLimit, rec.InstanceType)
	}
	prefix := rec.Mode == ledger.ModePrefix
	slots := ns.typ.SecondaryIPsPerENI()
	a.mu.Lock()
	pol := ns.policy
	a.mu.Unlock()
	if !pol.HasPodSubnets() && heldItems(rec, prefix, false) == 0 && len(rec.ENIs) < ns.typ.MaxENIsPerCard() && a.prewarmReady(rec) {
		// A starting node takes a pre-warmed ENI: one attach instead of an assign or a create.
		ok, err := a.attachPrewarmed(ctx, ns, rec, nextDeviceIndex(rec), prio)
		if err != nil {
			return err
		}
		if ok {
			rec, _ = a.led.Node(ns.name)
			deficit -= heldItems(rec, prefix, false)
			if deficit <= 0 {
				return nil
			}
		}
	}
	enis := append([]ledger.ENIRecord(nil), rec.ENIs...)
	sort.Slice(enis, func(i, j int) bool { return enis[i].DeviceIndex < enis[j].DeviceIndex })
	a.mu.Lock()
	deleting := maps.Clone(a.deleting)
	a.mu.Unlock()
	var lastErr error
	for _, e := range enis {
		if deficit <= 0 {
			return nil
		}
		if deleting[e.ID] {
			continue
		}
		if pol.ExcludesPrimaryENI() && (e.ID == rec.PrimaryENI || e.DeviceIndex == 0) {
			continue // custom networking: no pods on the primary ENI
		}
		free := slots - usedSlots(e)
		if free <= 0 {
			continue
		}
		n := min(free, deficit)
		got, err := a.assignOnENI(ctx, ns, e, n, prefix, prio)
		deficit -= got
		if err != nil {
			lastErr = err
			// With pod subnets an ENI whose subnet is out of room leaves the rest to a new
			// ENI in the next pod subnet.
			if !errors.Is(err, errENIFull) && !(pol.HasPodSubnets() && exhaustion(err)) {
				return err
			}
		}
	}
	if deficit <= 0 {
		return nil
	}
	if len(enis) >= ns.typ.MaxENIsPerCard() {
		if lastErr != nil {
			return lastErr
		}
		return fmt.Errorf("%w: %s (%s) holds %d ENIs, the most it can attach", ErrNodeAtLimit, ns.name, rec.InstanceType, len(enis))
	}
	return a.addENI(ctx, ns, rec, deficit, prio)
}

var errENIFull = errors.New("allocator: ENI full")

// placeableAddresses caps n at the addresses the subnet can give now (free, not cooling, within
// its budget), so a subnet that is short still gives waiting pods what it has instead of
// nothing. When nothing is placeable n is returned unchanged and the reservation fails with the
// reason (subnet or budget exhausted).
func (a *Allocator) placeableAddresses(subnetID string, n int, now time.Time) int {
	b, err := a.led.Budget(subnetID, now)
	if err != nil {
		return n
	}
	if avail := min(b.Free-b.Cooling, b.Headroom); avail > 0 && avail < n {
		return avail
	}
	return n
}

// assignOnENI places n items on an existing ENI and commits them. It returns how many arrived.
func (a *Allocator) assignOnENI(ctx context.Context, ns *nodeState, e ledger.ENIRecord, n int, prefix bool, prio ec2gw.Priority) (int, error) {
	owner := ledger.Owner{Node: ns.name, ENI: e.ID}
	for attempt := 0; attempt < 3; attempt++ {
		now := a.now()
		var addrs []netip.Addr
		var prefixes []netip.Prefix
		var err error
		if prefix {
			prefixes, err = a.led.ReservePrefixes(e.SubnetID, n, owner, now)
		} else {
			addrs, err = a.led.ReserveAddresses(e.SubnetID, a.placeableAddresses(e.SubnetID, n, now), owner, now)
		}
		if err != nil {
			return 0, ledgerErr(err, e.SubnetID)
		}
		if prefix {
			err = a.gw.AssignPrefixes(ctx, prio, e.ID, prefixes)
		} else {
			err = a.gw.AssignAddresses(ctx, prio, e.ID, addrs)
		}
		a.met.leaseOp("assign", err)
		switch {
		case err == nil:
			if cerr := a.commitAssigned(ctx, ns, e.ID, addrs, prefixes); cerr != nil {
				return 0, cerr
			}
			return len(addrs) + len(prefixes), nil
		case errors.Is(err, ec2gw.ErrAddressInUse):
			// The address may be on this very ENI already: assigned by a leader that died before
			// its commit, whose orphan this leader placed again because reconciliation skipped it
			// while this assignment was pending. Adopt what the ENI holds; what someone we do
			// not manage took elsewhere is learnt with the subnet, and placed around.
			got := a.resyncENI(ctx, ns, e.ID, prio)
			a.led.CancelReservation(e.SubnetID, owner, addrs, prefixes)
			if got > 0 {
				return got, nil
			}
			if rerr := a.rescanSubnet(ctx, prio, e.SubnetID); rerr != nil {
				return 0, rerr
			}
			continue
		case errors.Is(err, ec2gw.ErrENIAddressLimit):
			a.led.CancelReservation(e.SubnetID, owner, addrs, prefixes)
			a.resyncENI(ctx, ns, e.ID, prio)
			return 0, errENIFull
		case errors.Is(err, ec2gw.ErrSubnetFull):
			a.led.CancelReservation(e.SubnetID, owner, addrs, prefixes)
			_ = a.rescanSubnet(ctx, prio, e.SubnetID)
			return 0, fmt.Errorf("%w: %s (EC2 says InsufficientFreeAddressesInSubnet)", ErrSubnetExhausted, e.SubnetID)
		case errors.Is(err, ec2gw.ErrNoCidrBlock):
			a.led.CancelReservation(e.SubnetID, owner, addrs, prefixes)
			_ = a.rescanSubnet(ctx, prio, e.SubnetID)
			return 0, fmt.Errorf("%w: %s (EC2 says InsufficientCidrBlocks)", ErrNoFreePrefixBlock, e.SubnetID)
		case errors.Is(err, ec2gw.ErrThrottled):
			a.led.CancelReservation(e.SubnetID, owner, addrs, prefixes)
			return 0, fmt.Errorf("%w: %v", ErrThrottled, err)
		case errors.Is(err, ec2gw.ErrNotFound):
			a.led.CancelReservation(e.SubnetID, owner, addrs, prefixes)
			return 0, fmt.Errorf("%w: ENI %s not found: %v", ErrEC2, e.ID, err)
		case errors.Is(err, ec2gw.ErrInvalidRequest), errors.Is(err, ec2gw.ErrUnauthorized):
			a.led.CancelReservation(e.SubnetID, owner, addrs, prefixes)
			return 0, fmt.Errorf("%w: %v", ErrEC2, err)
		default:
			// Unknown outcome (5xx, transport, cancelled): EC2 may or may not have assigned.
			// Ask EC2 what the ENI holds and commit exactly that.
			got := a.resyncENI(ctx, ns, e.ID, prio)
			a.led.CancelReservation(e.SubnetID, owner, addrs, prefixes)
			if got > 0 {
				return got, nil
			}
			return 0, fmt.Errorf("%w: %v", ErrEC2, err)
		}
	}
	return 0, fmt.Errorf("%w: addresses in subnet %s keep being taken by others", ErrEC2, e.SubnetID)
}

// commitAssigned commits addresses EC2 has assigned to a node's ENI. A failed commit keeps them
// pending and retries later, so they are never given to anyone else.
//
// Addresses the ledger counts as foreign (adopted from EC2: a crashed leader's assignments) leave
// the subnet's foreign set in the same transaction, so etcd never holds one both as foreign and
// as leased.
func (a *Allocator) commitAssigned(ctx context.Context, ns *nodeState, eniID string, addrs []netip.Addr, prefixes []netip.Prefix) error {
	subnet := ""
	if rec, ok := a.led.Node(ns.name); ok {
		for _, e := range rec.ENIs {
			if e.ID == eniID {
				subnet = e.SubnetID
			}
		}
	}
	mine := map[netip.Addr]bool{}
	for _, ip := range addrs {
		mine[ip] = true
	}
	for _, p := range prefixes {
		for ip := p.Masked().Addr(); p.Contains(ip); ip = ip.Next() {
			mine[ip] = true
		}
	}
	err := a.mutateNodeUnforeign(ctx, ns, subnet, mine, func(rec *ledger.NodeRecord) error {
		return addToENI(rec, eniID, addrs, prefixes)
	})
	if err != nil {
		a.mu.Lock()
		ns.uncommitted = append(ns.uncommitted, uncommitted{eni: eniID, addrs: addrs, prefixes: prefixes})
		a.mu.Unlock()
	}
	return err
}

func addToENI(rec *ledger.NodeRecord, eniID string, addrs []netip.Addr, prefixes []netip.Prefix) error {
	for i := range rec.ENIs {
		e := &rec.ENIs[i]
		if e.ID != eniID {
			continue
		}
		have := map[netip.Addr]bool{}
		for _, ad := range e.Addresses {
			have[ad.IP] = true
		}
		for _, ip := range addrs {
			if !have[ip] {
				e.Addresses = append(e.Addresses, ledger.LeasedAddress{IP: ip, State: ledger.LeaseActive})
			}
		}
		havePfx := map[netip.Prefix]bool{}
		for _, p := range e.Prefixes {
			havePfx[p.Prefix] = true
		}
		for _, p := range prefixes {
			if !havePfx[p] {
				e.Prefixes = append(e.Prefixes, ledger.LeasedPrefix{Prefix: p, State: ledger.LeaseActive})
			}
		}
		return nil
	}
	return fmt.Errorf("allocator: node %s has no ENI %s", rec.Name, eniID)
}

// retryUncommitted retries commits that failed (etcd was unavailable).
func (a *Allocator) retryUncommitted(ctx context.Context, ns *nodeState) {
	a.mu.Lock()
	work := ns.uncommitted
	ns.uncommitted = nil
	a.mu.Unlock()
	for i, u := range work {
		if err := a.commitAssigned(ctx, ns, u.eni, u.addrs, u.prefixes); err != nil {
			a.mu.Lock()
			// commitAssigned queued u again; keep the rest too.
			ns.uncommitted = append(ns.uncommitted, work[i+1:]...)
			a.mu.Unlock()
			return
		}
	}
}

// resyncENI asks EC2 what an ENI of the node holds and commits addresses that EC2 has and the
// lease lacks (reserved for this node, free, or counted as foreign). It returns how many were
// added.
func (a *Allocator) resyncENI(ctx context.Context, ns *nodeState, eniID string, prio ec2gw.Priority) int {
	enis, err := a.gw.DescribeNetworkInterfaces(ctx, prio, ec2gw.ENIFilter{IDs: []string{eniID}})
	if err != nil || len(enis) != 1 {
		return 0
	}
	rec, ok := a.led.Node(ns.name)
	if !ok {
		return 0
	}
	var cur ledger.ENIRecord
	for _, e := range rec.ENIs {
		if e.ID == eniID {
			cur = e
		}
	}
	leased := map[string]bool{}
	for _, ad := range cur.Addresses {
		leased[ad.IP.String()] = true
	}
	for _, p := range cur.Prefixes {
		leased[p.Prefix.String()] = true
	}
	var addrs []netip.Addr
	var prefixes []netip.Prefix
	for _, ip := range enis[0].SecondaryIPs {
		if !leased[ip.String()] {
			addrs = append(addrs, ip)
		}
	}
	for _, p := range enis[0].Prefixes {
		if !leased[p.String()] {
			prefixes = append(prefixes, p)
		}
	}
	if len(addrs)+len(prefixes) == 0 {
		return 0
	}
	if _, err := a.claim(cur.SubnetID, ledger.Owner{Node: ns.name, ENI: eniID, IgnoreBudget: true}, addrs, prefixes); err != nil {
		a.log.Warn("resync ENI: cannot claim what EC2 has", "node", ns.name, "eni", eniID, "err", err)
		return 0
	}
	if err := a.commitAssigned(ctx, ns, eniID, addrs, prefixes); err != nil {
		return 0
	}
	a.met.leaseOp("adopt", nil)
	return len(addrs) + len(prefixes)
}

// addENI creates, attaches and commits a new ENI carrying up to deficit items. A pre-warmed ENI
// of the right subnet and type is attached instead when one is ready. The ENI goes to the
// node's own subnet, or, when its policy names pod subnets, to the candidate of the node's zone
// with the most room at its trend; a candidate that turns out to be out of room (in the ledger
// or on EC2) passes the ENI on to the next at once.
func (a *Allocator) addENI(ctx context.Context, ns *nodeState, rec ledger.NodeRecord, deficit int, prio ec2gw.Priority) error {
	device := nextDeviceIndex(rec)
	a.mu.Lock()
	pol := ns.policy
	a.mu.Unlock()
	if !pol.HasPodSubnets() {
		if ok, err := a.attachPrewarmed(ctx, ns, rec, device, prio); ok || err != nil {
			return err
		}
	}
	prefix := rec.Mode == ledger.ModePrefix
	n := min(deficit, ns.typ.SecondaryIPsPerENI())
	plan := a.planSubnets(pol, rec, prefix, n)
	if len(plan.order) == 0 {
		return a.noPodSubnet(pol, ns.name, a.placeOf(rec))
	}
	why := map[string]string{}
	for _, id := range plan.noRoom {
		why[id] = "no headroom left in its budget"
	}
	var failed []string
	var err error
	for i, c := range plan.order {
		if i > 0 && !exhaustion(err) {
			break
		}
		err = a.createENIIn(ctx, ns, rec, c, device, n, prio)
		if err == nil {
			if pol.HasPodSubnets() {
				var from []string
				for _, id := range plan.noRoom {
					if id != c.SubnetID {
						from = append(from, id)
					}
				}
				a.spilled(pol, ns.name, append(from, failed...), c.SubnetID, why)
			}
			return nil
		}
		if exhaustion(err) {
			failed = append(failed, c.SubnetID)
			why[c.SubnetID] = err.Error()
		}
	}
	if pol.HasPodSubnets() && exhaustion(err) && len(plan.order) > 1 {
		a.record(EventWarning, ReasonPodSubnetsExhausted, ns.name, "",
			fmt.Sprintf("every pod subnet of node %s's zone %s is out of room: %s", ns.name, rec.AvailabilityZone, strings.Join(failed, ", ")))
	}
	return err
}

// hasRoom reports whether a subnet can still give a new ENI its primary and one item.
func (a *Allocator) hasRoom(subnet string, prefix bool) bool {
	b, err := a.led.Budget(subnet, a.now())
	if err != nil {
		return false
	}
	room := policy.SubnetState{Budget: b}.Room(prefix)
	return room >= 2 || (prefix && room >= 1)
}

// createENIIn creates, attaches and commits a new ENI of the node in candidate subnet c.
func (a *Allocator) createENIIn(ctx context.Context, ns *nodeState, rec ledger.NodeRecord, c policy.Candidate, device, n int, prio ec2gw.Priority) error {
	prefix := rec.Mode == ledger.ModePrefix
	subnet := c.SubnetID
	owner := ledger.Owner{Node: ns.name}
	primary, err := a.led.ReserveAddresses(subnet, 1, owner, a.now())
	if err != nil {
		return ledgerErr(err, subnet)
	}
	var addrs []netip.Addr
	var prefixes []netip.Prefix
	if prefix {
		prefixes, err = a.led.ReservePrefixes(subnet, n, owner, a.now())
	} else {
		addrs, err = a.led.ReserveAddresses(subnet, a.placeableAddresses(subnet, n, a.now()), owner, a.now())
	}
	if err != nil {
		a.led.CancelReservation(subnet, owner, primary, nil)
		return ledgerErr(err, subnet)
	}
	cancelAll := func() {
		a.led.CancelReservation(subnet, owner, append(primary, addrs...), prefixes)
	}
	sgs := c.SecurityGroups
	if len(sgs) == 0 {
		if sgs, err = a.securityGroups(ctx, rec, prio); err != nil {
			cancelAll()
			return err
		}
	}
	eni, err := a.gw.CreateENI(ctx, prio, ec2gw.CreateENIInput{
		SubnetID:         subnet,
		SecurityGroupIDs: sgs,
		Description:      fmt.Sprintf("ipledger %s node %s", a.cfg.ClusterName, ns.name),
		PrimaryIP:        primary[0],
		SecondaryIPs:     addrs,
		Prefixes:         prefixes,
		Tags:             map[string]string{TagCluster: a.cfg.ClusterName, TagNode: ns.name},
		ClientToken:      a.clientToken(),
	})
	a.met.leaseOp("create-eni", err)
	if err != nil {
		cancelAll()
		if errors.Is(err, ec2gw.ErrAddressInUse) || errors.Is(err, ec2gw.ErrSubnetFull) || errors.Is(err, ec2gw.ErrNoCidrBlock) {
			_ = a.rescanSubnet(ctx, prio, subnet)
		}
		if errors.Is(err, ec2gw.ErrAddressInUse) && !a.hasRoom(subnet, prefix) {
			// Someone else took what was left of the subnet: it is exhausted, not broken.
			return fmt.Errorf("%w: %s: its free addresses were taken by ENIs ipledger does not manage: %v", ErrSubnetExhausted, subnet, err)
		}
		return ec2Err(err, subnet)
	}
	attID, err := a.gw.AttachENI(ctx, prio, eni.ID, rec.InstanceID, device, 0)
	if err != nil && ec2gw.OutcomeUnknown(err) {
		if id, ok := a.attachedAfterUnknown(ctx, prio, eni.ID, rec.InstanceID, device); ok {
			a.log.Info("attach answered badly but EC2 attached the ENI", "node", ns.name, "eni", eni.ID, "err", err)
			attID, err = id, nil
		}
	}
	if err != nil {
		a.log.Warn("attach failed; deleting the new ENI", "node", ns.name, "eni", eni.ID, "err", err)
		if derr := a.gw.DeleteENI(ctx, ec2gw.PriorityRelease, eni.ID); derr != nil {
			// Left for the leaked-ENI collector (it carries our tags).
			a.log.Warn("delete of unattached ENI failed", "eni", eni.ID, "err", derr)
		} else {
			cancelAll()
		}
		if errors.Is(err, ec2gw.ErrAttachmentLimit) {
			return fmt.Errorf("%w: %v", ErrNodeAtLimit, err)
		}
		return ec2Err(err, subnet)
	}
	newENI := ledger.ENIRecord{
		ID: eni.ID, MAC: eni.MAC, SubnetID: subnet, PrimaryIP: eni.PrimaryIP,
		DeviceIndex: device, AttachmentID: attID, Managed: true,
	}
	for _, ip := range eni.SecondaryIPs {
		newENI.Addresses = append(newENI.Addresses, ledger.LeasedAddress{IP: ip, State: ledger.LeaseActive})
	}
	for _, p := range eni.Prefixes {
		newENI.Prefixes = append(newENI.Prefixes, ledger.LeasedPrefix{Prefix: p, State: ledger.LeaseActive})
	}
	if _, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
		for _, e := range r.ENIs {
			if e.DeviceIndex == device {
				return fmt.Errorf("allocator: node %s already has an ENI at device index %d", r.Name, device)
			}
		}
		r.ENIs = append(r.ENIs, newENI)
		return nil
	}); err != nil {
		// The ENI is attached and tagged; reconciliation adopts it if this leader survives the
		// outage, or the next leader does.
		return err
	}
	// DeleteOnTermination is not needed to serve pods: set it at release priority.
	return nil
}

// attachedAfterUnknown reads an ENI again at once after an attach whose outcome is unknown (a
// 5xx, a lost connection, no answer in time: EC2 may have attached it all the same), and
// returns the attachment when the ENI is on the instance at the device index.
func (a *Allocator) attachedAfterUnknown(ctx context.Context, prio ec2gw.Priority, eniID, instanceID string, device int) (string, bool) {
	enis, err := a.gw.DescribeNetworkInterfaces(ctx, prio, ec2gw.ENIFilter{IDs: []string{eniID}})
	if err != nil || len(enis) != 1 {
		return "", false
	}
	att := enis[0].Attachment
	if att == nil || att.InstanceID != instanceID || att.DeviceIndex != device || att.ID == "" {
		return "", false
	}
	return att.ID, true
}

func nextDeviceIndex(rec ledger.NodeRecord) int {
	used := map[int]bool{}
	for _, e := range rec.ENIs {
		used[e.DeviceIndex] = true
	}
	for i := 1; ; i++ {
		if !used[i] {
			return i
		}
	}
}

func (a *Allocator) securityGroups(ctx context.Context, rec ledger.NodeRecord, prio ec2gw.Priority) ([]string, error) {
	if len(a.cfg.SecurityGroups) > 0 {
		return a.cfg.SecurityGroups, nil
	}
	enis, err := a.gw.DescribeNetworkInterfaces(ctx, prio, ec2gw.ENIFilter{IDs: []string{rec.PrimaryENI}})
	if err != nil {
		return nil, ec2Err(err, rec.SubnetID)
	}
	if len(enis) != 1 {
		return nil, fmt.Errorf("%w: primary ENI %s of %s not found on EC2", ErrEC2, rec.PrimaryENI, rec.Name)
	}
	return enis[0].SecurityGroupIDs, nil
}

// clientToken is a new ClientToken for a create.
func (a *Allocator) clientToken() string { return "ipledger-" + a.randomHex(16) }

// randomHex is n random bytes in hex, from the configured source.
func (a *Allocator) randomHex(n int) string {
	b := make([]byte, n)
	a.randMu.Lock()
	_, _ = io.ReadFull(a.cfg.Rand, b)
	a.randMu.Unlock()
	return hex.EncodeToString(b)
}

// ledgerErr maps a placement failure to the allocator's errors.
func ledgerErr(err error, subnet string) error {
	switch {
	case errors.Is(err, ledger.ErrBudgetExhausted):
		return fmt.Errorf("%w: %s: %v", ErrBudgetExhausted, subnet, err)
	case errors.Is(err, ledger.ErrNoFreePrefixBlock):
		return fmt.Errorf("%w: %s: %v", ErrNoFreePrefixBlock, subnet, err)
	case errors.Is(err, ledger.ErrSubnetExhausted):
		return fmt.Errorf("%w: %s: %v", ErrSubnetExhausted, subnet, err)
	}
	return fmt.Errorf("%w: %v", ErrEC2, err)
}

// ec2Err maps a gateway error to the allocator's errors.
func ec2Err(err error, subnet string) error {
	switch {
	case errors.Is(err, ec2gw.ErrThrottled):
		return fmt.Errorf("%w: %v", ErrThrottled, err)
	case errors.Is(err, ec2gw.ErrSubnetFull):
		return fmt.Errorf("%w: %s: %v", ErrSubnetExhausted, subnet, err)
	case errors.Is(err, ec2gw.ErrNoCidrBlock):
		return fmt.Errorf("%w: %s: %v", ErrNoFreePrefixBlock, subnet, err)
	case errors.Is(err, ec2gw.ErrAttachmentLimit), errors.Is(err, ec2gw.ErrENIAddressLimit):
		return fmt.Errorf("%w: %v", ErrNodeAtLimit, err)
	}
	return fmt.Errorf("%w: %v", ErrEC2, err)
}
