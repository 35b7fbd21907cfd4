package policy

import (
	"cmp"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"sort"
	"time"

	"github.com/ipledger/ipledger/server/ledger"
)

// PodSubnets is where a policy's nodes put their secondary ENIs, and so their pods' addresses
// (proto PodSubnets). Exactly one of SubnetIDs, Tags and Zones is set. A nil *PodSubnets in a
// Policy means the node's own subnet, as the Amazon VPC CNI does by default.
type PodSubnets struct {
	// SubnetIDs names the subnets (any zones: a node uses those of its own).
	SubnetIDs []string
	// Tags selects the VPC's subnets that carry all of them; the value "*" matches any value.
	Tags map[string]string
	// Zones gives each availability zone (by name) its subnets and security groups: the shape of
	// the VPC CNI's ENIConfig, one per zone.
	Zones map[string]ZoneSubnets
	// SecurityGroups of the secondary ENIs (empty: the node's primary ENI's). A zone's own win.
	SecurityGroups []string
	// IncludeNodeSubnet also uses the node's own subnet (the VPC CNI's subnet discovery does).
	IncludeNodeSubnet bool
	// ExcludePrimaryENI keeps pods off the node's primary ENI (custom networking).
	ExcludePrimaryENI bool
}

// ZoneSubnets is one zone's pod subnets and the security groups of ENIs there.
type ZoneSubnets struct {
	SubnetIDs      []string
	SecurityGroups []string
}

// Limits of a PodSubnets.
const (
	maxPodSubnetIDs     = 64
	maxPodSubnetTags    = 16
	maxPodSubnetZones   = 32
	maxSecurityGroups   = 16
	maxTagKeyLength     = 128
	maxTagValueLength   = 256
	projectionHorizon   = time.Hour
	prefixBlockAddrs    = 16
	anyTagValue         = "*"
	fieldPodSubnets     = "pod_subnets"
	fieldPodSubnetZones = "pod_subnets.zones"
)

var (
	subnetIDRE = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)
	sgIDRE     = regexp.MustCompile(`^sg-[0-9a-f]{8,17}$`)
	zoneRE     = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-\d[a-z]$`)
)

// clone copies every list and map, so a stored policy shares nothing with its caller's.
func (s *PodSubnets) clone() *PodSubnets {
	if s == nil {
		return nil
	}
	out := *s
	out.SubnetIDs = slices.Clone(s.SubnetIDs)
	out.Tags = maps.Clone(s.Tags)
	out.SecurityGroups = slices.Clone(s.SecurityGroups)
	if s.Zones != nil {
		out.Zones = make(map[string]ZoneSubnets, len(s.Zones))
		for z, zs := range s.Zones {
			out.Zones[z] = ZoneSubnets{SubnetIDs: slices.Clone(zs.SubnetIDs), SecurityGroups: slices.Clone(zs.SecurityGroups)}
		}
	}
	return &out
}

// equal reports whether two selections say the same.
func (s *PodSubnets) equal(t *PodSubnets) bool {
	if s == nil || t == nil {
		return s == nil && t == nil
	}
	if !slices.Equal(s.SubnetIDs, t.SubnetIDs) || !maps.Equal(s.Tags, t.Tags) || !slices.Equal(s.SecurityGroups, t.SecurityGroups) ||
		s.IncludeNodeSubnet != t.IncludeNodeSubnet || s.ExcludePrimaryENI != t.ExcludePrimaryENI || len(s.Zones) != len(t.Zones) {
		return false
	}
	for z, zs := range s.Zones {
		zt, ok := t.Zones[z]
		if !ok || !slices.Equal(zs.SubnetIDs, zt.SubnetIDs) || !slices.Equal(zs.SecurityGroups, zt.SecurityGroups) {
			return false
		}
	}
	return true
}

// validate checks a selection and returns an error naming the bad field.
func (s *PodSubnets) validate() error {
	if s == nil {
		return nil
	}
	forms := 0
	for _, set := range []bool{len(s.SubnetIDs) > 0, len(s.Tags) > 0, len(s.Zones) > 0} {
		if set {
			forms++
		}
	}
	if forms != 1 {
		return Invalid(fieldPodSubnets, "name the pod subnets by exactly one of subnet_ids, tags and zones (%d given)", forms)
	}
	if err := validateSubnetIDs("pod_subnets.subnet_ids", s.SubnetIDs, map[string]string{}); err != nil {
		return err
	}
	if len(s.Tags) > maxPodSubnetTags {
		return Invalid("pod_subnets.tags", "%d tags; at most %d", len(s.Tags), maxPodSubnetTags)
	}
	for _, k := range slices.Sorted(maps.Keys(s.Tags)) {
		if k == "" || len(k) > maxTagKeyLength {
			return Invalid("pod_subnets.tags", "tag key %q must have 1 to %d characters", k, maxTagKeyLength)
		}
		if v := s.Tags[k]; len(v) > maxTagValueLength {
			return Invalid("pod_subnets.tags", "the value of tag %q is longer than %d characters", k, maxTagValueLength)
		}
	}
	if len(s.Zones) > maxPodSubnetZones {
		return Invalid(fieldPodSubnetZones, "%d zones; at most %d", len(s.Zones), maxPodSubnetZones)
	}
	seen := map[string]string{}
	for _, z := range slices.Sorted(maps.Keys(s.Zones)) {
		zs := s.Zones[z]
		field := fmt.Sprintf("%s[%s]", fieldPodSubnetZones, z)
		if !zoneRE.MatchString(z) {
			return Invalid(fieldPodSubnetZones, "%q is not an availability zone name (eu-west-1a)", z)
		}
		if len(zs.SubnetIDs) == 0 {
			return Invalid(field+".subnet_ids", "a zone needs at least one subnet")
		}
		if err := validateSubnetIDs(field+".subnet_ids", zs.SubnetIDs, seen); err != nil {
			return err
		}
		for id := range seen {
			if seen[id] == "" {
				seen[id] = z
			}
		}
		if err := validateSecurityGroups(field+".security_group_ids", zs.SecurityGroups); err != nil {
			return err
		}
	}
	return validateSecurityGroups("pod_subnets.security_group_ids", s.SecurityGroups)
}

// validateSubnetIDs checks a list of subnet ids; seen holds the ids of earlier lists (a subnet
// must not be named twice anywhere).
func validateSubnetIDs(field string, ids []string, seen map[string]string) error {
	if len(ids) > maxPodSubnetIDs {
		return Invalid(field, "%d subnets; at most %d", len(ids), maxPodSubnetIDs)
	}
	for i, id := range ids {
		f := fmt.Sprintf("%s[%d]", field, i)
		if !subnetIDRE.MatchString(id) {
			return Invalid(f, "%q is not a subnet id (subnet-...)", id)
		}
		if _, dup := seen[id]; dup {
			return Invalid(f, "subnet %s is named twice", id)
		}
		seen[id] = ""
	}
	return nil
}

func validateSecurityGroups(field string, sgs []string) error {
	if len(sgs) > maxSecurityGroups {
		return Invalid(field, "%d security groups; an ENI has at most %d", len(sgs), maxSecurityGroups)
	}
	seen := map[string]bool{}
	for i, g := range sgs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if !sgIDRE.MatchString(g) {
			return Invalid(f, "%q is not a security group id (sg-...)", g)
		}
		if seen[g] {
			return Invalid(f, "security group %s is named twice", g)
		}
		seen[g] = true
	}
	return nil
}

// HasPodSubnets reports whether the policy puts secondary ENIs in subnets of its own choice.
func (p Policy) HasPodSubnets() bool { return p.PodSubnets != nil }

// ExcludesPrimaryENI reports whether the policy keeps pods off the primary ENI.
func (p Policy) ExcludesPrimaryENI() bool {
	return p.PodSubnets != nil && p.PodSubnets.ExcludePrimaryENI
}

// NamedSubnets are the subnet ids a policy names (by id or per zone), sorted, with the field
// that names each.
func (p Policy) NamedSubnets() []NamedSubnet {
	s := p.PodSubnets
	if s == nil {
		return nil
	}
	var out []NamedSubnet
	for i, id := range s.SubnetIDs {
		out = append(out, NamedSubnet{ID: id, Field: fmt.Sprintf("pod_subnets.subnet_ids[%d]", i)})
	}
	for _, z := range slices.Sorted(maps.Keys(s.Zones)) {
		for i, id := range s.Zones[z].SubnetIDs {
			out = append(out, NamedSubnet{ID: id, Zone: z, Field: fmt.Sprintf("%s[%s].subnet_ids[%d]", fieldPodSubnetZones, z, i)})
		}
	}
	return out
}

// NamedSubnet is a subnet a policy names: its id, the zone it is named for (zones form only) and
// the field naming it (for errors).
type NamedSubnet struct {
	ID, Zone, Field string
}

// MatchesTags reports whether a subnet's tags carry every tag of the policy's tag selection
// (false for a policy that selects by ids or zones).
func (p Policy) MatchesTags(tags map[string]string) bool {
	s := p.PodSubnets
	if s == nil || len(s.Tags) == 0 {
		return false
	}
	for k, want := range s.Tags {
		got, ok := tags[k]
		if !ok || (want != anyTagValue && got != want) {
			return false
		}
	}
	return true
}

// Candidate is a subnet a node may put a secondary ENI in, with the security groups of that ENI
// (nil: the node's primary ENI's).
type Candidate struct {
	SubnetID       string
	Zone           string
	SecurityGroups []string
	// NodeSubnet: the node's own subnet (IncludeNodeSubnet, or a policy without pod subnets).
	NodeSubnet bool
}

// Place is where a node is: its zone, its own subnet and that subnet's VPC ("" when unknown:
// then the VPC is not checked).
type Place struct {
	Zone, SubnetID, VPCID string
}

// Candidates lists the subnets a node of the policy may put secondary ENIs in, among the known
// subnets: for a policy without pod subnets its own subnet; otherwise the policy's pod subnets
// in the node's zone and VPC, by id, and the node's own subnet last when IncludeNodeSubnet.
// A subnet of another zone is never a candidate.
func (p Policy) Candidates(at Place, subnets []ledger.SubnetRecord) []Candidate {
	s := p.PodSubnets
	if s == nil {
		return []Candidate{{SubnetID: at.SubnetID, Zone: at.Zone, NodeSubnet: true}}
	}
	byID := make(map[string]ledger.SubnetRecord, len(subnets))
	for _, r := range subnets {
		byID[r.ID] = r
	}
	usable := func(r ledger.SubnetRecord) bool {
		return r.AvailabilityZone == at.Zone && (at.VPCID == "" || r.VPCID == "" || r.VPCID == at.VPCID)
	}
	var out []Candidate
	add := func(r ledger.SubnetRecord, sgs []string) {
		if usable(r) {
			out = append(out, Candidate{SubnetID: r.ID, Zone: r.AvailabilityZone, SecurityGroups: slices.Clone(sgs), NodeSubnet: r.ID == at.SubnetID})
		}
	}
	switch {
	case len(s.SubnetIDs) > 0:
		for _, id := range s.SubnetIDs {
			if r, ok := byID[id]; ok {
				add(r, s.SecurityGroups)
			}
		}
	case len(s.Zones) > 0:
		if zs, ok := s.Zones[at.Zone]; ok {
			sgs := zs.SecurityGroups
			if len(sgs) == 0 {
				sgs = s.SecurityGroups
			}
			for _, id := range zs.SubnetIDs {
				if r, ok := byID[id]; ok {
					add(r, sgs)
				}
			}
		}
	default:
		for _, r := range subnets {
			if p.MatchesTags(r.Tags) {
				add(r, s.SecurityGroups)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SubnetID < out[j].SubnetID })
	if s.IncludeNodeSubnet && at.SubnetID != "" && !slices.ContainsFunc(out, func(c Candidate) bool { return c.NodeSubnet }) {
		out = append(out, Candidate{SubnetID: at.SubnetID, Zone: at.Zone, SecurityGroups: slices.Clone(s.SecurityGroups), NodeSubnet: true})
	}
	return out
}

// SubnetState is what placement knows of a candidate subnet: its budget now and the trend of
// what is held there (addresses per hour; package forecast's slope).
type SubnetState struct {
	Budget      ledger.Budget
	HeldPerHour float64
}

// Room is what a subnet can give a new ENI now: addresses (the primary included) or, for prefix
// nodes, whole /28 blocks, within its budget's headroom.
func (st SubnetState) Room(prefix bool) int {
	b := st.Budget
	addrs := min(b.Headroom, b.Free-b.Cooling)
	if !prefix {
		return max(addrs, 0)
	}
	// One address for the ENI's primary, 16 per block.
	return max(min(b.FreePrefixes, (addrs-1)/prefixBlockAddrs), 0)
}

// Rank orders candidates for a new ENI that carries need items (addresses, or /28 prefixes for
// prefix nodes): subnets with room for the whole ENI first, then by the room they would have
// left an hour from now at their trend (headroom less the held-address slope; whole blocks for
// prefix nodes), then by id. Subnets with no room at all (not even the ENI's primary and one
// item) and subnets without a state are left out.
func Rank(cands []Candidate, state map[string]SubnetState, prefix bool, need int) []Candidate {
	type scored struct {
		c         Candidate
		whole     bool
		projected float64
	}
	var list []scored
	for _, c := range cands {
		st, ok := state[c.SubnetID]
		if !ok {
			continue
		}
		room := st.Room(prefix)
		minimum := 2 // the primary and one address
		if prefix {
			minimum = 1
		}
		if room < minimum {
			continue
		}
		slope := max(st.HeldPerHour, 0) * projectionHorizon.Hours()
		if prefix {
			slope /= prefixBlockAddrs
		}
		whole := room >= need+1
		if prefix {
			whole = room >= need
		}
		list = append(list, scored{c: c, whole: whole, projected: float64(room) - slope})
	}
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i], list[j]
		if a.whole != b.whole {
			return a.whole
		}
		if a.projected != b.projected {
			return a.projected > b.projected
		}
		return a.c.SubnetID < b.c.SubnetID
	})
	out := make([]Candidate, 0, len(list))
	for _, s := range list {
		out = append(out, s.c)
	}
	return out
}

// Group is the pod subnets one policy gives the nodes of one zone.
type Group struct {
	Policy  string
	Zone    string
	Subnets []Candidate
	// IncludeNodeSubnet: each node's own subnet is also used (not listed: it differs by node).
	IncludeNodeSubnet bool
	ExcludePrimaryENI bool
}

// Groups lists, for every policy with pod subnets, the pod subnets it gives each zone among the
// known subnets (zones form: every zone it names, even without a known subnet; other forms:
// every zone of a matching subnet), by policy then zone.
func Groups(policies []Policy, subnets []ledger.SubnetRecord) []Group {
	var out []Group
	for _, p := range policies {
		s := p.PodSubnets
		if s == nil {
			continue
		}
		zones := map[string]bool{}
		for z := range s.Zones {
			zones[z] = true
		}
		if len(s.Zones) == 0 {
			for _, r := range subnets {
				if slices.Contains(s.SubnetIDs, r.ID) || p.MatchesTags(r.Tags) {
					zones[r.AvailabilityZone] = true
				}
			}
		}
		for _, z := range slices.Sorted(maps.Keys(zones)) {
			out = append(out, Group{Policy: p.Name, Zone: z, Subnets: p.Candidates(Place{Zone: z}, subnets),
				IncludeNodeSubnet: s.IncludeNodeSubnet, ExcludePrimaryENI: s.ExcludePrimaryENI})
		}
	}
	slices.SortStableFunc(out, func(a, b Group) int {
		return cmp.Or(cmp.Compare(a.Policy, b.Policy), cmp.Compare(a.Zone, b.Zone))
	})
	return out
}

// GroupForecast is a group's exhaustion forecast: supply spills from one subnet to the next, so
// the group runs out when the sum of its trends has used up the sum of its headroom.
func GroupForecast(forecasts []Forecast, headroom int) Forecast {
	var out Forecast
	known := false
	for _, f := range forecasts {
		if f.Window > out.Window {
			out.Window = f.Window
		}
		if f.HeldPerHour != 0 || f.OK {
			known = true
		}
		out.HeldPerHour += f.HeldPerHour
	}
	if known {
		out.TimeToExhaustion, out.OK = TimeToExhaustion(headroom, out.HeldPerHour)
	}
	return out
}
