package allocator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"time"

	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

// Pre-warm limits.
const (
	MaxPrewarmNodes      = 1000
	DefaultPrewarmExpiry = 30 * time.Minute
	MaxPrewarmExpiry     = 24 * time.Hour
)

// PrewarmRequest is an autoscaler's request to prepare for nodes that do not exist yet.
type PrewarmRequest struct {
	SubnetID         string
	AvailabilityZone string
	InstanceType     string
	NodeCount        int
	AddressesPerNode int
	Expiry           time.Duration
}

var prewarmIDRE = regexp.MustCompile(`^pw-[0-9a-f]{16}$`)

// Prewarm reserves budget for req.NodeCount nodes and starts pre-creating one tagged ENI per
// node, each carrying req.AddressesPerNode addresses, paced at pre-warm priority under the one
// EC2 limiter. A node of that type that registers in the subnet gets one of them attached (one
// EC2 call) instead of an assign or a create.
func (a *Allocator) Prewarm(ctx context.Context, req PrewarmRequest) (ledger.PrewarmRecord, error) {
	if (req.SubnetID == "") == (req.AvailabilityZone == "") {
		return ledger.PrewarmRecord{}, invalid("subnet_id", "give exactly one of subnet_id and availability_zone")
	}
	if req.SubnetID != "" {
		if err := ValidateSubnetID("subnet_id", req.SubnetID); err != nil {
			return ledger.PrewarmRecord{}, err
		}
	}
	if req.NodeCount < 1 || req.NodeCount > MaxPrewarmNodes {
		return ledger.PrewarmRecord{}, invalid("node_count", "%d is outside 1..%d", req.NodeCount, MaxPrewarmNodes)
	}
	if req.Expiry == 0 {
		req.Expiry = DefaultPrewarmExpiry
	}
	if req.Expiry < time.Second || req.Expiry > MaxPrewarmExpiry {
		return ledger.PrewarmRecord{}, invalid("expiry", "%s is outside 1s..24h", req.Expiry)
	}
	typ, err := a.instanceType(ctx, req.InstanceType)
	if err != nil {
		return ledger.PrewarmRecord{}, err
	}
	if req.AddressesPerNode < 1 || req.AddressesPerNode > typ.SecondaryIPsPerENI() {
		return ledger.PrewarmRecord{}, invalid("addresses_per_node", "%d is outside 1..%d (one %s ENI's secondary addresses)", req.AddressesPerNode, typ.SecondaryIPsPerENI(), typ.Name)
	}
	now := a.now()
	per := 1 + req.AddressesPerNode
	need := req.NodeCount * per
	subnet, err := a.pickSubnet(req.SubnetID, req.AvailabilityZone, need, now)
	if err != nil {
		return ledger.PrewarmRecord{}, err
	}
	rec := ledger.PrewarmRecord{
		ID: "pw-" + a.randomHex(8), SubnetID: subnet.ID, AvailabilityZone: subnet.AvailabilityZone,
		InstanceType: typ.Name, NodeCount: req.NodeCount, AddressesPerNode: req.AddressesPerNode,
		CreatedAt: now, ExpiresAt: now.Add(req.Expiry), State: ledger.PrewarmPending,
	}
	for i := 0; i < req.NodeCount; i++ {
		rec.ENIs = append(rec.ENIs, ledger.PrewarmENI{State: ledger.PrewarmENICreating, ClientToken: a.clientToken()})
	}
	if err := a.putPrewarm(ctx, rec); err != nil {
		return ledger.PrewarmRecord{}, err
	}
	a.log.Info("pre-warm reserved", "prewarm", rec.ID, "subnet", rec.SubnetID, "type", rec.InstanceType, "nodes", rec.NodeCount, "addresses_per_node", rec.AddressesPerNode, "expires", rec.ExpiresAt)
	a.kickPrewarm()
	return rec, nil
}

// pickSubnet returns the subnet a request names, or the cluster's subnet in the AZ with the most
// headroom, and checks that need addresses fit its budget.
func (a *Allocator) pickSubnet(subnetID, az string, need int, now time.Time) (ledger.SubnetRecord, error) {
	var best ledger.Budget
	found := false
	for _, b := range a.led.Budgets(now) {
		if (subnetID != "" && b.SubnetID == subnetID) || (subnetID == "" && b.AvailabilityZone == az) {
			if !found || b.Headroom > best.Headroom {
				best, found = b, true
			}
		}
	}
	if !found {
		if subnetID != "" {
			return ledger.SubnetRecord{}, fmt.Errorf("%w: the cluster does not use subnet %s (a node must have registered there)", ErrNotFound, subnetID)
		}
		return ledger.SubnetRecord{}, fmt.Errorf("%w: the cluster uses no subnet in %s", ErrNotFound, az)
	}
	if best.Headroom < need {
		if best.Free-best.KeepFree < need {
			return ledger.SubnetRecord{}, fmt.Errorf("%w: %s has %d free addresses, the reservation needs %d", ErrSubnetExhausted, best.SubnetID, best.Free, need)
		}
		return ledger.SubnetRecord{}, fmt.Errorf("%w: %s has headroom %d under its budget, the reservation needs %d", ErrBudgetExhausted, best.SubnetID, best.Headroom, need)
	}
	s, _ := a.led.Subnet(best.SubnetID)
	return s, nil
}

// putPrewarm checks, commits and applies a new reservation record.
func (a *Allocator) putPrewarm(ctx context.Context, rec ledger.PrewarmRecord) error {
	release, err := a.slots.acquire(ctx, prewarmKey(rec.ID))
	if err != nil {
		return err
	}
	defer release()
	return a.putPrewarmHeld(ctx, rec)
}

// putPrewarmHeld is putPrewarm for a caller that holds the reservation's commit slot.
func (a *Allocator) putPrewarmHeld(ctx context.Context, rec ledger.PrewarmRecord) error {
	if err := a.led.CheckPrewarm(rec); err != nil {
		return fmt.Errorf("allocator: refusing to commit pre-warm %s: %w", rec.ID, err)
	}
	if _, err := a.commit(ctx, PutPrewarm(rec)); err != nil {
		return err
	}
	if err := a.led.PutPrewarm(rec); err != nil {
		a.fail(fmt.Errorf("allocator: ledger diverged from the store: %w", err))
		return err
	}
	return nil
}

// errPrewarmUnchanged tells mutatePrewarm that fn changed nothing: nothing is committed.
var errPrewarmUnchanged = errors.New("allocator: pre-warm reservation unchanged")

// mutatePrewarm applies fn to the reservation's current record under its commit slot, then
// commits and applies it. It returns the record as it is now (fn returning
// errPrewarmUnchanged commits nothing and is no error).
func (a *Allocator) mutatePrewarm(ctx context.Context, id string, fn func(rec *ledger.PrewarmRecord) error) (ledger.PrewarmRecord, error) {
	release, err := a.slots.acquire(ctx, prewarmKey(id))
	if err != nil {
		return ledger.PrewarmRecord{}, err
	}
	defer release()
	rec, ok := a.led.Prewarm(id)
	if !ok {
		return ledger.PrewarmRecord{}, fmt.Errorf("%w: pre-warm reservation %s", ErrNotFound, id)
	}
	if err := fn(&rec); errors.Is(err, errPrewarmUnchanged) {
		cur, _ := a.led.Prewarm(id)
		return cur, nil
	} else if err != nil {
		return ledger.PrewarmRecord{}, err
	}
	return rec, a.putPrewarmHeld(ctx, rec)
}

// CancelPrewarm ends a reservation now; its unused ENIs are deleted.
func (a *Allocator) CancelPrewarm(ctx context.Context, id string) (ledger.PrewarmRecord, error) {
	if !prewarmIDRE.MatchString(id) {
		return ledger.PrewarmRecord{}, invalid("id", "%q is not a pre-warm reservation id (pw-...)", id)
	}
	rec, err := a.mutatePrewarm(ctx, id, func(r *ledger.PrewarmRecord) error {
		if r.State != ledger.PrewarmPending && r.State != ledger.PrewarmReady {
			return errPrewarmUnchanged
		}
		r.State = ledger.PrewarmCancelled
		return nil
	})
	if err != nil {
		return ledger.PrewarmRecord{}, err
	}
	a.kickPrewarm()
	return rec, nil
}

func (a *Allocator) kickPrewarm() {
	select {
	case a.prewarmKick <- struct{}{}:
	default:
	}
}

// prewarmLoop creates the ENIs of pending reservations, expires old ones and deletes the ENIs of
// ended ones.
func (a *Allocator) prewarmLoop(ctx context.Context) {
	t := a.clk.NewTicker(a.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.prewarmKick:
		case <-t.Chan():
		}
		for _, rec := range a.led.Prewarms() {
			if ctx.Err() != nil {
				return
			}
			id := rec.ID
			if err := a.pass(ctx, func(ctx context.Context) error { return a.prewarmStep(ctx, id) }); err != nil && ctx.Err() == nil {
				a.log.Warn("pre-warm step failed; will retry", "prewarm", rec.ID, "err", err)
			}
		}
	}
}

// prewarmStep moves one reservation one step forward. Its EC2 calls are made outside any
// lock or commit slot; each record change is planned again from the record as it is then.
func (a *Allocator) prewarmStep(ctx context.Context, id string) error {
	rec, ok := a.led.Prewarm(id)
	if !ok {
		return nil
	}
	now := a.now()
	active := rec.State == ledger.PrewarmPending || rec.State == ledger.PrewarmReady
	if active && !now.Before(rec.ExpiresAt) {
		_, err := a.mutatePrewarm(ctx, id, func(r *ledger.PrewarmRecord) error {
			if r.State != ledger.PrewarmPending && r.State != ledger.PrewarmReady {
				return errPrewarmUnchanged
			}
			r.State = ledger.PrewarmExpired
			return nil
		})
		a.log.Info("pre-warm expired", "prewarm", id)
		return err
	}
	if !active {
		return a.prewarmCleanup(ctx, rec)
	}
	for _, e := range rec.ENIs {
		if e.State != ledger.PrewarmENICreating {
			continue
		}
		token := e.ClientToken
		if len(e.Addresses) == 0 {
			var err error
			if e, err = a.choosePrewarmAddresses(ctx, id, token); err != nil {
				return err
			}
			if e.ClientToken == "" {
				continue // the ENI is not creating any more
			}
		}
		eni, err := a.gw.CreateENI(ctx, ec2gw.PriorityPrewarm, ec2gw.CreateENIInput{
			SubnetID:         rec.SubnetID,
			SecurityGroupIDs: a.cfg.SecurityGroups,
			Description:      fmt.Sprintf("ipledger %s pre-warm %s", a.cfg.ClusterName, rec.ID),
			PrimaryIP:        e.PrimaryIP,
			SecondaryIPs:     e.Addresses,
			Tags:             map[string]string{TagCluster: a.cfg.ClusterName, TagPrewarm: rec.ID},
			ClientToken:      token,
		})
		a.met.leaseOp("prewarm-create-eni", err)
		if err != nil {
			if errors.Is(err, ec2gw.ErrAddressInUse) {
				// Someone took an address: choose again, under a new token.
				_, _ = a.mutatePrewarm(ctx, id, func(r *ledger.PrewarmRecord) error {
					i := prewarmENIByToken(*r, token)
					if i < 0 || r.ENIs[i].State != ledger.PrewarmENICreating {
						return errPrewarmUnchanged
					}
					r.ENIs[i].PrimaryIP, r.ENIs[i].Addresses = netip.Addr{}, nil
					r.ENIs[i].ClientToken = a.clientToken()
					return nil
				})
				_ = a.rescanSubnet(ctx, ec2gw.PriorityPrewarm, rec.SubnetID)
			}
			return ec2Err(err, rec.SubnetID)
		}
		// Recorded even if the reservation ended meanwhile: its cleanup deletes the ENI.
		if _, err := a.mutatePrewarm(ctx, id, func(r *ledger.PrewarmRecord) error {
			i := prewarmENIByToken(*r, token)
			if i < 0 || r.ENIs[i].State != ledger.PrewarmENICreating {
				return errPrewarmUnchanged
			}
			r.ENIs[i].ID, r.ENIs[i].MAC, r.ENIs[i].State = eni.ID, eni.MAC, ledger.PrewarmENIReady
			return nil
		}); err != nil {
			return err
		}
	}
	_, err := a.mutatePrewarm(ctx, id, func(r *ledger.PrewarmRecord) error {
		if r.State != ledger.PrewarmPending {
			return errPrewarmUnchanged
		}
		for _, e := range r.ENIs {
			if e.State == ledger.PrewarmENICreating {
				return errPrewarmUnchanged
			}
		}
		r.State = ledger.PrewarmReady
		a.log.Info("pre-warm ready", "prewarm", id, "enis", len(r.ENIs))
		return nil
	})
	return err
}

func prewarmENIByToken(rec ledger.PrewarmRecord, token string) int {
	for i, e := range rec.ENIs {
		if e.ClientToken == token {
			return i
		}
	}
	return -1
}

// choosePrewarmAddresses chooses and records the addresses of a pre-warm ENI before it is
// created, so a retry (or a new leader) repeats the same create and the ClientToken returns the
// same ENI. It returns the ENI as recorded (zero when it is not creating any more).
func (a *Allocator) choosePrewarmAddresses(ctx context.Context, id, token string) (ledger.PrewarmENI, error) {
	var chosen []netip.Addr
	var reserved bool
	rec, err := a.mutatePrewarm(ctx, id, func(r *ledger.PrewarmRecord) error {
		i := prewarmENIByToken(*r, token)
		if i < 0 || r.ENIs[i].State != ledger.PrewarmENICreating || len(r.ENIs[i].Addresses) > 0 {
			return errPrewarmUnchanged
		}
		a.mu.Lock()
		addrs, ok := a.prewarmChosen[token]
		a.mu.Unlock()
		if !ok {
			var err error
			if addrs, err = a.led.ReserveAddresses(r.SubnetID, 1+r.AddressesPerNode, ledger.Owner{Prewarm: r.ID}, a.now()); err != nil {
				return ledgerErr(err, r.SubnetID)
			}
		}
		chosen, reserved = addrs, true
		r.ENIs[i].PrimaryIP, r.ENIs[i].Addresses = addrs[0], addrs[1:]
		return nil
	})
	if reserved {
		a.mu.Lock()
		switch {
		case err == nil:
			delete(a.prewarmChosen, token)
		case errors.Is(err, ErrStoreUnavailable):
			// The store may hold the choice although the commit looked failed: keep the
			// addresses reserved and choose them again next time.
			a.prewarmChosen[token] = chosen
		default:
			delete(a.prewarmChosen, token)
			a.led.CancelReservation(rec.SubnetID, ledger.Owner{Prewarm: id}, chosen, nil)
		}
		a.mu.Unlock()
	}
	if err != nil {
		return ledger.PrewarmENI{}, err
	}
	if i := prewarmENIByToken(rec, token); i >= 0 && rec.ENIs[i].State == ledger.PrewarmENICreating {
		return rec.ENIs[i], nil
	}
	return ledger.PrewarmENI{}, nil
}

// prewarmCleanup deletes the unused ENIs of an ended reservation, then the reservation. An ENI
// being attached to a node keeps the reservation for another round.
func (a *Allocator) prewarmCleanup(ctx context.Context, rec ledger.PrewarmRecord) error {
	var failed []error
	for _, e := range rec.ENIs {
		a.mu.Lock()
		if addrs, ok := a.prewarmChosen[e.ClientToken]; ok && len(e.Addresses) == 0 {
			a.led.CancelReservation(rec.SubnetID, ledger.Owner{Prewarm: rec.ID}, addrs, nil)
			delete(a.prewarmChosen, e.ClientToken)
		}
		attaching := e.ID != "" && a.attaching[e.ID]
		a.mu.Unlock()
		if attaching {
			return nil
		}
		if e.State == ledger.PrewarmENIAttached {
			continue
		}
		if e.ID != "" {
			if err := a.gw.DeleteENI(ctx, ec2gw.PriorityRelease, e.ID); err != nil && !errors.Is(err, ec2gw.ErrNotFound) {
				// Keep going: one ENI that cannot go (attached to a node while the reservation
				// does not know it, until reconciliation adopts it) does not keep the others.
				failed = append(failed, ec2Err(err, rec.SubnetID))
				continue
			}
			a.met.leaseOp("prewarm-delete-eni", nil)
		} else if e.ClientToken != "" && len(e.Addresses) > 0 {
			// A create may have happened without its commit: find it by tag before forgetting it.
			enis, err := a.gw.DescribeNetworkInterfaces(ctx, ec2gw.PriorityRelease, ec2gw.ENIFilter{Tags: map[string]string{TagPrewarm: rec.ID}})
			if err != nil {
				failed = append(failed, ec2Err(err, rec.SubnetID))
				continue
			}
			for _, x := range enis {
				if x.PrimaryIP == e.PrimaryIP {
					if err := a.gw.DeleteENI(ctx, ec2gw.PriorityRelease, x.ID); err != nil && !errors.Is(err, ec2gw.ErrNotFound) {
						failed = append(failed, ec2Err(err, rec.SubnetID))
					}
				}
			}
		}
	}
	if len(failed) > 0 {
		return errors.Join(failed...)
	}
	release, err := a.slots.acquire(ctx, prewarmKey(rec.ID))
	if err != nil {
		return err
	}
	defer release()
	cur, ok := a.led.Prewarm(rec.ID)
	if !ok {
		return nil
	}
	for i, e := range cur.ENIs {
		if e.State != rec.ENIs[i].State || e.ID != rec.ENIs[i].ID {
			return nil // changed while its ENIs were deleted: look again next round
		}
	}
	if _, err := a.commit(ctx, DeletePrewarm(rec.ID)); err != nil {
		return err
	}
	a.led.DeletePrewarm(rec.ID)
	a.log.Info("pre-warm ended", "prewarm", rec.ID, "state", rec.State)
	return nil
}

// attachPrewarmed attaches a ready pre-warmed ENI of the node's subnet and type, if any: one
// EC2 call gives the node an ENI full of addresses. The ENI is claimed in memory before the
// attach (no other node takes it, the reservation's cleanup leaves it), and the attach is
// committed with the reservation's record, planned again from the record as it is then.
func (a *Allocator) attachPrewarmed(ctx context.Context, ns *nodeState, rec ledger.NodeRecord, device int, prio ec2gw.Priority) (bool, error) {
	if rec.Mode != ledger.ModeSecondaryIP {
		return false, nil
	}
	pwID, eni, ok := a.claimPrewarmed(rec)
	if !ok {
		return false, nil
	}
	defer func() {
		a.mu.Lock()
		delete(a.attaching, eni.ID)
		a.mu.Unlock()
	}()
	attID, err := a.gw.AttachENI(ctx, prio, eni.ID, rec.InstanceID, device, 0)
	a.met.leaseOp("prewarm-attach", err)
	if err != nil && ec2gw.OutcomeUnknown(err) {
		if id, ok := a.attachedAfterUnknown(ctx, prio, eni.ID, rec.InstanceID, device); ok {
			attID, err = id, nil
		}
	}
	if err != nil {
		a.log.Warn("attach of a pre-warmed ENI failed; creating one instead", "node", ns.name, "eni", eni.ID, "err", err)
		return false, nil
	}
	eniRec := ledger.ENIRecord{ID: eni.ID, MAC: eni.MAC, SubnetID: rec.SubnetID, PrimaryIP: eni.PrimaryIP, DeviceIndex: device,
		AttachmentID: attID, Managed: true}
	for _, ip := range eni.Addresses {
		eniRec.Addresses = append(eniRec.Addresses, ledger.LeasedAddress{IP: ip, State: ledger.LeaseActive})
	}
	if err := a.commitPrewarmedAttach(ctx, ns, pwID, eniRec); err != nil {
		// Attached but not committed: reconciliation adopts it (diff.ReservedENIAttached).
		return true, err
	}
	a.log.Info("attached a pre-warmed ENI", "node", ns.name, "eni", eni.ID, "prewarm", pwID, "addresses", len(eni.Addresses))
	return true, nil
}

// commitPrewarmedAttach gives a node a reservation's ENI attached to its instance: the node's
// record gains the ENI and the reservation marks it attached, in one transaction.
func (a *Allocator) commitPrewarmedAttach(ctx context.Context, ns *nodeState, pwID string, eniRec ledger.ENIRecord) error {
	_, err := a.updateNode(ctx, ns, []string{prewarmKey(pwID)}, func(r *ledger.NodeRecord) ([]Change, func() error, error) {
		pw, ok := a.led.Prewarm(pwID)
		if !ok {
			return nil, nil, fmt.Errorf("%w: pre-warm reservation %s", ErrNotFound, pwID)
		}
		k := -1
		for i, e := range pw.ENIs {
			if e.ID == eniRec.ID && e.State != ledger.PrewarmENIAttached {
				k = i
			}
		}
		if k < 0 {
			return nil, nil, fmt.Errorf("allocator: pre-warm reservation %s has no unattached ENI %s", pwID, eniRec.ID)
		}
		for _, x := range r.ENIs {
			if x.DeviceIndex == eniRec.DeviceIndex || x.ID == eniRec.ID {
				return nil, nil, fmt.Errorf("allocator: node %s already has ENI %s or device index %d", r.Name, eniRec.ID, eniRec.DeviceIndex)
			}
		}
		pw.ENIs[k].State, pw.ENIs[k].NodeName = ledger.PrewarmENIAttached, ns.name
		if allAttached(pw) {
			pw.State = ledger.PrewarmConsumed
		}
		r.ENIs = append(r.ENIs, eniRec)
		return []Change{PutPrewarm(pw)}, func() error { return a.led.PutPrewarm(pw) }, nil
	})
	return err
}

// adoptPrewarmed gives a node a reservation's ENI that EC2 has attached to the node's instance
// although the records do not say so (the attach's commit was lost).
func (a *Allocator) adoptPrewarmed(ctx context.Context, node, pwID string, e ec2gw.ENI) error {
	ns, ok := a.node(node)
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownNode, node)
	}
	er := ledger.ENIRecord{ID: e.ID, MAC: e.MAC, SubnetID: e.SubnetID, PrimaryIP: e.PrimaryIP, DeviceIndex: e.Attachment.DeviceIndex,
		NetworkCardIndex: e.Attachment.NetworkCardIndex, AttachmentID: e.Attachment.ID, Managed: true, DeleteOnTermination: e.Attachment.DeleteOnTermination}
	for _, ip := range e.SecondaryIPs {
		er.Addresses = append(er.Addresses, ledger.LeasedAddress{IP: ip, State: ledger.LeaseActive})
	}
	if err := a.commitPrewarmedAttach(ctx, ns, pwID, er); err != nil {
		return err
	}
	a.met.leaseOp("adopt", nil)
	return nil
}

// claimPrewarmed picks a ready pre-warmed ENI for a node (the reservation that expires first)
// and marks it as being attached.
func (a *Allocator) claimPrewarmed(rec ledger.NodeRecord) (string, ledger.PrewarmENI, bool) {
	pws := a.led.Prewarms()
	sort.Slice(pws, func(i, j int) bool { return pws[i].ExpiresAt.Before(pws[j].ExpiresAt) })
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, pw := range pws {
		if pw.SubnetID != rec.SubnetID || pw.InstanceType != rec.InstanceType ||
			(pw.State != ledger.PrewarmPending && pw.State != ledger.PrewarmReady) || !now.Before(pw.ExpiresAt) {
			continue
		}
		for _, e := range pw.ENIs {
			if e.State == ledger.PrewarmENIReady && e.ID != "" && !a.attaching[e.ID] {
				a.attaching[e.ID] = true
				return pw.ID, e, true
			}
		}
	}
	return "", ledger.PrewarmENI{}, false
}

// prewarmReady reports whether a ready pre-warmed ENI waits for nodes like this one.
func (a *Allocator) prewarmReady(rec ledger.NodeRecord) bool {
	now := a.now()
	for _, pw := range a.led.Prewarms() {
		if pw.SubnetID != rec.SubnetID || pw.InstanceType != rec.InstanceType || !now.Before(pw.ExpiresAt) {
			continue
		}
		for _, e := range pw.ENIs {
			if e.State == ledger.PrewarmENIReady && e.ID != "" {
				return true
			}
		}
	}
	return false
}

func allAttached(pw ledger.PrewarmRecord) bool {
	for _, e := range pw.ENIs {
		if e.State != ledger.PrewarmENIAttached {
			return false
		}
	}
	return true
}
