package ec2sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ipledger/ipledger/server/instancetypes"
)

// ErrInvalidScenario is wrapped by every scenario validation error.
var ErrInvalidScenario = errors.New("ec2sim: invalid scenario")

// Scenario describes the simulated account: its VPC, subnets, the instances running at start,
// denied actions, injected faults and eventual consistency. It is read from YAML or JSON with
// the field names given in the json tags.
type Scenario struct {
	// AccountID is the 12-digit owner id (default 111111111111).
	AccountID string `json:"account_id,omitempty"`
	// Region is the simulated region (default eu-west-1).
	Region string  `json:"region,omitempty"`
	VPC    VPCSpec `json:"vpc"`
	// Subnets of the VPC; they must lie inside the VPC's CIDR and not overlap.
	Subnets []SubnetSpec `json:"subnets"`
	// Instances running when the simulator starts.
	Instances []InstanceGroup `json:"instances,omitempty"`
	// Deny lists actions that fail with UnauthorizedOperation (403).
	Deny []string `json:"deny,omitempty"`
	// Faults injected per action from the start.
	Faults map[string]Fault `json:"faults,omitempty"`
	// EventualConsistencyDelay hides a new ENI from Describe, Assign, Attach and the other
	// actions naming it (InvalidNetworkInterfaceID.NotFound) for this long after its creation.
	// Zero (the default) turns it off. TimeScale divides it.
	EventualConsistencyDelay Duration `json:"eventual_consistency_delay,omitempty"`
	// Profile names the clock of EC2 (instant, the default, or realistic; see Profile).
	// Config.Profile, when set, takes precedence.
	Profile string `json:"ec2_profile,omitempty"`
}

// VPCSpec is the simulated VPC. ID is generated from the seed when empty. CIDR is its primary
// IPv4 block; SecondaryCIDRs are further blocks associated with it (100.64.0.0/16 for custom
// networking, more /16s for a large cluster), at most MaxVPCCIDRs blocks in all.
type VPCSpec struct {
	ID             string   `json:"id,omitempty"`
	CIDR           string   `json:"cidr"`
	SecondaryCIDRs []string `json:"secondary_cidrs,omitempty"`
}

// MaxVPCCIDRs is how many IPv4 CIDR blocks a VPC may have (EC2's adjustable quota, raised as
// far as it goes).
const MaxVPCCIDRs = 50

// cidrs parses the VPC's blocks, primary first.
func (v VPCSpec) cidrs() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, c := range append([]string{v.CIDR}, v.SecondaryCIDRs...) {
		p, err := parseCIDR(c)
		name := "vpc.cidr"
		if i > 0 {
			name = fmt.Sprintf("vpc.secondary_cidrs[%d]", i-1)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %v", name, err)
		}
		if p.Bits() < 16 || p.Bits() > 28 {
			return nil, fmt.Errorf("%s %s: a VPC CIDR block is between /16 and /28", name, p)
		}
		for j, q := range out {
			if q.Overlaps(p) {
				return nil, fmt.Errorf("%s %s overlaps the VPC's block %d, %s", name, p, j, q)
			}
		}
		out = append(out, p)
	}
	if len(out) > MaxVPCCIDRs {
		return nil, fmt.Errorf("vpc: %d CIDR blocks, at most %d", len(out), MaxVPCCIDRs)
	}
	return out, nil
}

// SubnetSpec is one subnet. ID is generated from the seed when empty.
type SubnetSpec struct {
	ID               string            `json:"id,omitempty"`
	CIDR             string            `json:"cidr"`
	AvailabilityZone string            `json:"availability_zone"`
	Tags             map[string]string `json:"tags,omitempty"`
}

// InstanceGroup is Count instances of one type in one subnet. Subnet names the subnet by its
// ID or its CIDR. Name, when set, becomes the Name tag (suffixed -1, -2, ... when Count > 1).
type InstanceGroup struct {
	Type   string            `json:"type"`
	Subnet string            `json:"subnet"`
	Count  int               `json:"count,omitempty"`
	Name   string            `json:"name,omitempty"`
	Tags   map[string]string `json:"tags,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("250ms", "2s") in JSON and YAML.
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"250ms\": %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}

const (
	defaultAccountID = "111111111111"
	defaultRegion    = "eu-west-1"
)

// DefaultScenario is the seed documents' cluster: VPC 192.168.0.0/16 with six /19 subnets over
// eu-west-1a/b/c (two each; the first three public, the last three private, as eksctl lays
// them out) and five m5.large nodes: one in 192.168.0.0/19, two in 192.168.32.0/19 and two in
// 192.168.64.0/19.
func DefaultScenario() *Scenario {
	pub := func(name string) map[string]string {
		return map[string]string{"Name": name, "kubernetes.io/role/elb": "1"}
	}
	priv := func(name string) map[string]string {
		return map[string]string{"Name": name, "kubernetes.io/role/internal-elb": "1"}
	}
	return &Scenario{
		AccountID: defaultAccountID,
		Region:    defaultRegion,
		VPC:       VPCSpec{CIDR: "192.168.0.0/16"},
		Subnets: []SubnetSpec{
			{CIDR: "192.168.0.0/19", AvailabilityZone: "eu-west-1a", Tags: pub("public-eu-west-1a")},
			{CIDR: "192.168.32.0/19", AvailabilityZone: "eu-west-1b", Tags: pub("public-eu-west-1b")},
			{CIDR: "192.168.64.0/19", AvailabilityZone: "eu-west-1c", Tags: pub("public-eu-west-1c")},
			{CIDR: "192.168.96.0/19", AvailabilityZone: "eu-west-1a", Tags: priv("private-eu-west-1a")},
			{CIDR: "192.168.128.0/19", AvailabilityZone: "eu-west-1b", Tags: priv("private-eu-west-1b")},
			{CIDR: "192.168.160.0/19", AvailabilityZone: "eu-west-1c", Tags: priv("private-eu-west-1c")},
		},
		Instances: []InstanceGroup{
			{Type: "m5.large", Subnet: "192.168.0.0/19", Count: 1, Name: "node-a"},
			{Type: "m5.large", Subnet: "192.168.32.0/19", Count: 2, Name: "node-b"},
			{Type: "m5.large", Subnet: "192.168.64.0/19", Count: 2, Name: "node-c"},
		},
	}
}

// LoadScenario reads a scenario from a YAML or JSON file (unknown fields are errors) and
// validates it.
func LoadScenario(path string) (*Scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ec2sim: load scenario: %w", err)
	}
	var sc Scenario
	if err := yaml.UnmarshalStrict(b, &sc); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidScenario, path, err)
	}
	if err := sc.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &sc, nil
}

var (
	accountRe  = regexp.MustCompile(`^[0-9]{12}$`)
	regionRe   = regexp.MustCompile(`^[a-z]{2}(-[a-z]+)+-[0-9]+$`)
	subnetIDRe = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)
	vpcIDRe    = regexp.MustCompile(`^vpc-[0-9a-f]{8,17}$`)
)

func (sc *Scenario) accountID() string {
	if sc.AccountID == "" {
		return defaultAccountID
	}
	return sc.AccountID
}

func (sc *Scenario) region() string {
	if sc.Region == "" {
		return defaultRegion
	}
	return sc.Region
}

// Validate checks the scenario and reports the first problem found, naming the field.
func (sc *Scenario) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidScenario, fmt.Sprintf(format, args...))
	}
	if !accountRe.MatchString(sc.accountID()) {
		return bad("account_id %q must be 12 digits", sc.AccountID)
	}
	region := sc.region()
	if !regionRe.MatchString(region) {
		return bad("region %q is not a region name like eu-west-1", region)
	}
	if sc.VPC.ID != "" && !vpcIDRe.MatchString(sc.VPC.ID) {
		return bad("vpc.id %q must look like vpc-0123456789abcdef0", sc.VPC.ID)
	}
	vpcBlocks, err := sc.VPC.cidrs()
	if err != nil {
		return bad("%v", err)
	}
	if len(sc.Subnets) == 0 {
		return bad("no subnets")
	}
	ids := map[string]bool{}
	cidrs := make([]netip.Prefix, 0, len(sc.Subnets))
	for i, s := range sc.Subnets {
		where := fmt.Sprintf("subnets[%d]", i)
		p, err := parseCIDR(s.CIDR)
		if err != nil {
			return bad("%s.cidr: %v", where, err)
		}
		if p.Bits() < 16 || p.Bits() > 28 {
			return bad("%s.cidr %s: a subnet is between /16 and /28", where, p)
		}
		if !slices.ContainsFunc(vpcBlocks, func(b netip.Prefix) bool { return b.Contains(p.Addr()) && p.Bits() >= b.Bits() }) {
			return bad("%s.cidr %s is outside the VPC's CIDR blocks %v", where, p, vpcBlocks)
		}
		for j, q := range cidrs {
			if q.Overlaps(p) {
				return bad("%s.cidr %s overlaps subnets[%d].cidr %s", where, p, j, q)
			}
		}
		cidrs = append(cidrs, p)
		if s.ID != "" {
			if !subnetIDRe.MatchString(s.ID) {
				return bad("%s.id %q must look like subnet-0123456789abcdef0", where, s.ID)
			}
			if ids[s.ID] {
				return bad("%s.id %q is used twice", where, s.ID)
			}
			ids[s.ID] = true
		}
		if !strings.HasPrefix(s.AvailabilityZone, region) || len(s.AvailabilityZone) != len(region)+1 {
			return bad("%s.availability_zone %q is not a zone of %s (like %sa)", where, s.AvailabilityZone, region, region)
		}
		if err := validateTags(s.Tags); err != nil {
			return bad("%s.tags: %v", where, err)
		}
	}
	for i, g := range sc.Instances {
		where := fmt.Sprintf("instances[%d]", i)
		if _, ok := instancetypes.Lookup(g.Type); !ok {
			return bad("%s.type %q is not a known instance type", where, g.Type)
		}
		if sc.findSubnet(g.Subnet) < 0 {
			return bad("%s.subnet %q matches no subnet id or cidr", where, g.Subnet)
		}
		if g.Count < 0 || g.Count > 10000 {
			return bad("%s.count %d must be between 1 and 10000 (0 means 1)", where, g.Count)
		}
		if err := validateTags(g.Tags); err != nil {
			return bad("%s.tags: %v", where, err)
		}
	}
	for _, a := range sc.Deny {
		if _, ok := actions[a]; !ok {
			return bad("deny: %q is not a simulated action", a)
		}
	}
	names := make([]string, 0, len(sc.Faults))
	for a := range sc.Faults {
		names = append(names, a)
	}
	sort.Strings(names)
	for _, a := range names {
		if _, ok := actions[a]; !ok {
			return bad("faults: %q is not a simulated action", a)
		}
		if err := sc.Faults[a].Validate(); err != nil {
			return bad("faults.%s: %v", a, err)
		}
	}
	if sc.EventualConsistencyDelay < 0 {
		return bad("eventual_consistency_delay must not be negative")
	}
	if _, err := ProfileByName(sc.Profile); err != nil {
		return bad("ec2_profile: %v", err)
	}
	return nil
}

// findSubnet returns the index of the subnet named by id or CIDR, or -1.
func (sc *Scenario) findSubnet(ref string) int {
	for i, s := range sc.Subnets {
		if ref != "" && (s.ID == ref || s.CIDR == ref) {
			return i
		}
	}
	return -1
}

func parseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR block", s)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("%q is not an IPv4 CIDR block", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set (did you mean %s?)", s, p.Masked())
	}
	return p, nil
}

func validateTags(tags map[string]string) error {
	if len(tags) > 50 {
		return fmt.Errorf("%d tags, at most 50", len(tags))
	}
	for k, v := range tags {
		if k == "" || len(k) > 128 {
			return fmt.Errorf("tag key %q must be 1 to 128 characters", k)
		}
		if strings.HasPrefix(strings.ToLower(k), "aws:") {
			return fmt.Errorf("tag key %q uses the reserved aws: prefix", k)
		}
		if len(v) > 256 {
			return fmt.Errorf("tag %q: value longer than 256 characters", k)
		}
	}
	return nil
}

// azID derives a zone id like euw1-az1 from a zone name like eu-west-1a.
func azID(region, az string) string {
	parts := strings.Split(region, "-")
	short := ""
	if len(parts) >= 3 {
		dirs := map[string]string{"northeast": "ne", "southeast": "se", "northwest": "nw", "southwest": "sw"}
		d, ok := dirs[parts[1]]
		if !ok {
			d = parts[1][:1]
		}
		short = parts[0] + d + parts[len(parts)-1]
	} else {
		short = strings.ReplaceAll(region, "-", "")
	}
	n := 1
	if len(az) > len(region) {
		n = int(az[len(region)]-'a') + 1
	}
	return fmt.Sprintf("%s-az%d", short, n)
}
