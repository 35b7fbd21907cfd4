package ec2sim

import (
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func subnetState(t *testing.T, srv *Server, id string) SubnetInfo {
	t.Helper()
	for _, sn := range srv.Sim().Snapshot().Subnets {
		if sn.ID == id {
			return sn
		}
	}
	t.Fatalf("no subnet %s", id)
	return SubnetInfo{}
}

// A launch template's primary interface may carry secondary addresses or /28 prefixes: EC2
// places them at launch, and the instance's primary ENI holds them, with no other call.
func TestRunInstancesWithInterfaceSpec(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.128.0/19")
	ni := func(ips, prefixes int32) []types.InstanceNetworkInterfaceSpecification {
		spec := types.InstanceNetworkInterfaceSpecification{DeviceIndex: aws.Int32(0), SubnetId: aws.String(subnet), Groups: []string{"sg-0a1b2c3d"}}
		if ips > 0 {
			spec.SecondaryPrivateIpAddressCount = aws.Int32(ips)
		}
		if prefixes > 0 {
			spec.Ipv4PrefixCount = aws.Int32(prefixes)
		}
		return []types.InstanceNetworkInterfaceSpecification{spec}
	}
	run := func(typ types.InstanceType, min, max int32, nis []types.InstanceNetworkInterfaceSpecification) (*ec2.RunInstancesOutput, error) {
		return c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-1"), InstanceType: typ,
			MinCount: aws.Int32(min), MaxCount: aws.Int32(max), NetworkInterfaces: nis})
	}

	before := subnetState(t, srv, subnet)
	out, err := run(types.InstanceTypeM5Large, 2, 2, ni(5, 0))
	noErr(t, err)
	for _, in := range out.Instances {
		e, ok := srv.Sim().Snapshot().ENI(aws.ToString(in.NetworkInterfaces[0].NetworkInterfaceId))
		if !ok || len(e.SecondaryIPs) != 5 || len(e.Prefixes) != 0 {
			t.Fatalf("primary ENI of %s: %+v, want 5 secondary addresses", aws.ToString(in.InstanceId), e)
		}
		if len(e.Groups) != 1 || e.Groups[0] != "sg-0a1b2c3d" {
			t.Fatalf("primary ENI groups %v, want the launch spec's", e.Groups)
		}
	}
	if got := before.Available - subnetState(t, srv, subnet).Available; got != 12 {
		t.Fatalf("two instances with 5 secondary addresses each took %d addresses, want 12", got)
	}

	out, err = run(types.InstanceTypeM5Large, 1, 1, ni(0, 2))
	noErr(t, err)
	e, _ := srv.Sim().Snapshot().ENI(aws.ToString(out.Instances[0].NetworkInterfaces[0].NetworkInterfaceId))
	if len(e.Prefixes) != 2 || len(e.SecondaryIPs) != 0 {
		t.Fatalf("primary ENI %+v, want 2 prefixes", e)
	}

	for _, tc := range []struct {
		name string
		typ  types.InstanceType
		nis  []types.InstanceNetworkInterfaceSpecification
		want string
	}{
		{"addresses and prefixes", types.InstanceTypeM5Large, ni(2, 1), "InvalidParameterCombination"},
		{"over the interface limit", types.InstanceTypeM5Large, ni(10, 0), "PrivateIpAddressLimitExceeded"},
		{"prefixes on xen", "c3.2xlarge", ni(0, 1), "InvalidParameterValue"},
		{"device index 1", types.InstanceTypeM5Large, []types.InstanceNetworkInterfaceSpecification{{DeviceIndex: aws.Int32(1), SubnetId: aws.String(subnet)}}, "InvalidParameterValue"},
		{"malformed group", types.InstanceTypeM5Large, []types.InstanceNetworkInterfaceSpecification{{DeviceIndex: aws.Int32(0), SubnetId: aws.String(subnet), Groups: []string{"web"}}}, "InvalidGroupId.Malformed"},
	} {
		n := len(srv.Sim().Snapshot().Instances)
		if _, err := run(tc.typ, 1, 1, tc.nis); code(err) != tc.want {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.want)
		}
		if len(srv.Sim().Snapshot().Instances) != n {
			t.Errorf("%s: a refused launch left instances", tc.name)
		}
	}
	_, err = c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-1"), InstanceType: types.InstanceTypeM5Large,
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1), SubnetId: aws.String(subnet), NetworkInterfaces: ni(1, 0)})
	wantCode(t, err, "InvalidParameterCombination")

	// A fragmented subnet has no /28 left: the launch fails and leaves nothing behind.
	frag := subnetByCIDR(t, srv, "192.168.160.0/19")
	if _, err := srv.Sim().Fragment(ctx, frag); err != nil {
		t.Fatal(err)
	}
	n := len(srv.Sim().Snapshot().Instances)
	nis := ni(0, 1)
	nis[0].SubnetId = aws.String(frag)
	_, err = run(types.InstanceTypeM5Large, 1, 1, nis)
	wantCode(t, err, "InsufficientCidrBlocks")
	if len(srv.Sim().Snapshot().Instances) != n {
		t.Fatal("a launch that failed left instances")
	}
	checkConsistent(t, srv)
}

// RunInstances has its own request bucket (5, 2 per second) and a bucket of instances launched
// (1000, 2 per second).
func TestRunInstancesThrottling(t *testing.T) {
	srv := start(t, func(c *Config) { c.Throttle = true })
	at := time.Now()
	srv.Sim().setClock(func() time.Time { return at }) // no refill during the test
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.128.0/19")
	run := func(count int32) error {
		_, err := c.RunInstances(ctx, &ec2.RunInstancesInput{ImageId: aws.String("ami-1"), InstanceType: types.InstanceTypeT3Small,
			SubnetId: aws.String(subnet), MinCount: aws.Int32(count), MaxCount: aws.Int32(count)})
		return err
	}
	// 990 instances in one request spend the instance bucket; the next 20 do not fit.
	noErr(t, run(990))
	wantCode(t, run(20), "RequestLimitExceeded")
	// Four more requests of one instance fit the request bucket (5, the first and the refused
	// one spent two), the next does not.
	for i := range 3 {
		if err := run(1); err != nil {
			t.Fatalf("request %d: %v", i+3, err)
		}
	}
	wantCode(t, run(1), "RequestLimitExceeded")
}
