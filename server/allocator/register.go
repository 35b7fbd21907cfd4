package allocator

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"time"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

var (
	nodeNameRE   = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)
	eniIDRE      = regexp.MustCompile(`^eni-[0-9a-f]{8,17}$`)
	subnetIDRE   = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)
	azRE         = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-\d[a-z]$`)
)

// ValidateNodeName checks a Kubernetes node name (DNS-1123 subdomain).
func ValidateNodeName(field, name string) error {
	if len(name) == 0 || len(name) > 253 || !nodeNameRE.MatchString(name) {
		return invalid(field, "%q is not a valid node name (DNS-1123 subdomain, at most 253 characters)", name)
	}
	return nil
}

// ValidateSubnetID checks an EC2 subnet id.
func ValidateSubnetID(field, id string) error {
	if !subnetIDRE.MatchString(id) {
		return invalid(field, "%q is not a subnet id (subnet-...)", id)
	}
	return nil
}

func validateRegister(req Registration) error {
	if err := ValidateNodeName("node_name", req.NodeName); err != nil {
		return err
	}
	if !instanceIDRE.MatchString(req.InstanceID) {
		return invalid("instance_id", "%q is not an instance id (i-...)", req.InstanceID)
	}
	if _, ok := instancetypes.Lookup(req.InstanceType); !ok {
		return invalid("instance_type", "unknown instance type %q", req.InstanceType)
	}
	if !azRE.MatchString(req.AvailabilityZone) {
		return invalid("availability_zone", "%q is not an availability zone", req.AvailabilityZone)
	}
	if err := ValidateSubnetID("subnet_id", req.SubnetID); err != nil {
		return err
	}
	if !eniIDRE.MatchString(req.PrimaryENI) {
		return invalid("primary_eni_id", "%q is not an ENI id (eni-...)", req.PrimaryENI)
	}
	if !req.PrimaryIP.Is4() {
		return invalid("primary_ip", "%q is not an IPv4 address", req.PrimaryIP)
	}
	if len(req.Labels) > 64 {
		return invalid("labels", "%d labels; at most 64", len(req.Labels))
	}
	for k, v := range req.Labels {
		if !policy.LabelKeyRE.MatchString(k) || !policy.LabelValueRE.MatchString(v) {
			return invalid("labels", "%q=%q is not a valid label", k, v)
		}
	}
	if len(req.AgentVersion) > 128 {
		return invalid("agent_version", "longer than 128 characters")
	}
	return nil
}

// RegisterNode verifies a node against EC2, records it and returns its pool and policy.
// Registering the same node and instance again is idempotent.
//
// The EC2 checks run first, outside any lock or commit slot (concurrent registrations share
// batched DescribeInstances calls); then, under the commit slots of the node's name and its
// instance, and its subnet's slot shared (registrations in one subnet commit concurrently, and
// etcd groups their commits; a scan of the subnet's foreign addresses waits for them), the
// uniqueness checks are made again on what the ledger holds then, and only the node's record is
// committed. The instance's own addresses are held in the ledger (Ledger.Hold) before anything
// is committed, so no other node's supply can place them in the meantime.
func (a *Allocator) RegisterNode(ctx context.Context, req Registration) (*Pool, policy.Policy, error) {
	return a.registerNode(ctx, req, nil)
}

// registerNode is RegisterNode; described, when set, is EC2's description of the instance
// made just now (pending discovery's), checked instead of describing the instance again.
func (a *Allocator) registerNode(ctx context.Context, req Registration, described *ec2gw.Instance) (*Pool, policy.Policy, error) {
	if err := validateRegister(req); err != nil {
		return nil, policy.Policy{}, err
	}
	name := req.NodeName
	if rec, ok := a.led.Node(name); ok && rec.InstanceID == req.InstanceID {
		return a.reregister(ctx, rec, req)
	}
	if other, ok := a.led.NodeByInstance(req.InstanceID); ok && other.Name != name {
		return nil, policy.Policy{}, fmt.Errorf("%w: %s is registered as %s", ErrInstanceRegistered, req.InstanceID, other.Name)
	}
	var inst ec2gw.Instance
	var err error
	if described != nil {
		inst, err = checkInstance(*described, req)
	} else {
		inst, err = a.verifyInstance(ctx, req)
	}
	if err != nil {
		return nil, policy.Policy{}, err
	}
	typ, err := a.instanceType(ctx, req.InstanceType)
	if err != nil {
		return nil, policy.Policy{}, err
	}
	if err := a.learnSubnet(ctx, req.SubnetID, ec2gw.PriorityNodeStart); err != nil {
		return nil, policy.Policy{}, err
	}
	// ENIs of this cluster already on the instance (a previous leader's) may lie in pod
	// subnets; and the node's policy may name pod subnets the cluster has not used yet.
	for _, e := range inst.ENIs {
		if e.Attachment != nil && e.Attachment.DeviceIndex != 0 && e.Tags[TagCluster] == a.cfg.ClusterName && e.SubnetID != inst.SubnetID {
			if err := a.learnSubnet(ctx, e.SubnetID, ec2gw.PriorityNodeStart); err != nil {
				return nil, policy.Policy{}, err
			}
		}
	}
	a.mu.Lock()
	pol := policy.Match(policy.List(a.policies), inst.Tags, inst.Type)
	a.mu.Unlock()
	a.preparePodSubnets(ctx, pol, a.placeOf(ledger.NodeRecord{AvailabilityZone: inst.AvailabilityZone, SubnetID: inst.SubnetID}))
	for range 3 {
		// The name may belong to another instance: if that instance is gone, the new one takes
		// over. EC2 says so before the slots are taken; under them the record must be the same.
		replaced := ""
		if rec, ok := a.led.Node(name); ok && rec.InstanceID != req.InstanceID {
			gone, err := a.instanceGone(ctx, rec.InstanceID, ec2gw.PriorityNodeStart)
			if err != nil {
				return nil, policy.Policy{}, err
			}
			if !gone {
				return nil, policy.Policy{}, fmt.Errorf("%w: %s is registered for %s", ErrNodeNameTaken, name, rec.InstanceID)
			}
			replaced = rec.InstanceID
		}
		pool, pol, again, err := a.registerHeld(ctx, req, inst, typ, replaced)
		if again {
			continue
		}
		return pool, pol, err
	}
	return nil, policy.Policy{}, fmt.Errorf("%w: registrations of %s keep racing; retry", ErrStoreUnavailable, name)
}

// registerHeld is RegisterNode under the commit slots. again says the ledger changed since the
// checks outside the slots: they are made again.
func (a *Allocator) registerHeld(ctx context.Context, req Registration, inst ec2gw.Instance, typ instancetypes.Type, replaced string) (*Pool, policy.Policy, bool, error) {
	name := req.NodeName
	release, err := a.slots.acquireShared(ctx, []string{nodeKey(name), instanceKey(req.InstanceID)}, []string{subnetKey(inst.SubnetID)})
	if err != nil {
		return nil, policy.Policy{}, false, err
	}
	defer release()
	if rec, ok := a.led.Node(name); ok {
		if rec.InstanceID == req.InstanceID || rec.InstanceID != replaced {
			return nil, policy.Policy{}, true, nil // registered meanwhile (or by another instance)
		}
		if err := a.removeNodeHeld(ctx, name, "instance replaced"); err != nil {
			return nil, policy.Policy{}, false, err
		}
	} else if replaced != "" {
		return nil, policy.Policy{}, true, nil
	}
	if other, ok := a.led.NodeByInstance(req.InstanceID); ok {
		return nil, policy.Policy{}, false, fmt.Errorf("%w: %s is registered as %s", ErrInstanceRegistered, req.InstanceID, other.Name)
	}

	a.mu.Lock()
	// Policies match facts the server verified (the instance's EC2 tags and type), never the
	// labels the agent reports: a node must not choose its own policy.
	pol := policy.Match(policy.List(a.policies), inst.Tags, inst.Type)
	a.mu.Unlock()
	// What EC2 put on the instance at launch (or an earlier leader assigned) is the node's
	// lease from this commit on; its kind decides the mode.
	rec := nodeRecordFrom(inst, req, pol.Name, "", a.cfg.ClusterName, a.now())
	launchedIPs, launchedPrefixes := 0, 0
	for _, e := range rec.ENIs {
		launchedIPs += len(e.Addresses)
		launchedPrefixes += len(e.Prefixes)
	}
	mode, modeMsg := policy.ModeForLaunch(pol, typ, launchedIPs, launchedPrefixes)
	rec.Mode = mode
	if at := a.placeOf(rec); pol.HasPodSubnets() && len(pol.Candidates(at, a.led.Subnets())) == 0 {
		return nil, policy.Policy{}, false, a.noPodSubnet(pol, name, at)
	}
	if pol.ExcludesPrimaryENI() && typ.MaxENIsPerCard() < 2 {
		return nil, policy.Policy{}, false, &PodSubnetError{Policy: pol.Name, Node: name,
			Msg: fmt.Sprintf("%s attaches %d ENI and the policy keeps pods off the primary ENI (custom networking)", typ.Name, typ.MaxENIsPerCard())}
	}

	// The instance's own addresses become unplaceable at once: they are held in the ledger (a
	// node's record takes held addresses over when it is applied), so no other node's supply can
	// place them between this check and the commit.
	mine := map[netip.Addr]bool{}
	for _, e := range rec.ENIs {
		mine[e.PrimaryIP] = true
		for _, ad := range e.Addresses {
			mine[ad.IP] = true
		}
		for _, p := range e.Prefixes {
			for ip := p.Prefix.Masked().Addr(); p.Prefix.Contains(ip); ip = ip.Next() {
				mine[ip] = true
			}
		}
	}
	held := make([]netip.Addr, 0, len(mine))
	for ip := range mine {
		held = append(held, ip)
	}
	if err := a.led.Hold(rec.SubnetID, held); err != nil {
		return nil, policy.Policy{}, false, fmt.Errorf("allocator: subnet %s: %w", rec.SubnetID, err)
	}
	defer a.led.Unhold(rec.SubnetID, held)
	// An address of the instance may already be reserved for another node or reservation: the
	// last scan of the subnet predates the instance, so placement took it for free. EC2 has it on
	// this instance, so the call behind that reservation will be refused; let it go now.
	for _, ip := range held {
		if o, taken := a.led.OwnerOf(ip); taken && o.Kind == ledger.OwnerPending && o.Node != name {
			var pfx []netip.Prefix
			if o.Prefix.IsValid() {
				pfx = []netip.Prefix{o.Prefix}
			}
			a.led.CancelReservation(rec.SubnetID, ledger.Owner{Node: o.Node, ENI: o.ENI, Prewarm: o.Prewarm}, []netip.Addr{ip}, pfx)
			a.log.Info("an instance's address was reserved for someone else; released", "node", name, "address", ip, "reserved_for", o.Node+o.Prewarm)
		}
	}
	if err := a.led.CheckNode(rec); err != nil {
		return nil, policy.Policy{}, false, fmt.Errorf("%w: %s: %v; reconciliation will settle it, retry", ErrStoreUnavailable, name, err)
	}
	// Only the node's record is written: the subnet's foreign set stays what its last scan
	// found (which may list this instance's addresses, as it predates the instance); the node's
	// record wins over a scan older than the node (ledger.Conflicts, diff.Diff), and the next
	// scan leaves them out. Rewriting the subnet record here made every registration write the
	// whole foreign set (169 MiB of etcd after 5,000 registrations, issue #14).
	rev, err := a.commit(ctx, PutNode(rec))
	if err != nil {
		return nil, policy.Policy{}, false, err
	}
	// The node takes its addresses, then (deferred) the hold ends.
	if err := a.led.PutNode(rec); err != nil {
		a.fail(fmt.Errorf("allocator: ledger diverged from the store: %w", err))
		return nil, policy.Policy{}, false, err
	}
	a.mu.Lock()
	ns := a.newNodeStateLocked(rec)
	ns.typ, ns.policy, ns.modeMsg = typ, pol, modeMsg
	ns.fresh, ns.registered = true, a.now()
	// A new node's agent has handed out nothing yet: what the instance arrived with (EC2 put
	// it there at launch) is free, not assumed in use until the first report, or a launched
	// node would get an EC2 call for one more address it does not need.
	ns.assumedInUse = 0
	ns.generation = uint64(rev)
	a.addNodeLocked(ns)
	pool := a.poolLocked(ns, rec)
	a.mu.Unlock()
	a.kick(name)
	a.met.registrations.Inc()
	a.log.Info("node registered", "node", name, "instance", inst.ID, "type", inst.Type, "subnet", inst.SubnetID, "policy", pol.Name, "mode", mode,
		"adopted_addresses", launchedIPs, "adopted_prefixes", launchedPrefixes)
	if launchedIPs+launchedPrefixes > 0 {
		a.met.launchAdopted.WithLabelValues("address").Add(float64(launchedIPs))
		a.met.launchAdopted.WithLabelValues("prefix").Add(float64(launchedPrefixes))
	}
	if modeMsg != "" {
		a.log.Warn(modeMsg, "node", name)
	}
	return pool, pol, false, nil
}

// nodeRecordFrom builds a new node's record from EC2's view of its instance: the primary ENI
// always, other ENIs when they carry this cluster's tag (a previous leader created them), with
// what EC2 already has on them.
func nodeRecordFrom(inst ec2gw.Instance, req Registration, policy string, mode ledger.AddressMode, cluster string, now time.Time) ledger.NodeRecord {
	rec := ledger.NodeRecord{
		Name:             req.NodeName,
		InstanceID:       inst.ID,
		InstanceType:     inst.Type,
		AvailabilityZone: inst.AvailabilityZone,
		SubnetID:         inst.SubnetID,
		PrimaryIP:        inst.PrivateIP,
		Labels:           req.Labels,
		Tags:             cloneTags(inst.Tags),
		Policy:           policy,
		Mode:             mode,
		RegisteredAt:     now,
	}
	for _, e := range inst.ENIs {
		if e.Attachment == nil {
			continue
		}
		// The primary ENI is in the node's subnet; the cluster's own ENIs may be in pod subnets.
		primary := e.Attachment.DeviceIndex == 0
		if (primary && e.SubnetID != inst.SubnetID) || (!primary && e.Tags[TagCluster] != cluster) {
			continue
		}
		er := ledger.ENIRecord{
			ID: e.ID, MAC: e.MAC, SubnetID: e.SubnetID, PrimaryIP: e.PrimaryIP,
			DeviceIndex: e.Attachment.DeviceIndex, NetworkCardIndex: e.Attachment.NetworkCardIndex,
			AttachmentID: e.Attachment.ID, Managed: !primary, DeleteOnTermination: e.Attachment.DeleteOnTermination,
		}
		if primary {
			rec.PrimaryENI = e.ID
		}
		for _, ip := range e.SecondaryIPs {
			er.Addresses = append(er.Addresses, ledger.LeasedAddress{IP: ip, State: ledger.LeaseActive})
		}
		for _, p := range e.Prefixes {
			er.Prefixes = append(er.Prefixes, ledger.LeasedPrefix{Prefix: p, State: ledger.LeaseActive})
		}
		rec.ENIs = append(rec.ENIs, er)
	}
	sort.Slice(rec.ENIs, func(i, j int) bool { return rec.ENIs[i].DeviceIndex < rec.ENIs[j].DeviceIndex })
	return rec
}

func leasedIPs(e ledger.ENIRecord) []netip.Addr {
	out := make([]netip.Addr, 0, len(e.Addresses))
	for _, ad := range e.Addresses {
		out = append(out, ad.IP)
	}
	return out
}

// reregister answers a repeated registration of the same node and instance.
func (a *Allocator) reregister(ctx context.Context, rec ledger.NodeRecord, req Registration) (*Pool, policy.Policy, error) {
	if rec.InstanceType != req.InstanceType || rec.AvailabilityZone != req.AvailabilityZone ||
		rec.SubnetID != req.SubnetID || rec.PrimaryENI != req.PrimaryENI || rec.PrimaryIP.String() != req.PrimaryIP.String() {
		return nil, policy.Policy{}, fmt.Errorf("%w: %s is registered with different facts (type %s, AZ %s, subnet %s, ENI %s, IP %s)",
			ErrInstanceMismatch, rec.Name, rec.InstanceType, rec.AvailabilityZone, rec.SubnetID, rec.PrimaryENI, rec.PrimaryIP)
	}
	ns, ok := a.node(rec.Name)
	if !ok {
		return nil, policy.Policy{}, fmt.Errorf("%w: %s", ErrUnknownNode, rec.Name)
	}
	if !equalLabels(rec.Labels, req.Labels) {
		if _, err := a.mutateNode(ctx, ns, func(r *ledger.NodeRecord) error {
			r.Labels = req.Labels
			return nil
		}); err != nil {
			return nil, policy.Policy{}, err
		}
	}
	pool, err := a.Pool(rec.Name)
	if err != nil {
		return nil, policy.Policy{}, err
	}
	a.mu.Lock()
	pol := ns.policy
	a.mu.Unlock()
	a.kick(ns.name)
	return pool, pol, nil
}

func cloneTags(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// verifyInstance checks the request against what EC2 says about the instance.
func (a *Allocator) verifyInstance(ctx context.Context, req Registration) (ec2gw.Instance, error) {
	inst, err := a.describer.describe(ctx, req.InstanceID, ec2gw.PriorityNodeStart)
	if errors.Is(err, ec2gw.ErrNotFound) {
		return ec2gw.Instance{}, fmt.Errorf("%w: EC2 does not know instance %s", ErrInstanceMismatch, req.InstanceID)
	}
	if err != nil {
		return ec2gw.Instance{}, ec2Err(err, req.SubnetID)
	}
	return checkInstance(inst, req)
}

// checkInstance checks the request against EC2's description of the instance.
func checkInstance(inst ec2gw.Instance, req Registration) (ec2gw.Instance, error) {
	mismatch := func(field, got, want string) error {
		return fmt.Errorf("%w: %s: request says %q, EC2 says %q", ErrInstanceMismatch, field, want, got)
	}
	switch {
	case inst.State != "running" && inst.State != "pending":
		return ec2gw.Instance{}, fmt.Errorf("%w: instance %s is %s", ErrInstanceMismatch, inst.ID, inst.State)
	case inst.Type != req.InstanceType:
		return ec2gw.Instance{}, mismatch("instance_type", inst.Type, req.InstanceType)
	case inst.AvailabilityZone != req.AvailabilityZone:
		return ec2gw.Instance{}, mismatch("availability_zone", inst.AvailabilityZone, req.AvailabilityZone)
	case inst.SubnetID != req.SubnetID:
		return ec2gw.Instance{}, mismatch("subnet_id", inst.SubnetID, req.SubnetID)
	case inst.PrivateIP.String() != req.PrimaryIP.String():
		return ec2gw.Instance{}, mismatch("primary_ip", inst.PrivateIP.String(), req.PrimaryIP.String())
	}
	for _, e := range inst.ENIs {
		if e.Attachment != nil && e.Attachment.DeviceIndex == 0 {
			if e.ID != req.PrimaryENI {
				return ec2gw.Instance{}, mismatch("primary_eni_id", e.ID, req.PrimaryENI)
			}
			return inst, nil
		}
	}
	return ec2gw.Instance{}, fmt.Errorf("%w: EC2 lists no primary ENI for %s", ErrInstanceMismatch, inst.ID)
}

// instanceType returns the limits of a type, from EC2 (cached) or the embedded table.
func (a *Allocator) instanceType(ctx context.Context, name string) (instancetypes.Type, error) {
	a.mu.Lock()
	t, ok := a.types[name]
	a.mu.Unlock()
	if ok {
		return t, nil
	}
	got, err := a.gw.DescribeInstanceTypes(ctx, ec2gw.PriorityNodeStart, []string{name})
	if err == nil && len(got) == 1 {
		t = instancetypes.Type{
			Name: got[0].Name, MaxENIs: got[0].MaxENIs, IPv4PerENI: got[0].IPv4PerENI,
			Hypervisor: got[0].Hypervisor, BareMetal: got[0].BareMetal, NetworkCards: max(got[0].NetworkCards, 1),
		}
	} else {
		var known bool
		t, known = instancetypes.Lookup(name)
		if !known {
			return instancetypes.Type{}, invalid("instance_type", "EC2 and the embedded table do not know %q", name)
		}
		a.log.Warn("DescribeInstanceTypes failed; using the embedded limits", "type", name, "err", err)
	}
	a.mu.Lock()
	a.types[name] = t
	a.mu.Unlock()
	return t, nil
}

// learnSubnet makes sure the ledger (and the store) know a subnet, learning it from EC2 once
// even when many nodes of a new subnet register together (one flight per subnet).
func (a *Allocator) learnSubnet(ctx context.Context, id string, prio ec2gw.Priority) error {
	if _, ok := a.led.Subnet(id); ok {
		return nil
	}
	_, err, _ := a.learn.Do(id, func() (any, error) {
		if _, ok := a.led.Subnet(id); ok {
			return nil, nil
		}
		rec, changes, err := a.ensureSubnet(ctx, id, prio)
		if err != nil {
			return nil, err
		}
		release, err := a.slots.acquire(ctx, subnetKey(id))
		if err != nil {
			return nil, err
		}
		defer release()
		if _, ok := a.led.Subnet(id); ok {
			return nil, nil
		}
		if _, err := a.commit(ctx, changes...); err != nil {
			return nil, err
		}
		if err := a.led.PutSubnet(rec); err != nil {
			a.fail(fmt.Errorf("allocator: ledger diverged from the store: %w", err))
			return nil, err
		}
		a.log.Info("subnet learned", "subnet", id, "cidr", rec.CIDR, "az", rec.AvailabilityZone)
		return nil, nil
	})
	return err
}

// ensureSubnet returns the subnet's record, learning it from EC2 (and scanning it for foreign
// addresses) when the cluster has not used it before.
func (a *Allocator) ensureSubnet(ctx context.Context, id string, prio ec2gw.Priority) (ledger.SubnetRecord, []Change, error) {
	if s, ok := a.led.Subnet(id); ok {
		return s, nil, nil
	}
	subs, err := a.gw.DescribeSubnets(ctx, prio, []string{id}, "")
	if errors.Is(err, ec2gw.ErrNotFound) || (err == nil && len(subs) == 0) {
		return ledger.SubnetRecord{}, nil, fmt.Errorf("%w: EC2 does not know subnet %s", ErrInstanceMismatch, id)
	}
	if err != nil {
		return ledger.SubnetRecord{}, nil, ec2Err(err, id)
	}
	s := subs[0]
	rec := ledger.SubnetRecord{
		ID: s.ID, CIDR: s.CIDR, AvailabilityZone: s.AvailabilityZone, AvailabilityZoneID: s.AvailabilityZoneID,
		VPCID: s.VPCID, Tags: s.Tags,
	}
	foreign, err := a.scanForeign(ctx, prio, id)
	if err != nil {
		return ledger.SubnetRecord{}, nil, err
	}
	rec.Foreign = foreign
	rec.ForeignScannedAt = a.now()
	return rec, []Change{PutSubnet(rec)}, nil
}

// instanceGone reports whether EC2 says the instance is terminated or unknown.
func (a *Allocator) instanceGone(ctx context.Context, id string, prio ec2gw.Priority) (bool, error) {
	insts, err := a.gw.DescribeInstances(ctx, prio, []string{id})
	if errors.Is(err, ec2gw.ErrNotFound) {
		return true, nil
	}
	if err != nil {
		return false, ec2Err(err, "")
	}
	if len(insts) == 0 {
		return true, nil
	}
	s := insts[0].State
	return s == "terminated" || s == "shutting-down", nil
}

// removeNode forgets a node whose instance is gone: its lease returns to the subnet and its
// agent streams end. ENIs that outlive the instance are collected by reconciliation.
func (a *Allocator) removeNode(ctx context.Context, name, why string) error {
	release, err := a.slots.acquire(ctx, nodeKey(name))
	if err != nil {
		return err
	}
	defer release()
	if _, ok := a.led.Node(name); !ok {
		return nil
	}
	return a.removeNodeHeld(ctx, name, why)
}

// removeNodeHeld is removeNode for a caller that holds the node's commit slot.
func (a *Allocator) removeNodeHeld(ctx context.Context, name, why string) error {
	if _, err := a.commit(ctx, DeleteNode(name)); err != nil {
		return err
	}
	a.led.DeleteNode(name)
	a.mu.Lock()
	if ns, ok := a.nodes[name]; ok {
		ns.removed = true
		for s := range ns.subs {
			s.end(fmt.Errorf("%w: %s removed (%s)", ErrUnknownNode, name, why))
		}
		close(ns.changed)
		ns.changed = make(chan struct{})
		a.dropNodeLocked(name)
	}
	a.mu.Unlock()
	a.log.Info("node removed", "node", name, "why", why)
	a.met.removals.Inc()
	select {
	case a.sweep <- struct{}{}:
	default:
	}
	return nil
}

// subtractRanges removes addresses from a list of ranges.
func subtractRanges(rs []ledger.AddrRange, drop map[netip.Addr]bool) []ledger.AddrRange {
	if len(drop) == 0 {
		return rs
	}
	var out []ledger.AddrRange
	for _, r := range rs {
		start := netip.Addr{}
		var prev netip.Addr
		for ip := r.First; ; ip = ip.Next() {
			if drop[ip] {
				if start.IsValid() {
					out = append(out, ledger.AddrRange{First: start, Last: prev})
					start = netip.Addr{}
				}
			} else if !start.IsValid() {
				start = ip
			}
			prev = ip
			if ip == r.Last {
				break
			}
		}
		if start.IsValid() {
			out = append(out, ledger.AddrRange{First: start, Last: r.Last})
		}
	}
	return out
}

// toRanges compresses a set of addresses into sorted inclusive ranges.
func toRanges(set map[netip.Addr]bool) []ledger.AddrRange {
	ips := make([]netip.Addr, 0, len(set))
	for ip := range set {
		ips = append(ips, ip)
	}
	sort.Slice(ips, func(i, j int) bool { return ips[i].Less(ips[j]) })
	var out []ledger.AddrRange
	for _, ip := range ips {
		if n := len(out); n > 0 && out[n-1].Last.Next() == ip {
			out[n-1].Last = ip
			continue
		}
		out = append(out, ledger.AddrRange{First: ip, Last: ip})
	}
	return out
}
