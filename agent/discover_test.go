package agent

import (
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// fakeIMDS answers IMDSv2 (token, then metadata) from a map of paths under /latest/meta-data/.
func fakeIMDS(t *testing.T, md map[string]string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
			_, _ = w.Write([]byte("token"))
			return
		}
		v, ok := md[strings.TrimPrefix(r.URL.Path, "/latest/meta-data/")]
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(v))
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// Answers IMDS gives are checked before the agent uses them; a MAC that is a path never
// becomes part of one.
func TestDiscoverRefusesMalformedIMDSAnswers(t *testing.T) {
	const mac = "02:11:22:33:44:55"
	good := map[string]string{
		"instance-id": "i-0123456789abcdef0", "instance-type": "m5.large", "placement/availability-zone": "eu-west-1a",
		"local-ipv4": "192.168.1.10", "local-hostname": "ip-192-168-1-10.eu-west-1.compute.internal", "mac": mac,
		"network/interfaces/macs/" + mac + "/interface-id":           "eni-0123456789abcdef0",
		"network/interfaces/macs/" + mac + "/subnet-id":              "subnet-0123456789abcdef0",
		"network/interfaces/macs/" + mac + "/subnet-ipv4-cidr-block": "192.168.0.0/19",
		"network/interfaces/macs/" + mac + "/vpc-ipv4-cidr-blocks":   "192.168.0.0/16\n100.64.0.0/16",
	}
	if in, err := Discover(t.Context(), fakeIMDS(t, good)); err != nil || in.MAC != mac || len(in.VPCCIDRs) != 2 || in.VPCCIDRs[1] != "100.64.0.0/16" {
		t.Fatalf("good answers: %+v, %v", in, err)
	}
	for _, tc := range []struct {
		name, path, value, want string
	}{
		{"mac that is a path", "mac", "../../../../user-data", "mac"},
		{"instance id", "instance-id", "i-nothex", "instance-id"},
		{"instance type", "instance-type", "m5 large", "instance-type"},
		{"zone", "placement/availability-zone", "eu-west-1a/../x", "availability-zone"},
		{"address outside the subnet", "local-ipv4", "10.0.0.1", "local-ipv4"},
		{"ipv6 address", "local-ipv4", "fd00::1", "local-ipv4"},
		{"hostname with spaces", "local-hostname", "a b", "local-hostname"},
		{"eni id", "network/interfaces/macs/" + mac + "/interface-id", "eni-XYZ", "interface-id"},
		{"subnet id", "network/interfaces/macs/" + mac + "/subnet-id", "subnet", "subnet-id"},
		{"cidr", "network/interfaces/macs/" + mac + "/subnet-ipv4-cidr-block", "192.168.0.0/40", "subnet-ipv4-cidr-block"},
		{"vpc block", "network/interfaces/macs/" + mac + "/vpc-ipv4-cidr-blocks", "192.168.0.0/16\nnonsense", "vpc-ipv4-cidr-blocks"},
		{"subnet outside the vpc", "network/interfaces/macs/" + mac + "/vpc-ipv4-cidr-blocks", "10.0.0.0/16", "none of the VPC's blocks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			md := maps.Clone(good)
			md[tc.path] = tc.value
			_, err := Discover(t.Context(), fakeIMDS(t, md))
			if !errors.Is(err, ErrDiscovery) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Discover: %v, want ErrDiscovery naming %s", err, tc.want)
			}
		})
	}
}
