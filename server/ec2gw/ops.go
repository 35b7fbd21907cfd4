package ec2gw

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"sort"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// Page sizes: EC2's maximum for paginated describes.
const (
	describePageSize              = 1000
	describeInstanceTypesPageSize = 100 // DescribeInstanceTypes allows at most 100 per page and per request
)

func checkPriority(action string, p Priority) error {
	if !p.Valid() {
		return invalidInput(action, "priority %d is not a valid priority", int(p))
	}
	return nil
}

func checkIDs(action, what string, ids []string) error {
	for _, id := range ids {
		if id == "" {
			return invalidInput(action, "empty %s", what)
		}
	}
	return nil
}

// DescribeInstances describes the given instances, or every instance page by page when ids is
// empty (each page passes the limiter).
func (g *Gateway) DescribeInstances(ctx context.Context, p Priority, ids []string) ([]Instance, error) {
	const action = ActionDescribeInstances
	if err := checkPriority(action, p); err != nil {
		return nil, err
	}
	if err := checkIDs(action, "instance id", ids); err != nil {
		return nil, err
	}
	// With ids or MaxResults the call counts as filtered (EC2's describe bucket); the gateway
	// never makes the unfiltered, unpaginated form.
	in := &ec2.DescribeInstancesInput{}
	if len(ids) > 0 {
		in.InstanceIds = ids
	} else {
		in.MaxResults = aws.Int32(describePageSize)
	}
	return g.describeInstances(ctx, p, in)
}

// DescribeInstancesFiltered describes the instances the filter selects, page by page (each
// page passes the limiter).
func (g *Gateway) DescribeInstancesFiltered(ctx context.Context, p Priority, f InstanceFilter) ([]Instance, error) {
	const action = ActionDescribeInstances
	if err := checkPriority(action, p); err != nil {
		return nil, err
	}
	fs := f.filters()
	if len(fs) == 0 {
		return nil, invalidInput(action, "an instance filter selects nothing")
	}
	return g.describeInstances(ctx, p, &ec2.DescribeInstancesInput{Filters: fs, MaxResults: aws.Int32(describePageSize)})
}

func (f InstanceFilter) filters() []types.Filter {
	var fs []types.Filter
	if len(f.States) > 0 {
		fs = append(fs, types.Filter{Name: aws.String("instance-state-name"), Values: f.States})
	}
	for _, k := range slices.Sorted(maps.Keys(f.Tags)) {
		fs = append(fs, types.Filter{Name: aws.String("tag:" + k), Values: []string{f.Tags[k]}})
	}
	if len(f.TagKeys) > 0 {
		fs = append(fs, types.Filter{Name: aws.String("tag-key"), Values: f.TagKeys})
	}
	return fs
}

func (g *Gateway) describeInstances(ctx context.Context, p Priority, in *ec2.DescribeInstancesInput) ([]Instance, error) {
	const action = ActionDescribeInstances
	var out []Instance
	for {
		var resp *ec2.DescribeInstancesOutput
		err := g.call(ctx, callSpec{action: action, prio: p}, nil, func(ctx context.Context) error {
			var err error
			resp, err = g.client.DescribeInstances(ctx, in)
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, r := range resp.Reservations {
			for _, i := range r.Instances {
				in := instanceFrom(i)
				in.OwnerID = aws.ToString(r.OwnerId)
				out = append(out, in)
			}
		}
		if aws.ToString(resp.NextToken) == "" {
			return out, nil
		}
		in.NextToken = resp.NextToken
	}
}

// DescribeInstanceTypes describes the named instance types (all of them when names is empty),
// at most 100 per call.
func (g *Gateway) DescribeInstanceTypes(ctx context.Context, p Priority, names []string) ([]InstanceType, error) {
	const action = ActionDescribeInstanceTypes
	if err := checkPriority(action, p); err != nil {
		return nil, err
	}
	if err := checkIDs(action, "instance type name", names); err != nil {
		return nil, err
	}
	var out []InstanceType
	describe := func(in *ec2.DescribeInstanceTypesInput) error {
		for {
			var resp *ec2.DescribeInstanceTypesOutput
			err := g.call(ctx, callSpec{action: action, prio: p}, nil, func(ctx context.Context) error {
				var err error
				resp, err = g.client.DescribeInstanceTypes(ctx, in)
				return err
			})
			if err != nil {
				return err
			}
			for _, t := range resp.InstanceTypes {
				out = append(out, instanceTypeFrom(t))
			}
			if aws.ToString(resp.NextToken) == "" {
				return nil
			}
			in.NextToken = resp.NextToken
		}
	}
	if len(names) == 0 {
		if err := describe(&ec2.DescribeInstanceTypesInput{MaxResults: aws.Int32(describeInstanceTypesPageSize)}); err != nil {
			return nil, err
		}
		return out, nil
	}
	for chunk := range slices.Chunk(names, describeInstanceTypesPageSize) {
		in := &ec2.DescribeInstanceTypesInput{}
		for _, n := range chunk {
			in.InstanceTypes = append(in.InstanceTypes, types.InstanceType(n))
		}
		if err := describe(in); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// DescribeSubnets describes the given subnets and/or the subnets of vpcID (both empty: every
// subnet).
func (g *Gateway) DescribeSubnets(ctx context.Context, p Priority, ids []string, vpcID string) ([]Subnet, error) {
	const action = ActionDescribeSubnets
	if err := checkPriority(action, p); err != nil {
		return nil, err
	}
	if err := checkIDs(action, "subnet id", ids); err != nil {
		return nil, err
	}
	in := &ec2.DescribeSubnetsInput{SubnetIds: ids}
	if vpcID != "" {
		in.Filters = []types.Filter{{Name: aws.String("vpc-id"), Values: []string{vpcID}}}
	}
	var out []Subnet
	for {
		var resp *ec2.DescribeSubnetsOutput
		err := g.call(ctx, callSpec{action: action, prio: p}, nil, func(ctx context.Context) error {
			var err error
			resp, err = g.client.DescribeSubnets(ctx, in)
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, s := range resp.Subnets {
			out = append(out, subnetFrom(s))
		}
		if aws.ToString(resp.NextToken) == "" {
			return out, nil
		}
		in.NextToken = resp.NextToken
	}
}

// DescribeNetworkInterfaces describes ENIs. With f.IDs it asks for exactly those (ErrNotFound if
// one is missing); otherwise it pages through the matches (MaxResults 1000), each page passing
// the limiter.
func (g *Gateway) DescribeNetworkInterfaces(ctx context.Context, p Priority, f ENIFilter) ([]ENI, error) {
	const action = ActionDescribeNetworkInterfaces
	if err := checkPriority(action, p); err != nil {
		return nil, err
	}
	if err := checkIDs(action, "network interface id", f.IDs); err != nil {
		return nil, err
	}
	// IDs, filters or MaxResults make the call filtered (EC2's describe bucket).
	in := &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: f.IDs, Filters: f.filters()}
	if len(f.IDs) == 0 {
		in.MaxResults = aws.Int32(describePageSize)
	}
	spec := callSpec{action: action, prio: p, subnet: f.SubnetID}
	if len(f.IDs) == 1 {
		spec.eni = f.IDs[0]
	}
	var out []ENI
	for {
		var resp *ec2.DescribeNetworkInterfacesOutput
		err := g.call(ctx, spec, nil, func(ctx context.Context) error {
			var err error
			resp, err = g.client.DescribeNetworkInterfaces(ctx, in)
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, n := range resp.NetworkInterfaces {
			out = append(out, eniFrom(n))
		}
		if aws.ToString(resp.NextToken) == "" {
			return out, nil
		}
		in.NextToken = resp.NextToken
	}
}

func (f ENIFilter) filters() []types.Filter {
	var fs []types.Filter
	add := func(name string, values ...string) {
		fs = append(fs, types.Filter{Name: aws.String(name), Values: values})
	}
	if f.SubnetID != "" {
		add("subnet-id", f.SubnetID)
	}
	if f.VPCID != "" {
		add("vpc-id", f.VPCID)
	}
	if f.InstanceID != "" {
		add("attachment.instance-id", f.InstanceID)
	}
	if f.Status != "" {
		add("status", f.Status)
	}
	keys := make([]string, 0, len(f.Tags))
	for k := range f.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		add("tag:"+k, f.Tags[k])
	}
	if len(f.TagKeys) > 0 {
		add("tag-key", f.TagKeys...)
	}
	return fs
}

// CreateENI creates an ENI in a subnet, tagged through its TagSpecification and made idempotent
// by in.ClientToken.
func (g *Gateway) CreateENI(ctx context.Context, p Priority, in CreateENIInput) (ENI, error) {
	const action = ActionCreateNetworkInterface
	if err := checkPriority(action, p); err != nil {
		return ENI{}, err
	}
	switch {
	case in.SubnetID == "":
		return ENI{}, invalidInput(action, "subnet id is required")
	case in.ClientToken == "":
		return ENI{}, invalidInput(action, "client token is required (persist it before the call)")
	case len(in.ClientToken) > 64:
		return ENI{}, invalidInput(action, "client token longer than 64 characters")
	case len(in.SecondaryIPs) > 0 && len(in.Prefixes) > 0:
		return ENI{}, invalidInput(action, "secondary addresses and prefixes cannot be combined")
	}
	if in.PrimaryIP.IsValid() && !in.PrimaryIP.Is4() {
		return ENI{}, invalidInput(action, "primary address %s is not IPv4", in.PrimaryIP)
	}
	ips, err := addrStrings(action, in.SecondaryIPs)
	if err != nil {
		return ENI{}, err
	}
	prefixes, err := prefixStrings(action, in.Prefixes)
	if err != nil {
		return ENI{}, err
	}
	req := &ec2.CreateNetworkInterfaceInput{
		SubnetId:    aws.String(in.SubnetID),
		Groups:      in.SecurityGroupIDs,
		ClientToken: aws.String(in.ClientToken),
	}
	if in.Description != "" {
		req.Description = aws.String(in.Description)
	}
	if in.PrimaryIP.IsValid() {
		req.PrivateIpAddress = aws.String(in.PrimaryIP.String())
	}
	if len(ips) > 0 {
		if in.PrimaryIP.IsValid() {
			req.PrivateIpAddresses = append(req.PrivateIpAddresses, types.PrivateIpAddressSpecification{
				PrivateIpAddress: aws.String(in.PrimaryIP.String()), Primary: aws.Bool(true)})
			req.PrivateIpAddress = nil
		}
		for _, ip := range ips {
			req.PrivateIpAddresses = append(req.PrivateIpAddresses, types.PrivateIpAddressSpecification{
				PrivateIpAddress: aws.String(ip), Primary: aws.Bool(false)})
		}
	}
	for _, pfx := range prefixes {
		req.Ipv4Prefixes = append(req.Ipv4Prefixes, types.Ipv4PrefixSpecificationRequest{Ipv4Prefix: aws.String(pfx)})
	}
	if len(in.Tags) > 0 {
		req.TagSpecifications = []types.TagSpecification{{
			ResourceType: types.ResourceTypeNetworkInterface, Tags: tagsTo(in.Tags)}}
	}
	var resp *ec2.CreateNetworkInterfaceOutput
	err = g.call(ctx, callSpec{action: action, prio: p, subnet: in.SubnetID}, nil, func(ctx context.Context) error {
		var err error
		resp, err = g.client.CreateNetworkInterface(ctx, req)
		return err
	})
	if err != nil {
		return ENI{}, err
	}
	if resp.NetworkInterface == nil {
		return ENI{}, &APIError{Action: action, Message: "response without networkInterface", Kind: ErrUnavailable}
	}
	return eniFrom(*resp.NetworkInterface), nil
}

// AttachENI attaches an ENI to an instance at a device index on a network card and returns the
// attachment id.
func (g *Gateway) AttachENI(ctx context.Context, p Priority, eniID, instanceID string, deviceIndex, networkCard int) (string, error) {
	const action = ActionAttachNetworkInterface
	if err := checkPriority(action, p); err != nil {
		return "", err
	}
	switch {
	case eniID == "" || instanceID == "":
		return "", invalidInput(action, "eni id and instance id are required")
	case deviceIndex < 0 || networkCard < 0:
		return "", invalidInput(action, "device index %d and network card %d must be >= 0", deviceIndex, networkCard)
	}
	req := &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: aws.String(eniID),
		InstanceId:         aws.String(instanceID),
		DeviceIndex:        aws.Int32(int32(deviceIndex)),
		NetworkCardIndex:   aws.Int32(int32(networkCard)),
	}
	var resp *ec2.AttachNetworkInterfaceOutput
	err := g.call(ctx, callSpec{action: action, prio: p, eni: eniID}, nil, func(ctx context.Context) error {
		var err error
		resp, err = g.client.AttachNetworkInterface(ctx, req)
		return err
	})
	if err != nil {
		return "", err
	}
	return aws.ToString(resp.AttachmentId), nil
}

// SetDeleteOnTermination sets the attachment's DeleteOnTermination flag
// (ModifyNetworkInterfaceAttribute).
func (g *Gateway) SetDeleteOnTermination(ctx context.Context, p Priority, eniID, attachmentID string, v bool) error {
	const action = ActionModifyNetworkInterfaceAttribute
	if err := checkPriority(action, p); err != nil {
		return err
	}
	if eniID == "" || attachmentID == "" {
		return invalidInput(action, "eni id and attachment id are required")
	}
	req := &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: aws.String(eniID),
		Attachment: &types.NetworkInterfaceAttachmentChanges{
			AttachmentId: aws.String(attachmentID), DeleteOnTermination: aws.Bool(v)},
	}
	return g.call(ctx, callSpec{action: action, prio: p, eni: eniID}, nil, func(ctx context.Context) error {
		_, err := g.client.ModifyNetworkInterfaceAttribute(ctx, req)
		return err
	})
}

// DetachENI detaches an attachment (force: even if the instance does not respond).
func (g *Gateway) DetachENI(ctx context.Context, p Priority, attachmentID string, force bool) error {
	const action = ActionDetachNetworkInterface
	if err := checkPriority(action, p); err != nil {
		return err
	}
	if attachmentID == "" {
		return invalidInput(action, "attachment id is required")
	}
	req := &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(attachmentID)}
	if force {
		req.Force = aws.Bool(true)
	}
	return g.call(ctx, callSpec{action: action, prio: p}, nil, func(ctx context.Context) error {
		_, err := g.client.DetachNetworkInterface(ctx, req)
		return err
	})
}

// DeleteENI deletes a detached ENI (ErrENIInUse while it is attached).
func (g *Gateway) DeleteENI(ctx context.Context, p Priority, eniID string) error {
	const action = ActionDeleteNetworkInterface
	if err := checkPriority(action, p); err != nil {
		return err
	}
	if eniID == "" {
		return invalidInput(action, "eni id is required")
	}
	req := &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(eniID)}
	return g.call(ctx, callSpec{action: action, prio: p, eni: eniID}, nil, func(ctx context.Context) error {
		_, err := g.client.DeleteNetworkInterface(ctx, req)
		return err
	})
}

// AssignAddresses assigns explicit secondary addresses to an ENI. Requests for the same ENI
// that wait for a token together become one AssignPrivateIpAddresses at the best priority among
// them, and every caller gets that call's outcome (so one address another holds fails them all
// with ErrAddressInUse). AllowReassignment is never set.
func (g *Gateway) AssignAddresses(ctx context.Context, p Priority, eniID string, ips []netip.Addr) error {
	const action = ActionAssignPrivateIPAddresses
	if err := checkPriority(action, p); err != nil {
		return err
	}
	if eniID == "" {
		return invalidInput(action, "eni id is required")
	}
	if len(ips) == 0 {
		return invalidInput(action, "no addresses to assign")
	}
	items, err := addrStrings(action, ips)
	if err != nil {
		return err
	}
	return g.coal.assign(ctx, p, eniID, assignIPs, items)
}

// AssignPrefixes assigns explicit /28 prefixes to an ENI, coalesced per ENI like AssignAddresses.
func (g *Gateway) AssignPrefixes(ctx context.Context, p Priority, eniID string, prefixes []netip.Prefix) error {
	const action = ActionAssignPrivateIPAddresses
	if err := checkPriority(action, p); err != nil {
		return err
	}
	if eniID == "" {
		return invalidInput(action, "eni id is required")
	}
	if len(prefixes) == 0 {
		return invalidInput(action, "no prefixes to assign")
	}
	items, err := prefixStrings(action, prefixes)
	if err != nil {
		return err
	}
	return g.coal.assign(ctx, p, eniID, assignPrefixes, items)
}

// UnassignAddresses removes secondary addresses and/or prefixes from an ENI.
func (g *Gateway) UnassignAddresses(ctx context.Context, p Priority, eniID string, ips []netip.Addr, prefixes []netip.Prefix) error {
	const action = ActionUnassignPrivateIPAddresses
	if err := checkPriority(action, p); err != nil {
		return err
	}
	if eniID == "" {
		return invalidInput(action, "eni id is required")
	}
	if len(ips) == 0 && len(prefixes) == 0 {
		return invalidInput(action, "nothing to unassign")
	}
	ipStrs, err := addrStrings(action, ips)
	if err != nil {
		return err
	}
	pfxStrs, err := prefixStrings(action, prefixes)
	if err != nil {
		return err
	}
	req := &ec2.UnassignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(eniID), PrivateIpAddresses: ipStrs, Ipv4Prefixes: pfxStrs}
	return g.call(ctx, callSpec{action: action, prio: p, eni: eniID}, nil, func(ctx context.Context) error {
		_, err := g.client.UnassignPrivateIpAddresses(ctx, req)
		return err
	})
}

// CreateTags adds or overwrites tags on resources.
func (g *Gateway) CreateTags(ctx context.Context, p Priority, resourceIDs []string, tags map[string]string) error {
	const action = ActionCreateTags
	if err := checkPriority(action, p); err != nil {
		return err
	}
	if len(resourceIDs) == 0 || len(tags) == 0 {
		return invalidInput(action, "resource ids and tags are required")
	}
	if err := checkIDs(action, "resource id", resourceIDs); err != nil {
		return err
	}
	for k := range tags {
		if k == "" {
			return invalidInput(action, "empty tag key")
		}
	}
	req := &ec2.CreateTagsInput{Resources: resourceIDs, Tags: tagsTo(tags)}
	spec := callSpec{action: action, prio: p}
	if len(resourceIDs) == 1 {
		spec.eni = resourceIDs[0]
	}
	return g.call(ctx, spec, nil, func(ctx context.Context) error {
		_, err := g.client.CreateTags(ctx, req)
		return err
	})
}

func addrStrings(action string, ips []netip.Addr) ([]string, error) {
	if len(ips) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		if !ip.Is4() {
			return nil, invalidInput(action, "address %q is not an IPv4 address", ip)
		}
		out = append(out, ip.String())
	}
	return out, nil
}

func prefixStrings(action string, prefixes []netip.Prefix) ([]string, error) {
	if len(prefixes) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() || p.Bits() != 28 || p.Masked() != p {
			return nil, invalidInput(action, "prefix %q is not an aligned IPv4 /28", p)
		}
		out = append(out, p.String())
	}
	return out, nil
}

func tagsTo(tags map[string]string) []types.Tag {
	keys := make([]string, 0, len(tags))
	for k := range tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]types.Tag, 0, len(keys))
	for _, k := range keys {
		out = append(out, types.Tag{Key: aws.String(k), Value: aws.String(tags[k])})
	}
	return out
}

func tagsFrom(tags []types.Tag) map[string]string {
	if len(tags) == 0 {
		return nil
	}
	out := make(map[string]string, len(tags))
	for _, t := range tags {
		out[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return out
}

func parseAddr(s *string) netip.Addr {
	a, _ := netip.ParseAddr(aws.ToString(s)) // the zero Addr when EC2 sent none
	return a
}

func eniFrom(n types.NetworkInterface) ENI {
	e := ENI{
		ID:               aws.ToString(n.NetworkInterfaceId),
		SubnetID:         aws.ToString(n.SubnetId),
		VPCID:            aws.ToString(n.VpcId),
		AvailabilityZone: aws.ToString(n.AvailabilityZone),
		MAC:              aws.ToString(n.MacAddress),
		Description:      aws.ToString(n.Description),
		Status:           string(n.Status),
		PrimaryIP:        parseAddr(n.PrivateIpAddress),
		Tags:             tagsFrom(n.TagSet),
	}
	for _, a := range n.PrivateIpAddresses {
		ip := parseAddr(a.PrivateIpAddress)
		switch {
		case !ip.IsValid():
		case aws.ToBool(a.Primary):
			e.PrimaryIP = ip
		default:
			e.SecondaryIPs = append(e.SecondaryIPs, ip)
		}
	}
	for _, p := range n.Ipv4Prefixes {
		if pfx, err := netip.ParsePrefix(aws.ToString(p.Ipv4Prefix)); err == nil {
			e.Prefixes = append(e.Prefixes, pfx)
		}
	}
	for _, g := range n.Groups {
		if id := aws.ToString(g.GroupId); id != "" {
			e.SecurityGroupIDs = append(e.SecurityGroupIDs, id)
		}
	}
	if a := n.Attachment; a != nil {
		e.Attachment = &Attachment{
			ID:                  aws.ToString(a.AttachmentId),
			InstanceID:          aws.ToString(a.InstanceId),
			Status:              string(a.Status),
			DeviceIndex:         int(aws.ToInt32(a.DeviceIndex)),
			NetworkCardIndex:    int(aws.ToInt32(a.NetworkCardIndex)),
			DeleteOnTermination: aws.ToBool(a.DeleteOnTermination),
		}
	}
	return e
}

func instanceFrom(i types.Instance) Instance {
	out := Instance{
		ID:             aws.ToString(i.InstanceId),
		Type:           string(i.InstanceType),
		SubnetID:       aws.ToString(i.SubnetId),
		VPCID:          aws.ToString(i.VpcId),
		PrivateDNSName: aws.ToString(i.PrivateDnsName),
		PrivateIP:      parseAddr(i.PrivateIpAddress),
		Tags:           tagsFrom(i.Tags),
		LaunchTime:     aws.ToTime(i.LaunchTime),
	}
	if i.Placement != nil {
		out.AvailabilityZone = aws.ToString(i.Placement.AvailabilityZone)
	}
	if i.State != nil {
		out.State = string(i.State.Name)
	}
	for _, n := range i.NetworkInterfaces {
		e := ENI{
			ID:               aws.ToString(n.NetworkInterfaceId),
			SubnetID:         aws.ToString(n.SubnetId),
			VPCID:            aws.ToString(n.VpcId),
			AvailabilityZone: out.AvailabilityZone,
			MAC:              aws.ToString(n.MacAddress),
			Description:      aws.ToString(n.Description),
			Status:           string(n.Status),
			PrimaryIP:        parseAddr(n.PrivateIpAddress),
		}
		for _, a := range n.PrivateIpAddresses {
			ip := parseAddr(a.PrivateIpAddress)
			switch {
			case !ip.IsValid():
			case aws.ToBool(a.Primary):
				e.PrimaryIP = ip
			default:
				e.SecondaryIPs = append(e.SecondaryIPs, ip)
			}
		}
		for _, p := range n.Ipv4Prefixes {
			if pfx, err := netip.ParsePrefix(aws.ToString(p.Ipv4Prefix)); err == nil {
				e.Prefixes = append(e.Prefixes, pfx)
			}
		}
		if a := n.Attachment; a != nil {
			e.Attachment = &Attachment{
				ID:                  aws.ToString(a.AttachmentId),
				InstanceID:          out.ID,
				Status:              string(a.Status),
				DeviceIndex:         int(aws.ToInt32(a.DeviceIndex)),
				NetworkCardIndex:    int(aws.ToInt32(a.NetworkCardIndex)),
				DeleteOnTermination: aws.ToBool(a.DeleteOnTermination),
			}
		}
		out.ENIs = append(out.ENIs, e)
	}
	sort.SliceStable(out.ENIs, func(a, b int) bool {
		ea, eb := out.ENIs[a].Attachment, out.ENIs[b].Attachment
		if ea == nil || eb == nil {
			return ea != nil && eb == nil
		}
		if ea.NetworkCardIndex != eb.NetworkCardIndex {
			return ea.NetworkCardIndex < eb.NetworkCardIndex
		}
		return ea.DeviceIndex < eb.DeviceIndex
	})
	return out
}

func subnetFrom(s types.Subnet) Subnet {
	out := Subnet{
		ID:                 aws.ToString(s.SubnetId),
		VPCID:              aws.ToString(s.VpcId),
		AvailabilityZone:   aws.ToString(s.AvailabilityZone),
		AvailabilityZoneID: aws.ToString(s.AvailabilityZoneId),
		AvailableIPs:       int(aws.ToInt32(s.AvailableIpAddressCount)),
		Tags:               tagsFrom(s.Tags),
	}
	if p, err := netip.ParsePrefix(aws.ToString(s.CidrBlock)); err == nil {
		out.CIDR = p
	}
	return out
}

func instanceTypeFrom(t types.InstanceTypeInfo) InstanceType {
	out := InstanceType{
		Name:       string(t.InstanceType),
		Hypervisor: string(t.Hypervisor),
		BareMetal:  aws.ToBool(t.BareMetal),
	}
	if n := t.NetworkInfo; n != nil {
		out.MaxENIs = int(aws.ToInt32(n.MaximumNetworkInterfaces))
		out.IPv4PerENI = int(aws.ToInt32(n.Ipv4AddressesPerInterface))
		out.NetworkCards = int(aws.ToInt32(n.MaximumNetworkCards))
	}
	return out
}
