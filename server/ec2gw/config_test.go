package ec2gw

import (
	"math"
	"strings"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	valid := Config{Region: "eu-west-1", Endpoint: "http://127.0.0.1:4566"}
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr []string // substrings; none = valid
	}{
		{"valid", func(*Config) {}, nil},
		{"valid without endpoint", func(c *Config) { c.Endpoint = "" }, nil},
		{"valid defaults explicit", func(c *Config) { c.Buckets = DefaultBuckets(); c.MaxRetries = -1 }, nil},
		{"no region", func(c *Config) { c.Region = " " }, []string{"region is required"}},
		{"endpoint scheme", func(c *Config) { c.Endpoint = "ftp://x" }, []string{"scheme must be http or https"}},
		{"endpoint host", func(c *Config) { c.Endpoint = "http://" }, []string{"no host"}},
		{"endpoint parse", func(c *Config) { c.Endpoint = "http://[::1" }, []string{"endpoint"}},
		{"empty buckets", func(c *Config) { c.Buckets = []BucketConfig{} }, []string{"at least one bucket"}},
		{"bad bucket", func(c *Config) {
			c.Buckets = []BucketConfig{
				{Name: "", Capacity: 0, RefillPerSecond: 0},
				{Name: "x", Capacity: 1, RefillPerSecond: math.Inf(1), Actions: []string{FallbackAction}},
				{Name: "x", Capacity: 1, RefillPerSecond: 1, Actions: []string{"", FallbackAction}},
			}
		}, []string{"name is required", "capacity 0", "refill 0", "no actions", "refill +Inf", "duplicate name",
			"empty action name", `action "*" is already in bucket "x"`}},
		{"action not covered", func(c *Config) {
			c.Buckets = []BucketConfig{{Name: "only", Capacity: 1, RefillPerSecond: 1, Actions: []string{ActionCreateTags}}}
		}, []string{`no bucket for action "AssignPrivateIpAddresses"`, `no bucket for action "DescribeNetworkInterfaces"`}},
		{"several problems at once", func(c *Config) { c.Region = ""; c.Endpoint = "ftp://x" }, []string{"region", "scheme"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := valid
			tc.mutate(&c)
			err := c.Validate()
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want errors %q", tc.wantErr)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Validate() = %v; missing %q", err, want)
				}
			}
		})
	}
}

func TestDefaultBuckets(t *testing.T) {
	if err := validateBuckets(DefaultBuckets()); err != nil {
		t.Fatalf("DefaultBuckets invalid: %v", err)
	}
	l := newLimiter(realClock(), DefaultBuckets())
	tests := []struct {
		key      string
		bucket   string
		capacity float64
		rate     float64
	}{
		{ActionCreateNetworkInterface, ActionCreateNetworkInterface, 100, 5},
		{ActionDeleteNetworkInterface, ActionDeleteNetworkInterface, 100, 5},
		{ActionAssignPrivateIPAddresses, ActionAssignPrivateIPAddresses, 100, 5},
		{ActionUnassignPrivateIPAddresses, ActionUnassignPrivateIPAddresses, 100, 5},
		{ActionModifyNetworkInterfaceAttribute, ActionModifyNetworkInterfaceAttribute, 100, 5},
		{ActionCreateTags, "tags", 100, 10},
		{ActionAttachNetworkInterface, "mutating", 50, 5},
		{ActionDetachNetworkInterface, "mutating", 50, 5},
		{"RunInstances", "mutating", 50, 5},
		{ActionDescribeSubnets, "describe", 100, 20},
		{ActionDescribeInstanceTypes, "describe", 100, 20},
		{ActionDescribeInstances, "describe", 100, 20},
		{ActionDescribeNetworkInterfaces, "describe", 100, 20},
		{ActionDescribeInstances + UnfilteredSuffix, "describe-unfiltered", 50, 10},
		{ActionDescribeNetworkInterfaces + UnfilteredSuffix, "describe-unfiltered", 50, 10},
		{"CreateSubnetCidrReservation", "cidr-reservations", 5, 1},
	}
	for _, tc := range tests {
		b := l.bucketFor(tc.key)
		if b == nil || b.name != tc.bucket || b.capacity != tc.capacity || b.rate != tc.rate {
			t.Errorf("bucket of %s = %+v, want %s %v/%v", tc.key, b, tc.bucket, tc.capacity, tc.rate)
		}
	}
}

func TestPriorityNames(t *testing.T) {
	seen := map[string]bool{}
	for _, p := range priorities {
		if !p.Valid() || seen[p.String()] {
			t.Fatalf("priority %d: valid %v, name %q (dup %v)", p, p.Valid(), p.String(), seen[p.String()])
		}
		seen[p.String()] = true
	}
	if Priority(0).Valid() || Priority(7).Valid() {
		t.Fatal("priorities 0 and 7 reported valid")
	}
}
