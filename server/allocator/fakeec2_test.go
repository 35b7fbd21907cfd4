package allocator

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/instancetypes"
)

// fakeEC2 is an in-memory EC2 for the allocator's unit tests: subnets, instances and ENIs with
// EC2's rules (an address has one owner, ENI slot and attachment limits, ClientToken idempotency,
// NotFound for unknown ids), and faults a test injects per call. It is the allocator's EC2
// interface and nothing else: no HTTP, no SDK. The simulator (server/ec2sim) stays the
// integration truth.
type fakeEC2 struct {
	mu        sync.Mutex
	subnets   map[string]*fakeSubnet
	instances map[string]*fakeInstance
	enis      map[string]*fakeENI
	tokens    map[string]string // ClientToken -> ENI id
	seq       int
	calls     map[string]int

	// fault, when set, decides the outcome of a call before it runs (under no lock of the fake).
	fault func(action string) fakeFault
	// before runs first in every call (the lock checker hooks in here).
	before func(action string)
	// onUnassign runs for every address or prefix EC2 takes off an ENI (unassign, or an ENI's
	// delete), under the fake's lock.
	onUnassign func(eni, node string, item string)
	// late holds the effects of calls whose work lands later (faultDelayed), with when they were
	// made (by now, when set).
	late []lateWork
	now  func() time.Time
	// trace, when set, hears of every call and its outcome (under the fake's lock).
	trace func(format string, args ...any)
}

// fakeFault is an outcome a test injects into one call.
type fakeFault int

const (
	faultNone fakeFault = iota
	// faultThrottle: RequestLimitExceeded; nothing happens.
	faultThrottle
	// faultFail: an InternalError; nothing happens.
	faultFail
	// faultLate: the work is done, but the answer does not arrive in time (the caller sees an
	// unknown outcome).
	faultLate
	// faultDelayed: the caller sees an unknown outcome and the work lands later (at settle).
	faultDelayed
	// faultSubnetFull: InsufficientFreeAddressesInSubnet; nothing happens.
	faultSubnetFull
)

type fakeSubnet struct {
	id, az, vpc string
	tags        map[string]string
	cidr        netip.Prefix
	owner       map[netip.Addr]string // address -> ENI id
}

type fakeInstance struct {
	id, typ, az, subnet, state, dns string
	ip                              netip.Addr
	tags                            map[string]string
}

type fakeENI struct {
	ec2gw.ENI
	deleteOnTermination bool
}

func newFakeEC2() *fakeEC2 {
	return &fakeEC2{
		subnets: map[string]*fakeSubnet{}, instances: map[string]*fakeInstance{}, enis: map[string]*fakeENI{},
		tokens: map[string]string{}, calls: map[string]int{},
	}
}

var _ EC2 = (*fakeEC2)(nil)

func (f *fakeEC2) id(prefix string) string {
	f.seq++
	return fmt.Sprintf("%s-%017x", prefix, f.seq)
}

// addSubnet adds a subnet (id like "subnet-..." and a CIDR like "10.0.0.0/24").
func (f *fakeEC2) addSubnet(id, cidr, az string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := netip.MustParsePrefix(cidr)
	f.subnets[id] = &fakeSubnet{id: id, az: az, vpc: "vpc-00000000000000001", cidr: p, owner: map[netip.Addr]string{}}
}

// addSubnetIn adds a subnet of a VPC, with tags.
func (f *fakeEC2) addSubnetIn(id, cidr, az, vpc string, tags map[string]string) {
	f.addSubnet(id, cidr, az)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.subnets[id].vpc, f.subnets[id].tags = vpc, tags
}

// reserved reports EC2's five reserved addresses of a subnet.
func (s *fakeSubnet) reserved(a netip.Addr) bool {
	base := s.cidr.Masked().Addr()
	last := base
	for n := 1; n < 1<<(32-s.cidr.Bits()); n++ {
		last = last.Next()
	}
	return a == base || a == base.Next() || a == base.Next().Next() || a == base.Next().Next().Next() || a == last
}

func (s *fakeSubnet) lowestFree() (netip.Addr, bool) {
	for a := s.cidr.Masked().Addr(); s.cidr.Contains(a); a = a.Next() {
		if !s.reserved(a) && s.owner[a] == "" {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// runInstance starts an instance of typ in the subnet with its primary ENI; it returns its id
// ("" when the subnet has no free address, as EC2 refuses the launch).
func (f *fakeEC2) runInstance(typ, subnet string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.subnets[subnet]
	ip, ok := s.lowestFree()
	if !ok {
		return ""
	}
	in := &fakeInstance{id: f.id("i"), typ: typ, az: s.az, subnet: subnet, state: "running", ip: ip}
	in.dns = "ip-" + strings.ReplaceAll(ip.String(), ".", "-") + ".ec2.internal"
	f.instances[in.id] = in
	e := &fakeENI{ENI: ec2gw.ENI{ID: f.id("eni"), SubnetID: subnet, VPCID: s.vpc, AvailabilityZone: s.az,
		MAC: fmt.Sprintf("02:00:00:00:%02x:%02x", f.seq/256%256, f.seq%256), PrimaryIP: ip, Status: "in-use",
		SecurityGroupIDs: []string{"sg-00000000000000001"}, Tags: map[string]string{},
		Attachment: &ec2gw.Attachment{ID: f.id("eni-attach"), InstanceID: in.id, Status: "attached", DeleteOnTermination: true}}}
	f.enis[e.ID] = e
	s.owner[ip] = e.ID
	return in.id
}

// launchOnPrimary puts what a launch template's primary interface asks for on an instance's
// primary ENI, as RunInstances does: ips secondary addresses or prefixes /28 blocks, each picked
// at random (pick(n) returns 0..n-1) among the free ones. It returns false, changing nothing,
// when the subnet cannot give them (EC2 refuses the launch).
func (f *fakeEC2) launchOnPrimary(instanceID string, ips, prefixes int, pick func(int) int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	var e *fakeENI
	for _, x := range f.enis {
		if x.Attachment != nil && x.Attachment.InstanceID == instanceID && x.Attachment.DeviceIndex == 0 {
			e = x
		}
	}
	if e == nil {
		return false
	}
	s := f.subnets[e.SubnetID]
	var free []netip.Addr
	var blocks []netip.Prefix
	for a := s.cidr.Masked().Addr(); s.cidr.Contains(a); a = a.Next() {
		if !s.reserved(a) && s.owner[a] == "" {
			free = append(free, a)
		}
		if p := netip.PrefixFrom(a, 28); p.Masked().Addr() == a {
			whole := true
			for _, b := range prefixAddrs(p) {
				if s.reserved(b) || s.owner[b] != "" {
					whole = false
					break
				}
			}
			if whole {
				blocks = append(blocks, p)
			}
		}
	}
	if len(free) < ips || len(blocks) < prefixes {
		return false
	}
	for range ips {
		i := pick(len(free))
		s.owner[free[i]] = e.ID
		e.SecondaryIPs = append(e.SecondaryIPs, free[i])
		free = slices.Delete(free, i, i+1)
	}
	for range prefixes {
		i := pick(len(blocks))
		for _, b := range prefixAddrs(blocks[i]) {
			s.owner[b] = e.ID
		}
		e.Prefixes = append(e.Prefixes, blocks[i])
		blocks = slices.Delete(blocks, i, i+1)
	}
	return true
}

// addForeign creates an ENI nobody in the cluster owns, holding n secondary addresses.
func (f *fakeEC2) addForeign(subnet string, n int) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.subnets[subnet]
	e := &fakeENI{ENI: ec2gw.ENI{ID: f.id("eni"), SubnetID: subnet, VPCID: s.vpc, AvailabilityZone: s.az, Status: "available", Tags: map[string]string{}}}
	e.PrimaryIP, _ = s.lowestFree()
	s.owner[e.PrimaryIP] = e.ID
	for range n {
		ip, ok := s.lowestFree()
		if !ok {
			break
		}
		s.owner[ip] = e.ID
		e.SecondaryIPs = append(e.SecondaryIPs, ip)
	}
	f.enis[e.ID] = e
	return e.ID
}

// terminate ends an instance as EC2 does: ENIs marked DeleteOnTermination go with it, others
// are detached.
func (f *fakeEC2) terminate(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.instances[id].state = "terminated"
	for _, e := range f.enis {
		if e.Attachment == nil || e.Attachment.InstanceID != id {
			continue
		}
		if e.Attachment.DeleteOnTermination {
			f.deleteLocked(e, "")
			continue
		}
		e.Attachment, e.Status = nil, "available"
	}
}

func (f *fakeEC2) deleteLocked(e *fakeENI, node string) {
	s := f.subnets[e.SubnetID]
	for _, it := range diff.Items(e.ENI) {
		if f.onUnassign != nil {
			f.onUnassign(e.ID, node, it)
		}
	}
	for a, id := range s.owner {
		if id == e.ID {
			delete(s.owner, a)
		}
	}
	delete(f.enis, e.ID)
}

type lateWork struct {
	at time.Time
	do func()
}

// settle lands the work of delayed calls made before cutoff (all of it for the zero time).
func (f *fakeEC2) settle(cutoff time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	kept := f.late[:0]
	for _, w := range f.late {
		if cutoff.IsZero() || !w.at.After(cutoff) {
			w.do()
			continue
		}
		kept = append(kept, w)
	}
	f.late = kept
}

// snapshot returns every ENI as DescribeNetworkInterfaces would.
func (f *fakeEC2) snapshot() []ec2gw.ENI {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]ec2gw.ENI, 0, len(f.enis))
	for _, e := range f.enis {
		out = append(out, e.copy())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (f *fakeEC2) callCount(action string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[action]
}

func (e *fakeENI) copy() ec2gw.ENI {
	c := e.ENI
	c.SecondaryIPs = slices.Clone(e.SecondaryIPs)
	c.Prefixes = slices.Clone(e.Prefixes)
	c.Tags = maps.Clone(e.Tags)
	c.SecurityGroupIDs = slices.Clone(e.SecurityGroupIDs)
	if e.Attachment != nil {
		a := *e.Attachment
		a.DeleteOnTermination = e.deleteOnTermination || a.DeleteOnTermination
		c.Attachment = &a
	}
	return c
}

func apiErr(action, code string, kind error) error {
	return &ec2gw.APIError{Action: action, Code: code, Message: "fake EC2", Kind: kind}
}

// call runs one action: the hooks, the injected fault, then op under the fake's lock. op returns
// the call's error; faultLate runs op and drops its answer, faultDelayed runs it at settle.
func (f *fakeEC2) call(ctx context.Context, action string, op func() error) error {
	if f.before != nil {
		f.before(action)
	}
	if err := ctx.Err(); err != nil {
		return &ec2gw.APIError{Action: action, Message: "context ended while waiting for the limiter", Kind: ec2gw.ErrThrottled, Err: err}
	}
	fault := faultNone
	if f.fault != nil {
		fault = f.fault(action)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[action]++
	unknown := &ec2gw.APIError{Action: action, Message: "no answer in time", Kind: ec2gw.ErrUnavailable, Err: context.DeadlineExceeded, Unknown: true}
	if f.trace != nil {
		defer func(fault fakeFault) { f.trace("  ec2 %s fault %d", action, fault) }(fault)
	}
	switch fault {
	case faultThrottle:
		return apiErr(action, "RequestLimitExceeded", ec2gw.ErrThrottled)
	case faultFail:
		return apiErr(action, "InternalError", ec2gw.ErrUnavailable)
	case faultSubnetFull:
		return apiErr(action, "InsufficientFreeAddressesInSubnet", ec2gw.ErrSubnetFull)
	case faultLate:
		_ = op()
		return unknown
	case faultDelayed:
		w := lateWork{do: func() { _ = op() }}
		if f.now != nil {
			w.at = f.now()
		}
		f.late = append(f.late, w)
		return unknown
	}
	return op()
}

func (f *fakeEC2) EstimateWait(string, ec2gw.Priority) time.Duration { return 100 * time.Millisecond }

func (f *fakeEC2) DescribeInstances(ctx context.Context, _ ec2gw.Priority, ids []string) ([]ec2gw.Instance, error) {
	var out []ec2gw.Instance
	err := f.call(ctx, "DescribeInstances", func() error {
		out = nil
		for _, id := range ids {
			in, ok := f.instances[id]
			if !ok {
				return apiErr("DescribeInstances", "InvalidInstanceID.NotFound", ec2gw.ErrNotFound)
			}
			inst := ec2gw.Instance{ID: in.id, Type: in.typ, AvailabilityZone: in.az, SubnetID: in.subnet, State: in.state,
				PrivateDNSName: in.dns, PrivateIP: in.ip, VPCID: "vpc-00000000000000001", Tags: maps.Clone(in.tags)}
			for _, e := range f.enis {
				if e.Attachment != nil && e.Attachment.InstanceID == id {
					inst.ENIs = append(inst.ENIs, e.copy())
				}
			}
			sort.Slice(inst.ENIs, func(i, j int) bool { return inst.ENIs[i].Attachment.DeviceIndex < inst.ENIs[j].Attachment.DeviceIndex })
			out = append(out, inst)
		}
		return nil
	})
	return out, err
}

func (f *fakeEC2) DescribeInstancesFiltered(ctx context.Context, p ec2gw.Priority, flt ec2gw.InstanceFilter) ([]ec2gw.Instance, error) {
	var ids []string
	f.mu.Lock()
	for id, in := range f.instances {
		ok := len(flt.States) == 0 || slices.Contains(flt.States, in.state)
		for k, v := range flt.Tags {
			ok = ok && in.tags[k] == v
		}
		if len(flt.TagKeys) > 0 {
			has := false
			for _, k := range flt.TagKeys {
				_, h := in.tags[k]
				has = has || h
			}
			ok = ok && has
		}
		if ok {
			ids = append(ids, id)
		}
	}
	f.mu.Unlock()
	sort.Strings(ids)
	if len(ids) == 0 {
		err := f.call(ctx, "DescribeInstances", func() error { return nil })
		return nil, err
	}
	return f.DescribeInstances(ctx, p, ids)
}

func (f *fakeEC2) DescribeInstanceTypes(ctx context.Context, _ ec2gw.Priority, names []string) ([]ec2gw.InstanceType, error) {
	var out []ec2gw.InstanceType
	err := f.call(ctx, "DescribeInstanceTypes", func() error {
		out = nil
		for _, n := range names {
			t, ok := instancetypes.Lookup(n)
			if !ok {
				return apiErr("DescribeInstanceTypes", "InvalidInstanceType", ec2gw.ErrInvalidRequest)
			}
			out = append(out, ec2gw.InstanceType{Name: t.Name, Hypervisor: t.Hypervisor, MaxENIs: t.MaxENIs, IPv4PerENI: t.IPv4PerENI,
				NetworkCards: t.NetworkCards, BareMetal: t.BareMetal})
		}
		return nil
	})
	return out, err
}

func (f *fakeEC2) DescribeSubnets(ctx context.Context, _ ec2gw.Priority, ids []string, vpc string) ([]ec2gw.Subnet, error) {
	var out []ec2gw.Subnet
	err := f.call(ctx, "DescribeSubnets", func() error {
		out = nil
		if len(ids) == 0 {
			for _, id := range slices.Sorted(maps.Keys(f.subnets)) {
				if vpc == "" || f.subnets[id].vpc == vpc {
					ids = append(ids, id)
				}
			}
		}
		for _, id := range ids {
			s, ok := f.subnets[id]
			if !ok {
				return apiErr("DescribeSubnets", "InvalidSubnetID.NotFound", ec2gw.ErrNotFound)
			}
			out = append(out, ec2gw.Subnet{ID: s.id, VPCID: s.vpc, AvailabilityZone: s.az, AvailabilityZoneID: "use1-az1", CIDR: s.cidr, Tags: maps.Clone(s.tags),
				AvailableIPs: 1<<(32-s.cidr.Bits()) - 5 - len(s.owner)})
		}
		return nil
	})
	return out, err
}

func (f *fakeEC2) DescribeNetworkInterfaces(ctx context.Context, _ ec2gw.Priority, fl ec2gw.ENIFilter) ([]ec2gw.ENI, error) {
	var out []ec2gw.ENI
	err := f.call(ctx, "DescribeNetworkInterfaces", func() error {
		out = nil
		for _, id := range fl.IDs {
			if _, ok := f.enis[id]; !ok {
				return apiErr("DescribeNetworkInterfaces", "InvalidNetworkInterfaceID.NotFound", ec2gw.ErrNotFound)
			}
		}
		for _, e := range f.enis {
			switch {
			case len(fl.IDs) > 0 && !slices.Contains(fl.IDs, e.ID),
				fl.SubnetID != "" && e.SubnetID != fl.SubnetID,
				fl.Status != "" && e.Status != fl.Status,
				fl.InstanceID != "" && (e.Attachment == nil || e.Attachment.InstanceID != fl.InstanceID):
				continue
			}
			match := true
			for k, v := range fl.Tags {
				match = match && e.Tags[k] == v
			}
			if len(fl.TagKeys) > 0 {
				any := false
				for _, k := range fl.TagKeys {
					_, ok := e.Tags[k]
					any = any || ok
				}
				match = match && any
			}
			if match {
				out = append(out, e.copy())
			}
		}
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
		return nil
	})
	return out, err
}

// takeLocked gives addresses to an ENI if each is free in its subnet.
func (f *fakeEC2) takeLocked(action string, s *fakeSubnet, eni string, addrs []netip.Addr) error {
	for _, a := range addrs {
		if !s.cidr.Contains(a) || s.reserved(a) {
			return apiErr(action, "InvalidParameterValue", ec2gw.ErrInvalidRequest)
		}
		if o := s.owner[a]; o != "" && o != eni {
			return apiErr(action, "InvalidIPAddress.InUse", ec2gw.ErrAddressInUse)
		}
	}
	for _, a := range addrs {
		s.owner[a] = eni
	}
	return nil
}

func prefixAddrs(p netip.Prefix) []netip.Addr {
	var out []netip.Addr
	for a := p.Masked().Addr(); p.Contains(a); a = a.Next() {
		out = append(out, a)
	}
	return out
}

func (f *fakeEC2) slotsLocked(e *fakeENI) int {
	if e.Attachment != nil {
		if in, ok := f.instances[e.Attachment.InstanceID]; ok {
			if t, ok := instancetypes.Lookup(in.typ); ok {
				return t.SecondaryIPsPerENI()
			}
		}
	}
	return 49
}

func (f *fakeEC2) CreateENI(ctx context.Context, _ ec2gw.Priority, in ec2gw.CreateENIInput) (ec2gw.ENI, error) {
	var out ec2gw.ENI
	err := f.call(ctx, "CreateNetworkInterface", func() error {
		if id, ok := f.tokens[in.ClientToken]; ok && in.ClientToken != "" {
			if e, ok := f.enis[id]; ok {
				out = e.copy()
				return nil
			}
			return apiErr("CreateNetworkInterface", "IdempotentParameterMismatch", ec2gw.ErrInvalidRequest)
		}
		s, ok := f.subnets[in.SubnetID]
		if !ok {
			return apiErr("CreateNetworkInterface", "InvalidSubnetID.NotFound", ec2gw.ErrNotFound)
		}
		e := &fakeENI{ENI: ec2gw.ENI{ID: f.id("eni"), SubnetID: s.id, VPCID: s.vpc, AvailabilityZone: s.az, Description: in.Description,
			Status: "available", Tags: maps.Clone(in.Tags), SecurityGroupIDs: slices.Clone(in.SecurityGroupIDs)}}
		e.MAC = fmt.Sprintf("02:00:00:01:%02x:%02x", f.seq/256%256, f.seq%256)
		primary := in.PrimaryIP
		if !primary.IsValid() {
			var ok bool
			if primary, ok = s.lowestFree(); !ok {
				return apiErr("CreateNetworkInterface", "InsufficientFreeAddressesInSubnet", ec2gw.ErrSubnetFull)
			}
		}
		all := append([]netip.Addr{primary}, in.SecondaryIPs...)
		for _, p := range in.Prefixes {
			all = append(all, prefixAddrs(p)...)
		}
		if err := f.takeLocked("CreateNetworkInterface", s, e.ID, all); err != nil {
			return err
		}
		e.PrimaryIP, e.SecondaryIPs, e.Prefixes = primary, slices.Clone(in.SecondaryIPs), slices.Clone(in.Prefixes)
		f.enis[e.ID] = e
		if in.ClientToken != "" {
			f.tokens[in.ClientToken] = e.ID
		}
		out = e.copy()
		return nil
	})
	return out, err
}

func (f *fakeEC2) AttachENI(ctx context.Context, _ ec2gw.Priority, eniID, instanceID string, device, card int) (string, error) {
	var att string
	err := f.call(ctx, "AttachNetworkInterface", func() error {
		e, ok := f.enis[eniID]
		if !ok {
			return apiErr("AttachNetworkInterface", "InvalidNetworkInterfaceID.NotFound", ec2gw.ErrNotFound)
		}
		in, ok := f.instances[instanceID]
		if !ok || in.state != "running" {
			return apiErr("AttachNetworkInterface", "InvalidInstanceID.NotFound", ec2gw.ErrNotFound)
		}
		if e.Attachment != nil {
			if e.Attachment.InstanceID == instanceID && e.Attachment.DeviceIndex == device {
				att = e.Attachment.ID
				return nil
			}
			return apiErr("AttachNetworkInterface", "InvalidParameterValue", ec2gw.ErrInvalidRequest)
		}
		n := 0
		for _, x := range f.enis {
			if x.Attachment != nil && x.Attachment.InstanceID == instanceID {
				n++
				if x.Attachment.DeviceIndex == device {
					return apiErr("AttachNetworkInterface", "InvalidParameterValue", ec2gw.ErrInvalidRequest)
				}
			}
		}
		if t, ok := instancetypes.Lookup(in.typ); ok && n >= t.MaxENIsPerCard() {
			return apiErr("AttachNetworkInterface", "AttachmentLimitExceeded", ec2gw.ErrAttachmentLimit)
		}
		e.Attachment = &ec2gw.Attachment{ID: f.id("eni-attach"), InstanceID: instanceID, Status: "attached", DeviceIndex: device, NetworkCardIndex: card}
		e.Status = "in-use"
		att = e.Attachment.ID
		return nil
	})
	return att, err
}

func (f *fakeEC2) eniByAttachment(att string) *fakeENI {
	for _, e := range f.enis {
		if e.Attachment != nil && e.Attachment.ID == att {
			return e
		}
	}
	return nil
}

func (f *fakeEC2) SetDeleteOnTermination(ctx context.Context, _ ec2gw.Priority, eniID, att string, v bool) error {
	return f.call(ctx, "ModifyNetworkInterfaceAttribute", func() error {
		e, ok := f.enis[eniID]
		if !ok || e.Attachment == nil || e.Attachment.ID != att {
			return apiErr("ModifyNetworkInterfaceAttribute", "InvalidAttachmentID.NotFound", ec2gw.ErrNotFound)
		}
		e.Attachment.DeleteOnTermination = v
		return nil
	})
}

func (f *fakeEC2) DetachENI(ctx context.Context, _ ec2gw.Priority, att string, _ bool) error {
	return f.call(ctx, "DetachNetworkInterface", func() error {
		e := f.eniByAttachment(att)
		if e == nil {
			return apiErr("DetachNetworkInterface", "InvalidAttachmentID.NotFound", ec2gw.ErrNotFound)
		}
		e.Attachment, e.Status = nil, "available"
		return nil
	})
}

func (f *fakeEC2) DeleteENI(ctx context.Context, _ ec2gw.Priority, eniID string) error {
	return f.call(ctx, "DeleteNetworkInterface", func() error {
		e, ok := f.enis[eniID]
		if !ok {
			return apiErr("DeleteNetworkInterface", "InvalidNetworkInterfaceID.NotFound", ec2gw.ErrNotFound)
		}
		if e.Attachment != nil {
			return apiErr("DeleteNetworkInterface", "InvalidNetworkInterface.InUse", ec2gw.ErrENIInUse)
		}
		f.deleteLocked(e, e.Tags[TagNode])
		return nil
	})
}

func (f *fakeEC2) AssignAddresses(ctx context.Context, _ ec2gw.Priority, eniID string, ips []netip.Addr) error {
	return f.call(ctx, "AssignPrivateIpAddresses", func() error {
		err := f.assignLocked(eniID, ips, nil)
		if f.trace != nil {
			f.trace("  ec2 assign %v to %s: %v", ips, eniID, err)
		}
		return err
	})
}

func (f *fakeEC2) AssignPrefixes(ctx context.Context, _ ec2gw.Priority, eniID string, prefixes []netip.Prefix) error {
	return f.call(ctx, "AssignPrivateIpAddresses", func() error { return f.assignLocked(eniID, nil, prefixes) })
}

func (f *fakeEC2) assignLocked(eniID string, ips []netip.Addr, prefixes []netip.Prefix) error {
	const action = "AssignPrivateIpAddresses"
	e, ok := f.enis[eniID]
	if !ok {
		return apiErr(action, "InvalidNetworkInterfaceID.NotFound", ec2gw.ErrNotFound)
	}
	var newIPs []netip.Addr
	for _, ip := range ips {
		if !slices.Contains(e.SecondaryIPs, ip) {
			newIPs = append(newIPs, ip)
		}
	}
	var newPfx []netip.Prefix
	for _, p := range prefixes {
		if !slices.Contains(e.Prefixes, p) {
			newPfx = append(newPfx, p)
		}
	}
	if len(e.SecondaryIPs)+len(e.Prefixes)+len(newIPs)+len(newPfx) > f.slotsLocked(e) {
		return apiErr(action, "PrivateIpAddressLimitExceeded", ec2gw.ErrENIAddressLimit)
	}
	all := slices.Clone(newIPs)
	for _, p := range newPfx {
		if p.Bits() != 28 || p.Masked() != p {
			return apiErr(action, "InvalidParameterValue", ec2gw.ErrInvalidRequest)
		}
		all = append(all, prefixAddrs(p)...)
	}
	if err := f.takeLocked(action, f.subnets[e.SubnetID], e.ID, all); err != nil {
		return err
	}
	e.SecondaryIPs = append(e.SecondaryIPs, newIPs...)
	e.Prefixes = append(e.Prefixes, newPfx...)
	return nil
}

func (f *fakeEC2) UnassignAddresses(ctx context.Context, _ ec2gw.Priority, eniID string, ips []netip.Addr, prefixes []netip.Prefix) error {
	const action = "UnassignPrivateIpAddresses"
	return f.call(ctx, action, func() error {
		e, ok := f.enis[eniID]
		if !ok {
			return apiErr(action, "InvalidNetworkInterfaceID.NotFound", ec2gw.ErrNotFound)
		}
		for _, ip := range ips {
			if !slices.Contains(e.SecondaryIPs, ip) {
				return apiErr(action, "InvalidParameterValue", ec2gw.ErrInvalidRequest)
			}
		}
		for _, p := range prefixes {
			if !slices.Contains(e.Prefixes, p) {
				return apiErr(action, "InvalidParameterValue", ec2gw.ErrInvalidRequest)
			}
		}
		s := f.subnets[e.SubnetID]
		node := e.Tags[TagNode]
		if e.Attachment != nil {
			if in, ok := f.instances[e.Attachment.InstanceID]; ok {
				node = in.dns
			}
		}
		if f.trace != nil {
			f.trace("  ec2 unassign %v %v from %s", ips, prefixes, eniID)
		}
		for _, ip := range ips {
			e.SecondaryIPs = slices.DeleteFunc(e.SecondaryIPs, func(x netip.Addr) bool { return x == ip })
			delete(s.owner, ip)
			if f.onUnassign != nil {
				f.onUnassign(e.ID, node, ip.String())
			}
		}
		for _, p := range prefixes {
			e.Prefixes = slices.DeleteFunc(e.Prefixes, func(x netip.Prefix) bool { return x == p })
			for _, a := range prefixAddrs(p) {
				delete(s.owner, a)
			}
			if f.onUnassign != nil {
				f.onUnassign(e.ID, node, p.String())
			}
		}
		return nil
	})
}
