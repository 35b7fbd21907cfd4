package ec2sim

import (
	"slices"
	"sort"
	"strconv"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

func flt(name string, values ...string) types.Filter {
	return types.Filter{Name: aws.String(name), Values: values}
}

func eniIDs(list []types.NetworkInterface) []string {
	var out []string
	for _, e := range list {
		out = append(out, aws.ToString(e.NetworkInterfaceId))
	}
	sort.Strings(out)
	return out
}

// TestDescribeNetworkInterfacesFilters checks each filter against the state it should select.
func TestDescribeNetworkInterfacesFilters(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.0.0/19")
	inst := instanceIn(t, srv, subnet)
	mk := func(desc string, tags map[string]string) string {
		var tl []types.Tag
		for k, v := range tags {
			tl = append(tl, types.Tag{Key: aws.String(k), Value: aws.String(v)})
		}
		in := &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), Description: aws.String(desc)}
		if len(tl) > 0 {
			in.TagSpecifications = []types.TagSpecification{{ResourceType: types.ResourceTypeNetworkInterface, Tags: tl}}
		}
		out, err := c.CreateNetworkInterface(ctx, in)
		noErr(t, err)
		return aws.ToString(out.NetworkInterface.NetworkInterfaceId)
	}
	a := mk("ipledger a", map[string]string{"ipledger.io/cluster": "demo", "ipledger.io/node": "n1"})
	b := mk("ipledger b", map[string]string{"ipledger.io/cluster": "demo"})
	x := mk("someone else", map[string]string{"team": "x"})
	att, err := c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(a), InstanceId: aws.String(inst.ID), DeviceIndex: aws.Int32(1)})
	noErr(t, err)
	as, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(b), SecondaryPrivateIpAddressCount: aws.Int32(1)})
	noErr(t, err)
	bSecondary := aws.ToString(as.AssignedPrivateIpAddresses[0].PrivateIpAddress)
	st := srv.Sim().Snapshot()
	sn, _ := st.Subnet(subnet)
	xi, _ := st.ENI(x)
	otherSubnet := subnetByCIDR(t, srv, "192.168.32.0/19")
	var otherENIs []string
	for _, e := range st.ENIs {
		if e.SubnetID == otherSubnet {
			otherENIs = append(otherENIs, e.ID)
		}
	}
	sort.Strings(otherENIs)
	sorted := func(ids ...string) []string { sort.Strings(ids); return ids }

	tests := []struct {
		name    string
		filters []types.Filter
		want    []string
	}{
		{"instance", []types.Filter{flt("attachment.instance-id", inst.ID)}, sorted(inst.PrimaryENI, a)},
		{"attachment id", []types.Filter{flt("attachment.attachment-id", aws.ToString(att.AttachmentId))}, []string{a}},
		{"device index", []types.Filter{flt("attachment.instance-id", inst.ID), flt("attachment.device-index", "1")}, []string{a}},
		{"secondary address", []types.Filter{flt("addresses.private-ip-address", bSecondary)}, []string{b}},
		{"primary address", []types.Filter{flt("addresses.private-ip-address", xi.PrimaryIP)}, []string{x}},
		{"available in subnet", []types.Filter{flt("status", "available"), flt("subnet-id", subnet)}, sorted(b, x)},
		{"in use in subnet", []types.Filter{flt("status", "in-use"), flt("subnet-id", subnet)}, sorted(inst.PrimaryENI, a)},
		{"subnet", []types.Filter{flt("subnet-id", otherSubnet)}, otherENIs},
		{"vpc and description", []types.Filter{flt("vpc-id", st.VPC.ID), flt("description", "ipledger *")}, sorted(a, b)},
		{"description glob ?", []types.Filter{flt("description", "ipledger ?")}, sorted(a, b)},
		{"tag", []types.Filter{flt("tag:ipledger.io/cluster", "demo")}, sorted(a, b)},
		{"tag and tag", []types.Filter{flt("tag:ipledger.io/cluster", "demo"), flt("tag:ipledger.io/node", "n1")}, []string{a}},
		{"tag values OR", []types.Filter{flt("tag:ipledger.io/node", "n1", "n2"), flt("subnet-id", subnet)}, []string{a}},
		{"tag-key", []types.Filter{flt("tag-key", "team")}, []string{x}},
		{"tag glob", []types.Filter{flt("tag:team", "*")}, []string{x}},
		{"no match", []types.Filter{flt("tag:ipledger.io/cluster", "other")}, nil},
		{"availability zone", []types.Filter{flt("availability-zone", sn.AvailabilityZone), flt("status", "available")}, sorted(b, x)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: tc.filters})
			noErr(t, err)
			if got := eniIDs(out.NetworkInterfaces); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	_, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{flt("no-such-filter", "x")}})
	wantCode(t, err, "InvalidParameterValue")
	_, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{a, "eni-0000000000000000f"}})
	wantCode(t, err, "InvalidNetworkInterfaceID.NotFound")
	out, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{x, a, a}})
	noErr(t, err)
	if got := eniIDs(out.NetworkInterfaces); !slices.Equal(got, sorted(a, x)) {
		t.Fatalf("by ids: %v", got)
	}
	// IDs with a filter: both apply.
	out, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{x, a}, Filters: []types.Filter{flt("status", "in-use")}})
	noErr(t, err)
	if got := eniIDs(out.NetworkInterfaces); !slices.Equal(got, []string{a}) {
		t.Fatalf("ids and filter: %v", got)
	}
}

// TestDescribeNetworkInterfacesPagination pages through every ENI in id order, MaxResults
// 5..1000, and rejects MaxResults with ids.
func TestDescribeNetworkInterfacesPagination(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.160.0/19")
	for i := range 23 {
		_, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet), Description: aws.String("n" + strconv.Itoa(i))})
		noErr(t, err)
	}
	var all []string
	for _, e := range srv.Sim().Snapshot().ENIs {
		all = append(all, e.ID)
	}
	if len(all) != 28 {
		t.Fatalf("%d ENIs, want 23 + 5 primaries", len(all))
	}

	var pages int
	var got []string
	p := ec2.NewDescribeNetworkInterfacesPaginator(c, &ec2.DescribeNetworkInterfacesInput{MaxResults: aws.Int32(5)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		noErr(t, err)
		if len(out.NetworkInterfaces) > 5 {
			t.Fatalf("page of %d", len(out.NetworkInterfaces))
		}
		for _, e := range out.NetworkInterfaces {
			got = append(got, aws.ToString(e.NetworkInterfaceId))
		}
		pages++
	}
	if !slices.Equal(got, all) || pages != 6 {
		t.Fatalf("%d pages, ids %v, want %v in order", pages, got, all)
	}

	// A filtered paginated walk.
	got = nil
	p = ec2.NewDescribeNetworkInterfacesPaginator(c, &ec2.DescribeNetworkInterfacesInput{
		MaxResults: aws.Int32(5), Filters: []types.Filter{flt("subnet-id", subnet)},
	})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		noErr(t, err)
		got = append(got, eniIDs(out.NetworkInterfaces)...)
	}
	if len(got) != 23 || !slices.IsSorted(got) {
		t.Fatalf("filtered pages: %d ids", len(got))
	}

	// Exactly one full page: no token.
	out, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{MaxResults: aws.Int32(28)})
	noErr(t, err)
	if len(out.NetworkInterfaces) != 28 || out.NextToken != nil {
		t.Fatalf("one full page: %d, token %v", len(out.NetworkInterfaces), out.NextToken)
	}
	for _, bad := range []int32{4, 1001} {
		_, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{MaxResults: aws.Int32(bad)})
		wantCode(t, err, "InvalidParameterValue")
	}
	_, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{MaxResults: aws.Int32(5), NetworkInterfaceIds: []string{all[0]}})
	wantCode(t, err, "InvalidParameterCombination")
	_, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NextToken: aws.String("garbage")})
	wantCode(t, err, "InvalidParameterValue")
}

func TestDescribeSubnets(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	st := srv.Sim().Snapshot()
	out, err := c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{})
	noErr(t, err)
	if len(out.Subnets) != 6 {
		t.Fatalf("%d subnets", len(out.Subnets))
	}
	for _, s := range out.Subnets {
		info, ok := st.Subnet(aws.ToString(s.SubnetId))
		if !ok || aws.ToString(s.CidrBlock) != info.CIDR || aws.ToString(s.VpcId) != st.VPC.ID ||
			aws.ToString(s.AvailabilityZone) != info.AvailabilityZone || aws.ToString(s.AvailabilityZoneId) != info.AvailabilityZoneID ||
			int(aws.ToInt32(s.AvailableIpAddressCount)) != info.Available || s.State != types.SubnetStateAvailable {
			t.Fatalf("subnet %+v vs %+v", s, info)
		}
	}
	tests := []struct {
		name    string
		filters []types.Filter
		want    int
	}{
		{"vpc", []types.Filter{flt("vpc-id", st.VPC.ID)}, 6},
		{"az", []types.Filter{flt("availability-zone", "eu-west-1a")}, 2},
		{"az id", []types.Filter{flt("availability-zone-id", "euw1-az2")}, 2},
		{"az and tag", []types.Filter{flt("availability-zone", "eu-west-1a", "eu-west-1b"), flt("tag:kubernetes.io/role/internal-elb", "1")}, 2},
		{"subnet id", []types.Filter{flt("subnet-id", st.Subnets[3].ID)}, 1},
		{"cidr", []types.Filter{flt("cidr-block", "192.168.64.0/19")}, 1},
		{"tag-key", []types.Filter{flt("tag-key", "kubernetes.io/role/elb")}, 3},
		{"other vpc", []types.Filter{flt("vpc-id", "vpc-0000000000000000f")}, 0},
	}
	for _, tc := range tests {
		out, err := c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: tc.filters})
		noErr(t, err)
		if len(out.Subnets) != tc.want {
			t.Errorf("%s: %d subnets, want %d", tc.name, len(out.Subnets), tc.want)
		}
	}
	_, err = c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{"subnet-0000000000000000f"}})
	wantCode(t, err, "InvalidSubnetID.NotFound")
	_, err = c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []types.Filter{flt("bogus", "1")}})
	wantCode(t, err, "InvalidParameterValue")
	out, err = c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{MaxResults: aws.Int32(5)})
	noErr(t, err)
	if len(out.Subnets) != 5 || out.NextToken == nil {
		t.Fatalf("page of 5: %d, token %v", len(out.Subnets), out.NextToken)
	}
	out, err = c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{MaxResults: aws.Int32(5), NextToken: out.NextToken})
	noErr(t, err)
	if len(out.Subnets) != 1 || out.NextToken != nil {
		t.Fatalf("last page: %d, token %v", len(out.Subnets), out.NextToken)
	}
}

func TestDescribeInstanceTypes(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	out, err := c.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{
		InstanceTypes: []types.InstanceType{"m5.large", "t2.medium", "m5.24xlarge", "x8i.metal-48xl"},
	})
	noErr(t, err)
	got := map[types.InstanceType]types.InstanceTypeInfo{}
	for _, it := range out.InstanceTypes {
		got[it.InstanceType] = it
	}
	tests := []struct {
		name      types.InstanceType
		enis, ips int32
		hv        types.InstanceTypeHypervisor
		metal     bool
	}{
		{"m5.large", 3, 10, types.InstanceTypeHypervisorNitro, false},
		{"t2.medium", 3, 6, types.InstanceTypeHypervisorXen, false},
		{"m5.24xlarge", 15, 50, types.InstanceTypeHypervisorNitro, false},
		{"x8i.metal-48xl", 24, 64, "", true},
	}
	for _, tc := range tests {
		it, ok := got[tc.name]
		if !ok {
			t.Fatalf("%s missing", tc.name)
		}
		ni := it.NetworkInfo
		if aws.ToInt32(ni.MaximumNetworkInterfaces) != tc.enis || aws.ToInt32(ni.Ipv4AddressesPerInterface) != tc.ips ||
			it.Hypervisor != tc.hv || aws.ToBool(it.BareMetal) != tc.metal || aws.ToInt32(ni.MaximumNetworkCards) < 1 {
			t.Errorf("%s: enis %d ips %d hv %q metal %v cards %d", tc.name, aws.ToInt32(ni.MaximumNetworkInterfaces),
				aws.ToInt32(ni.Ipv4AddressesPerInterface), it.Hypervisor, aws.ToBool(it.BareMetal), aws.ToInt32(ni.MaximumNetworkCards))
		}
	}
	_, err = c.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{InstanceTypes: []types.InstanceType{"m5.large", "m9.huge"}})
	wantCode(t, err, "InvalidInstanceType")

	// Paginate over every type.
	n := 0
	p := ec2.NewDescribeInstanceTypesPaginator(c, &ec2.DescribeInstanceTypesInput{MaxResults: aws.Int32(100)})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		noErr(t, err)
		n += len(out.InstanceTypes)
	}
	if n != 1391 {
		t.Fatalf("paginated %d types, want 1391", n)
	}
	out, err = c.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{Filters: []types.Filter{flt("instance-type", "m5.*"), flt("hypervisor", "nitro")}})
	noErr(t, err)
	for _, it := range out.InstanceTypes {
		if len(it.InstanceType) < 3 || it.InstanceType[:3] != "m5." {
			t.Fatalf("filter returned %s", it.InstanceType)
		}
	}
	if len(out.InstanceTypes) != 8 { // m5.large .. m5.24xlarge; m5.metal reports no hypervisor
		t.Fatalf("m5.* filter returned %d types", len(out.InstanceTypes))
	}
}

func TestTags(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	st := srv.Sim().Snapshot()
	inst := st.Instances[0]
	subnet := st.Subnets[0].ID
	_, err := c.CreateTags(ctx, &ec2.CreateTagsInput{
		Resources: []string{inst.PrimaryENI, inst.ID, subnet},
		Tags:      []types.Tag{{Key: aws.String("ipledger.io/cluster"), Value: aws.String("demo")}, {Key: aws.String("env"), Value: aws.String("test")}},
	})
	noErr(t, err)
	out, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{flt("tag:ipledger.io/cluster", "demo")}})
	noErr(t, err)
	if got := eniIDs(out.NetworkInterfaces); !slices.Equal(got, []string{inst.PrimaryENI}) {
		t.Fatalf("tagged ENIs %v", got)
	}
	di, err := c.DescribeInstances(ctx, &ec2.DescribeInstancesInput{Filters: []types.Filter{flt("tag:env", "test")}})
	noErr(t, err)
	if len(di.Reservations) != 1 || aws.ToString(di.Reservations[0].Instances[0].InstanceId) != inst.ID {
		t.Fatalf("tagged instances %+v", di.Reservations)
	}
	ds, err := c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{Filters: []types.Filter{flt("tag:env", "test")}})
	noErr(t, err)
	if len(ds.Subnets) != 1 {
		t.Fatalf("tagged subnets %d", len(ds.Subnets))
	}
	// Overwrite, then delete with a wrong value (kept), the right value (gone), and by key.
	_, err = c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{inst.PrimaryENI}, Tags: []types.Tag{{Key: aws.String("env"), Value: aws.String("prod")}}})
	noErr(t, err)
	_, err = c.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{inst.PrimaryENI}, Tags: []types.Tag{{Key: aws.String("env"), Value: aws.String("test")}}})
	noErr(t, err)
	e, _ := srv.Sim().Snapshot().ENI(inst.PrimaryENI)
	if e.Tags["env"] != "prod" {
		t.Fatalf("tags after delete with a wrong value: %v", e.Tags)
	}
	_, err = c.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{inst.PrimaryENI}, Tags: []types.Tag{{Key: aws.String("env"), Value: aws.String("prod")}}})
	noErr(t, err)
	_, err = c.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{inst.PrimaryENI}, Tags: []types.Tag{{Key: aws.String("ipledger.io/cluster")}}})
	noErr(t, err)
	e, _ = srv.Sim().Snapshot().ENI(inst.PrimaryENI)
	if len(e.Tags) != 0 {
		t.Fatalf("tags left: %v", e.Tags)
	}
	out, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{flt("tag-key", "ipledger.io/cluster")}})
	noErr(t, err)
	if len(out.NetworkInterfaces) != 0 {
		t.Fatalf("tag index still finds %v", eniIDs(out.NetworkInterfaces))
	}
	// Delete every tag of the instance.
	_, err = c.DeleteTags(ctx, &ec2.DeleteTagsInput{Resources: []string{inst.ID}})
	noErr(t, err)
	in, _ := srv.Sim().Snapshot().Instance(inst.ID)
	if len(in.Tags) != 0 {
		t.Fatalf("instance tags left: %v", in.Tags)
	}

	_, err = c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{"eni-0000000000000000f"}, Tags: []types.Tag{{Key: aws.String("a"), Value: aws.String("b")}}})
	wantCode(t, err, "InvalidNetworkInterfaceID.NotFound")
	_, err = c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{"i-0000000000000000f"}, Tags: []types.Tag{{Key: aws.String("a"), Value: aws.String("b")}}})
	wantCode(t, err, "InvalidInstanceID.NotFound")
	_, err = c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{"subnet-0000000000000000f"}, Tags: []types.Tag{{Key: aws.String("a"), Value: aws.String("b")}}})
	wantCode(t, err, "InvalidSubnetID.NotFound")
	_, err = c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{inst.ID}, Tags: []types.Tag{{Key: aws.String("aws:reserved"), Value: aws.String("b")}}})
	wantCode(t, err, "InvalidParameterValue")
	var many []types.Tag
	for i := range 51 {
		many = append(many, types.Tag{Key: aws.String("k" + strconv.Itoa(i)), Value: aws.String("v")})
	}
	_, err = c.CreateTags(ctx, &ec2.CreateTagsInput{Resources: []string{inst.ID}, Tags: many})
	wantCode(t, err, "InvalidParameterValue")
}
