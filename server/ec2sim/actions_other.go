package ec2sim

import (
	"strconv"
	"strings"

	"github.com/ipledger/ipledger/server/instancetypes"
)

type cidrReservationResponse struct {
	meta
	Reservation xmlCIDRReservation `xml:"subnetCidrReservation"`
}

type deleteCIDRReservationResponse struct {
	meta
	Reservation xmlCIDRReservation `xml:"deletedSubnetCidrReservation"`
}

type instancesSet struct {
	Items []xmlInstance `xml:"item"`
}

type runInstancesResponse struct {
	meta
	ReservationID string       `xml:"reservationId"`
	OwnerID       string       `xml:"ownerId"`
	Groups        []xmlGroup   `xml:"groupSet>item"`
	Instances     instancesSet `xml:"instancesSet"`
}

type stateChangeSet struct {
	Items []xmlStateChange `xml:"item"`
}

type terminateResponse struct {
	meta
	Set stateChangeSet `xml:"instancesSet"`
}

// taggable is a resource CreateTags and DeleteTags can change.
type taggable struct {
	eni    *eni // the ENI, when the resource is one (its tags lag in Describe)
	tags   func() map[string]string
	set    func(k, v string)
	delete func(k string)
}

// resolveTaggable finds a resource by id. The caller holds s.mu.
func (s *Sim) resolveTaggable(id string) (taggable, *APIError) {
	switch {
	case strings.HasPrefix(id, "eni-"):
		e, aerr := s.lookupENI(id)
		if aerr != nil {
			return taggable{}, aerr
		}
		return taggable{
			eni:    e,
			tags:   func() map[string]string { return e.tags },
			set:    func(k, v string) { s.setENITag(e, k, v) },
			delete: func(k string) { s.deleteENITag(e, k) },
		}, nil
	case strings.HasPrefix(id, "i-"):
		in, aerr := s.lookupInstance(id)
		if aerr != nil {
			return taggable{}, aerr
		}
		return taggable{
			tags:   func() map[string]string { return in.tags },
			set:    func(k, v string) { s.setInstanceTag(in, k, v) },
			delete: func(k string) { s.deleteInstanceTag(in, k) },
		}, nil
	case strings.HasPrefix(id, "subnet-"):
		sn, aerr := s.lookupSubnet(id)
		if aerr != nil {
			return taggable{}, aerr
		}
		return taggable{
			tags:   func() map[string]string { return sn.tags },
			set:    func(k, v string) { sn.tags[k] = v },
			delete: func(k string) { delete(sn.tags, k) },
		}, nil
	}
	return taggable{}, apiErr("InvalidID", "The ID '%s' is not valid", id)
}

func (s *Sim) actCreateTags(r *request) (response, *APIError) {
	ids := r.p.list("ResourceId")
	if len(ids) == 0 {
		return nil, apiErr("MissingParameter", "The request must contain the parameter ResourceId")
	}
	tags, aerr := r.p.tags("Tag")
	if aerr != nil {
		return nil, aerr
	}
	if len(tags) == 0 {
		return nil, apiErr("MissingParameter", "The request must contain the parameter Tag")
	}
	m := map[string]string{}
	for _, t := range tags {
		m[t.key] = t.value
	}
	if err := validateTags(m); err != nil {
		return nil, apiErr("InvalidParameterValue", "%v", err)
	}
	s.lock()
	defer s.mu.Unlock()
	var targets []taggable
	for _, id := range ids {
		t, aerr := s.resolveTaggable(id)
		if aerr != nil {
			return nil, aerr
		}
		n := len(t.tags())
		for k := range m {
			if _, ok := t.tags()[k]; !ok {
				n++
			}
		}
		if n > 50 {
			return nil, apiErr("TagLimitExceeded", "The maximum number of tags for resource '%s' has been reached.", id)
		}
		targets = append(targets, t)
	}
	for _, t := range targets {
		if t.eni != nil {
			s.lagged(t.eni.id, s.lagBefore(t.eni))
		}
		for k, v := range m {
			t.set(k, v)
		}
	}
	return &returnResponse{Return: true}, nil
}

func (s *Sim) actDeleteTags(r *request) (response, *APIError) {
	ids := r.p.list("ResourceId")
	if len(ids) == 0 {
		return nil, apiErr("MissingParameter", "The request must contain the parameter ResourceId")
	}
	tags, aerr := r.p.tags("Tag")
	if aerr != nil {
		return nil, aerr
	}
	s.lock()
	defer s.mu.Unlock()
	var targets []taggable
	for _, id := range ids {
		t, aerr := s.resolveTaggable(id)
		if aerr != nil {
			return nil, aerr
		}
		targets = append(targets, t)
	}
	for _, t := range targets {
		if t.eni != nil {
			s.lagged(t.eni.id, s.lagBefore(t.eni))
		}
		if len(tags) == 0 {
			for k := range t.tags() {
				t.delete(k)
			}
			continue
		}
		for _, kv := range tags {
			if v, ok := t.tags()[kv.key]; ok && (!kv.hasValue || v == kv.value) {
				t.delete(kv.key)
			}
		}
	}
	return &returnResponse{Return: true}, nil
}

func (s *Sim) xmlCIDRReservationOf(sn *subnet, cr *cidrReservation) xmlCIDRReservation {
	return xmlCIDRReservation{
		SubnetCidrReservationID: cr.id, SubnetID: sn.id, Cidr: cr.cidr.String(),
		ReservationType: cr.kind, OwnerID: s.accountID, Description: cr.description,
	}
}

func (s *Sim) actCreateSubnetCidrReservation(r *request) (response, *APIError) {
	p := r.p
	subnetID, aerr := p.require("SubnetId")
	if aerr != nil {
		return nil, aerr
	}
	cidrS, aerr := p.require("Cidr")
	if aerr != nil {
		return nil, aerr
	}
	kindS, aerr := p.require("ReservationType")
	if aerr != nil {
		return nil, aerr
	}
	var kind uint8
	switch kindS {
	case "prefix":
		kind = resvPrefix
	case "explicit":
		kind = resvExplicit
	default:
		return nil, apiErr("InvalidParameterValue", "Invalid value '%s' for ReservationType: must be prefix or explicit", kindS)
	}
	cidr, err := parseCIDR(cidrS)
	if err != nil {
		return nil, apiErr("InvalidParameterValue", "Invalid value for Cidr: %v", err)
	}
	if kind == resvPrefix && cidr.Bits() > 28 {
		return nil, apiErr("InvalidParameterValue", "A prefix reservation must be a /28 or larger, not %s", cidr)
	}
	if _, aerr := p.tagSpecs("subnet-cidr-reservation"); aerr != nil {
		return nil, aerr
	}
	s.lock()
	defer s.mu.Unlock()
	sn, aerr := s.lookupSubnet(subnetID)
	if aerr != nil {
		return nil, aerr
	}
	if !sn.cidr.Contains(cidr.Addr()) || cidr.Bits() < sn.cidr.Bits() {
		return nil, apiErr("InvalidParameterValue", "The CIDR %s is not within the subnet's CIDR block %s", cidr, sn.cidr)
	}
	for _, cr := range sn.reservations {
		if cr.cidr.Overlaps(cidr) {
			return nil, apiErr("InvalidParameterValue", "The CIDR %s overlaps the reservation %s (%s)", cidr, cr.id, cr.cidr)
		}
	}
	cr := &cidrReservation{id: s.newID("scr-"), cidr: cidr, kind: kindS, description: p.str("Description")}
	sn.reservations = append(sn.reservations, cr)
	s.reservations[cr.id] = sn
	sn.setReservation(cidr, kind)
	return &cidrReservationResponse{Reservation: s.xmlCIDRReservationOf(sn, cr)}, nil
}

func (s *Sim) actDeleteSubnetCidrReservation(r *request) (response, *APIError) {
	id, aerr := r.p.require("SubnetCidrReservationId")
	if aerr != nil {
		return nil, aerr
	}
	s.lock()
	defer s.mu.Unlock()
	sn, ok := s.reservations[id]
	if !ok {
		return nil, apiErr("InvalidSubnetCidrReservationID.NotFound", "The subnet CIDR reservation ID '%s' does not exist", id)
	}
	for i, cr := range sn.reservations {
		if cr.id == id {
			sn.reservations = append(sn.reservations[:i], sn.reservations[i+1:]...)
			delete(s.reservations, id)
			sn.setReservation(cr.cidr, resvNone)
			return &deleteCIDRReservationResponse{Reservation: s.xmlCIDRReservationOf(sn, cr)}, nil
		}
	}
	return nil, apiErr("InvalidSubnetCidrReservationID.NotFound", "The subnet CIDR reservation ID '%s' does not exist", id)
}

// launchInterface reads RunInstances' NetworkInterface.N: the simulator launches an instance
// with its primary interface only, so the one entry must be device index 0. It returns what the
// interface carries and its SubnetId ("" when the entry names none).
func (p params) launchInterface() (LaunchInterface, string, *APIError) {
	var li LaunchInterface
	idx := p.indices("NetworkInterface")
	switch {
	case len(idx) == 0:
		return li, "", nil
	case len(idx) > 1 || idx[0] != 1:
		return li, "", apiErr("InvalidParameterValue", "the simulator launches an instance with one network interface (NetworkInterface.1, device index 0); attach others after launch")
	}
	const pre = "NetworkInterface.1."
	dev, set, aerr := p.intParam(pre + "DeviceIndex")
	if aerr != nil {
		return li, "", aerr
	}
	if !set || dev != 0 {
		return li, "", apiErr("InvalidParameterValue", "NetworkInterface.1.DeviceIndex must be 0 (the primary network interface)")
	}
	if p.has(pre + "NetworkInterfaceId") {
		return li, "", apiErr("InvalidParameterValue", "the simulator does not launch instances on existing network interfaces")
	}
	for _, f := range []struct {
		key string
		dst *int
	}{{"SecondaryPrivateIpAddressCount", &li.SecondaryPrivateIPAddressCount}, {"Ipv4PrefixCount", &li.IPv4PrefixCount}} {
		n, _, aerr := p.intParam(pre + f.key)
		if aerr != nil {
			return li, "", aerr
		}
		*f.dst = n
	}
	li.SecurityGroupIDs = p.list(pre + "SecurityGroupId")
	return li, p.str(pre + "SubnetId"), nil
}

// maxRunCount bounds MaxCount of one RunInstances.
const maxRunCount = 1000

func (s *Sim) actRunInstances(r *request) (response, *APIError) {
	p := r.p
	typeName, aerr := p.require("InstanceType")
	if aerr != nil {
		return nil, aerr
	}
	t, ok := instancetypes.Lookup(typeName)
	if !ok {
		return nil, apiErr("InvalidParameterValue", "Invalid value '%s' for InstanceType.", typeName)
	}
	li, niSubnet, aerr := p.launchInterface()
	if aerr != nil {
		return nil, aerr
	}
	subnetID := p.str("SubnetId")
	switch {
	case niSubnet != "" && subnetID != "":
		return nil, apiErr("InvalidParameterCombination", "Network interfaces and an instance-level subnet ID may not be specified on the same request")
	case niSubnet != "":
		subnetID = niSubnet
	case subnetID == "":
		return nil, apiErr("MissingParameter", "The request must contain the parameter SubnetId")
	}
	minC, minSet, aerr := p.intParam("MinCount")
	if aerr != nil {
		return nil, aerr
	}
	maxC, maxSet, aerr := p.intParam("MaxCount")
	if aerr != nil {
		return nil, aerr
	}
	if !minSet || !maxSet {
		return nil, apiErr("MissingParameter", "The request must contain the parameters MinCount and MaxCount")
	}
	if minC < 1 || maxC < minC || maxC > maxRunCount {
		return nil, apiErr("InvalidParameterValue", "MinCount (%d) and MaxCount (%d) must satisfy 1 <= MinCount <= MaxCount <= %d", minC, maxC, maxRunCount)
	}
	instTags, eniTags := map[string]string{}, map[string]string{}
	for _, n := range p.indices("TagSpecification") {
		pre := "TagSpecification." + strconv.Itoa(n)
		var dst map[string]string
		switch rt := p.str(pre + ".ResourceType"); rt {
		case "instance":
			dst = instTags
		case "network-interface":
			dst = eniTags
		default:
			return nil, apiErr("InvalidParameterValue", "'%s' is not a valid taggable resource type for this operation.", rt)
		}
		list, aerr := p.tags(pre + ".Tag")
		if aerr != nil {
			return nil, aerr
		}
		for _, kv := range list {
			dst[kv.key] = kv.value
		}
	}
	for _, m := range []map[string]string{instTags, eniTags} {
		if err := validateTags(m); err != nil {
			return nil, apiErr("InvalidParameterValue", "%v", err)
		}
	}
	token := p.str("ClientToken")
	// The instances a request would launch take tokens of their own bucket.
	if !s.throttle.takeN(BucketInstancesLaunched, maxC, s.now()) {
		return nil, apiErr("RequestLimitExceeded", "Request limit exceeded.")
	}

	s.lock()
	fp := p.fingerprint()
	if rec, ok := s.runTokens[token]; ok && token != "" {
		defer s.mu.Unlock()
		if rec.params != fp {
			return nil, apiErr("IdempotentParameterMismatch", "Client token '%s' was already used with different parameters.", token)
		}
		return s.runResponse(rec.reservationID, rec.ids), nil
	}
	sn, aerr := s.lookupSubnet(subnetID)
	if aerr != nil {
		s.mu.Unlock()
		return nil, aerr
	}
	insts, aerr := s.runLocked(t, sn, minC, maxC, instTags, li)
	if aerr != nil {
		s.mu.Unlock()
		return nil, aerr
	}
	ids := make([]string, len(insts))
	for i, in := range insts {
		ids[i] = in.id
		if e := in.primaryENI(); e != nil {
			for k, v := range eniTags {
				s.setENITag(e, k, v)
			}
		}
	}
	if token != "" {
		s.runTokens[token] = runRecord{params: fp, reservationID: insts[0].reservationID, ids: ids}
	}
	resp := s.runResponse(insts[0].reservationID, ids)
	s.mu.Unlock()
	s.notify(ids, nil)
	return resp, nil
}

func (s *Sim) runResponse(resID string, ids []string) *runInstancesResponse {
	resp := &runInstancesResponse{ReservationID: resID, OwnerID: s.accountID, Groups: s.xmlGroups([]string{s.defaultSG})}
	for _, id := range ids {
		in := s.instances[id]
		resp.Instances.Items = append(resp.Instances.Items, s.xmlInstanceOf(in, in.enis))
	}
	return resp
}

func (s *Sim) actTerminateInstances(r *request) (response, *APIError) {
	ids := r.p.list("InstanceId")
	if len(ids) == 0 {
		return nil, apiErr("MissingParameter", "The request must contain the parameter InstanceId")
	}
	s.lock()
	var insts []*instance
	for _, id := range ids {
		in, aerr := s.lookupInstance(id)
		if aerr != nil {
			s.mu.Unlock()
			return nil, aerr
		}
		insts = append(insts, in)
	}
	resp := &terminateResponse{}
	var stopped []string
	for _, in := range insts {
		prev := s.terminateLocked(in)
		if prev != "terminated" {
			stopped = append(stopped, in.id)
		}
		resp.Set.Items = append(resp.Set.Items, xmlStateChange{InstanceID: in.id, CurrentState: xmlState(in.state), PreviousState: xmlState(prev)})
	}
	s.mu.Unlock()
	s.notify(nil, stopped)
	return resp, nil
}
