package ec2sim

import (
	"errors"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

func TestLoadExampleScenarioYAML(t *testing.T) {
	sc, err := LoadScenario("testdata/scenario.yaml")
	noErr(t, err)
	srv := start(t, func(c *Config) { c.Scenario = sc })
	st := srv.Sim().Snapshot()
	if st.AccountID != "123456789012" || st.VPC.ID != "vpc-0a1b2c3d4e5f60718" || st.VPC.CIDR != "10.20.0.0/16" || len(st.Subnets) != 3 {
		t.Fatalf("state %+v", st)
	}
	if st.Subnets[0].ID != "subnet-0aaaaaaaaaaaaaaa1" || st.Subnets[1].ID != "subnet-0bbbbbbbbbbbbbbb2" ||
		!regexp.MustCompile(`^subnet-[0-9a-f]{17}$`).MatchString(st.Subnets[2].ID) || st.Subnets[2].Tags["Name"] != "tiny-c" {
		t.Fatalf("subnets %+v", st.Subnets)
	}
	if st.Subnets[2].Available != 64-5-1 || st.Subnets[2].AvailabilityZoneID != "euw1-az3" {
		t.Fatalf("tiny subnet %+v", st.Subnets[2])
	}
	types := map[string]int{}
	names := map[string]bool{}
	for _, in := range st.Instances {
		types[in.InstanceType]++
		names[in.Tags["Name"]] = true
	}
	if types["m5.large"] != 3 || types["m5.4xlarge"] != 2 || types["t3.small"] != 1 || !names["general-3"] || !names["big-2"] {
		t.Fatalf("instances %v %v", types, names)
	}
	if f := srv.Sim().Faults(); f["AttachNetworkInterface"].Latency != 300*time.Millisecond || f["AssignPrivateIpAddresses"].Probability != 0.01 {
		t.Fatalf("faults %+v", f)
	}
	c := client(srv)
	_, err = c.DeleteSubnetCidrReservation(t.Context(), &ec2.DeleteSubnetCidrReservationInput{SubnetCidrReservationId: aws.String("scr-00000000000000001")})
	wantCode(t, err, "UnauthorizedOperation")
}

func TestLoadScenarioJSON(t *testing.T) {
	sc, err := LoadScenario("testdata/scenario.json")
	noErr(t, err)
	srv := start(t, func(c *Config) { c.Scenario = sc })
	st := srv.Sim().Snapshot()
	if st.Region != "us-east-1" || st.AccountID != "111111111111" || len(st.Instances) != 2 {
		t.Fatalf("state %+v", st)
	}
	if !strings.HasSuffix(st.Instances[0].PrivateDNSName, ".ec2.internal") || st.Subnets[0].AvailabilityZoneID != "use1-az1" {
		t.Fatalf("us-east-1 names: %s %s", st.Instances[0].PrivateDNSName, st.Subnets[0].AvailabilityZoneID)
	}
}

func TestScenarioValidation(t *testing.T) {
	base := `
vpc: {cidr: 10.0.0.0/16}
subnets:
  - {cidr: 10.0.0.0/24, availability_zone: eu-west-1a}
`
	tests := []struct {
		name, yaml, want string
	}{
		{"bad vpc cidr", `
vpc: {cidr: 10.0.0.0/33}
subnets: [{cidr: 10.0.0.0/24, availability_zone: eu-west-1a}]`, "vpc.cidr"},
		{"bad subnet cidr", `
vpc: {cidr: 10.0.0.0/16}
subnets: [{cidr: nonsense, availability_zone: eu-west-1a}]`, `subnets[0].cidr: "nonsense" is not a CIDR block`},
		{"host bits", `
vpc: {cidr: 10.0.0.0/16}
subnets: [{cidr: 10.0.0.5/24, availability_zone: eu-west-1a}]`, "has host bits set (did you mean 10.0.0.0/24?)"},
		{"subnet outside vpc", `
vpc: {cidr: 10.0.0.0/16}
subnets: [{cidr: 10.1.0.0/24, availability_zone: eu-west-1a}]`, "subnets[0].cidr 10.1.0.0/24 is outside the VPC's CIDR blocks [10.0.0.0/16]"},
		{"subnet outside every block", `
vpc: {cidr: 10.0.0.0/16, secondary_cidrs: [100.64.0.0/16]}
subnets: [{cidr: 100.65.0.0/24, availability_zone: eu-west-1a}]`, "subnets[0].cidr 100.65.0.0/24 is outside the VPC's CIDR blocks [10.0.0.0/16 100.64.0.0/16]"},
		{"overlapping vpc blocks", `
vpc: {cidr: 10.0.0.0/16, secondary_cidrs: [10.0.128.0/17]}
subnets: [{cidr: 10.0.0.0/24, availability_zone: eu-west-1a}]`, "vpc.secondary_cidrs[0] 10.0.128.0/17 overlaps the VPC's block 0, 10.0.0.0/16"},
		{"vpc block too big", `
vpc: {cidr: 10.0.0.0/16, secondary_cidrs: [100.64.0.0/10]}
subnets: [{cidr: 10.0.0.0/24, availability_zone: eu-west-1a}]`, "vpc.secondary_cidrs[0] 100.64.0.0/10: a VPC CIDR block is between /16 and /28"},
		{"overlapping subnets", `
vpc: {cidr: 10.0.0.0/16}
subnets:
  - {cidr: 10.0.0.0/20, availability_zone: eu-west-1a}
  - {cidr: 10.0.8.0/24, availability_zone: eu-west-1b}`, "subnets[1].cidr 10.0.8.0/24 overlaps subnets[0].cidr 10.0.0.0/20"},
		{"subnet too small", `
vpc: {cidr: 10.0.0.0/16}
subnets: [{cidr: 10.0.0.0/29, availability_zone: eu-west-1a}]`, "between /16 and /28"},
		{"unknown instance type", base + `
instances: [{type: m9.huge, subnet: 10.0.0.0/24}]`, `instances[0].type "m9.huge" is not a known instance type`},
		{"unknown subnet ref", base + `
instances: [{type: m5.large, subnet: subnet-0123456789abcdef0}]`, `instances[0].subnet "subnet-0123456789abcdef0" matches no subnet`},
		{"zone of another region", `
vpc: {cidr: 10.0.0.0/16}
subnets: [{cidr: 10.0.0.0/24, availability_zone: us-east-1a}]`, "is not a zone of eu-west-1"},
		{"bad subnet id", `
vpc: {cidr: 10.0.0.0/16}
subnets: [{id: sn-1, cidr: 10.0.0.0/24, availability_zone: eu-west-1a}]`, "subnets[0].id"},
		{"duplicate subnet id", `
vpc: {cidr: 10.0.0.0/16}
subnets:
  - {id: subnet-0123456789abcdef0, cidr: 10.0.0.0/24, availability_zone: eu-west-1a}
  - {id: subnet-0123456789abcdef0, cidr: 10.0.1.0/24, availability_zone: eu-west-1a}`, "used twice"},
		{"no subnets", `vpc: {cidr: 10.0.0.0/16}`, "no subnets"},
		{"unknown field", base + `
instance: []`, "unknown field"},
		{"deny unknown action", base + `
deny: [DescribeVpcs]`, `deny: "DescribeVpcs" is not a simulated action`},
		{"fault probability", base + `
faults: {AssignPrivateIpAddresses: {probability: 1.5}}`, "faults.AssignPrivateIpAddresses: probability 1.5"},
		{"fault unknown action", base + `
faults: {Nope: {probability: 0.5}}`, `faults: "Nope"`},
		{"bad duration", base + `
eventual_consistency_delay: 5`, "duration must be a string"},
		{"bad account", base + `
account_id: "12ab"`, "account_id"},
		{"bad count", base + `
instances: [{type: m5.large, subnet: 10.0.0.0/24, count: -1}]`, "instances[0].count"},
	}
	dir := t.TempDir()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".yaml")
			noErr(t, os.WriteFile(path, []byte(tc.yaml), 0o600))
			_, err := LoadScenario(path)
			if err == nil || !errors.Is(err, ErrInvalidScenario) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an ErrInvalidScenario mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := LoadScenario(filepath.Join(dir, "missing.yaml")); err == nil || errors.Is(err, ErrInvalidScenario) {
		t.Fatalf("missing file: %v", err)
	}
	path := filepath.Join(dir, "ok.yaml")
	noErr(t, os.WriteFile(path, []byte(base), 0o600))
	if _, err := LoadScenario(path); err != nil {
		t.Fatalf("minimal scenario: %v", err)
	}
	// New refuses an invalid scenario and a bad time scale.
	if _, err := New(Config{Scenario: &Scenario{VPC: VPCSpec{CIDR: "10.0.0.0/16"}}}); !errors.Is(err, ErrInvalidScenario) {
		t.Fatalf("New with no subnets: %v", err)
	}
	if _, err := New(Config{TimeScale: 0.5}); err == nil {
		t.Fatal("New with time scale 0.5 succeeded")
	}
	// A scenario whose instances do not fit its subnet fails clearly.
	tiny := &Scenario{VPC: VPCSpec{CIDR: "10.0.0.0/16"}, Subnets: []SubnetSpec{{CIDR: "10.0.0.0/28", AvailabilityZone: "eu-west-1a"}},
		Instances: []InstanceGroup{{Type: "m5.large", Subnet: "10.0.0.0/28", Count: 12}}}
	if _, err := New(Config{Scenario: tiny}); err == nil || !strings.Contains(err.Error(), "InsufficientFreeAddressesInSubnet") {
		t.Fatalf("12 instances in a /28: %v", err)
	}
}

// TestDefaultScenarioAndSeed: the default cluster, ids deterministic for a seed.
func TestDefaultScenarioAndSeed(t *testing.T) {
	noErr(t, DefaultScenario().Validate())
	ids := func(seed int64) []string {
		cfg := DefaultConfig()
		cfg.Seed = seed
		s, err := New(cfg)
		noErr(t, err)
		st := s.Snapshot()
		out := []string{st.VPC.ID}
		for _, sn := range st.Subnets {
			out = append(out, sn.ID)
		}
		for _, in := range st.Instances {
			out = append(out, in.ID, in.PrimaryENI, in.PrivateIP)
		}
		return out
	}
	a, b, c := ids(1), ids(1), ids(2)
	if !slices.Equal(a, b) || slices.Equal(a, c) {
		t.Fatalf("ids not reproducible for a seed or equal across seeds:\n%v\n%v\n%v", a, b, c)
	}
	cfg := DefaultConfig()
	s, err := New(cfg)
	noErr(t, err)
	st := s.Snapshot()
	wantCIDRs := []string{"192.168.0.0/19", "192.168.32.0/19", "192.168.64.0/19", "192.168.96.0/19", "192.168.128.0/19", "192.168.160.0/19"}
	zones := map[string]int{}
	for i, sn := range st.Subnets {
		if sn.CIDR != wantCIDRs[i] {
			t.Fatalf("subnet %d is %s", i, sn.CIDR)
		}
		zones[sn.AvailabilityZone]++
	}
	if zones["eu-west-1a"] != 2 || zones["eu-west-1b"] != 2 || zones["eu-west-1c"] != 2 {
		t.Fatalf("zones %v", zones)
	}
	perSubnet := map[string]int{}
	for _, in := range st.Instances {
		if in.InstanceType != "m5.large" {
			t.Fatalf("instance type %s", in.InstanceType)
		}
		sn, _ := st.Subnet(in.SubnetID)
		perSubnet[sn.CIDR]++
	}
	if perSubnet["192.168.0.0/19"] != 1 || perSubnet["192.168.32.0/19"] != 2 || perSubnet["192.168.64.0/19"] != 2 {
		t.Fatalf("nodes per subnet %v", perSubnet)
	}
}

// A VPC may have several CIDR blocks (a secondary 100.64.0.0/16 for custom networking, more
// /16s for a large cluster): subnets may lie in any, and IMDS lists them all.
func TestVPCWithSecondaryCIDRs(t *testing.T) {
	sc := Scenario{
		VPC: VPCSpec{CIDR: "10.0.0.0/16", SecondaryCIDRs: []string{"100.64.0.0/16", "10.1.0.0/16"}},
		Subnets: []SubnetSpec{
			{CIDR: "10.0.0.0/24", AvailabilityZone: "eu-west-1a"},
			{CIDR: "100.64.0.0/18", AvailabilityZone: "eu-west-1a"},
			{CIDR: "10.1.0.0/16", AvailabilityZone: "eu-west-1b"},
		},
		Instances: []InstanceGroup{{Type: "m5.large", Subnet: "10.0.0.0/24", Count: 1}},
	}
	srv := start(t, func(c *Config) { c.Scenario = &sc })
	st := srv.Sim().Snapshot()
	if st.VPC.CIDR != "10.0.0.0/16" || strings.Join(st.VPC.CIDRs, ",") != "10.0.0.0/16,100.64.0.0/16,10.1.0.0/16" {
		t.Fatalf("VPC %+v, want its three blocks, primary first", st.VPC)
	}
	if len(st.Subnets) != 3 || st.Subnets[1].Available != 16384-5 {
		t.Fatalf("subnets %+v", st.Subnets)
	}
	in := st.Instances[0]
	c := imds.New(imds.Options{Endpoint: in.IMDSEndpoint})
	base := "network/interfaces/macs/" + in.MAC + "/"
	for path, want := range map[string]string{
		base + "vpc-ipv4-cidr-blocks": "10.0.0.0/16\n100.64.0.0/16\n10.1.0.0/16",
		base + "vpc-ipv4-cidr-block":  "10.0.0.0/16",
	} {
		got, err := metadata(t.Context(), t, c, path)
		if err != nil || got != want {
			t.Fatalf("%s = %q, %v; want %q", path, got, err, want)
		}
	}
}
