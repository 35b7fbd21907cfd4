package ec2sim

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

var dnsRe = regexp.MustCompile(`^ip-(\d+)-(\d+)-(\d+)-(\d+)\.eu-west-1\.compute\.internal$`)

// TestRunAndTerminateInstances: RunInstances gives running instances with a primary ENI at
// device index 0; TerminateInstances deletes ENIs with DeleteOnTermination and detaches the
// others, and the instance stays listed as terminated.
func TestRunAndTerminateInstances(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.128.0/19")
	run, err := c.RunInstances(ctx, &ec2.RunInstancesInput{
		ImageId: aws.String("ami-0123"), InstanceType: types.InstanceTypeM5Large, SubnetId: aws.String(subnet),
		MinCount: aws.Int32(2), MaxCount: aws.Int32(2),
		TagSpecifications: []types.TagSpecification{
			{ResourceType: types.ResourceTypeInstance, Tags: []types.Tag{{Key: aws.String("Name"), Value: aws.String("worker")}}},
			{ResourceType: types.ResourceTypeNetworkInterface, Tags: []types.Tag{{Key: aws.String("role"), Value: aws.String("primary")}}},
		},
	})
	noErr(t, err)
	if len(run.Instances) != 2 || aws.ToString(run.ReservationId) == "" || aws.ToString(run.OwnerId) != "111111111111" {
		t.Fatalf("run response: %+v", run)
	}
	in := run.Instances[0]
	id := aws.ToString(in.InstanceId)
	m := dnsRe.FindStringSubmatch(aws.ToString(in.PrivateDnsName))
	if m == nil || fmt.Sprintf("%s.%s.%s.%s", m[1], m[2], m[3], m[4]) != aws.ToString(in.PrivateIpAddress) {
		t.Fatalf("private DNS %q for %q", aws.ToString(in.PrivateDnsName), aws.ToString(in.PrivateIpAddress))
	}
	if in.State.Name != types.InstanceStateNameRunning || aws.ToInt32(in.State.Code) != 16 || in.InstanceType != types.InstanceTypeM5Large ||
		aws.ToString(in.SubnetId) != subnet || aws.ToString(in.Placement.AvailabilityZone) != "eu-west-1b" || len(in.NetworkInterfaces) != 1 {
		t.Fatalf("instance: %+v", in)
	}
	pn := in.NetworkInterfaces[0]
	if aws.ToInt32(pn.Attachment.DeviceIndex) != 0 || !aws.ToBool(pn.Attachment.DeleteOnTermination) ||
		aws.ToString(pn.PrivateIpAddress) != aws.ToString(in.PrivateIpAddress) {
		t.Fatalf("primary ENI: %+v %+v", pn, pn.Attachment)
	}
	if !netip.MustParsePrefix("192.168.128.0/19").Contains(netip.MustParseAddr(aws.ToString(in.PrivateIpAddress))) {
		t.Fatalf("primary %s outside the subnet", aws.ToString(in.PrivateIpAddress))
	}
	if len(in.Tags) != 1 || aws.ToString(in.Tags[0].Value) != "worker" {
		t.Fatalf("instance tags %+v", in.Tags)
	}
	primary := aws.ToString(pn.NetworkInterfaceId)
	pe, _ := srv.Sim().Snapshot().ENI(primary)
	if pe.Tags["role"] != "primary" {
		t.Fatalf("primary ENI tags %v", pe.Tags)
	}
	// The new instance has an IMDS listener.
	ep, err := srv.IMDSEndpoint(id)
	noErr(t, err)
	mc := imds.New(imds.Options{Endpoint: ep})
	iid, err := mc.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	noErr(t, err)
	if iid.InstanceID != id {
		t.Fatalf("IMDS says %s", iid.InstanceID)
	}

	// A kept ENI (DeleteOnTermination false) and a deleted one (true).
	mk := func(dev int32, dot bool) string {
		out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), SecondaryPrivateIpAddressCount: aws.Int32(3)})
		noErr(t, err)
		eni := aws.ToString(out.NetworkInterface.NetworkInterfaceId)
		att, err := c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(eni), InstanceId: aws.String(id), DeviceIndex: aws.Int32(dev)})
		noErr(t, err)
		if dot {
			_, err = c.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
				NetworkInterfaceId: aws.String(eni),
				Attachment:         &types.NetworkInterfaceAttachmentChanges{AttachmentId: att.AttachmentId, DeleteOnTermination: aws.Bool(true)},
			})
			noErr(t, err)
		}
		return eni
	}
	kept, gone := mk(1, false), mk(2, true)
	before := srv.Sim().Snapshot()
	sn0, _ := before.Subnet(subnet)
	goneInfo, _ := before.ENI(gone)
	primaryInfo, _ := before.ENI(primary)

	term, err := c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}})
	noErr(t, err)
	if len(term.TerminatingInstances) != 1 || term.TerminatingInstances[0].CurrentState.Name != types.InstanceStateNameTerminated ||
		term.TerminatingInstances[0].PreviousState.Name != types.InstanceStateNameRunning {
		t.Fatalf("terminate response %+v", term.TerminatingInstances)
	}
	_, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{gone}})
	wantCode(t, err, "InvalidNetworkInterfaceID.NotFound")
	_, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{primary}})
	wantCode(t, err, "InvalidNetworkInterfaceID.NotFound")
	d, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{kept}})
	noErr(t, err)
	if d.NetworkInterfaces[0].Status != types.NetworkInterfaceStatusAvailable || d.NetworkInterfaces[0].Attachment != nil {
		t.Fatalf("kept ENI after terminate: %+v", d.NetworkInterfaces[0])
	}
	sn1, _ := srv.Sim().Snapshot().Subnet(subnet)
	if freed := sn1.Available - sn0.Available; freed != len(goneInfo.Addresses())+len(primaryInfo.Addresses()) {
		t.Fatalf("terminate freed %d addresses, want %d", freed, len(goneInfo.Addresses())+len(primaryInfo.Addresses()))
	}
	di, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{id}})
	noErr(t, err)
	if got := di.Reservations[0].Instances[0]; got.State.Name != types.InstanceStateNameTerminated || len(got.NetworkInterfaces) != 0 {
		t.Fatalf("terminated instance: %+v", got)
	}
	if _, err := srv.IMDSEndpoint(id); !errors.Is(err, ErrNoIMDS) {
		t.Fatalf("IMDS of a terminated instance: %v", err)
	}
	_, err = mc.GetMetadata(ctx, &imds.GetMetadataInput{Path: "instance-id"})
	if err == nil {
		t.Fatal("IMDS still answers after terminate")
	}
	// Terminating again is harmless; attaching to it is not allowed.
	_, err = c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}})
	noErr(t, err)
	_, err = c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(kept), InstanceId: aws.String(id), DeviceIndex: aws.Int32(1)})
	wantCode(t, err, "IncorrectInstanceState")
	_, err = c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{"i-0000000000000000f"}})
	wantCode(t, err, "InvalidInstanceID.NotFound")

	bad := []struct {
		name string
		in   ec2.RunInstancesInput
		want string
	}{
		{"unknown type", ec2.RunInstancesInput{InstanceType: "m9.huge", SubnetId: aws.String(subnet), MinCount: aws.Int32(1), MaxCount: aws.Int32(1)}, "InvalidParameterValue"},
		{"unknown subnet", ec2.RunInstancesInput{InstanceType: "m5.large", SubnetId: aws.String("subnet-0000000000000000f"), MinCount: aws.Int32(1), MaxCount: aws.Int32(1)}, "InvalidSubnetID.NotFound"},
		{"min > max", ec2.RunInstancesInput{InstanceType: "m5.large", SubnetId: aws.String(subnet), MinCount: aws.Int32(3), MaxCount: aws.Int32(1)}, "InvalidParameterValue"},
		{"no subnet", ec2.RunInstancesInput{InstanceType: "m5.large", MinCount: aws.Int32(1), MaxCount: aws.Int32(1)}, "MissingParameter"},
	}
	for _, b := range bad {
		b.in.ImageId = aws.String("ami-1")
		_, err := c.RunInstances(ctx, &b.in)
		if code(err) != b.want {
			t.Errorf("%s: %v, want %s", b.name, err, b.want)
		}
	}
	checkConsistent(t, srv)
}

func TestDescribeInstances(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	st := srv.Sim().Snapshot()
	out, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{})
	noErr(t, err)
	var ids []string
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			ids = append(ids, aws.ToString(in.InstanceId))
			info, _ := st.Instance(aws.ToString(in.InstanceId))
			if aws.ToString(in.PrivateIpAddress) != info.PrivateIP || len(in.NetworkInterfaces) != 1 ||
				aws.ToString(in.NetworkInterfaces[0].NetworkInterfaceId) != info.PrimaryENI ||
				aws.ToString(in.NetworkInterfaces[0].MacAddress) != info.MAC || in.Hypervisor != types.HypervisorTypeXen {
				t.Fatalf("instance %+v vs %+v", in, info)
			}
		}
	}
	if len(ids) != 5 {
		t.Fatalf("%d instances, want the default scenario's 5", len(ids))
	}
	names := map[string]bool{}
	for _, in := range st.Instances {
		names[in.Tags["Name"]] = true
	}
	if !names["node-a"] || !names["node-b-1"] || !names["node-c-2"] {
		t.Fatalf("Name tags %v", names)
	}
	subnet := subnetByCIDR(t, srv, "192.168.32.0/19")
	target := st.Instances[2]
	tests := []struct {
		name    string
		filters []types.Filter
		want    int
	}{
		{"subnet", []types.Filter{flt("subnet-id", subnet)}, 2},
		{"running", []types.Filter{flt("instance-state-name", "running")}, 5},
		{"id", []types.Filter{flt("instance-id", target.ID)}, 1},
		{"type", []types.Filter{flt("instance-type", "m5.large")}, 5},
		{"name tag glob", []types.Filter{flt("tag:Name", "node-c-*")}, 2},
		{"private ip", []types.Filter{flt("private-ip-address", target.PrivateIP)}, 1},
		{"eni", []types.Filter{flt("network-interface.network-interface-id", target.PrimaryENI)}, 1},
		{"az", []types.Filter{flt("availability-zone", "eu-west-1b")}, 2},
		{"terminated", []types.Filter{flt("instance-state-name", "terminated")}, 0},
	}
	for _, tc := range tests {
		out, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: tc.filters})
		noErr(t, err)
		n := 0
		for _, r := range out.Reservations {
			n += len(r.Instances)
		}
		if n != tc.want {
			t.Errorf("%s: %d instances, want %d", tc.name, n, tc.want)
		}
	}
	// Pagination.
	var paged []string
	p := ec2.NewDescribeInstancesPaginator(c, &ec2.DescribeInstancesInput{MaxResults: aws.Int32(5)})
	extra, err := srv.Sim().RunInstances(ctx, InstanceSpec{InstanceType: "t3.small", SubnetID: subnet}, 3)
	noErr(t, err)
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		noErr(t, err)
		for _, r := range out.Reservations {
			for _, in := range r.Instances {
				paged = append(paged, aws.ToString(in.InstanceId))
			}
		}
	}
	var all []string
	for _, in := range srv.Sim().Snapshot().Instances {
		all = append(all, in.ID)
	}
	slices.Sort(paged)
	if !slices.Equal(paged, all) {
		t.Fatalf("paged %v, want every instance once: %v", paged, all)
	}
	_, err = c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{extra[0].ID}, MaxResults: aws.Int32(5)})
	wantCode(t, err, "InvalidParameterCombination")
	_, err = c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{extra[0].ID, "i-0000000000000000f"}})
	wantCode(t, err, "InvalidInstanceID.NotFound")
	// One reservation for the three launched together.
	out, err = c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{extra[0].ID, extra[1].ID, extra[2].ID}})
	noErr(t, err)
	if len(out.Reservations) != 1 || len(out.Reservations[0].Instances) != 3 {
		t.Fatalf("reservations %+v", out.Reservations)
	}
}

// TestRunInstancesClientToken: the SDK retries RunInstances with the same token; the
// simulator must not launch twice.
func TestRunInstancesClientToken(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.160.0/19")
	in := &ec2.RunInstancesInput{ImageId: aws.String("ami-1"), InstanceType: "m5.large", SubnetId: aws.String(subnet),
		MinCount: aws.Int32(1), MaxCount: aws.Int32(1), ClientToken: aws.String("launch-1")}
	a, err := c.RunInstances(ctx, in)
	noErr(t, err)
	b, err := c.RunInstances(ctx, in)
	noErr(t, err)
	if aws.ToString(a.Instances[0].InstanceId) != aws.ToString(b.Instances[0].InstanceId) {
		t.Fatal("retry with the same token launched another instance")
	}
	in.InstanceType = "m5.xlarge"
	_, err = c.RunInstances(ctx, in)
	wantCode(t, err, "IdempotentParameterMismatch")
	if n := len(srv.Sim().Snapshot().Instances); n != 6 {
		t.Fatalf("%d instances, want 6", n)
	}
}

// TestPendingInstances: an instance launched pending is described pending (state code 0) with
// its address, DNS name and primary ENI, matches the instance-state-name and tag filters, has
// no IMDS and takes addresses on its primary ENI; StartInstances makes it running with IMDS.
// A terminated instance cannot be started.
func TestPendingInstances(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.128.0/19")
	infos, err := srv.Sim().RunInstances(ctx, InstanceSpec{InstanceType: "m5.large", SubnetID: subnet, Tags: map[string]string{"cluster": "a"}, Pending: true}, 1)
	noErr(t, err)
	id := infos[0].ID
	if infos[0].State != "pending" || infos[0].PrivateDNSName == "" || infos[0].PrimaryENI == "" {
		t.Fatalf("pending launch: %+v", infos[0])
	}
	if _, err := srv.IMDSEndpoint(id); err == nil {
		t.Fatal("a pending instance has IMDS")
	}
	out, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{
		{Name: aws.String("instance-state-name"), Values: []string{"pending"}},
		{Name: aws.String("tag:cluster"), Values: []string{"a"}},
	}})
	noErr(t, err)
	if len(out.Reservations) != 1 || len(out.Reservations[0].Instances) != 1 {
		t.Fatalf("filtered describe: %+v", out.Reservations)
	}
	in := out.Reservations[0].Instances[0]
	if aws.ToString(in.InstanceId) != id || in.State.Name != types.InstanceStateNamePending || aws.ToInt32(in.State.Code) != 0 || len(in.NetworkInterfaces) != 1 {
		t.Fatalf("described: %+v", in)
	}
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(infos[0].PrimaryENI), SecondaryPrivateIpAddressCount: aws.Int32(2)})
	noErr(t, err)
	if e, _ := srv.Sim().Snapshot().ENI(infos[0].PrimaryENI); len(e.SecondaryIPs) != 2 {
		t.Fatalf("primary ENI of the pending instance holds %v", e.SecondaryIPs)
	}
	noErr(t, srv.Sim().StartInstances(ctx, id))
	ep, err := srv.IMDSEndpoint(id)
	noErr(t, err)
	iid, err := imds.New(imds.Options{Endpoint: ep}).GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	noErr(t, err)
	if iid.InstanceID != id {
		t.Fatalf("IMDS says %s", iid.InstanceID)
	}
	out, err = c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{{Name: aws.String("instance-state-name"), Values: []string{"pending"}}}})
	noErr(t, err)
	if len(out.Reservations) != 0 {
		t.Fatalf("still pending after start: %+v", out.Reservations)
	}
	noErr(t, srv.Sim().TerminateInstances(ctx, id))
	if err := srv.Sim().StartInstances(ctx, id); err == nil {
		t.Fatal("a terminated instance was started")
	}
}
