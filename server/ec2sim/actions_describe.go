package ec2sim

import (
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ipledger/ipledger/server/instancetypes"
)

type eniSet struct {
	Items []xmlENI `xml:"item"`
}

type describeENIsResponse struct {
	meta
	Set       eniSet `xml:"networkInterfaceSet"`
	NextToken string `xml:"nextToken,omitempty"`
}

type subnetSet struct {
	Items []xmlSubnet `xml:"item"`
}

type describeSubnetsResponse struct {
	meta
	Set       subnetSet `xml:"subnetSet"`
	NextToken string    `xml:"nextToken,omitempty"`
}

type reservationSet struct {
	Items []xmlReservation `xml:"item"`
}

type describeInstancesResponse struct {
	meta
	Set       reservationSet `xml:"reservationSet"`
	NextToken string         `xml:"nextToken,omitempty"`
}

type instanceTypeSet struct {
	Items []xmlInstanceTypeInfo `xml:"item"`
}

type describeInstanceTypesResponse struct {
	meta
	Set       instanceTypeSet `xml:"instanceTypeSet"`
	NextToken string          `xml:"nextToken,omitempty"`
}

func invalidFilter(name string) *APIError {
	return apiErr("InvalidParameterValue", "The filter '%s' is invalid", name)
}

func checkFilters(fs []filter, known map[string]bool) *APIError {
	for _, f := range fs {
		if known[f.name] || strings.HasPrefix(f.name, "tag:") && len(f.name) > 4 {
			continue
		}
		return invalidFilter(f.name)
	}
	return nil
}

func tagValues(tags map[string]string, name string) []string {
	if k, ok := strings.CutPrefix(name, "tag:"); ok {
		if v, ok := tags[k]; ok {
			return []string{v}
		}
		return nil
	}
	if name == "tag-key" {
		keys := make([]string, 0, len(tags))
		for k := range tags {
			keys = append(keys, k)
		}
		return keys
	}
	return nil
}

var eniFilterNames = map[string]bool{
	"attachment.instance-id": true, "attachment.attachment-id": true, "attachment.device-index": true,
	"attachment.status": true, "attachment.delete-on-termination": true, "attachment.network-card-index": true,
	"addresses.private-ip-address": true, "private-ip-address": true, "ipv4-prefix": true,
	"status": true, "subnet-id": true, "vpc-id": true, "availability-zone": true, "description": true,
	"mac-address": true, "network-interface-id": true, "owner-id": true, "requester-managed": true,
	"interface-type": true, "group-id": true, "tag-key": true,
}

func (s *Sim) eniValues(e *eni, name string, now time.Time) []string {
	att := e.att
	switch name {
	case "attachment.instance-id":
		if att != nil {
			return []string{att.inst.id}
		}
	case "attachment.attachment-id":
		if att != nil {
			return []string{att.id}
		}
	case "attachment.device-index":
		if att != nil {
			return []string{strconv.Itoa(att.deviceIndex)}
		}
	case "attachment.network-card-index":
		if att != nil {
			return []string{strconv.Itoa(att.cardIndex)}
		}
	case "attachment.status":
		if att != nil {
			return []string{att.statusAt(now)}
		}
	case "attachment.delete-on-termination":
		if att != nil {
			return []string{strconv.FormatBool(att.deleteOnTermination)}
		}
	case "addresses.private-ip-address", "private-ip-address":
		out := []string{ipString(e.primary)}
		for _, a := range e.secondaries {
			out = append(out, ipString(a))
		}
		return out
	case "ipv4-prefix":
		var out []string
		for _, b := range e.prefixes {
			out = append(out, prefixString(b))
		}
		return out
	case "status":
		return []string{e.status()}
	case "subnet-id":
		return []string{e.sn.id}
	case "vpc-id":
		return []string{e.sn.vpcID}
	case "availability-zone":
		return []string{e.sn.az}
	case "description":
		return []string{e.description}
	case "mac-address":
		return []string{e.mac}
	case "network-interface-id":
		return []string{e.id}
	case "owner-id":
		return []string{s.accountID}
	case "requester-managed":
		return []string{"false"}
	case "interface-type":
		return []string{"interface"}
	case "group-id":
		return e.groups
	default:
		return tagValues(e.tags, name)
	}
	return nil
}

// eniCandidates narrows the ENIs to check with the most selective indexed filter; the result
// is sorted by id.
func (s *Sim) eniCandidates(fs []filter) []string {
	var best map[string]bool
	for _, f := range fs {
		glob := false
		for _, v := range f.values {
			glob = glob || isGlob(v)
		}
		if glob {
			continue
		}
		set := map[string]bool{}
		indexed := true
		switch {
		case f.name == "attachment.instance-id":
			for _, v := range f.values {
				if in, ok := s.instances[v]; ok {
					for _, e := range in.enis {
						set[e.id] = true
					}
				}
			}
		case f.name == "attachment.attachment-id":
			for _, v := range f.values {
				if e, ok := s.eniByAttachment[v]; ok {
					set[e.id] = true
				}
			}
		case f.name == "addresses.private-ip-address" || f.name == "private-ip-address":
			for _, v := range f.values {
				a, err := parseIPv4(v)
				if err != nil {
					continue
				}
				if sn, off, ok := s.subnetOf(a); ok && sn.owner[off] != nil && sn.kind[off] != kindPrefix {
					set[sn.owner[off].id] = true
				}
			}
		case f.name == "subnet-id":
			for _, v := range f.values {
				if sn, ok := s.subnetByID[v]; ok {
					for id := range sn.enis {
						set[id] = true
					}
				}
			}
		case f.name == "network-interface-id":
			for _, v := range f.values {
				if _, ok := s.enis[v]; ok {
					set[v] = true
				}
			}
		case strings.HasPrefix(f.name, "tag:"):
			byV := s.eniTags[f.name[4:]]
			for _, v := range f.values {
				for id := range byV[v] {
					set[id] = true
				}
			}
		case f.name == "tag-key":
			for _, k := range f.values {
				for _, ids := range s.eniTags[k] {
					for id := range ids {
						set[id] = true
					}
				}
			}
		default:
			indexed = false
		}
		if indexed && (best == nil || len(set) < len(best)) {
			best = set
		}
	}
	if best == nil {
		return s.eniOrder
	}
	out := make([]string, 0, len(best))
	for id := range best {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// pageOf walks sorted candidate ids after `after`, keeps those match accepts, and stops at
// size (0: no limit); the token is set when another match follows.
func pageOf(cands []string, after string, size int, match func(id string) bool) (ids []string, next string) {
	start := 0
	if after != "" {
		start = sort.SearchStrings(cands, after)
		if start < len(cands) && cands[start] == after {
			start++
		}
	}
	for _, id := range cands[start:] {
		if !match(id) {
			continue
		}
		if size > 0 && len(ids) == size {
			return ids, encodeToken(ids[len(ids)-1])
		}
		ids = append(ids, id)
	}
	return ids, ""
}

// uniqueSorted returns the distinct ids, sorted.
func uniqueSorted(ids []string) []string {
	out := append([]string(nil), ids...)
	sort.Strings(out)
	j := 0
	for i, id := range out {
		if i == 0 || id != out[j-1] {
			out[j] = id
			j++
		}
	}
	return out[:j]
}

func (s *Sim) actDescribeNetworkInterfaces(r *request) (response, *APIError) {
	p := r.p
	ids := p.list("NetworkInterfaceId")
	fs, aerr := p.filters()
	if aerr != nil {
		return nil, aerr
	}
	if aerr := checkFilters(fs, eniFilterNames); aerr != nil {
		return nil, aerr
	}
	size, after, aerr := pageParams(p, len(ids) > 0, 1000)
	if aerr != nil {
		return nil, aerr
	}
	s.rlock()
	defer s.mu.RUnlock()
	now := s.now()
	var cands []string
	if len(ids) > 0 {
		for _, id := range ids {
			if s.describedENI(id, now) == nil {
				return nil, eniNotFound(id)
			}
		}
		cands = uniqueSorted(ids)
	} else {
		// The indexes know the live ENIs; ENIs whose describe lags may look otherwise.
		cands = s.eniCandidates(fs)
		if len(s.lags) > 0 {
			cands = uniqueSorted(append(append([]string(nil), cands...), s.laggingIDs()...))
		}
	}
	page, next := pageOf(cands, after, size, func(id string) bool {
		e := s.describedENI(id, now)
		if e == nil {
			return false
		}
		for _, f := range fs {
			if !matchAny(f.values, s.eniValues(e, f.name, now)) {
				return false
			}
		}
		return true
	})
	resp := &describeENIsResponse{NextToken: next}
	resp.Set.Items = make([]xmlENI, 0, len(page))
	for _, id := range page {
		resp.Set.Items = append(resp.Set.Items, s.xmlENIOf(s.describedENI(id, now), false))
	}
	return resp, nil
}

var subnetFilterNames = map[string]bool{
	"vpc-id": true, "availability-zone": true, "availability-zone-id": true, "subnet-id": true,
	"cidr-block": true, "cidr": true, "cidrBlock": true, "state": true, "owner-id": true,
	"default-for-az": true, "tag-key": true, "available-ip-address-count": true,
}

func (s *Sim) subnetValues(sn *subnet, name string) []string {
	switch name {
	case "vpc-id":
		return []string{sn.vpcID}
	case "availability-zone":
		return []string{sn.az}
	case "availability-zone-id":
		return []string{sn.azID}
	case "subnet-id":
		return []string{sn.id}
	case "cidr-block", "cidr", "cidrBlock":
		return []string{sn.cidr.String()}
	case "state":
		return []string{"available"}
	case "owner-id":
		return []string{s.accountID}
	case "default-for-az":
		return []string{"false"}
	case "available-ip-address-count":
		return []string{strconv.Itoa(sn.available())}
	}
	return tagValues(sn.tags, name)
}

func (s *Sim) actDescribeSubnets(r *request) (response, *APIError) {
	p := r.p
	ids := p.list("SubnetId")
	fs, aerr := p.filters()
	if aerr != nil {
		return nil, aerr
	}
	if aerr := checkFilters(fs, subnetFilterNames); aerr != nil {
		return nil, aerr
	}
	size, after, aerr := pageParams(p, len(ids) > 0, 1000)
	if aerr != nil {
		return nil, aerr
	}
	s.rlock()
	defer s.mu.RUnlock()
	var cands []string
	if len(ids) > 0 {
		for _, id := range ids {
			if _, aerr := s.lookupSubnet(id); aerr != nil {
				return nil, aerr
			}
		}
		cands = uniqueSorted(ids)
	} else {
		for id := range s.subnetByID {
			cands = append(cands, id)
		}
		sort.Strings(cands)
	}
	page, next := pageOf(cands, after, size, func(id string) bool {
		sn := s.subnetByID[id]
		for _, f := range fs {
			if !matchAny(f.values, s.subnetValues(sn, f.name)) {
				return false
			}
		}
		return true
	})
	resp := &describeSubnetsResponse{NextToken: next}
	resp.Set.Items = make([]xmlSubnet, 0, len(page))
	for _, id := range page {
		resp.Set.Items = append(resp.Set.Items, s.xmlSubnetOf(s.subnetByID[id]))
	}
	return resp, nil
}

var instanceFilterNames = map[string]bool{
	"instance-id": true, "instance-state-name": true, "instance-state-code": true, "subnet-id": true,
	"vpc-id": true, "instance-type": true, "availability-zone": true, "private-ip-address": true,
	"private-dns-name": true, "reservation-id": true, "network-interface.network-interface-id": true,
	"network-interface.addresses.private-ip-address": true, "tag-key": true,
}

func (s *Sim) instanceValues(in *instance, name string, now time.Time) []string {
	running := in.state != "terminated"
	switch name {
	case "instance-id":
		return []string{in.id}
	case "instance-state-name":
		return []string{in.state}
	case "instance-state-code":
		return []string{strconv.Itoa(stateCodes[in.state])}
	case "subnet-id":
		if running {
			return []string{in.sn.id}
		}
	case "vpc-id":
		if running {
			return []string{in.sn.vpcID}
		}
	case "instance-type":
		return []string{in.itype.Name}
	case "availability-zone":
		return []string{in.sn.az}
	case "private-ip-address":
		if running {
			return []string{ipString(in.privateIP)}
		}
	case "private-dns-name":
		if running {
			return []string{s.privateDNS(in.privateIP)}
		}
	case "reservation-id":
		return []string{in.reservationID}
	case "network-interface.network-interface-id":
		var out []string
		for _, e := range s.describedInstanceENIs(in, now) {
			out = append(out, e.id)
		}
		return out
	case "network-interface.addresses.private-ip-address":
		var out []string
		for _, e := range s.describedInstanceENIs(in, now) {
			out = append(out, s.eniValues(e, "addresses.private-ip-address", now)...)
		}
		return out
	default:
		return tagValues(in.tags, name)
	}
	return nil
}

func (s *Sim) instanceCandidates(fs []filter) []string {
	var best map[string]bool
	for _, f := range fs {
		glob := false
		for _, v := range f.values {
			glob = glob || isGlob(v)
		}
		if glob {
			continue
		}
		set := map[string]bool{}
		switch {
		case f.name == "instance-id":
			for _, v := range f.values {
				if _, ok := s.instances[v]; ok {
					set[v] = true
				}
			}
		case strings.HasPrefix(f.name, "tag:"):
			byV := s.instTags[f.name[4:]]
			for _, v := range f.values {
				for id := range byV[v] {
					set[id] = true
				}
			}
		default:
			continue
		}
		if best == nil || len(set) < len(best) {
			best = set
		}
	}
	if best == nil {
		return s.instOrder
	}
	out := make([]string, 0, len(best))
	for id := range best {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

func (s *Sim) actDescribeInstances(r *request) (response, *APIError) {
	p := r.p
	ids := p.list("InstanceId")
	fs, aerr := p.filters()
	if aerr != nil {
		return nil, aerr
	}
	if aerr := checkFilters(fs, instanceFilterNames); aerr != nil {
		return nil, aerr
	}
	size, after, aerr := pageParams(p, len(ids) > 0, 1000)
	if aerr != nil {
		return nil, aerr
	}
	s.rlock()
	defer s.mu.RUnlock()
	now := s.now()
	var cands []string
	if len(ids) > 0 {
		for _, id := range ids {
			if _, aerr := s.lookupInstance(id); aerr != nil {
				return nil, aerr
			}
		}
		cands = uniqueSorted(ids)
	} else {
		cands = s.instanceCandidates(fs)
	}
	page, next := pageOf(cands, after, size, func(id string) bool {
		in := s.instances[id]
		for _, f := range fs {
			if !matchAny(f.values, s.instanceValues(in, f.name, now)) {
				return false
			}
		}
		return true
	})
	resp := &describeInstancesResponse{NextToken: next}
	resp.Set.Items = s.xmlReservations(page, now)
	return resp, nil
}

// xmlReservations groups instances by reservation in the order they appear.
func (s *Sim) xmlReservations(ids []string, now time.Time) []xmlReservation {
	out := []xmlReservation{}
	index := map[string]int{}
	for _, id := range ids {
		in := s.instances[id]
		i, ok := index[in.reservationID]
		if !ok {
			i = len(out)
			index[in.reservationID] = i
			out = append(out, xmlReservation{ReservationID: in.reservationID, OwnerID: s.accountID})
		}
		out[i].Instances = append(out[i].Instances, s.xmlInstanceOf(in, s.describedInstanceENIs(in, now)))
	}
	return out
}

var instanceTypeFilterNames = map[string]bool{
	"instance-type": true, "hypervisor": true, "bare-metal": true,
	"network-info.maximum-network-interfaces": true, "network-info.ipv4-addresses-per-interface": true,
}

func instanceTypeValues(t instancetypes.Type, name string) []string {
	switch name {
	case "instance-type":
		return []string{t.Name}
	case "hypervisor":
		return []string{t.Hypervisor}
	case "bare-metal":
		return []string{strconv.FormatBool(t.BareMetal)}
	case "network-info.maximum-network-interfaces":
		return []string{strconv.Itoa(t.MaxENIs)}
	case "network-info.ipv4-addresses-per-interface":
		return []string{strconv.Itoa(t.IPv4PerENI)}
	}
	return nil
}

var instanceTypeNames = func() []string {
	var out []string
	for _, t := range instancetypes.All() {
		out = append(out, t.Name)
	}
	return out
}()

func (s *Sim) actDescribeInstanceTypes(r *request) (response, *APIError) {
	p := r.p
	names := p.list("InstanceType")
	fs, aerr := p.filters()
	if aerr != nil {
		return nil, aerr
	}
	for _, f := range fs {
		if !instanceTypeFilterNames[f.name] {
			return nil, invalidFilter(f.name)
		}
	}
	size, after, aerr := pageParams(p, false, 100)
	if aerr != nil {
		return nil, aerr
	}
	if size == 0 {
		size = 100
	}
	cands := instanceTypeNames
	if len(names) > 0 {
		var missing []string
		for _, n := range names {
			if _, ok := instancetypes.Lookup(n); !ok {
				missing = append(missing, n)
			}
		}
		if len(missing) > 0 {
			return nil, apiErr("InvalidInstanceType", "The following supplied instance types do not exist: [%s]", strings.Join(missing, ", "))
		}
		cands = uniqueSorted(names)
	}
	page, next := pageOf(cands, after, size, func(name string) bool {
		t, _ := instancetypes.Lookup(name)
		for _, f := range fs {
			if !matchAny(f.values, instanceTypeValues(t, f.name)) {
				return false
			}
		}
		return true
	})
	resp := &describeInstanceTypesResponse{NextToken: next}
	resp.Set.Items = make([]xmlInstanceTypeInfo, 0, len(page))
	for _, n := range page {
		t, _ := instancetypes.Lookup(n)
		resp.Set.Items = append(resp.Set.Items, xmlInstanceTypeOf(t))
	}
	return resp, nil
}
