package ec2sim

import (
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// TestThrottleBurstAssign sends a burst of 150 AssignPrivateIpAddresses against the default
// bucket (100, refill 5 per s, TimeScale 1): the first 100 succeed, the other 50 get
// RequestLimitExceeded (503) and change nothing, and after a refill interval calls succeed
// again.
func TestThrottleBurstAssign(t *testing.T) {
	srv := start(t, func(c *Config) { c.Throttle = true })
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.96.0/19")
	var enis []string
	for range 3 {
		out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
		noErr(t, err)
		enis = append(enis, *out.NetworkInterface.NetworkInterfaceId)
	}
	before := srv.Sim().Snapshot()

	// Freeze the buckets' clock for the burst so no token refills while 150 requests cross
	// a loaded machine; the bucket arithmetic is the same as in real time.
	frozen := time.Now()
	srv.Sim().setClock(func() time.Time { return frozen })
	var ok, throttled, other atomic.Int32
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range 150 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
				NetworkInterfaceId:             aws.String(enis[i%3]),
				SecondaryPrivateIpAddressCount: aws.Int32(1),
			})
			switch {
			case err == nil:
				ok.Add(1)
			case code(err) == "RequestLimitExceeded" && status(err) == http.StatusServiceUnavailable:
				throttled.Add(1)
			default:
				other.Add(1)
				t.Errorf("unexpected error: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 100 || throttled.Load() != 50 || other.Load() != 0 {
		t.Fatalf("burst of 150: %d ok, %d throttled, %d other; want 100, 50, 0", ok.Load(), throttled.Load(), other.Load())
	}
	after := srv.Sim().Snapshot()
	added := 0
	for _, id := range enis {
		e0, _ := before.ENI(id)
		e1, _ := after.ENI(id)
		added += len(e1.SecondaryIPs) - len(e0.SecondaryIPs)
	}
	if added != 100 {
		t.Fatalf("throttled requests had an effect: %d addresses added, want 100", added)
	}
	st := srv.Sim().Stats().Calls["AssignPrivateIpAddresses"]
	if st.Calls != 150 || st.Throttled != 50 || st.Errors["RequestLimitExceeded"] != 50 {
		t.Fatalf("stats: %+v", st)
	}

	// The bucket refills 5 tokens per second: 0.75 after 150 ms, 1.5 after 300 ms.
	assign1 := func() error {
		_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
			NetworkInterfaceId:             aws.String(enis[0]),
			SecondaryPrivateIpAddressCount: aws.Int32(1),
		})
		return err
	}
	srv.Sim().setClock(func() time.Time { return frozen.Add(150 * time.Millisecond) })
	wantCode(t, assign1(), "RequestLimitExceeded")
	srv.Sim().setClock(func() time.Time { return frozen.Add(300 * time.Millisecond) })
	noErr(t, assign1())
	wantCode(t, assign1(), "RequestLimitExceeded")

	// Back to the wall clock: calls succeed again once a token has refilled.
	srv.Sim().setClock(time.Now)
	eventually(t, 3*time.Second, "a token after refill", func() bool {
		err := assign1()
		if err != nil && code(err) != "RequestLimitExceeded" {
			t.Fatalf("after refill: %v", err)
		}
		return err == nil
	})
	checkConsistent(t, srv)
}

// TestThrottleBuckets checks which bucket each request takes from: unfiltered describes have
// their own 50-token bucket, filtered or paginated ones share the 100-token non-mutating one,
// and the ENI actions have separate buckets.
func TestThrottleBuckets(t *testing.T) {
	srv := start(t, func(c *Config) { c.Throttle = true })
	c := client(srv)
	ctx := t.Context()
	frozen := time.Now()
	srv.Sim().setClock(func() time.Time { return frozen })

	for i := range 50 {
		_, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{})
		if err != nil {
			t.Fatalf("unfiltered describe %d: %v", i, err)
		}
	}
	_, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	wantCode(t, err, "RequestLimitExceeded")
	if status(err) != http.StatusServiceUnavailable {
		t.Fatalf("throttle status %d, want 503", status(err))
	}
	// Filtered and paginated describes use the non-mutating bucket, still full.
	_, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{MaxResults: aws.Int32(5)})
	noErr(t, err)
	_, err = c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{srv.Sim().Snapshot().Instances[0].ID}})
	noErr(t, err)

	// Attach/Detach share the 50-token mutating bucket with RunInstances.
	subnet := subnetByCIDR(t, srv, "192.168.0.0/19")
	inst := instanceIn(t, srv, subnet)
	for i := range 50 {
		_, err := c.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String("eni-attach-0000000000000000" + string(rune('a'+i%6)))})
		wantCode(t, err, "InvalidAttachmentID.NotFound")
	}
	_, err = c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: aws.String(inst.PrimaryENI), InstanceId: aws.String(inst.ID), DeviceIndex: aws.Int32(1),
	})
	wantCode(t, err, "RequestLimitExceeded")
	// The ENI buckets are separate from it.
	_, err = c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)

	// Switching throttling off lets everything through.
	srv.Sim().SetThrottle(false)
	_, err = c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	noErr(t, err)
}

func TestBucketFor(t *testing.T) {
	tests := []struct {
		action   string
		filtered bool
		want     string
	}{
		{"AssignPrivateIpAddresses", false, "AssignPrivateIpAddresses"},
		{"UnassignPrivateIpAddresses", false, "UnassignPrivateIpAddresses"},
		{"CreateNetworkInterface", false, "CreateNetworkInterface"},
		{"DeleteNetworkInterface", false, "DeleteNetworkInterface"},
		{"ModifyNetworkInterfaceAttribute", false, "ModifyNetworkInterfaceAttribute"},
		{"CreateTags", false, BucketTags},
		{"DeleteTags", false, BucketTags},
		{"AttachNetworkInterface", false, BucketMutating},
		{"DetachNetworkInterface", false, BucketMutating},
		{"RunInstances", false, BucketRunInstances},
		{"TerminateInstances", false, BucketMutating},
		{"DescribeSubnets", false, BucketNonMutating},
		{"DescribeInstanceTypes", false, BucketNonMutating},
		{"DescribeInstances", true, BucketNonMutating},
		{"DescribeNetworkInterfaces", true, BucketNonMutating},
		{"DescribeInstances", false, BucketUnfiltered},
		{"DescribeNetworkInterfaces", false, BucketUnfiltered},
		{"CreateSubnetCidrReservation", false, BucketCIDRReservations},
	}
	for _, tc := range tests {
		if got := bucketFor(tc.action, tc.filtered); got != tc.want {
			t.Errorf("bucketFor(%s, %v) = %s, want %s", tc.action, tc.filtered, got, tc.want)
		}
		if _, ok := bucketShapes[bucketFor(tc.action, tc.filtered)]; !ok {
			t.Errorf("no shape for bucket of %s", tc.action)
		}
	}
	want := map[string]BucketShape{
		"AssignPrivateIpAddresses": {100, 5}, BucketTags: {100, 10}, BucketMutating: {50, 5},
		BucketNonMutating: {100, 20}, BucketUnfiltered: {50, 10}, BucketCIDRReservations: {5, 1},
		BucketRunInstances: {5, 2}, BucketInstancesLaunched: {1000, 2},
	}
	for name, shape := range want {
		if bucketShapes[name] != shape {
			t.Errorf("bucket %s: %+v, want %+v", name, bucketShapes[name], shape)
		}
	}
}
