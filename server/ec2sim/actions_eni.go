package ec2sim

import (
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// maxCount bounds any address or prefix count: larger values are malformed, not just over a
// limit.
const maxCount = 1000

type createENIResponse struct {
	meta
	NetworkInterface xmlENI `xml:"networkInterface"`
	ClientToken      string `xml:"clientToken,omitempty"`
}

type attachResponse struct {
	meta
	AttachmentID     string `xml:"attachmentId"`
	NetworkCardIndex int    `xml:"networkCardIndex"`
}

type assignResponse struct {
	meta
	NetworkInterfaceID string       `xml:"networkInterfaceId"`
	AssignedIPs        []xmlAddress `xml:"assignedPrivateIpAddressesSet>item"`
	AssignedPrefixes   []xmlPrefix  `xml:"assignedIpv4PrefixSet>item"`
}

// fingerprint is the request's parameters without ClientToken, for idempotency checks.
func (p params) fingerprint() string {
	keys := make([]string, 0, len(p))
	for k := range p {
		if k != "ClientToken" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(strings.Join(p[k], ","))
		b.WriteByte('&')
	}
	return b.String()
}

// countParam reads a count: absent is 0; present it must be 1..maxCount.
func (p params) countParam(k string) (int, bool, *APIError) {
	n, set, aerr := p.intParam(k)
	if aerr != nil {
		return 0, false, aerr
	}
	if set && (n < 1 || n > maxCount) {
		return 0, false, apiErr("InvalidParameterValue", "Invalid value '%d' for %s: must be between 1 and %d", n, k, maxCount)
	}
	return n, set, nil
}

func limitExceeded(e *eni, want int) *APIError {
	return apiErr("PrivateIpAddressLimitExceeded",
		"Number of private addresses will exceed limit: the interface %s would have %d IPv4 addresses and prefixes, the limit is %d.",
		e.id, want, typeLimit(e))
}

func (s *Sim) actCreateNetworkInterface(r *request) (response, *APIError) {
	p := r.p
	subnetID, aerr := p.require("SubnetId")
	if aerr != nil {
		return nil, aerr
	}
	plan := allocPlan{primary: p.str("PrivateIpAddress")}
	for _, n := range p.indices("PrivateIpAddresses") {
		pre := "PrivateIpAddresses." + strconv.Itoa(n)
		a := p.str(pre + ".PrivateIpAddress")
		if a == "" {
			return nil, apiErr("InvalidParameterValue", "%s.PrivateIpAddress must be given", pre)
		}
		prim, aerr := p.boolParam(pre + ".Primary")
		if aerr != nil {
			return nil, aerr
		}
		if prim {
			if plan.primary != "" && plan.primary != a {
				return nil, apiErr("InvalidParameterCombination", "Only one primary private IP address can be specified")
			}
			plan.primary = a
			continue
		}
		plan.ips = append(plan.ips, a)
	}
	var set, pset bool
	if plan.ipCount, set, aerr = p.countParam("SecondaryPrivateIpAddressCount"); aerr != nil {
		return nil, aerr
	}
	for _, n := range p.indices("Ipv4Prefix") {
		plan.prefixes = append(plan.prefixes, p.str("Ipv4Prefix."+strconv.Itoa(n)+".Ipv4Prefix"))
	}
	if plan.prefixCount, pset, aerr = p.countParam("Ipv4PrefixCount"); aerr != nil {
		return nil, aerr
	}
	if set && len(plan.ips) > 0 {
		return nil, apiErr("InvalidParameterCombination", "You may specify secondaryPrivateIpAddressCount or specific secondary private IP addresses, but not both.")
	}
	if pset && len(plan.prefixes) > 0 {
		return nil, apiErr("InvalidParameterCombination", "You may specify Ipv4PrefixCount or specific IPv4 prefixes, but not both.")
	}
	if (set || len(plan.ips) > 0) && (pset || len(plan.prefixes) > 0) {
		return nil, apiErr("InvalidParameterCombination", "You may not specify secondary private IP addresses and IPv4 prefixes together.")
	}
	tags, aerr := p.tagSpecs("network-interface")
	if aerr != nil {
		return nil, aerr
	}
	groups := p.list("SecurityGroupId")
	for _, g := range groups {
		if !strings.HasPrefix(g, "sg-") {
			return nil, apiErr("InvalidGroupId.Malformed", "Invalid id: \"%s\" (expecting \"sg-...\")", g)
		}
	}
	slots := 1 + len(plan.ips) + plan.ipCount + len(plan.prefixes) + plan.prefixCount
	token := p.str("ClientToken")

	s.lock()
	defer s.mu.Unlock()
	fp := p.fingerprint()
	if token != "" {
		if rec, ok := s.clientTokens[token]; ok {
			if rec.params != fp {
				return nil, apiErr("IdempotentParameterMismatch", "Client token '%s' was already used with different parameters.", token)
			}
			if e, ok := s.enis[rec.eniID]; ok {
				return &createENIResponse{NetworkInterface: s.xmlENIOf(e, false), ClientToken: token}, nil
			}
			return nil, eniNotFound(rec.eniID)
		}
	}
	sn, aerr := s.lookupSubnet(subnetID)
	if aerr != nil {
		return nil, aerr
	}
	if slots > maxIPv4PerENI {
		return nil, apiErr("PrivateIpAddressLimitExceeded", "Number of private addresses will exceed limit: %d requested, at most %d per interface.", slots, maxIPv4PerENI)
	}
	e, aerr := s.newENI(sn, plan, p.str("Description"), groups, tags, false)
	if aerr != nil {
		return nil, aerr
	}
	s.laggedCreate(e)
	if token != "" {
		s.clientTokens[token] = tokenRecord{params: fp, eniID: e.id}
	}
	return &createENIResponse{NetworkInterface: s.xmlENIOf(e, false), ClientToken: token}, nil
}

// maxDeviceIndex bounds AttachNetworkInterface's DeviceIndex.
const maxDeviceIndex = 127

func (s *Sim) actAttachNetworkInterface(r *request) (response, *APIError) {
	p := r.p
	eniID, aerr := p.require("NetworkInterfaceId")
	if aerr != nil {
		return nil, aerr
	}
	instID, aerr := p.require("InstanceId")
	if aerr != nil {
		return nil, aerr
	}
	device, set, aerr := p.intParam("DeviceIndex")
	if aerr != nil {
		return nil, aerr
	}
	if !set {
		return nil, apiErr("MissingParameter", "The request must contain the parameter DeviceIndex")
	}
	card, _, aerr := p.intParam("NetworkCardIndex")
	if aerr != nil {
		return nil, aerr
	}
	if device < 0 || device > maxDeviceIndex {
		return nil, apiErr("InvalidParameterValue", "Invalid value '%d' for deviceIndex: must be between 0 and %d", device, maxDeviceIndex)
	}

	s.lock()
	e, aerr := s.lookupENI(eniID)
	if aerr != nil {
		s.mu.Unlock()
		return nil, aerr
	}
	in, aerr := s.lookupInstance(instID)
	if aerr != nil {
		s.mu.Unlock()
		return nil, aerr
	}
	if aerr := s.checkAttach(e, in, device, card); aerr != nil {
		s.mu.Unlock()
		return nil, aerr
	}
	// The attaching phase: the call answers after its latency, and the device becomes usable
	// (attached, listed in IMDS) the profile's AttachUsable later.
	before := s.lagBefore(e)
	usable := s.now().Add(r.latency + s.scaled(s.delays.dist(streamAttachUsable, s.profile.Load().AttachUsable)))
	att := s.attach(e, in, device, card, false, usable)
	s.lagged(e.id, before)
	s.mu.Unlock()
	_ = s.sleep(r.ctx, r.latency)
	return &attachResponse{AttachmentID: att.id, NetworkCardIndex: card}, nil
}

func (s *Sim) checkAttach(e *eni, in *instance, device, card int) *APIError {
	if in.state != "running" {
		return apiErr("IncorrectInstanceState", "The instance '%s' is not in a valid state for this operation.", in.id)
	}
	if e.att != nil {
		return apiErr("InvalidNetworkInterface.InUse", "Interface: [%s] in use.", e.id)
	}
	if card < 0 || card >= max(in.itype.NetworkCards, 1) {
		return apiErr("InvalidParameterValue", "Invalid value '%d' for networkCardIndex: instance type %s has %d network cards", card, in.itype.Name, in.itype.NetworkCards)
	}
	if e.sn.az != in.sn.az {
		return apiErr("InvalidParameterCombination", "You may not attach a network interface to an instance if they are not in the same availability zone")
	}
	if len(in.enis) >= in.itype.MaxENIs {
		return apiErr("AttachmentLimitExceeded", "Interface count %d exceeds the limit for %s", len(in.enis)+1, in.itype.Name)
	}
	for _, x := range in.enis {
		if x.att.deviceIndex == device && x.att.cardIndex == card {
			return apiErr("InvalidParameterValue", "Instance '%s' already has an interface attached at device index '%d'.", in.id, device)
		}
	}
	if e.slots() > in.itype.IPv4PerENI {
		return apiErr("PrivateIpAddressLimitExceeded", "The interface %s has %d IPv4 addresses and prefixes; %s allows %d per interface.", e.id, e.slots(), in.itype.Name, in.itype.IPv4PerENI)
	}
	if len(e.prefixes) > 0 && !in.itype.PrefixDelegation() {
		return apiErr("InvalidParameterValue", "Instance type %s does not support IPv4 prefix delegation.", in.itype.Name)
	}
	return nil
}

func (s *Sim) actDetachNetworkInterface(r *request) (response, *APIError) {
	attID, aerr := r.p.require("AttachmentId")
	if aerr != nil {
		return nil, aerr
	}
	if _, aerr := r.p.boolParam("Force"); aerr != nil {
		return nil, aerr
	}
	s.lock()
	e, ok := s.eniByAttachment[attID]
	if !ok {
		s.mu.Unlock()
		return nil, apiErr("InvalidAttachmentID.NotFound", "The attachment ID '%s' does not exist", attID)
	}
	att := e.att
	if att.deviceIndex == 0 && att.cardIndex == 0 {
		s.mu.Unlock()
		return nil, apiErr("OperationNotPermitted", "The network interface at device index 0 and networkCard index 0 cannot be detached.")
	}
	if att.detaching {
		// Already on its way: EC2 accepts the repeat and the first detach completes as planned.
		s.mu.Unlock()
		_ = s.sleep(r.ctx, r.latency)
		return &returnResponse{Return: true}, nil
	}
	before := s.lagBefore(e)
	// The detaching phase lasts the profile's DetachComplete from now, and at least until the
	// call answers.
	complete := max(r.latency, s.scaled(s.delays.dist(streamDetachComplete, s.profile.Load().DetachComplete)))
	if complete <= 0 {
		s.detach(e)
		s.lagged(e.id, before)
		s.mu.Unlock()
		return &returnResponse{Return: true}, nil
	}
	att.detaching = true
	att.detachAt = s.now().Add(complete)
	s.pushDue(dueItem{at: att.detachAt, kind: dueDetach, e: e, att: att})
	s.lagged(e.id, before)
	s.mu.Unlock()
	_ = s.sleep(r.ctx, r.latency)
	// A detach due by now completes before the answer.
	s.lock()
	s.mu.Unlock()
	return &returnResponse{Return: true}, nil
}

func (s *Sim) actDeleteNetworkInterface(r *request) (response, *APIError) {
	id, aerr := r.p.require("NetworkInterfaceId")
	if aerr != nil {
		return nil, aerr
	}
	s.lock()
	defer s.mu.Unlock()
	e, aerr := s.lookupENI(id)
	if aerr != nil {
		return nil, aerr
	}
	if e.att != nil {
		if e.att.detaching {
			// EC2's answer while a detach has not completed (vpc-cni #1399).
			return nil, apiErr("InvalidParameterValue", "Network interface '%s' is currently in use.", id)
		}
		return nil, apiErr("InvalidNetworkInterface.InUse", "The network interface '%s' is currently in use.", id)
	}
	before := s.lagBefore(e)
	s.deleteENI(e)
	s.lagged(id, before)
	return &returnResponse{Return: true}, nil
}

func (s *Sim) actAssignPrivateIpAddresses(r *request) (response, *APIError) {
	p := r.p
	id, aerr := p.require("NetworkInterfaceId")
	if aerr != nil {
		return nil, aerr
	}
	plan := allocPlan{ips: p.list("PrivateIpAddress"), prefixes: p.list("Ipv4Prefix")}
	var set, pset bool
	if plan.ipCount, set, aerr = p.countParam("SecondaryPrivateIpAddressCount"); aerr != nil {
		return nil, aerr
	}
	if plan.prefixCount, pset, aerr = p.countParam("Ipv4PrefixCount"); aerr != nil {
		return nil, aerr
	}
	if plan.allowReassign, aerr = p.boolParam("AllowReassignment"); aerr != nil {
		return nil, aerr
	}
	if set && len(plan.ips) > 0 {
		return nil, apiErr("InvalidParameterCombination", "You may specify secondaryPrivateIpAddressCount or specific secondary private IP addresses, but not both.")
	}
	if pset && len(plan.prefixes) > 0 {
		return nil, apiErr("InvalidParameterCombination", "You may specify Ipv4PrefixCount or specific IPv4 prefixes, but not both.")
	}
	ipsWanted := set || len(plan.ips) > 0
	prefixesWanted := pset || len(plan.prefixes) > 0
	if ipsWanted && prefixesWanted {
		return nil, apiErr("InvalidParameterCombination", "You may not assign private IP addresses and IPv4 prefixes in the same request.")
	}
	if !ipsWanted && !prefixesWanted {
		return nil, apiErr("MissingParameter", "Either secondaryPrivateIpAddressCount, privateIpAddress, ipv4PrefixCount or ipv4Prefix must be given.")
	}
	s.lock()
	defer s.mu.Unlock()
	e, aerr := s.lookupENI(id)
	if aerr != nil {
		return nil, aerr
	}
	want := e.slots() + len(plan.ips) + plan.ipCount + len(plan.prefixes) + plan.prefixCount
	if want > typeLimit(e) {
		return nil, limitExceeded(e, want)
	}
	if prefixesWanted && e.att != nil && !e.att.inst.itype.PrefixDelegation() {
		return nil, apiErr("InvalidParameterValue", "Instance type %s does not support IPv4 prefix delegation.", e.att.inst.itype.Name)
	}
	befores := map[string]*eni{e.id: s.lagBefore(e)}
	if plan.allowReassign {
		// AllowReassignment may move addresses from other ENIs: those change too.
		for _, as := range plan.ips {
			if a, err := parseIPv4(as); err == nil {
				if off, ok := e.sn.offset(a); ok {
					if old := e.sn.owner[off]; old != nil && befores[old.id] == nil {
						befores[old.id] = s.lagBefore(old)
					}
				}
			}
		}
	}
	ips, prefixes, aerr := s.allocate(e, plan)
	if aerr != nil {
		return nil, aerr
	}
	for _, eid := range slices.Sorted(maps.Keys(befores)) {
		s.lagged(eid, befores[eid])
	}
	resp := &assignResponse{NetworkInterfaceID: e.id}
	for _, a := range ips {
		resp.AssignedIPs = append(resp.AssignedIPs, xmlAddress{ipString(a)})
	}
	for _, b := range prefixes {
		resp.AssignedPrefixes = append(resp.AssignedPrefixes, xmlPrefix{prefixString(b)})
	}
	return resp, nil
}

func (s *Sim) actUnassignPrivateIpAddresses(r *request) (response, *APIError) {
	p := r.p
	id, aerr := p.require("NetworkInterfaceId")
	if aerr != nil {
		return nil, aerr
	}
	ips, prefixes := p.list("PrivateIpAddress"), p.list("Ipv4Prefix")
	if len(ips) == 0 && len(prefixes) == 0 {
		return nil, apiErr("MissingParameter", "Either privateIpAddress or ipv4Prefix must be given.")
	}
	s.lock()
	defer s.mu.Unlock()
	e, aerr := s.lookupENI(id)
	if aerr != nil {
		return nil, aerr
	}
	sn := e.sn
	var offs []int
	for _, as := range ips {
		a, err := parseIPv4(as)
		if err != nil {
			return nil, apiErr("InvalidParameterValue", "Invalid value '%s' for PrivateIpAddress", as)
		}
		if a == e.primary {
			return nil, apiErr("InvalidParameterValue", "The primary private IP address %s of %s cannot be unassigned.", as, e.id)
		}
		off, ok := sn.offset(a)
		if !ok || sn.owner[off] != e || sn.kind[off] != kindSecondary {
			return nil, apiErr("InvalidParameterValue", "Some of the specified addresses are not assigned to interface %s", e.id)
		}
		offs = append(offs, off)
	}
	var blocks []uint32
	for _, ps := range prefixes {
		base, err := parsePrefix28(ps)
		if err != nil {
			return nil, apiErr("InvalidParameterValue", "Invalid value '%s' for Ipv4Prefix: %v", ps, err)
		}
		found := false
		for _, b := range e.prefixes {
			found = found || b == base
		}
		if !found {
			return nil, apiErr("InvalidParameterValue", "Some of the specified prefixes are not assigned to interface %s", e.id)
		}
		blocks = append(blocks, base)
	}
	s.lagged(e.id, s.lagBefore(e))
	for _, off := range offs {
		if sn.owner[off] == e { // a duplicate in the request was already released
			sn.release(off)
			e.secondaries = removeU32(e.secondaries, sn.addr(off))
		}
	}
	for _, base := range blocks {
		off, _ := sn.offset(base)
		if sn.owner[off] != e {
			continue
		}
		for i := off; i < off+blockSize; i++ {
			sn.release(i)
		}
		e.prefixes = removeU32(e.prefixes, base)
	}
	return &returnResponse{Return: true}, nil
}

func (s *Sim) actModifyNetworkInterfaceAttribute(r *request) (response, *APIError) {
	p := r.p
	id, aerr := p.require("NetworkInterfaceId")
	if aerr != nil {
		return nil, aerr
	}
	var changes []func(e *eni)
	attID := p.str("Attachment.AttachmentId")
	if attID != "" || p.has("Attachment.DeleteOnTermination") {
		if attID == "" {
			return nil, apiErr("MissingParameter", "The request must contain the parameter Attachment.AttachmentId")
		}
		if !p.has("Attachment.DeleteOnTermination") {
			return nil, apiErr("MissingParameter", "The request must contain the parameter Attachment.DeleteOnTermination")
		}
		dot, aerr := p.boolParam("Attachment.DeleteOnTermination")
		if aerr != nil {
			return nil, aerr
		}
		changes = append(changes, func(e *eni) { e.att.deleteOnTermination = dot })
	}
	if p.has("Description.Value") {
		d := p.str("Description.Value")
		changes = append(changes, func(e *eni) { e.description = d })
	}
	if p.has("SourceDestCheck.Value") {
		v, aerr := p.boolParam("SourceDestCheck.Value")
		if aerr != nil {
			return nil, aerr
		}
		changes = append(changes, func(e *eni) { e.srcDstCheck = v })
	}
	if groups := p.list("SecurityGroupId"); len(groups) > 0 {
		changes = append(changes, func(e *eni) { e.groups = groups })
	}
	if len(changes) == 0 {
		return nil, apiErr("MissingParameter", "No attribute to modify was given.")
	}
	s.lock()
	defer s.mu.Unlock()
	e, aerr := s.lookupENI(id)
	if aerr != nil {
		return nil, aerr
	}
	if attID != "" && (e.att == nil || e.att.id != attID) {
		return nil, apiErr("InvalidAttachmentID.NotFound", "The attachment ID '%s' does not exist", attID)
	}
	s.lagged(e.id, s.lagBefore(e))
	for _, c := range changes {
		c(e)
	}
	return &returnResponse{Return: true}, nil
}
