package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"strings"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
)

// Instance is what IMDS says about the node's instance and its primary ENI.
type Instance struct {
	InstanceID       string `json:"instance_id"`
	InstanceType     string `json:"instance_type"`
	AvailabilityZone string `json:"availability_zone"`
	LocalIPv4        string `json:"local_ipv4"`
	LocalHostname    string `json:"local_hostname"`
	// MAC of the primary ENI, and what IMDS lists under network/interfaces/macs/<mac>/.
	MAC        string `json:"mac"`
	ENIID      string `json:"eni_id"`
	SubnetID   string `json:"subnet_id"`
	SubnetCIDR string `json:"subnet_cidr"`
	// VPCCIDRs are the VPC's IPv4 CIDR blocks, primary first (vpc-ipv4-cidr-blocks).
	VPCCIDRs []string `json:"vpc_cidrs,omitempty"`
}

// ErrDiscovery: IMDS did not answer, or answered something unusable.
var ErrDiscovery = errors.New("agent: instance discovery")

// Discover reads the instance's identity from IMDS at endpoint ("" = the real IMDS of the
// machine; tests and the demo pass the EC2 simulator's per-instance endpoint).
func Discover(ctx context.Context, endpoint string) (Instance, error) {
	client := imds.New(imds.Options{Endpoint: endpoint})
	get := func(path string) (string, error) {
		out, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
		if err != nil {
			return "", fmt.Errorf("%w: read %s from IMDS %s: %w", ErrDiscovery, path, endpointName(endpoint), err)
		}
		defer func() { _ = out.Content.Close() }()
		b, err := io.ReadAll(io.LimitReader(out.Content, 64<<10))
		if err != nil {
			return "", fmt.Errorf("%w: read %s from IMDS %s: %w", ErrDiscovery, path, endpointName(endpoint), err)
		}
		v := strings.TrimSpace(string(b))
		if v == "" {
			return "", fmt.Errorf("%w: IMDS %s returned an empty %s", ErrDiscovery, endpointName(endpoint), path)
		}
		return v, nil
	}
	var in Instance
	fields := []struct {
		path string
		dst  *string
	}{
		{"instance-id", &in.InstanceID},
		{"instance-type", &in.InstanceType},
		{"placement/availability-zone", &in.AvailabilityZone},
		{"local-ipv4", &in.LocalIPv4},
		{"local-hostname", &in.LocalHostname},
		{"mac", &in.MAC},
	}
	for _, f := range fields {
		v, err := get(f.path)
		if err != nil {
			return Instance{}, err
		}
		*f.dst = v
	}
	// The MAC goes into the next paths: it must be a MAC, not a path.
	if !macRE.MatchString(in.MAC) {
		return Instance{}, fmt.Errorf("%w: IMDS %s: mac %q is not a MAC address", ErrDiscovery, endpointName(endpoint), in.MAC)
	}
	macDir := "network/interfaces/macs/" + in.MAC + "/"
	for _, f := range []struct {
		path string
		dst  *string
	}{
		{macDir + "interface-id", &in.ENIID},
		{macDir + "subnet-id", &in.SubnetID},
		{macDir + "subnet-ipv4-cidr-block", &in.SubnetCIDR},
	} {
		v, err := get(f.path)
		if err != nil {
			return Instance{}, err
		}
		*f.dst = v
	}
	blocks, err := get(macDir + "vpc-ipv4-cidr-blocks")
	if err != nil {
		return Instance{}, err
	}
	in.VPCCIDRs = strings.Fields(blocks)
	if err := in.validate(); err != nil {
		return Instance{}, fmt.Errorf("%w: IMDS %s: %w", ErrDiscovery, endpointName(endpoint), err)
	}
	return in, nil
}

// Shapes of IMDS answers. The server checks the identity against EC2 again; these keep what
// the agent itself uses (paths, its checkpoint, log lines) sane.
var (
	macRE          = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)
	instanceIDRE   = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)
	eniIDRE        = regexp.MustCompile(`^eni-[0-9a-f]{8,17}$`)
	subnetIDRE     = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)
	instanceTypeRE = regexp.MustCompile(`^[a-z0-9-]+\.[a-z0-9-]+$`)
	zoneRE         = regexp.MustCompile(`^[a-z]{2}(-[a-z0-9]+)+[a-z]$`)
)

func (in Instance) validate() error {
	ip, err := netip.ParseAddr(in.LocalIPv4)
	if err != nil || !ip.Is4() {
		return fmt.Errorf("local-ipv4 %q is not an IPv4 address", in.LocalIPv4)
	}
	cidr, err := netip.ParsePrefix(in.SubnetCIDR)
	if err != nil || !cidr.Addr().Is4() {
		return fmt.Errorf("subnet-ipv4-cidr-block %q is not an IPv4 CIDR", in.SubnetCIDR)
	}
	if !cidr.Contains(ip) {
		return fmt.Errorf("local-ipv4 %s is not in the primary ENI's subnet %s", ip, cidr)
	}
	if len(in.VPCCIDRs) == 0 || len(in.VPCCIDRs) > 50 {
		return fmt.Errorf("vpc-ipv4-cidr-blocks lists %d blocks, want 1 to 50", len(in.VPCCIDRs))
	}
	inVPC := false
	for _, b := range in.VPCCIDRs {
		p, err := netip.ParsePrefix(b)
		if err != nil || !p.Addr().Is4() {
			return fmt.Errorf("vpc-ipv4-cidr-blocks entry %q is not an IPv4 CIDR", b)
		}
		inVPC = inVPC || p.Contains(cidr.Addr())
	}
	if !inVPC {
		return fmt.Errorf("the primary ENI's subnet %s is in none of the VPC's blocks %v", cidr, in.VPCCIDRs)
	}
	if !instanceIDRE.MatchString(in.InstanceID) {
		return fmt.Errorf("instance-id %q does not look like an EC2 instance id", in.InstanceID)
	}
	if !eniIDRE.MatchString(in.ENIID) {
		return fmt.Errorf("interface-id %q does not look like an ENI id", in.ENIID)
	}
	if !subnetIDRE.MatchString(in.SubnetID) {
		return fmt.Errorf("subnet-id %q does not look like a subnet id", in.SubnetID)
	}
	if !instanceTypeRE.MatchString(in.InstanceType) {
		return fmt.Errorf("instance-type %q does not look like an instance type", in.InstanceType)
	}
	if !zoneRE.MatchString(in.AvailabilityZone) {
		return fmt.Errorf("placement/availability-zone %q does not look like an availability zone", in.AvailabilityZone)
	}
	if len(in.LocalHostname) > 253 || strings.ContainsFunc(in.LocalHostname, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return fmt.Errorf("local-hostname %q is not a host name", in.LocalHostname)
	}
	return nil
}

func endpointName(endpoint string) string {
	if endpoint == "" {
		return "(instance default)"
	}
	return endpoint
}
