package ec2sim

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// TestENILifecycle walks one ENI through create, attach, modify, assign, unassign, detach and
// delete with the SDK, checking what each response and describe shows.
func TestENILifecycle(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.32.0/19")
	inst := instanceIn(t, srv, subnet)

	out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId:                       aws.String(subnet),
		Description:                    aws.String("ipledger node-b"),
		SecondaryPrivateIpAddressCount: aws.Int32(2),
		Groups:                         []string{"sg-0123456789abcdef0"},
		TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeNetworkInterface,
			Tags:         []types.Tag{{Key: aws.String("ipledger.io/cluster"), Value: aws.String("demo")}},
		}},
	})
	noErr(t, err)
	ni := out.NetworkInterface
	id := aws.ToString(ni.NetworkInterfaceId)
	if !strings.HasPrefix(id, "eni-") || len(id) != len("eni-")+17 {
		t.Fatalf("ENI id %q does not look like EC2's", id)
	}
	if aws.ToString(ni.SubnetId) != subnet || aws.ToString(ni.AvailabilityZone) != "eu-west-1b" ||
		ni.Status != types.NetworkInterfaceStatusAvailable || aws.ToString(ni.Description) != "ipledger node-b" ||
		!strings.HasPrefix(aws.ToString(ni.VpcId), "vpc-") || len(aws.ToString(ni.MacAddress)) != 17 {
		t.Fatalf("create response: %+v", ni)
	}
	if len(ni.PrivateIpAddresses) != 3 || !aws.ToBool(ni.PrivateIpAddresses[0].Primary) ||
		aws.ToString(ni.PrivateIpAddresses[0].PrivateIpAddress) != aws.ToString(ni.PrivateIpAddress) {
		t.Fatalf("want primary + 2 secondaries, primary first: %+v", ni.PrivateIpAddresses)
	}
	if len(ni.TagSet) != 1 || aws.ToString(ni.TagSet[0].Key) != "ipledger.io/cluster" {
		t.Fatalf("tags: %+v", ni.TagSet)
	}
	if len(ni.Groups) != 1 || aws.ToString(ni.Groups[0].GroupId) != "sg-0123456789abcdef0" {
		t.Fatalf("groups: %+v", ni.Groups)
	}
	if !strings.HasSuffix(aws.ToString(ni.PrivateDnsName), ".eu-west-1.compute.internal") {
		t.Fatalf("private DNS name %q", aws.ToString(ni.PrivateDnsName))
	}

	att, err := c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: aws.String(id), InstanceId: aws.String(inst.ID), DeviceIndex: aws.Int32(1),
	})
	noErr(t, err)
	attID := aws.ToString(att.AttachmentId)
	if !strings.HasPrefix(attID, "eni-attach-") || aws.ToInt32(att.NetworkCardIndex) != 0 {
		t.Fatalf("attach response: %+v", att)
	}
	_, err = c.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: aws.String(id),
		Attachment:         &types.NetworkInterfaceAttachmentChanges{AttachmentId: aws.String(attID), DeleteOnTermination: aws.Bool(true)},
	})
	noErr(t, err)
	_, err = c.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: aws.String(id), Description: &types.AttributeValue{Value: aws.String("renamed")},
	})
	noErr(t, err)
	_, err = c.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: aws.String(id),
		Attachment:         &types.NetworkInterfaceAttachmentChanges{AttachmentId: aws.String("eni-attach-00000000000000000"), DeleteOnTermination: aws.Bool(false)},
	})
	wantCode(t, err, "InvalidAttachmentID.NotFound")

	d, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	noErr(t, err)
	got := d.NetworkInterfaces[0]
	if got.Status != types.NetworkInterfaceStatusInUse || got.Attachment == nil ||
		aws.ToString(got.Attachment.InstanceId) != inst.ID || aws.ToInt32(got.Attachment.DeviceIndex) != 1 ||
		got.Attachment.Status != types.AttachmentStatusAttached || !aws.ToBool(got.Attachment.DeleteOnTermination) ||
		aws.ToString(got.Attachment.AttachmentId) != attID || aws.ToString(got.Description) != "renamed" {
		t.Fatalf("describe after attach: %+v %+v", got, got.Attachment)
	}

	// Assign returns only the new addresses.
	as, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(id), SecondaryPrivateIpAddressCount: aws.Int32(3),
	})
	noErr(t, err)
	if len(as.AssignedPrivateIpAddresses) != 3 || aws.ToString(as.NetworkInterfaceId) != id {
		t.Fatalf("assign response: %+v", as)
	}
	fresh := []string{}
	for _, a := range as.AssignedPrivateIpAddresses {
		fresh = append(fresh, aws.ToString(a.PrivateIpAddress))
	}
	for _, old := range ni.PrivateIpAddresses {
		if slices.Contains(fresh, aws.ToString(old.PrivateIpAddress)) {
			t.Fatalf("assign returned an old address %s", aws.ToString(old.PrivateIpAddress))
		}
	}
	explicit := "192.168.40.77"
	as, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{explicit},
	})
	noErr(t, err)
	if len(as.AssignedPrivateIpAddresses) != 1 || aws.ToString(as.AssignedPrivateIpAddresses[0].PrivateIpAddress) != explicit {
		t.Fatalf("explicit assign response: %+v", as.AssignedPrivateIpAddresses)
	}
	eni, _ := srv.Sim().Snapshot().ENI(id)
	if len(eni.SecondaryIPs) != 6 || !slices.Contains(eni.SecondaryIPs, explicit) {
		t.Fatalf("ENI secondaries %v", eni.SecondaryIPs)
	}

	_, err = c.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{explicit, fresh[0]},
	})
	noErr(t, err)
	_, err = c.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{explicit},
	})
	wantCode(t, err, "InvalidParameterValue")
	_, err = c.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{aws.ToString(ni.PrivateIpAddress)},
	})
	wantCode(t, err, "InvalidParameterValue")
	eni, _ = srv.Sim().Snapshot().ENI(id)
	if len(eni.SecondaryIPs) != 4 || slices.Contains(eni.SecondaryIPs, explicit) {
		t.Fatalf("after unassign: %v", eni.SecondaryIPs)
	}

	_, err = c.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id)})
	wantCode(t, err, "InvalidNetworkInterface.InUse")
	_, err = c.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(attID)})
	noErr(t, err)
	_, err = c.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(attID)})
	wantCode(t, err, "InvalidAttachmentID.NotFound")
	d, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	noErr(t, err)
	if d.NetworkInterfaces[0].Status != types.NetworkInterfaceStatusAvailable || d.NetworkInterfaces[0].Attachment != nil {
		t.Fatalf("after detach: %+v", d.NetworkInterfaces[0])
	}
	_, err = c.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id)})
	noErr(t, err)
	_, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	wantCode(t, err, "InvalidNetworkInterfaceID.NotFound")
	if !strings.Contains(err.Error(), "The networkInterface ID '"+id+"' does not exist") {
		t.Fatalf("NotFound message: %v", err)
	}
	_, err = c.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id)})
	wantCode(t, err, "InvalidNetworkInterfaceID.NotFound")
	checkConsistent(t, srv)
}

// TestAssignErrors covers the validation of AssignPrivateIpAddresses and CreateNetworkInterface.
func TestAssignErrors(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.96.0/19")
	out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	id := aws.ToString(out.NetworkInterface.NetworkInterfaceId)
	other, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId: aws.String(subnet), PrivateIpAddresses: []types.PrivateIpAddressSpecification{
			{PrivateIpAddress: aws.String("192.168.100.10"), Primary: aws.Bool(true)},
			{PrivateIpAddress: aws.String("192.168.100.11")},
		},
	})
	noErr(t, err)
	if aws.ToString(other.NetworkInterface.PrivateIpAddress) != "192.168.100.10" {
		t.Fatalf("explicit primary: %+v", other.NetworkInterface)
	}
	before := srv.Sim().Snapshot()

	tests := []struct {
		name string
		in   ec2.AssignPrivateIpAddressesInput
		want string
	}{
		{"count and addresses", ec2.AssignPrivateIpAddressesInput{SecondaryPrivateIpAddressCount: aws.Int32(1), PrivateIpAddresses: []string{"192.168.100.20"}}, "InvalidParameterCombination"},
		{"prefix count and prefixes", ec2.AssignPrivateIpAddressesInput{Ipv4PrefixCount: aws.Int32(1), Ipv4Prefixes: []string{"192.168.101.0/28"}}, "InvalidParameterCombination"},
		{"addresses and prefixes", ec2.AssignPrivateIpAddressesInput{SecondaryPrivateIpAddressCount: aws.Int32(1), Ipv4PrefixCount: aws.Int32(1)}, "InvalidParameterCombination"},
		{"nothing", ec2.AssignPrivateIpAddressesInput{}, "MissingParameter"},
		{"count zero", ec2.AssignPrivateIpAddressesInput{SecondaryPrivateIpAddressCount: aws.Int32(0)}, "InvalidParameterValue"},
		{"count huge", ec2.AssignPrivateIpAddressesInput{SecondaryPrivateIpAddressCount: aws.Int32(100000)}, "InvalidParameterValue"},
		{"prefix count zero", ec2.AssignPrivateIpAddressesInput{Ipv4PrefixCount: aws.Int32(0)}, "InvalidParameterValue"},
		{"malformed address", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"192.168.100.300"}}, "InvalidParameterValue"},
		{"address outside subnet", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"10.0.0.5"}}, "InvalidParameterValue"},
		{"network address", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"192.168.96.0"}}, "InvalidParameterValue"},
		{"router address", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"192.168.96.1"}}, "InvalidParameterValue"},
		{"DNS address", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"192.168.96.2"}}, "InvalidParameterValue"},
		{"reserved +3", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"192.168.96.3"}}, "InvalidParameterValue"},
		{"broadcast", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"192.168.127.255"}}, "InvalidParameterValue"},
		{"address in use", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"192.168.100.11"}}, "InvalidIPAddress.InUse"},
		{"primary in use even with reassignment", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"192.168.100.10"}, AllowReassignment: aws.Bool(true)}, "InvalidIPAddress.InUse"},
		{"in use, second of two", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"192.168.100.50", "192.168.100.11"}}, "InvalidIPAddress.InUse"},
		{"duplicate address", ec2.AssignPrivateIpAddressesInput{PrivateIpAddresses: []string{"192.168.100.51", "192.168.100.51"}}, "InvalidParameterValue"},
		{"bad prefix", ec2.AssignPrivateIpAddressesInput{Ipv4Prefixes: []string{"192.168.101.0/33"}}, "InvalidParameterValue"},
		{"misaligned prefix", ec2.AssignPrivateIpAddressesInput{Ipv4Prefixes: []string{"192.168.101.8/28"}}, "InvalidParameterValue"},
		{"not a /28", ec2.AssignPrivateIpAddressesInput{Ipv4Prefixes: []string{"192.168.101.0/27"}}, "InvalidParameterValue"},
		{"prefix outside subnet", ec2.AssignPrivateIpAddressesInput{Ipv4Prefixes: []string{"192.168.0.16/28"}}, "InvalidParameterValue"},
		{"prefix over reserved", ec2.AssignPrivateIpAddressesInput{Ipv4Prefixes: []string{"192.168.96.0/28"}}, "InvalidParameterValue"},
		{"prefix over used address", ec2.AssignPrivateIpAddressesInput{Ipv4Prefixes: []string{"192.168.100.0/28"}}, "InvalidIPAddress.InUse"},
		{"over the per-ENI limit", ec2.AssignPrivateIpAddressesInput{SecondaryPrivateIpAddressCount: aws.Int32(64)}, "PrivateIpAddressLimitExceeded"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in
			in.NetworkInterfaceId = aws.String(id)
			_, err := c.AssignPrivateIpAddresses(ctx, &in)
			wantCode(t, err, tc.want)
		})
	}
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String("eni-0123456789abcdef0"), SecondaryPrivateIpAddressCount: aws.Int32(1),
	})
	wantCode(t, err, "InvalidNetworkInterfaceID.NotFound")
	// Nothing changed.
	after := srv.Sim().Snapshot()
	for _, e := range before.ENIs {
		e2, _ := after.ENI(e.ID)
		if !slices.Equal(e.Addresses(), e2.Addresses()) {
			t.Fatalf("failed requests changed %s: %v -> %v", e.ID, e.Addresses(), e2.Addresses())
		}
	}

	// AllowReassignment moves a secondary address.
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(id), PrivateIpAddresses: []string{"192.168.100.11"}, AllowReassignment: aws.Bool(true),
	})
	noErr(t, err)
	st := srv.Sim().Snapshot()
	moved, _ := st.ENI(id)
	from, _ := st.ENI(aws.ToString(other.NetworkInterface.NetworkInterfaceId))
	if !slices.Contains(moved.SecondaryIPs, "192.168.100.11") || slices.Contains(from.SecondaryIPs, "192.168.100.11") {
		t.Fatalf("reassignment: to %v, from %v", moved.SecondaryIPs, from.SecondaryIPs)
	}

	createTests := []struct {
		name string
		in   ec2.CreateNetworkInterfaceInput
		want string
	}{
		{"unknown subnet", ec2.CreateNetworkInterfaceInput{SubnetId: aws.String("subnet-0000000000000000f")}, "InvalidSubnetID.NotFound"},
		{"count with addresses", ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), SecondaryPrivateIpAddressCount: aws.Int32(2),
			PrivateIpAddresses: []types.PrivateIpAddressSpecification{{PrivateIpAddress: aws.String("192.168.100.40")}}}, "InvalidParameterCombination"},
		{"prefix count with prefixes", ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), Ipv4PrefixCount: aws.Int32(1),
			Ipv4Prefixes: []types.Ipv4PrefixSpecificationRequest{{Ipv4Prefix: aws.String("192.168.101.0/28")}}}, "InvalidParameterCombination"},
		{"primary in use", ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), PrivateIpAddress: aws.String("192.168.100.10")}, "InvalidIPAddress.InUse"},
		{"over 64 slots", ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), SecondaryPrivateIpAddressCount: aws.Int32(64)}, "PrivateIpAddressLimitExceeded"},
		{"wrong tag resource type", ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeInstance, Tags: []types.Tag{{Key: aws.String("k"), Value: aws.String("v")}}}}}, "InvalidParameterValue"},
	}
	for _, tc := range createTests {
		t.Run("create "+tc.name, func(t *testing.T) {
			_, err := c.CreateNetworkInterface(ctx, &tc.in)
			wantCode(t, err, tc.want)
		})
	}
	checkConsistent(t, srv)
}

// TestPrivateIpAddressLimit: an m5.large ENI holds 10 IPv4 slots (primary included), prefixes
// and addresses together.
func TestPrivateIpAddressLimit(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.0.0/19")
	inst := instanceIn(t, srv, subnet)

	as, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(inst.PrimaryENI), SecondaryPrivateIpAddressCount: aws.Int32(9),
	})
	noErr(t, err)
	if len(as.AssignedPrivateIpAddresses) != 9 {
		t.Fatalf("assigned %d", len(as.AssignedPrivateIpAddresses))
	}
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(inst.PrimaryENI), SecondaryPrivateIpAddressCount: aws.Int32(1),
	})
	wantCode(t, err, "PrivateIpAddressLimitExceeded")
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(inst.PrimaryENI), PrivateIpAddresses: []string{"192.168.1.1"},
	})
	wantCode(t, err, "PrivateIpAddressLimitExceeded")

	// A second ENI: 1 primary + 1 address + 8 prefixes = 10 slots; one more prefix is over.
	out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), SecondaryPrivateIpAddressCount: aws.Int32(1)})
	noErr(t, err)
	id := aws.ToString(out.NetworkInterface.NetworkInterfaceId)
	_, err = c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(id), InstanceId: aws.String(inst.ID), DeviceIndex: aws.Int32(1)})
	noErr(t, err)
	ap, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), Ipv4PrefixCount: aws.Int32(8)})
	noErr(t, err)
	if len(ap.AssignedIpv4Prefixes) != 8 || len(ap.AssignedPrivateIpAddresses) != 0 {
		t.Fatalf("prefix assign response: %+v", ap)
	}
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(id), Ipv4PrefixCount: aws.Int32(1)})
	wantCode(t, err, "PrivateIpAddressLimitExceeded")

	// An unattached ENI with 11 slots cannot be attached to an m5.large.
	big, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), SecondaryPrivateIpAddressCount: aws.Int32(10)})
	noErr(t, err)
	_, err = c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: big.NetworkInterface.NetworkInterfaceId, InstanceId: aws.String(inst.ID), DeviceIndex: aws.Int32(2)})
	wantCode(t, err, "PrivateIpAddressLimitExceeded")
	checkConsistent(t, srv)
}

// TestAttachErrors: the 4th ENI of an m5.large, device index in use or out of range, another
// AZ, unknown ids, detaching the primary.
func TestAttachErrors(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.64.0/19") // eu-west-1c
	inst := instanceIn(t, srv, subnet)
	newENI := func(subnet string) string {
		out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
		noErr(t, err)
		return aws.ToString(out.NetworkInterface.NetworkInterfaceId)
	}
	attach := func(eni, inst string, device int32) error {
		_, err := c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
			NetworkInterfaceId: aws.String(eni), InstanceId: aws.String(inst), DeviceIndex: aws.Int32(device),
		})
		return err
	}
	e1, e2, e3 := newENI(subnet), newENI(subnet), newENI(subnet)
	noErr(t, attach(e1, inst.ID, 1))
	wantCode(t, attach(e2, inst.ID, 1), "InvalidParameterValue") // device index taken
	wantCode(t, attach(e1, inst.ID, 2), "InvalidNetworkInterface.InUse")
	noErr(t, attach(e2, inst.ID, 2))
	err := attach(e3, inst.ID, 3)
	wantCode(t, err, "AttachmentLimitExceeded")

	other := newENI(subnetByCIDR(t, srv, "192.168.96.0/19")) // eu-west-1a
	wantCode(t, attach(other, inst.ID, 3), "InvalidParameterCombination")
	wantCode(t, attach(e3, "i-0123456789abcdef0", 1), "InvalidInstanceID.NotFound")
	wantCode(t, attach("eni-0123456789abcdef0", inst.ID, 1), "InvalidNetworkInterfaceID.NotFound")

	var inst2 InstanceInfo // the other node in the subnet
	for _, in := range srv.Sim().Snapshot().Instances {
		if in.SubnetID == subnet && in.ID != inst.ID {
			inst2 = in
		}
	}
	wantCode(t, attach(e3, inst2.ID, 200), "InvalidParameterValue")
	wantCode(t, attach(e3, inst2.ID, -1), "InvalidParameterValue")
	_, err = c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: aws.String(e3), InstanceId: aws.String(inst2.ID), DeviceIndex: aws.Int32(1), NetworkCardIndex: aws.Int32(1),
	})
	wantCode(t, err, "InvalidParameterValue") // m5.large has one network card

	d, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{inst.PrimaryENI}})
	noErr(t, err)
	_, err = c.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: d.NetworkInterfaces[0].Attachment.AttachmentId})
	wantCode(t, err, "OperationNotPermitted")
	_, err = c.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(inst.PrimaryENI)})
	wantCode(t, err, "InvalidNetworkInterface.InUse")
	checkConsistent(t, srv)
}

// TestAvailableIPAddressCount checks DescribeSubnets' availableIpAddressCount: size - 5 -
// addresses in use, a prefix counting 16.
func TestAvailableIPAddressCount(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.128.0/19") // no instances
	avail := func() int32 {
		t.Helper()
		out, err := c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{subnet}})
		noErr(t, err)
		return aws.ToInt32(out.Subnets[0].AvailableIpAddressCount)
	}
	if got := avail(); got != 8192-5 {
		t.Fatalf("empty /19: %d available, want 8187", got)
	}
	out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), SecondaryPrivateIpAddressCount: aws.Int32(4)})
	noErr(t, err)
	id := out.NetworkInterface.NetworkInterfaceId
	if got := avail(); got != 8187-5 {
		t.Fatalf("after 5 addresses: %d", got)
	}
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: id, Ipv4Prefixes: []string{"192.168.130.16/28"}})
	noErr(t, err)
	if got := avail(); got != 8187-5-16 {
		t.Fatalf("after a prefix: %d", got)
	}
	_, err = c.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{NetworkInterfaceId: id, Ipv4Prefixes: []string{"192.168.130.16/28"}})
	noErr(t, err)
	if got := avail(); got != 8187-5 {
		t.Fatalf("after unassigning the prefix: %d", got)
	}
	_, err = c.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: id})
	noErr(t, err)
	if got := avail(); got != 8187 {
		t.Fatalf("after delete: %d", got)
	}
	// The default scenario's subnets with instances: one address per node.
	st := srv.Sim().Snapshot()
	for _, sn := range st.Subnets {
		nodes := 0
		for _, in := range st.Instances {
			if in.SubnetID == sn.ID {
				nodes++
			}
		}
		if sn.Available != 8187-nodes {
			t.Fatalf("subnet %s with %d nodes: %d available", sn.CIDR, nodes, sn.Available)
		}
	}
}

// TestPrefixes: prefixes are aligned /28s inside the subnet that overlap nothing; after
// Fragment no /28 is free although thousands of addresses are.
func TestPrefixes(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.32.0/19")
	inst := instanceIn(t, srv, subnet)
	out, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(inst.PrimaryENI), Ipv4PrefixCount: aws.Int32(5),
	})
	noErr(t, err)
	seen := map[string]bool{}
	sub := netip.MustParsePrefix("192.168.32.0/19")
	for _, p := range out.AssignedIpv4Prefixes {
		pf := netip.MustParsePrefix(aws.ToString(p.Ipv4Prefix))
		if pf.Bits() != 28 || pf.Masked() != pf || !sub.Contains(pf.Addr()) || seen[pf.String()] {
			t.Fatalf("bad prefix %s", pf)
		}
		seen[pf.String()] = true
	}
	checkConsistent(t, srv)

	n, err := srv.Sim().Fragment(ctx, subnet)
	noErr(t, err)
	st := srv.Sim().Snapshot()
	sn, _ := st.Subnet(subnet)
	if sn.FreeBlocks != 0 || n < 500 || sn.Available < 7000 {
		t.Fatalf("after fragment: %d occupied, %d free blocks, %d available", n, sn.FreeBlocks, sn.Available)
	}
	ds, err := c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{subnet}})
	noErr(t, err)
	if aws.ToInt32(ds.Subnets[0].AvailableIpAddressCount) < 7000 {
		t.Fatalf("DescribeSubnets shows %d", aws.ToInt32(ds.Subnets[0].AvailableIpAddressCount))
	}
	eni2, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: eni2.NetworkInterface.NetworkInterfaceId, Ipv4PrefixCount: aws.Int32(1),
	})
	wantCode(t, err, "InsufficientCidrBlocks")
	_, err = c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), Ipv4PrefixCount: aws.Int32(1)})
	wantCode(t, err, "InsufficientCidrBlocks")
	// Single addresses are still there.
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: eni2.NetworkInterface.NetworkInterfaceId, SecondaryPrivateIpAddressCount: aws.Int32(20),
	})
	noErr(t, err)
	// Freeing the only address of a block makes the block usable again.
	st = srv.Sim().Snapshot()
	owners := st.AddressOwners()
	var foreignID, lone string
	for _, e := range st.ENIs {
		if !e.Foreign {
			continue
		}
		for _, a := range e.SecondaryIPs {
			block := netip.PrefixFrom(netip.MustParseAddr(a), 28).Masked()
			others := 0
			for ip := block.Addr(); block.Contains(ip); ip = ip.Next() {
				if len(owners[ip.String()]) > 0 {
					others++
				}
			}
			if others == 1 {
				foreignID, lone = e.ID, a
				break
			}
		}
		if lone != "" {
			break
		}
	}
	if lone == "" {
		t.Fatal("no block held by a single foreign address after Fragment")
	}
	_, err = c.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(foreignID), PrivateIpAddresses: []string{lone},
	})
	noErr(t, err)
	ap, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(inst.PrimaryENI), Ipv4PrefixCount: aws.Int32(1),
	})
	noErr(t, err)
	pf := netip.MustParsePrefix(aws.ToString(ap.AssignedIpv4Prefixes[0].Ipv4Prefix))
	if !pf.Contains(netip.MustParseAddr(lone)) {
		t.Fatalf("the only free block holds %s, got %s", lone, pf)
	}
	checkConsistent(t, srv)
}

// TestInsufficientFreeAddresses and CIDR reservations in a small subnet: a /27 has 32 - 5 = 27
// usable addresses; an explicit reservation keeps counts out of it.
func TestInsufficientFreeAddressesAndReservations(t *testing.T) {
	sc := &Scenario{
		VPC: VPCSpec{CIDR: "10.0.0.0/16"},
		Subnets: []SubnetSpec{
			{CIDR: "10.0.0.0/27", AvailabilityZone: "eu-west-1a"},
			{CIDR: "10.0.1.0/24", AvailabilityZone: "eu-west-1a"},
		},
	}
	srv := start(t, func(c *Config) { c.Scenario = sc })
	c := client(srv)
	ctx := t.Context()
	small, big := subnetByCIDR(t, srv, "10.0.0.0/27"), subnetByCIDR(t, srv, "10.0.1.0/24")

	res, err := c.CreateSubnetCidrReservation(ctx, &ec2.CreateSubnetCidrReservationInput{
		SubnetId: aws.String(small), Cidr: aws.String("10.0.0.16/28"), ReservationType: types.SubnetCidrReservationTypeExplicit,
	})
	noErr(t, err)
	r := res.SubnetCidrReservation
	if !strings.HasPrefix(aws.ToString(r.SubnetCidrReservationId), "scr-") || aws.ToString(r.Cidr) != "10.0.0.16/28" || r.ReservationType != types.SubnetCidrReservationTypeExplicit {
		t.Fatalf("reservation: %+v", r)
	}
	// 10.0.0.4 .. 10.0.0.15 are the 12 addresses a count may take.
	out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(small), SecondaryPrivateIpAddressCount: aws.Int32(11)})
	noErr(t, err)
	for _, a := range out.NetworkInterface.PrivateIpAddresses {
		ip := netip.MustParseAddr(aws.ToString(a.PrivateIpAddress))
		if ip.Compare(netip.MustParseAddr("10.0.0.4")) < 0 || ip.Compare(netip.MustParseAddr("10.0.0.15")) > 0 {
			t.Fatalf("count took %s outside the unreserved range", ip)
		}
	}
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: out.NetworkInterface.NetworkInterfaceId, SecondaryPrivateIpAddressCount: aws.Int32(1)})
	wantCode(t, err, "InsufficientFreeAddressesInSubnet")
	_, err = c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(small)})
	wantCode(t, err, "InsufficientFreeAddressesInSubnet")
	// Explicit addresses in the reservation are allowed.
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: out.NetworkInterface.NetworkInterfaceId, PrivateIpAddresses: []string{"10.0.0.20"}})
	noErr(t, err)
	_, err = c.RunInstances(ctx, &ec2.RunInstancesInput{InstanceType: "m5.large", SubnetId: aws.String(small), MinCount: aws.Int32(1), MaxCount: aws.Int32(1), ImageId: aws.String("ami-1")})
	wantCode(t, err, "InsufficientFreeAddressesInSubnet")

	// A prefix reservation is where prefix counts go first.
	_, err = c.CreateSubnetCidrReservation(ctx, &ec2.CreateSubnetCidrReservationInput{
		SubnetId: aws.String(big), Cidr: aws.String("10.0.1.192/27"), ReservationType: types.SubnetCidrReservationTypePrefix,
	})
	noErr(t, err)
	pout, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(big), Ipv4PrefixCount: aws.Int32(3)})
	noErr(t, err)
	inRes := 0
	resv := netip.MustParsePrefix("10.0.1.192/27")
	for _, p := range pout.NetworkInterface.Ipv4Prefixes {
		if resv.Contains(netip.MustParsePrefix(aws.ToString(p.Ipv4Prefix)).Addr()) {
			inRes++
		}
	}
	if inRes != 2 || len(pout.NetworkInterface.Ipv4Prefixes) != 3 {
		t.Fatalf("want both blocks of the prefix reservation used first, got %+v", pout.NetworkInterface.Ipv4Prefixes)
	}
	// Random addresses never land in a reservation.
	pri := netip.MustParseAddr(aws.ToString(pout.NetworkInterface.PrivateIpAddress))
	if resv.Contains(pri) {
		t.Fatalf("primary %s in the prefix reservation", pri)
	}

	bad := []struct {
		subnet, cidr string
		typ          types.SubnetCidrReservationType
		want         string
	}{
		{big, "10.0.1.192/28", types.SubnetCidrReservationTypePrefix, "InvalidParameterValue"},   // overlaps
		{big, "10.0.2.0/28", types.SubnetCidrReservationTypeExplicit, "InvalidParameterValue"},   // outside
		{big, "10.0.1.5/28", types.SubnetCidrReservationTypeExplicit, "InvalidParameterValue"},   // not a network address
		{big, "10.0.1.64/26", types.SubnetCidrReservationType("other"), "InvalidParameterValue"}, // bad type
		{"subnet-0000000000000000f", "10.0.1.64/26", types.SubnetCidrReservationTypePrefix, "InvalidSubnetID.NotFound"},
	}
	for _, b := range bad {
		_, err := c.CreateSubnetCidrReservation(ctx, &ec2.CreateSubnetCidrReservationInput{SubnetId: aws.String(b.subnet), Cidr: aws.String(b.cidr), ReservationType: b.typ})
		wantCode(t, err, b.want)
	}
	del, err := c.DeleteSubnetCidrReservation(ctx, &ec2.DeleteSubnetCidrReservationInput{SubnetCidrReservationId: r.SubnetCidrReservationId})
	noErr(t, err)
	if aws.ToString(del.DeletedSubnetCidrReservation.Cidr) != "10.0.0.16/28" {
		t.Fatalf("deleted: %+v", del.DeletedSubnetCidrReservation)
	}
	// With the reservation gone, counts may use 10.0.0.16/28 again.
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: out.NetworkInterface.NetworkInterfaceId, SecondaryPrivateIpAddressCount: aws.Int32(1)})
	noErr(t, err)
	checkConsistent(t, srv)
}

// TestClientToken: a retry with the same token and parameters returns the same ENI; other
// parameters get IdempotentParameterMismatch; the SDK's own tokens make distinct ENIs.
func TestClientToken(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.96.0/19")
	in := &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), ClientToken: aws.String("node-a-eni-1"), SecondaryPrivateIpAddressCount: aws.Int32(2)}
	a, err := c.CreateNetworkInterface(ctx, in)
	noErr(t, err)
	b, err := c.CreateNetworkInterface(ctx, in)
	noErr(t, err)
	if aws.ToString(a.NetworkInterface.NetworkInterfaceId) != aws.ToString(b.NetworkInterface.NetworkInterfaceId) ||
		aws.ToString(b.ClientToken) != "node-a-eni-1" {
		t.Fatalf("retry made another ENI: %s vs %s", aws.ToString(a.NetworkInterface.NetworkInterfaceId), aws.ToString(b.NetworkInterface.NetworkInterfaceId))
	}
	_, err = c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), ClientToken: aws.String("node-a-eni-1"), SecondaryPrivateIpAddressCount: aws.Int32(3)})
	wantCode(t, err, "IdempotentParameterMismatch")
	x, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	y, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	if aws.ToString(x.NetworkInterface.NetworkInterfaceId) == aws.ToString(y.NetworkInterface.NetworkInterfaceId) {
		t.Fatal("two creates without a token returned one ENI")
	}
	n := 0
	for _, e := range srv.Sim().Snapshot().ENIs {
		if e.SubnetID == subnet {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d ENIs in the subnet, want 3", n)
	}
}

// TestRandomReproducible: the same seed and request sequence give the same ids and addresses;
// another seed gives others; counts are not handed out sequentially.
func TestRandomReproducible(t *testing.T) {
	run := func(seed int64) []string {
		srv := start(t, func(c *Config) { c.Seed = seed })
		c := client(srv)
		ctx := t.Context()
		subnet := subnetByCIDR(t, srv, "192.168.128.0/19")
		var trace []string
		for range 3 {
			out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), SecondaryPrivateIpAddressCount: aws.Int32(5)})
			noErr(t, err)
			trace = append(trace, aws.ToString(out.NetworkInterface.NetworkInterfaceId), aws.ToString(out.NetworkInterface.MacAddress))
			for _, a := range out.NetworkInterface.PrivateIpAddresses {
				trace = append(trace, aws.ToString(a.PrivateIpAddress))
			}
			as, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: out.NetworkInterface.NetworkInterfaceId, Ipv4PrefixCount: aws.Int32(2)})
			noErr(t, err)
			for _, p := range as.AssignedIpv4Prefixes {
				trace = append(trace, aws.ToString(p.Ipv4Prefix))
			}
		}
		for _, sn := range srv.Sim().Snapshot().Subnets {
			trace = append(trace, sn.ID)
		}
		return trace
	}
	a, b, other := run(42), run(42), run(43)
	if !slices.Equal(a, b) {
		t.Fatalf("seed 42 twice differs:\n%v\n%v", a, b)
	}
	if slices.Equal(a, other) {
		t.Fatal("seeds 42 and 43 give the same ids and addresses")
	}
	// Addresses 2..7 of the trace are the first ENI's six addresses: not consecutive.
	consecutive := true
	for i := 3; i < 8; i++ {
		p, q := netip.MustParseAddr(a[i-1]), netip.MustParseAddr(a[i])
		if p.Next() != q {
			consecutive = false
		}
	}
	if consecutive {
		t.Fatalf("count assigned consecutive addresses %v", a[2:8])
	}
}
