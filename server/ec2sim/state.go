package ec2sim

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"sort"

	"github.com/ipledger/ipledger/server/instancetypes"
)

// State is a JSON-serialisable snapshot of the whole simulated account.
type State struct {
	AccountID string         `json:"account_id"`
	Region    string         `json:"region"`
	VPC       VPCInfo        `json:"vpc"`
	Subnets   []SubnetInfo   `json:"subnets"`
	Instances []InstanceInfo `json:"instances"`
	ENIs      []ENIInfo      `json:"enis"`
}

// VPCInfo is the simulated VPC.
type VPCInfo struct {
	ID string `json:"id"`
	// CIDR is the primary block; CIDRs every block, primary first.
	CIDR  string   `json:"cidr"`
	CIDRs []string `json:"cidrs"`
}

// SubnetInfo is one subnet with its address counts.
type SubnetInfo struct {
	ID                 string            `json:"id"`
	CIDR               string            `json:"cidr"`
	AvailabilityZone   string            `json:"availability_zone"`
	AvailabilityZoneID string            `json:"availability_zone_id"`
	VPCID              string            `json:"vpc_id"`
	Tags               map[string]string `json:"tags,omitempty"`
	// Size is the number of addresses in the CIDR.
	Size int `json:"size"`
	// Available is EC2's availableIpAddressCount: Size - 5 - InUse.
	Available int `json:"available"`
	// InUse counts addresses owned by ENIs (a prefix counts 16).
	InUse int `json:"in_use"`
	// FreeBlocks counts free aligned /28 blocks (what prefix delegation can still get).
	FreeBlocks   int                   `json:"free_blocks"`
	Reservations []CIDRReservationInfo `json:"reservations,omitempty"`
}

// CIDRReservationInfo is a subnet CIDR reservation.
type CIDRReservationInfo struct {
	ID   string `json:"id"`
	CIDR string `json:"cidr"`
	Type string `json:"type"`
}

// InstanceInfo is one simulated instance.
type InstanceInfo struct {
	ID               string            `json:"id"`
	InstanceType     string            `json:"instance_type"`
	SubnetID         string            `json:"subnet_id"`
	AvailabilityZone string            `json:"availability_zone"`
	State            string            `json:"state"`
	PrivateIP        string            `json:"private_ip"`
	PrivateDNSName   string            `json:"private_dns_name"`
	PrimaryENI       string            `json:"primary_eni,omitempty"`
	MAC              string            `json:"mac,omitempty"`
	ENIs             []string          `json:"enis,omitempty"`
	Tags             map[string]string `json:"tags,omitempty"`
	// IMDSEndpoint is the instance's metadata service ("http://127.0.0.1:PORT") when a Server
	// serves it.
	IMDSEndpoint string `json:"imds_endpoint,omitempty"`
}

// ENIInfo is one network interface with every address it holds.
type ENIInfo struct {
	ID               string          `json:"id"`
	SubnetID         string          `json:"subnet_id"`
	VPCID            string          `json:"vpc_id"`
	AvailabilityZone string          `json:"availability_zone"`
	MAC              string          `json:"mac"`
	Description      string          `json:"description,omitempty"`
	Status           string          `json:"status"`
	Foreign          bool            `json:"foreign,omitempty"`
	Attachment       *AttachmentInfo `json:"attachment,omitempty"`
	PrimaryIP        string          `json:"primary_ip"`
	SecondaryIPs     []string        `json:"secondary_ips,omitempty"`
	Prefixes         []string        `json:"prefixes,omitempty"`
	// Groups are the ENI's security groups.
	Groups []string          `json:"groups,omitempty"`
	Tags   map[string]string `json:"tags,omitempty"`
}

// AttachmentInfo is an ENI's attachment.
type AttachmentInfo struct {
	ID                  string `json:"id"`
	InstanceID          string `json:"instance_id"`
	DeviceIndex         int    `json:"device_index"`
	NetworkCardIndex    int    `json:"network_card_index"`
	DeleteOnTermination bool   `json:"delete_on_termination"`
	Status              string `json:"status"`
}

// Addresses lists every address the ENI holds: primary, secondaries, and each address of its
// prefixes.
func (e ENIInfo) Addresses() []string {
	out := []string{e.PrimaryIP}
	out = append(out, e.SecondaryIPs...)
	for _, ps := range e.Prefixes {
		p, err := netip.ParsePrefix(ps)
		if err != nil {
			continue
		}
		a := p.Addr()
		for range 1 << (32 - p.Bits()) {
			out = append(out, a.String())
			a = a.Next()
		}
	}
	return out
}

// AddressOwners maps every address held by an ENI to the ENIs holding it.
func (st State) AddressOwners() map[string][]string {
	out := map[string][]string{}
	for _, e := range st.ENIs {
		for _, a := range e.Addresses() {
			out[a] = append(out[a], e.ID)
		}
	}
	return out
}

// DuplicateAddresses returns the addresses held by more than one ENI (always empty unless the
// simulator is broken); tests assert on it.
func (st State) DuplicateAddresses() map[string][]string {
	out := map[string][]string{}
	for a, owners := range st.AddressOwners() {
		if len(owners) > 1 {
			out[a] = owners
		}
	}
	return out
}

// Subnet returns the subnet with the id.
func (st State) Subnet(id string) (SubnetInfo, bool) {
	for _, s := range st.Subnets {
		if s.ID == id {
			return s, true
		}
	}
	return SubnetInfo{}, false
}

// ENI returns the ENI with the id.
func (st State) ENI(id string) (ENIInfo, bool) {
	for _, e := range st.ENIs {
		if e.ID == id {
			return e, true
		}
	}
	return ENIInfo{}, false
}

// Instance returns the instance with the id.
func (st State) Instance(id string) (InstanceInfo, bool) {
	for _, in := range st.Instances {
		if in.ID == id {
			return in, true
		}
	}
	return InstanceInfo{}, false
}

func cloneTags(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return maps.Clone(m)
}

func (s *Sim) subnetInfo(sn *subnet) SubnetInfo {
	si := SubnetInfo{
		ID: sn.id, CIDR: sn.cidr.String(), AvailabilityZone: sn.az, AvailabilityZoneID: sn.azID,
		VPCID: sn.vpcID, Tags: cloneTags(sn.tags), Size: sn.size, Available: sn.available(),
		InUse: sn.used, FreeBlocks: sn.freeBlocks(),
	}
	for _, cr := range sn.reservations {
		si.Reservations = append(si.Reservations, CIDRReservationInfo{ID: cr.id, CIDR: cr.cidr.String(), Type: cr.kind})
	}
	return si
}

func (s *Sim) instanceInfo(in *instance) InstanceInfo {
	ii := InstanceInfo{
		ID: in.id, InstanceType: in.itype.Name, SubnetID: in.sn.id, AvailabilityZone: in.sn.az,
		State: in.state, PrivateIP: ipString(in.privateIP), PrivateDNSName: s.privateDNS(in.privateIP),
		Tags: cloneTags(in.tags), IMDSEndpoint: in.imdsEndpoint,
	}
	if e := in.primaryENI(); e != nil {
		ii.PrimaryENI = e.id
		ii.MAC = e.mac
	}
	for _, e := range in.enis {
		ii.ENIs = append(ii.ENIs, e.id)
	}
	return ii
}

func (s *Sim) eniInfo(e *eni) ENIInfo {
	ei := ENIInfo{
		ID: e.id, SubnetID: e.sn.id, VPCID: e.sn.vpcID, AvailabilityZone: e.sn.az, MAC: e.mac,
		Description: e.description, Status: e.status(), Foreign: e.foreign,
		PrimaryIP: ipString(e.primary), Tags: cloneTags(e.tags), Groups: append([]string(nil), e.groups...),
	}
	for _, a := range e.secondaries {
		ei.SecondaryIPs = append(ei.SecondaryIPs, ipString(a))
	}
	for _, b := range e.prefixes {
		ei.Prefixes = append(ei.Prefixes, prefixString(b))
	}
	if a := e.att; a != nil {
		ei.Attachment = &AttachmentInfo{
			ID: a.id, InstanceID: a.inst.id, DeviceIndex: a.deviceIndex, NetworkCardIndex: a.cardIndex,
			DeleteOnTermination: a.deleteOnTermination, Status: a.statusAt(s.now()),
		}
	}
	return ei
}

// Snapshot returns the whole state: subnets in scenario order, instances and ENIs by id.
func (s *Sim) Snapshot() State {
	s.rlock()
	defer s.mu.RUnlock()
	st := State{
		AccountID: s.accountID, Region: s.region,
		VPC:       VPCInfo{ID: s.vpcID, CIDR: s.vpcCIDRs[0].String(), CIDRs: prefixStrings(s.vpcCIDRs)},
		Subnets:   make([]SubnetInfo, 0, len(s.subnets)),
		Instances: make([]InstanceInfo, 0, len(s.instOrder)),
		ENIs:      make([]ENIInfo, 0, len(s.eniOrder)),
	}
	for _, sn := range s.subnets {
		st.Subnets = append(st.Subnets, s.subnetInfo(sn))
	}
	for _, id := range s.instOrder {
		st.Instances = append(st.Instances, s.instanceInfo(s.instances[id]))
	}
	for _, id := range s.eniOrder {
		st.ENIs = append(st.ENIs, s.eniInfo(s.enis[id]))
	}
	return st
}

// Stats returns the per-action counters.
func (s *Sim) Stats() Stats { return s.stats.snapshot() }

// SetFault injects (replaces) the fault of one action.
func (s *Sim) SetFault(action string, f Fault) { s.faults.set(action, f) }

// ClearFaults removes every injected fault.
func (s *Sim) ClearFaults() { s.faults.clear() }

// Faults returns the injected faults by action.
func (s *Sim) Faults() map[string]Fault { return s.faults.all() }

// Profile returns the clock of EC2 in use.
func (s *Sim) Profile() Profile { return s.profile.Load().clone() }

// SetProfile replaces the clock of EC2 at run time: calls that arrive from now on take the new
// latencies; attachments, detaches and describe lags already under way keep their deadlines.
func (s *Sim) SetProfile(p Profile) error {
	if err := p.Validate(); err != nil {
		return err
	}
	p = p.clone()
	s.profile.Store(&p)
	return nil
}

// SetThrottle turns EC2's token buckets on or off at run time.
func (s *Sim) SetThrottle(on bool) { s.throttle.setOn(on) }

// InstanceSpec describes instances to launch through the programmatic or control API.
type InstanceSpec struct {
	InstanceType string            `json:"instance_type"`
	SubnetID     string            `json:"subnet_id"`
	Tags         map[string]string `json:"tags,omitempty"`
	// Primary is what the primary interface carries at launch (a launch template's
	// NetworkInterfaces entry for device index 0).
	Primary LaunchInterface `json:"primary_interface,omitzero"`
	// Pending launches the instances in EC2's pending state (booting: described with their
	// addresses, DNS name and primary ENI, but no IMDS yet) until StartInstances makes them
	// running.
	Pending bool `json:"pending,omitempty"`
}

// RunInstances launches count instances (all or none), each with a primary ENI at device
// index 0, like RunInstances with MinCount = MaxCount = count. With a Server, each gets an
// IMDS listener before RunInstances returns.
func (s *Sim) RunInstances(ctx context.Context, spec InstanceSpec, count int) ([]InstanceInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, ok := instancetypes.Lookup(spec.InstanceType)
	if !ok {
		return nil, fmt.Errorf("ec2sim: run instances: %w", apiErr("InvalidParameterValue", "Invalid value '%s' for InstanceType.", spec.InstanceType))
	}
	if count < 1 || count > maxRunCount {
		return nil, fmt.Errorf("ec2sim: run instances: %w", apiErr("InvalidParameterValue", "count %d must be between 1 and %d", count, maxRunCount))
	}
	if err := validateTags(spec.Tags); err != nil {
		return nil, fmt.Errorf("ec2sim: run instances: %w", apiErr("InvalidParameterValue", "%v", err))
	}
	s.lock()
	sn, aerr := s.lookupSubnet(spec.SubnetID)
	if aerr != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("ec2sim: run instances: %w", aerr)
	}
	insts, aerr := s.runLocked(t, sn, count, count, spec.Tags, spec.Primary)
	if aerr != nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("ec2sim: run %d x %s in %s: %w", count, spec.InstanceType, spec.SubnetID, aerr)
	}
	ids := make([]string, len(insts))
	for i, in := range insts {
		ids[i] = in.id
		if spec.Pending {
			in.state = "pending"
		}
	}
	s.mu.Unlock()
	if !spec.Pending {
		s.notify(ids, nil)
	}
	s.rlock()
	defer s.mu.RUnlock()
	out := make([]InstanceInfo, len(insts))
	for i, in := range insts {
		out[i] = s.instanceInfo(in)
	}
	return out, nil
}

// StartInstances ends the pending state of instances launched with InstanceSpec.Pending: they
// are running, and with a Server each gets its IMDS listener before StartInstances returns.
// Instances already running are left as they are; a terminated one is an error.
func (s *Sim) StartInstances(ctx context.Context, ids ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.lock()
	var started []string
	for _, id := range ids {
		in, aerr := s.lookupInstance(id)
		if aerr == nil && in.state != "pending" && in.state != "running" {
			aerr = apiErr("IncorrectInstanceState", "The instance '%s' is not in a state from which it can be started.", id)
		}
		if aerr != nil {
			s.mu.Unlock()
			return fmt.Errorf("ec2sim: start: %w", aerr)
		}
	}
	for _, id := range ids {
		if in := s.instances[id]; in.state == "pending" {
			in.state = "running"
			started = append(started, id)
		}
	}
	s.mu.Unlock()
	s.notify(started, nil)
	return nil
}

// TagInstance adds or replaces tags of an instance, as CreateTags does (EC2's tag rules apply).
func (s *Sim) TagInstance(ctx context.Context, id string, tags map[string]string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := validateTags(tags); err != nil {
		return fmt.Errorf("ec2sim: tag %s: %w", id, apiErr("InvalidParameterValue", "%v", err))
	}
	s.lock()
	defer s.mu.Unlock()
	in, aerr := s.lookupInstance(id)
	if aerr != nil {
		return fmt.Errorf("ec2sim: tag: %w", aerr)
	}
	for k, v := range tags {
		s.setInstanceTag(in, k, v)
	}
	return nil
}

// TerminateInstances terminates the instances (all must exist): ENIs with DeleteOnTermination
// are deleted, the others detached; the IMDS listeners close.
func (s *Sim) TerminateInstances(ctx context.Context, ids ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.lock()
	var insts []*instance
	for _, id := range ids {
		in, aerr := s.lookupInstance(id)
		if aerr != nil {
			s.mu.Unlock()
			return fmt.Errorf("ec2sim: terminate: %w", aerr)
		}
		insts = append(insts, in)
	}
	var stopped []string
	for _, in := range insts {
		if s.terminateLocked(in) != "terminated" {
			stopped = append(stopped, in.id)
		}
	}
	s.mu.Unlock()
	s.notify(nil, stopped)
	return nil
}

// foreignPerENI is how many addresses one foreign ENI holds at most (primary included): the
// limit of any unattached ENI.
var foreignPerENI = maxIPv4PerENI

// CreateForeignENI creates an unattached ENI that ipledger does not manage (no tags, a
// "foreign" description) holding `addresses` random addresses of the subnet (primary
// included), as another user of the subnet would.
func (s *Sim) CreateForeignENI(ctx context.Context, subnetID string, addresses int) (ENIInfo, error) {
	if err := ctx.Err(); err != nil {
		return ENIInfo{}, err
	}
	if addresses < 1 || addresses > foreignPerENI {
		return ENIInfo{}, fmt.Errorf("ec2sim: foreign eni: %w", apiErr("InvalidParameterValue", "addresses %d must be between 1 and %d", addresses, foreignPerENI))
	}
	s.lock()
	defer s.mu.Unlock()
	sn, aerr := s.lookupSubnet(subnetID)
	if aerr != nil {
		return ENIInfo{}, fmt.Errorf("ec2sim: foreign eni: %w", aerr)
	}
	e, aerr := s.newENI(sn, allocPlan{ipCount: addresses - 1}, "foreign user", nil, nil, true)
	if aerr != nil {
		return ENIInfo{}, fmt.Errorf("ec2sim: foreign eni in %s: %w", subnetID, aerr)
	}
	return s.eniInfo(e), nil
}

// Fragment occupies one random address in every free aligned /28 of the subnet with foreign
// ENIs, so no /28 prefix can be had while most single addresses stay free. It returns the
// number of addresses it occupied.
func (s *Sim) Fragment(ctx context.Context, subnetID string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.lock()
	defer s.mu.Unlock()
	sn, aerr := s.lookupSubnet(subnetID)
	if aerr != nil {
		return 0, fmt.Errorf("ec2sim: fragment: %w", aerr)
	}
	var picks []string
	for b := range sn.blockUsed {
		if !sn.blockFree(b) {
			continue
		}
		off := b*blockSize + s.addrRNG.IntN(blockSize)
		picks = append(picks, ipString(sn.addr(off)))
	}
	sort.Strings(picks)
	occupied := len(picks)
	for len(picks) > 0 {
		n := min(len(picks), foreignPerENI)
		plan := allocPlan{primary: picks[0], ips: picks[1:n]}
		if _, aerr := s.newENI(sn, plan, "foreign user", nil, nil, true); aerr != nil {
			return 0, fmt.Errorf("ec2sim: fragment %s: %w", subnetID, aerr)
		}
		picks = picks[n:]
	}
	return occupied, nil
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
