package ctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strings"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"
)

// Policy is a node group policy. It is also what `policy set -f` reads: the output of
// `policies -o yaml` (one element of it) can be edited and set again. Unset optional fields are
// left out.
type Policy struct {
	Name     string   `json:"name"`
	Order    int32    `json:"order"`
	Selector Selector `json:"selector"`
	// Mode is "secondary_ip", "prefix", or left out (the server's default).
	Mode                    string  `json:"mode,omitempty"`
	WarmIPTarget            *uint32 `json:"warm_ip_target,omitempty"`
	MinimumIPTarget         *uint32 `json:"minimum_ip_target,omitempty"`
	WarmENITarget           *uint32 `json:"warm_eni_target,omitempty"`
	WarmPrefixTarget        *uint32 `json:"warm_prefix_target,omitempty"`
	MaxAddresses            *uint32 `json:"max_addresses,omitempty"`
	AdaptiveFloor           *uint32 `json:"adaptive_floor,omitempty"`
	AdaptiveCap             *uint32 `json:"adaptive_cap,omitempty"`
	AdaptiveWindowSeconds   *uint32 `json:"adaptive_window_seconds,omitempty"`
	AdaptiveHeadroomPercent *uint32 `json:"adaptive_headroom_percent,omitempty"`
	ReleaseDelaySeconds     *uint32 `json:"release_delay_seconds,omitempty"`
	// PodSubnets puts the nodes' secondary ENIs (their pods' addresses) in other subnets.
	PodSubnets *PodSubnets `json:"pod_subnets,omitempty"`
}

// PodSubnets names a policy's pod subnets: by subnet_ids, by tags, or per zone (zones, the
// ENIConfig shape). Field names are the API's.
type PodSubnets struct {
	SubnetIDs         []string                  `json:"subnet_ids,omitempty"`
	Tags              map[string]string         `json:"tags,omitempty"`
	Zones             map[string]ZonePodSubnets `json:"zones,omitempty"`
	SecurityGroupIDs  []string                  `json:"security_group_ids,omitempty"`
	IncludeNodeSubnet bool                      `json:"include_node_subnet,omitempty"`
	ExcludePrimaryENI bool                      `json:"exclude_primary_eni,omitempty"`
}

// ZonePodSubnets is one zone's pod subnets and the security groups of ENIs there.
type ZonePodSubnets struct {
	SubnetIDs        []string `json:"subnet_ids"`
	SecurityGroupIDs []string `json:"security_group_ids,omitempty"`
}

// Selector matches nodes by labels (all must match) and instance types (any may match).
type Selector struct {
	Labels        map[string]string `json:"labels,omitempty"`
	InstanceTypes []string          `json:"instance_types,omitempty"`
}

func policyDoc(p *ipledgerv1.NodePolicy) Policy {
	out := Policy{
		Name: p.GetName(), Order: p.GetOrder(),
		Selector:                Selector{Labels: p.GetSelector().GetLabels(), InstanceTypes: p.GetSelector().GetInstanceTypes()},
		WarmIPTarget:            p.WarmIpTarget,
		MinimumIPTarget:         p.MinimumIpTarget,
		WarmENITarget:           p.WarmEniTarget,
		WarmPrefixTarget:        p.WarmPrefixTarget,
		MaxAddresses:            p.MaxAddresses,
		AdaptiveFloor:           p.AdaptiveFloor,
		AdaptiveCap:             p.AdaptiveCap,
		AdaptiveWindowSeconds:   p.AdaptiveWindowSeconds,
		AdaptiveHeadroomPercent: p.AdaptiveHeadroomPercent,
		ReleaseDelaySeconds:     p.ReleaseDelaySeconds,
	}
	if p.GetMode() != ipledgerv1.AddressMode_ADDRESS_MODE_UNSPECIFIED {
		out.Mode = modeName(p.GetMode())
	}
	if ps := p.GetPodSubnets(); ps != nil {
		out.PodSubnets = &PodSubnets{SubnetIDs: ps.GetSubnetIds(), Tags: ps.GetTags(), SecurityGroupIDs: ps.GetSecurityGroupIds(),
			IncludeNodeSubnet: ps.GetIncludeNodeSubnet(), ExcludePrimaryENI: ps.GetExcludePrimaryEni()}
		if len(ps.GetZones()) > 0 {
			out.PodSubnets.Zones = map[string]ZonePodSubnets{}
			for z, zs := range ps.GetZones() {
				out.PodSubnets.Zones[z] = ZonePodSubnets{SubnetIDs: nonNil(zs.GetSubnetIds()), SecurityGroupIDs: zs.GetSecurityGroupIds()}
			}
		}
	}
	return out
}

func policyDocs(in []*ipledgerv1.NodePolicy) []Policy {
	ps := append([]*ipledgerv1.NodePolicy(nil), in...)
	sort.Slice(ps, func(i, j int) bool {
		if ps[i].GetOrder() != ps[j].GetOrder() {
			return ps[i].GetOrder() < ps[j].GetOrder()
		}
		return ps[i].GetName() < ps[j].GetName()
	})
	out := make([]Policy, 0, len(ps))
	for _, p := range ps {
		out = append(out, policyDoc(p))
	}
	return out
}

// targets describes what a policy keeps free, for tables.
func (p Policy) targets() string {
	var parts []string
	add := func(name string, v *uint32) {
		if v != nil {
			parts = append(parts, fmt.Sprintf("%s=%d", name, *v))
		}
	}
	static := p.WarmIPTarget != nil || p.MinimumIPTarget != nil || p.WarmENITarget != nil || p.WarmPrefixTarget != nil
	if static {
		add("warm_ip", p.WarmIPTarget)
		add("minimum_ip", p.MinimumIPTarget)
		add("warm_eni", p.WarmENITarget)
		add("warm_prefix", p.WarmPrefixTarget)
	} else {
		parts = append(parts, "adaptive")
		add("floor", p.AdaptiveFloor)
		add("cap", p.AdaptiveCap)
		add("window_s", p.AdaptiveWindowSeconds)
		add("headroom_pct", p.AdaptiveHeadroomPercent)
	}
	add("max", p.MaxAddresses)
	add("release_delay_s", p.ReleaseDelaySeconds)
	return strings.Join(parts, " ")
}

func (s Selector) text() string {
	var parts []string
	if len(s.Labels) > 0 {
		parts = append(parts, kv(s.Labels))
	}
	if len(s.InstanceTypes) > 0 {
		parts = append(parts, "types="+strings.Join(s.InstanceTypes, "|"))
	}
	if len(parts) == 0 {
		return "(all nodes)"
	}
	return strings.Join(parts, " ")
}

// readPolicyFile reads one NodePolicy from a YAML or JSON file. Field names are the API's (as
// ctl prints them, or their lowerCamelCase JSON names); mode may be "secondary_ip"/"prefix" or
// the enum name. A file that cannot be read or parsed is a usage error; whether the policy is
// valid is for the server to say.
func readPolicyFile(path string) (*ipledgerv1.NodePolicy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("policy set", "policy file: %v", err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil, usagef("policy set", "policy file %s is empty", path)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, usagef("policy set", "policy file %s is not valid YAML or JSON: %v", path, err)
	}
	var doc map[string]any
	if err := json.Unmarshal(j, &doc); err != nil {
		return nil, usagef("policy set", "policy file %s: want one policy object (name, order, selector, targets): %v", path, err)
	}
	if m, ok := doc["mode"].(string); ok {
		switch strings.ToLower(m) {
		case "secondary_ip", "prefix", "unspecified":
			doc["mode"] = "ADDRESS_MODE_" + strings.ToUpper(m)
		}
	}
	if j, err = json.Marshal(doc); err != nil {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	p := &ipledgerv1.NodePolicy{}
	if err := protojson.Unmarshal(j, p); err != nil {
		return nil, usagef("policy set", "policy file %s: %v", path, err)
	}
	return p, nil
}

// ipLess orders addresses and prefixes numerically (strings that are neither sort last, by text).
func ipLess(a, b string) bool {
	pa, ea := parseAddrOrPrefix(a)
	pb, eb := parseAddrOrPrefix(b)
	switch {
	case ea == nil && eb == nil:
		if c := pa.Addr().Compare(pb.Addr()); c != 0 {
			return c < 0
		}
		return pa.Bits() < pb.Bits()
	case ea == nil:
		return true
	case eb == nil:
		return false
	}
	return a < b
}

func parseAddrOrPrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
