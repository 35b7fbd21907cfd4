package ec2gw

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/instancetypes"
)

// TestGatewayActions runs every gateway method against the simulator over HTTP and checks the
// result in the simulator's own state.
func TestGatewayActions(t *testing.T) {
	srv := startSim(t, 1, nil)
	g, reg := newSimGateway(t, srv, 1, nil)
	ctx := t.Context()
	st := srv.Sim().Snapshot()
	pick := newAddrPicker(t, st)

	// DescribeInstances: all (paginated), then by id.
	insts, err := g.DescribeInstances(ctx, PriorityNodeStart, nil)
	if err != nil {
		t.Fatalf("DescribeInstances(all): %v", err)
	}
	if len(insts) != 5 {
		t.Fatalf("DescribeInstances(all) = %d instances, want 5", len(insts))
	}
	for _, in := range insts {
		want, ok := st.Instance(in.ID)
		switch {
		case !ok:
			t.Fatalf("instance %s not in the simulator", in.ID)
		case in.Type != "m5.large" || in.State != "running" || in.SubnetID != want.SubnetID ||
			in.AvailabilityZone != want.AvailabilityZone || in.PrivateIP.String() != want.PrivateIP ||
			in.VPCID != st.VPC.ID || in.PrivateDNSName != want.PrivateDNSName:
			t.Fatalf("instance %+v, simulator has %+v", in, want)
		case len(in.ENIs) != 1 || in.ENIs[0].ID != want.PrimaryENI || in.ENIs[0].Attachment == nil ||
			in.ENIs[0].Attachment.DeviceIndex != 0 || in.ENIs[0].PrimaryIP != in.PrivateIP:
			t.Fatalf("instance %s ENIs %+v, want the primary ENI %s at device 0", in.ID, in.ENIs, want.PrimaryENI)
		}
	}
	inst := insts[0]
	two, err := g.DescribeInstances(ctx, PriorityReconcile, []string{insts[1].ID, insts[2].ID})
	if err != nil || len(two) != 2 || two[0].ID == two[1].ID {
		t.Fatalf("DescribeInstances(2 ids) = %+v, %v", two, err)
	}

	// DescribeInstanceTypes: named, then all (100 per page).
	types, err := g.DescribeInstanceTypes(ctx, PriorityNodeStart, []string{"m5.large", "t3.small"})
	if err != nil {
		t.Fatalf("DescribeInstanceTypes: %v", err)
	}
	byName := map[string]InstanceType{}
	for _, it := range types {
		byName[it.Name] = it
	}
	if it := byName["m5.large"]; it.MaxENIs != 3 || it.IPv4PerENI != 10 || it.Hypervisor != "nitro" || it.NetworkCards != 1 {
		t.Fatalf("m5.large = %+v, want 3 ENIs x 10, nitro, 1 card", it)
	}
	if it := byName["t3.small"]; it.MaxENIs != 3 || it.IPv4PerENI != 4 {
		t.Fatalf("t3.small = %+v, want 3 ENIs x 4", it)
	}
	pagesBefore := simCalls(srv, ActionDescribeInstanceTypes)
	all, err := g.DescribeInstanceTypes(ctx, PriorityReconcile, nil)
	if err != nil {
		t.Fatalf("DescribeInstanceTypes(all): %v", err)
	}
	want := len(instancetypes.All())
	if len(all) != want {
		t.Fatalf("DescribeInstanceTypes(all) = %d types, want %d", len(all), want)
	}
	if pages := simCalls(srv, ActionDescribeInstanceTypes) - pagesBefore; pages != (want+99)/100 {
		t.Fatalf("DescribeInstanceTypes(all) took %d calls, want %d pages of 100", pages, (want+99)/100)
	}

	// DescribeSubnets: all, by VPC, by id.
	subnets, err := g.DescribeSubnets(ctx, PriorityReconcile, nil, "")
	if err != nil || len(subnets) != 6 {
		t.Fatalf("DescribeSubnets(all) = %d, %v; want 6", len(subnets), err)
	}
	if byVPC, err := g.DescribeSubnets(ctx, PriorityReconcile, nil, st.VPC.ID); err != nil || len(byVPC) != 6 {
		t.Fatalf("DescribeSubnets(vpc) = %d, %v; want 6", len(byVPC), err)
	}
	if none, err := g.DescribeSubnets(ctx, PriorityReconcile, nil, "vpc-0ffffffffffffffff"); err != nil || len(none) != 0 {
		t.Fatalf("DescribeSubnets(other vpc) = %d, %v; want 0", len(none), err)
	}
	one, err := g.DescribeSubnets(ctx, PriorityNodeStart, []string{inst.SubnetID}, "")
	if err != nil || len(one) != 1 {
		t.Fatalf("DescribeSubnets(id) = %+v, %v", one, err)
	}
	snInfo, _ := st.Subnet(inst.SubnetID)
	if sn := one[0]; sn.CIDR.String() != snInfo.CIDR || sn.AvailableIPs != snInfo.Available || sn.VPCID != st.VPC.ID ||
		sn.AvailabilityZone != snInfo.AvailabilityZone || sn.AvailabilityZoneID != snInfo.AvailabilityZoneID ||
		sn.Tags["Name"] != snInfo.Tags["Name"] {
		t.Fatalf("subnet %+v, simulator has %+v", sn, snInfo)
	}

	// CreateENI with explicit addresses, tags and a client token; the same token again returns
	// the same ENI; the same token with other parameters is refused.
	ips := pick.addrs(inst.SubnetID, 5)
	in := CreateENIInput{
		SubnetID: inst.SubnetID, Description: "ipledger test", PrimaryIP: ips[0], SecondaryIPs: ips[1:3],
		Tags: map[string]string{"ipledger.io/cluster": "test", "ipledger.io/node": "node-a"}, ClientToken: "create-1",
	}
	eni, err := g.CreateENI(ctx, PriorityNodeStart, in)
	if err != nil {
		t.Fatalf("CreateENI: %v", err)
	}
	if eni.ID == "" || eni.Status != "available" || eni.PrimaryIP != ips[0] || !slices.Equal(sortedAddrs(eni.SecondaryIPs), ips[1:3]) ||
		eni.Tags["ipledger.io/cluster"] != "test" || eni.SubnetID != inst.SubnetID || eni.Description != "ipledger test" ||
		eni.MAC == "" || eni.Attachment != nil || eni.VPCID != st.VPC.ID {
		t.Fatalf("CreateENI = %+v", eni)
	}
	again, err := g.CreateENI(ctx, PriorityNodeStart, in)
	if err != nil || again.ID != eni.ID {
		t.Fatalf("CreateENI with the same token = %s, %v; want %s", again.ID, err, eni.ID)
	}
	if n := len(srv.Sim().Snapshot().ENIs); n != len(st.ENIs)+1 {
		t.Fatalf("simulator has %d ENIs after two creates with one token, want %d", n, len(st.ENIs)+1)
	}
	mismatch := in
	mismatch.Description = "other"
	_, err = g.CreateENI(ctx, PriorityNodeStart, mismatch)
	var ae *APIError
	if !errors.Is(err, ErrInvalidRequest) || !errors.As(err, &ae) || ae.Code != "IdempotentParameterMismatch" {
		t.Fatalf("CreateENI with a reused token and other parameters = %v, want IdempotentParameterMismatch", err)
	}

	// DescribeNetworkInterfaces by id and by filters.
	for _, f := range []ENIFilter{
		{IDs: []string{eni.ID}},
		{Tags: map[string]string{"ipledger.io/cluster": "test"}},
		{TagKeys: []string{"ipledger.io/node"}},
		{SubnetID: inst.SubnetID, Status: "available"},
		{VPCID: st.VPC.ID, Tags: map[string]string{"ipledger.io/node": "node-a"}},
	} {
		got, err := g.DescribeNetworkInterfaces(ctx, PriorityReconcile, f)
		if err != nil || len(got) != 1 || got[0].ID != eni.ID || got[0].PrimaryIP != ips[0] {
			t.Fatalf("DescribeNetworkInterfaces(%+v) = %+v, %v; want only %s", f, got, err, eni.ID)
		}
	}

	// AttachENI and SetDeleteOnTermination.
	attID, err := g.AttachENI(ctx, PriorityNodeStart, eni.ID, inst.ID, 1, 0)
	if err != nil || attID == "" {
		t.Fatalf("AttachENI = %q, %v", attID, err)
	}
	if err := g.SetDeleteOnTermination(ctx, PriorityNodeStart, eni.ID, attID, true); err != nil {
		t.Fatalf("SetDeleteOnTermination: %v", err)
	}
	if e, _ := srv.Sim().Snapshot().ENI(eni.ID); e.Attachment == nil || e.Attachment.ID != attID ||
		e.Attachment.InstanceID != inst.ID || !e.Attachment.DeleteOnTermination || e.Attachment.DeviceIndex != 1 {
		t.Fatalf("simulator ENI after attach = %+v", e)
	}
	byInst, err := g.DescribeNetworkInterfaces(ctx, PriorityReconcile, ENIFilter{InstanceID: inst.ID})
	if err != nil || len(byInst) != 2 {
		t.Fatalf("DescribeNetworkInterfaces(instance) = %d ENIs, %v; want 2", len(byInst), err)
	}

	// AssignAddresses, AssignPrefixes, UnassignAddresses.
	if err := g.AssignAddresses(ctx, PriorityPodWaiting, eni.ID, ips[3:5]); err != nil {
		t.Fatalf("AssignAddresses: %v", err)
	}
	block := pick.block(inst.SubnetID)
	if err := g.AssignPrefixes(ctx, PriorityWarmRefill, eni.ID, []netip.Prefix{block}); err != nil {
		t.Fatalf("AssignPrefixes: %v", err)
	}
	got, err := g.DescribeNetworkInterfaces(ctx, PriorityReconcile, ENIFilter{IDs: []string{eni.ID}})
	if err != nil || len(got) != 1 {
		t.Fatalf("DescribeNetworkInterfaces: %v", err)
	}
	if !slices.Equal(sortedAddrs(got[0].SecondaryIPs), ips[1:5]) || !slices.Equal(got[0].Prefixes, []netip.Prefix{block}) ||
		got[0].Status != "in-use" || got[0].Attachment == nil || got[0].Attachment.ID != attID || !got[0].Attachment.DeleteOnTermination {
		t.Fatalf("ENI after assigns = %+v, want secondaries %v, prefix %v, attached", got[0], ips[1:5], block)
	}
	if err := g.UnassignAddresses(ctx, PriorityRelease, eni.ID, ips[3:4], []netip.Prefix{block}); err != nil {
		t.Fatalf("UnassignAddresses: %v", err)
	}
	e, _ := srv.Sim().Snapshot().ENI(eni.ID)
	if want := []string{ips[1].String(), ips[2].String(), ips[4].String()}; !slices.Equal(sortedStrings(e.SecondaryIPs), want) || len(e.Prefixes) != 0 {
		t.Fatalf("simulator ENI after unassign: secondaries %v prefixes %v, want %v and none", e.SecondaryIPs, e.Prefixes, want)
	}

	// CreateTags, then DescribeInstances shows the ENI in device order with its tags elsewhere.
	if err := g.CreateTags(ctx, PriorityWarmRefill, []string{eni.ID, inst.ID}, map[string]string{"team": "net"}); err != nil {
		t.Fatalf("CreateTags: %v", err)
	}
	di, err := g.DescribeInstances(ctx, PriorityReconcile, []string{inst.ID})
	if err != nil || len(di) != 1 {
		t.Fatalf("DescribeInstances(id): %v", err)
	}
	if d := di[0]; d.Tags["team"] != "net" || len(d.ENIs) != 2 || d.ENIs[1].ID != eni.ID || d.ENIs[1].Attachment.DeviceIndex != 1 ||
		!d.ENIs[1].Attachment.DeleteOnTermination || d.ENIs[1].Attachment.InstanceID != inst.ID {
		t.Fatalf("DescribeInstances after attach = %+v", d)
	}
	if e, _ := srv.Sim().Snapshot().ENI(eni.ID); e.Tags["team"] != "net" {
		t.Fatalf("ENI tags = %v, want team=net", e.Tags)
	}

	// DetachENI, DeleteENI, and the ENI is gone.
	if err := g.DetachENI(ctx, PriorityRelease, attID, false); err != nil {
		t.Fatalf("DetachENI: %v", err)
	}
	if e, _ := srv.Sim().Snapshot().ENI(eni.ID); e.Attachment != nil || e.Status != "available" {
		t.Fatalf("ENI after detach = %+v", e)
	}
	if err := g.DeleteENI(ctx, PriorityRelease, eni.ID); err != nil {
		t.Fatalf("DeleteENI: %v", err)
	}
	if _, err := g.DescribeNetworkInterfaces(ctx, PriorityReconcile, ENIFilter{IDs: []string{eni.ID}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DescribeNetworkInterfaces(deleted) = %v, want ErrNotFound", err)
	}

	// Every call was counted by action and outcome, in the state and in the metrics.
	counts := map[[2]string]uint64{}
	perAction := map[string]uint64{}
	for _, c := range g.LimiterState().Calls {
		counts[[2]string{c.Action, c.Outcome}] = c.Count
		perAction[c.Action] += c.Count
	}
	for action, n := range perAction {
		if simCalls(srv, action) != int(n) {
			t.Errorf("simulator saw %d %s calls, the gateway counted %d", simCalls(srv, action), action, n)
		}
	}
	for action, n := range map[string]uint64{
		ActionCreateNetworkInterface: 2, ActionAttachNetworkInterface: 1, ActionModifyNetworkInterfaceAttribute: 1,
		ActionAssignPrivateIPAddresses: 2, ActionUnassignPrivateIPAddresses: 1, ActionCreateTags: 1,
		ActionDetachNetworkInterface: 1, ActionDeleteNetworkInterface: 1,
	} {
		if counts[[2]string{action, "ok"}] != n {
			t.Errorf("LimiterState calls %s ok = %d, want %d", action, counts[[2]string{action, "ok"}], n)
		}
		if v := counterValue(t, reg, "ipledger_ec2_calls_total", map[string]string{"action": action, "outcome": "ok"}); v != float64(n) {
			t.Errorf("ipledger_ec2_calls_total{%s,ok} = %v, want %d", action, v, n)
		}
	}
	if counts[[2]string{ActionCreateNetworkInterface, "IdempotentParameterMismatch"}] != 1 ||
		counts[[2]string{ActionDescribeNetworkInterfaces, "InvalidNetworkInterfaceID.NotFound"}] != 1 {
		t.Errorf("error outcomes not counted by code: %v", counts)
	}
}

// TestGatewayErrorsFromSimulator provokes each EC2 error condition in the simulator and checks the
// gateway's classification of the real response.
func TestGatewayErrorsFromSimulator(t *testing.T) {
	srv := startSim(t, 1, func(c *ec2sim.Config) {
		c.Scenario.Subnets = append(c.Scenario.Subnets, ec2sim.SubnetSpec{
			CIDR: "192.168.192.0/27", AvailabilityZone: "eu-west-1a", Tags: map[string]string{"Name": "tiny"}})
	})
	g, _ := newSimGateway(t, srv, 1, func(c *Config) { c.MaxRetries = 2 })
	ctx := t.Context()
	sim := srv.Sim()
	st := sim.Snapshot()
	pick := newAddrPicker(t, st)
	subnetByCIDR := func(cidr string) string {
		for _, s := range st.Subnets {
			if s.CIDR == cidr {
				return s.ID
			}
		}
		t.Fatalf("no subnet %s", cidr)
		return ""
	}
	// The default scenario: node-a alone in .0/19, two node-b in .32/19, two node-c in .64/19.
	bySubnet := map[string][]ec2sim.InstanceInfo{}
	for _, in := range st.Instances {
		bySubnet[in.SubnetID] = append(bySubnet[in.SubnetID], in)
	}
	var pair []ec2sim.InstanceInfo // two instances sharing a subnet
	var full ec2sim.InstanceInfo   // an instance alone in its subnet
	for _, l := range bySubnet {
		switch {
		case len(l) >= 2 && pair == nil:
			pair = l
		case len(l) == 1:
			full = l[0]
		}
	}
	if pair == nil || full.ID == "" {
		t.Fatalf("default scenario changed: instances by subnet %v", bySubnet)
	}

	// A full subnet: a foreign user holds every address of the /27.
	tiny := subnetByCIDR("192.168.192.0/27")
	if _, err := sim.CreateForeignENI(ctx, tiny, 27); err != nil {
		t.Fatalf("fill tiny subnet: %v", err)
	}
	// Three ENIs for the lone instance (m5.large: 3 ENIs): two attach, the third does not fit.
	var extra []ENI
	for i := range 3 {
		e, err := g.CreateENI(ctx, PriorityNodeStart, CreateENIInput{SubnetID: full.SubnetID, ClientToken: "limit-" + string(rune('a'+i))})
		if err != nil {
			t.Fatalf("CreateENI %d: %v", i, err)
		}
		extra = append(extra, e)
	}
	for i := range 2 {
		if _, err := g.AttachENI(ctx, PriorityNodeStart, extra[i].ID, full.ID, i+1, 0); err != nil {
			t.Fatalf("AttachENI %d: %v", i, err)
		}
	}
	// A fragmented subnet: a /28 that was free before a foreign user scattered addresses over it.
	frag := subnetByCIDR("192.168.160.0/19")
	fragBlock := pick.block(frag)
	if n, err := sim.Fragment(ctx, frag); err != nil || n == 0 {
		t.Fatalf("Fragment = %d, %v", n, err)
	}
	fragENI, err := g.CreateENI(ctx, PriorityNodeStart, CreateENIInput{SubnetID: frag, ClientToken: "frag"})
	if err != nil {
		t.Fatalf("CreateENI in fragmented subnet: %v", err)
	}

	tests := []struct {
		name     string
		call     func() error
		wantKind error
		wantCode string
		calls    string // action whose simulator calls must grow by exactly wantN
		wantN    int
	}{
		{"subnet full", func() error {
			_, err := g.CreateENI(ctx, PriorityNodeStart, CreateENIInput{SubnetID: tiny, ClientToken: "tiny"})
			return err
		}, ErrSubnetFull, "InsufficientFreeAddressesInSubnet", ActionCreateNetworkInterface, 1},
		{"address in use", func() error {
			ip := netip.MustParseAddr(pair[1].PrivateIP) // another instance's primary in the same subnet
			return g.AssignAddresses(ctx, PriorityPodWaiting, pair[0].PrimaryENI, []netip.Addr{ip})
		}, ErrAddressInUse, "InvalidIPAddress.InUse", ActionAssignPrivateIPAddresses, 1},
		{"fragmented block is in use", func() error {
			return g.AssignPrefixes(ctx, PriorityPodWaiting, fragENI.ID, []netip.Prefix{fragBlock})
		}, ErrAddressInUse, "InvalidIPAddress.InUse", ActionAssignPrivateIPAddresses, 1},
		{"eni address limit", func() error {
			return g.AssignAddresses(ctx, PriorityPodWaiting, pair[1].PrimaryENI, pick.addrs(pair[1].SubnetID, 10))
		}, ErrENIAddressLimit, "PrivateIpAddressLimitExceeded", ActionAssignPrivateIPAddresses, 1},
		{"attachment limit", func() error {
			_, err := g.AttachENI(ctx, PriorityNodeStart, extra[2].ID, full.ID, 3, 0)
			return err
		}, ErrAttachmentLimit, "AttachmentLimitExceeded", ActionAttachNetworkInterface, 1},
		{"eni in use", func() error {
			return g.DeleteENI(ctx, PriorityRelease, extra[0].ID)
		}, ErrENIInUse, "InvalidNetworkInterface.InUse", ActionDeleteNetworkInterface, 1},
		{"eni not found", func() error {
			return g.DeleteENI(ctx, PriorityRelease, "eni-0123456789abcdef0")
		}, ErrNotFound, "InvalidNetworkInterfaceID.NotFound", ActionDeleteNetworkInterface, 1},
		{"attachment not found", func() error {
			return g.DetachENI(ctx, PriorityRelease, "eni-attach-0123456789abcdef0", true)
		}, ErrNotFound, "InvalidAttachmentID.NotFound", ActionDetachNetworkInterface, 1},
		{"subnet not found", func() error {
			_, err := g.DescribeSubnets(ctx, PriorityReconcile, []string{"subnet-0123456789abcdef0"}, "")
			return err
		}, ErrNotFound, "InvalidSubnetID.NotFound", ActionDescribeSubnets, 1},
		{"instance not found", func() error {
			_, err := g.DescribeInstances(ctx, PriorityReconcile, []string{"i-0123456789abcdef0"})
			return err
		}, ErrNotFound, "InvalidInstanceID.NotFound", ActionDescribeInstances, 1},
		{"address outside the subnet", func() error {
			_, err := g.CreateENI(ctx, PriorityNodeStart, CreateENIInput{SubnetID: tiny, PrimaryIP: netip.MustParseAddr("10.0.0.10"), ClientToken: "outside"})
			return err
		}, ErrInvalidRequest, "InvalidParameterValue", ActionCreateNetworkInterface, 1},
		{"unauthorized (fault), not retried", func() error {
			sim.SetFault(ActionCreateTags, ec2sim.Fault{Code: "UnauthorizedOperation", Probability: 1})
			defer sim.SetFault(ActionCreateTags, ec2sim.Fault{})
			return g.CreateTags(ctx, PriorityWarmRefill, []string{full.ID}, map[string]string{"a": "b"})
		}, ErrUnauthorized, "UnauthorizedOperation", ActionCreateTags, 1},
		{"no cidr block (fault)", func() error {
			sim.SetFault(ActionAssignPrivateIPAddresses, ec2sim.Fault{Code: "InsufficientCidrBlocks", Probability: 1})
			defer sim.SetFault(ActionAssignPrivateIPAddresses, ec2sim.Fault{})
			return g.AssignPrefixes(ctx, PriorityWarmRefill, fragENI.ID, []netip.Prefix{pick.block(frag)})
		}, ErrNoCidrBlock, "InsufficientCidrBlocks", ActionAssignPrivateIPAddresses, 1},
		{"internal error (fault), retried twice", func() error {
			sim.SetFault(ActionDeleteNetworkInterface, ec2sim.Fault{Code: "InternalError", Probability: 1})
			defer sim.SetFault(ActionDeleteNetworkInterface, ec2sim.Fault{})
			return g.DeleteENI(ctx, PriorityRelease, extra[2].ID)
		}, ErrUnavailable, "InternalError", ActionDeleteNetworkInterface, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := simCalls(srv, tc.calls)
			err := tc.call()
			var ae *APIError
			if !errors.Is(err, tc.wantKind) || !errors.As(err, &ae) || ae.Code != tc.wantCode || ae.HTTPStatus == 0 {
				t.Fatalf("err = %v, want %v with code %s", err, tc.wantKind, tc.wantCode)
			}
			if n := simCalls(srv, tc.calls) - before; n != tc.wantN {
				t.Fatalf("simulator saw %d %s calls, want %d", n, tc.calls, tc.wantN)
			}
		})
	}
	if dups := sim.Snapshot().DuplicateAddresses(); len(dups) != 0 {
		t.Fatalf("addresses held twice: %v", dups)
	}
}

// TestGatewayRefusesBadInput checks that input the gateway can judge is refused before any call.
func TestGatewayRefusesBadInput(t *testing.T) {
	srv := startSim(t, 1, nil)
	g, _ := newSimGateway(t, srv, 1, nil)
	ctx := t.Context()
	eni := srv.Sim().Snapshot().ENIs[0].ID
	tests := []struct {
		name string
		call func() error
	}{
		{"bad priority", func() error { _, err := g.DescribeSubnets(ctx, 0, nil, ""); return err }},
		{"no client token", func() error {
			_, err := g.CreateENI(ctx, PriorityNodeStart, CreateENIInput{SubnetID: "subnet-1"})
			return err
		}},
		{"ips and prefixes", func() error {
			_, err := g.CreateENI(ctx, PriorityNodeStart, CreateENIInput{SubnetID: "subnet-1", ClientToken: "x",
				SecondaryIPs: []netip.Addr{netip.MustParseAddr("192.168.0.20")}, Prefixes: []netip.Prefix{netip.MustParsePrefix("192.168.0.32/28")}})
			return err
		}},
		{"ipv6 address", func() error {
			return g.AssignAddresses(ctx, PriorityPodWaiting, eni, []netip.Addr{netip.MustParseAddr("fd00::1")})
		}},
		{"zero address", func() error { return g.AssignAddresses(ctx, PriorityPodWaiting, eni, []netip.Addr{{}}) }},
		{"no addresses", func() error { return g.AssignAddresses(ctx, PriorityPodWaiting, eni, nil) }},
		{"unaligned prefix", func() error {
			return g.AssignPrefixes(ctx, PriorityPodWaiting, eni, []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr("192.168.0.33"), 28)})
		}},
		{"/27 prefix", func() error {
			return g.AssignPrefixes(ctx, PriorityPodWaiting, eni, []netip.Prefix{netip.MustParsePrefix("192.168.0.32/27")})
		}},
		{"nothing to unassign", func() error { return g.UnassignAddresses(ctx, PriorityRelease, eni, nil, nil) }},
		{"no eni", func() error { return g.DeleteENI(ctx, PriorityRelease, "") }},
		{"negative device index", func() error { _, err := g.AttachENI(ctx, PriorityNodeStart, eni, "i-1", -1, 0); return err }},
		{"empty tag key", func() error { return g.CreateTags(ctx, PriorityNodeStart, []string{eni}, map[string]string{"": "x"}) }},
		{"empty id in list", func() error { _, err := g.DescribeInstances(ctx, PriorityNodeStart, []string{""}); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.call(); !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("err = %v, want ErrInvalidRequest", err)
			}
		})
	}
	if total := srv.Sim().Stats().Total().Calls; total != 0 {
		t.Fatalf("the simulator saw %d calls for refused input, want 0", total)
	}
}

// TestGatewayRetriesPassTheLimiter checks that retries of throttled and 5xx calls each wait for a
// token again, and that a throttle lowers the bucket's rate.
func TestGatewayRetriesPassTheLimiter(t *testing.T) {
	const ts = 20
	srv := startSim(t, ts, nil)
	g, reg := newSimGateway(t, srv, ts, func(c *Config) { c.MaxRetries = 3 })
	ctx := t.Context()
	sim := srv.Sim()
	inst := sim.Snapshot().Instances[0]

	t.Run("throttled", func(t *testing.T) {
		sim.SetFault(ActionCreateTags, ec2sim.Fault{Code: "RequestLimitExceeded", Probability: 1})
		defer sim.SetFault(ActionCreateTags, ec2sim.Fault{})
		err := g.CreateTags(ctx, PriorityWarmRefill, []string{inst.ID}, map[string]string{"k": "v"})
		var ae *APIError
		if !errors.Is(err, ErrThrottled) || !errors.As(err, &ae) || ae.Code != "RequestLimitExceeded" || ae.HTTPStatus != 503 {
			t.Fatalf("err = %v, want ErrThrottled (RequestLimitExceeded, 503)", err)
		}
		if n := simCalls(srv, ActionCreateTags); n != 4 {
			t.Fatalf("simulator saw %d CreateTags calls, want 4 (1 + 3 retries)", n)
		}
		if n := histogramCount(t, reg, "ipledger_ec2_limiter_wait_seconds", map[string]string{"bucket": "tags"}); n != 4 {
			t.Fatalf("limiter waits of the tags bucket = %d, want 4 (every attempt passes the limiter)", n)
		}
		st := g.LimiterState()
		if st.ThrottledTotal != 4 || len(st.RecentThrottles) != 4 || st.RecentThrottles[0].Action != ActionCreateTags {
			t.Fatalf("throttles recorded: total %d, recent %+v", st.ThrottledTotal, st.RecentThrottles)
		}
		for _, b := range st.Buckets {
			switch b.Name {
			case "tags":
				// Halved, then recovering (fully within 0.75 s at this time scale); rates are
				// per second of the gateway's (scaled) clock.
				if b.EffectiveRefillPerSecond > 0.8*b.RefillPerSecond || b.RefillPerSecond != 10 {
					t.Fatalf("tags bucket after throttles: %+v, want the rate cut", b)
				}
			case "describe":
				if b.EffectiveRefillPerSecond < b.RefillPerSecond*0.9 {
					t.Fatalf("describe bucket slowed by another bucket's throttle: %+v", b)
				}
			}
		}
		if v := counterValue(t, reg, "ipledger_ec2_throttled_total", map[string]string{"action": ActionCreateTags}); v != 4 {
			t.Fatalf("ipledger_ec2_throttled_total{CreateTags} = %v, want 4", v)
		}
		if v := counterValue(t, reg, "ipledger_ec2_calls_total", map[string]string{"action": ActionCreateTags, "outcome": "throttled"}); v != 4 {
			t.Fatalf("ipledger_ec2_calls_total{CreateTags,throttled} = %v, want 4", v)
		}
	})

	t.Run("5xx until it recovers", func(t *testing.T) {
		// More retries: backoff doubles from 5 ms (time-scaled), so the fault clears in time.
		g, reg := newSimGateway(t, srv, ts, func(c *Config) { c.MaxRetries = 8 })
		sim.SetFault(ActionDescribeSubnets, ec2sim.Fault{Code: "InternalError", Probability: 1})
		waitsBefore := histogramCount(t, reg, "ipledger_ec2_limiter_wait_seconds", map[string]string{"bucket": "describe"})
		errc := make(chan error, 1)
		go func() {
			_, err := g.DescribeSubnets(ctx, PriorityReconcile, nil, "")
			errc <- err
		}()
		waitFor(t, "two failed DescribeSubnets attempts", 10*time.Second, func() bool {
			return simCalls(srv, ActionDescribeSubnets) >= 2
		})
		sim.SetFault(ActionDescribeSubnets, ec2sim.Fault{})
		if err := <-errc; err != nil {
			t.Fatalf("DescribeSubnets after the fault cleared = %v, want success", err)
		}
		st := sim.Stats().Calls[ActionDescribeSubnets]
		if st.Errors["InternalError"] < 2 || st.Calls != st.Errors["InternalError"]+1 {
			t.Fatalf("simulator DescribeSubnets stats %+v, want >= 2 InternalError then one success", st)
		}
		if n := histogramCount(t, reg, "ipledger_ec2_limiter_wait_seconds", map[string]string{"bucket": "describe"}) - waitsBefore; n != uint64(st.Calls) {
			t.Fatalf("limiter waits = %d for %d attempts", n, st.Calls)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		for _, name := range []string{
			"ipledger_ec2_calls_total", "ipledger_ec2_throttled_total", "ipledger_ec2_limiter_wait_seconds",
			"ipledger_ec2_queue_length", "ipledger_ec2_bucket_tokens", "ipledger_ec2_bucket_refill_rate",
			"ipledger_ec2_call_duration_seconds",
		} {
			if metricFamily(t, reg, name) == nil {
				t.Errorf("metric %s missing", name)
			}
		}
		if mf := metricFamily(t, reg, "ipledger_ec2_queue_length"); mf == nil || len(mf.GetMetric()) != len(priorities) {
			t.Errorf("queue length gauges: %v, want one per priority", mf)
		}
		if mf := metricFamily(t, reg, "ipledger_ec2_bucket_refill_rate"); mf == nil || len(mf.GetMetric()) != len(DefaultBuckets()) {
			t.Errorf("refill rate gauges: %v, want one per bucket", mf)
		}
	})
}

// TestGatewayCoalescesAssigns checks that assigns for one ENI waiting together become one call
// carrying all their addresses, at the best priority among them, and that a caller who leaves
// before the call takes its addresses along.
func TestGatewayCoalescesAssigns(t *testing.T) {
	srv := startSim(t, 1, nil)
	// One token, then one per second: the first assign takes it, the others queue together.
	buckets := []BucketConfig{
		{Name: "assign", Capacity: 1, RefillPerSecond: 1, Actions: []string{ActionAssignPrivateIPAddresses}},
		{Name: "rest", Capacity: 50, RefillPerSecond: 5, Actions: []string{FallbackAction}},
	}
	g, reg := newSimGateway(t, srv, 1, func(c *Config) { c.Buckets = buckets })
	ctx := t.Context()
	st := srv.Sim().Snapshot()
	inst := st.Instances[0]
	ips := newAddrPicker(t, st).addrs(inst.SubnetID, 9)

	if err := g.AssignAddresses(ctx, PriorityWarmRefill, inst.PrimaryENI, ips[:1]); err != nil {
		t.Fatalf("first assign: %v", err)
	}
	const n = 7
	prios := []Priority{PriorityReconcile, PriorityRelease, PriorityPodWaiting, PriorityPrewarm, PriorityWarmRefill, PriorityReconcile, PriorityNodeStart}
	errs := make(chan error, n)
	for i := range n {
		go func() { errs <- g.AssignAddresses(ctx, prios[i], inst.PrimaryENI, ips[1+i:2+i]) }()
	}
	// One more caller joins and leaves before the call: its address must not be assigned.
	leaveCtx, leave := context.WithCancel(ctx)
	leftErr := make(chan error, 1)
	key := batchKey{eni: inst.PrimaryENI, kind: assignIPs}
	members := func() int {
		g.coal.mu.Lock()
		defer g.coal.mu.Unlock()
		if b := g.coal.open[key]; b != nil {
			return len(b.members)
		}
		return 0
	}
	waitFor(t, "all assigns to join one batch", 5*time.Second, func() bool { return members() == n })
	go func() { leftErr <- g.AssignAddresses(leaveCtx, PriorityPodWaiting, inst.PrimaryENI, ips[8:9]) }()
	waitFor(t, "the leaving caller to join", 5*time.Second, func() bool { return members() == n+1 })
	leave()
	if err := <-leftErr; !errors.Is(err, context.Canceled) || !errors.Is(err, ErrThrottled) {
		t.Fatalf("the caller that left got %v, want ErrThrottled and context.Canceled", err)
	}
	if q := g.LimiterState().Queue; q[PriorityPodWaiting] != 1 || q[PriorityReconcile] != 0 {
		t.Fatalf("queue %v: want the one batch queued at the best priority of its members (pod-waiting)", q)
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("coalesced assign: %v", err)
		}
	}
	if c := simCalls(srv, ActionAssignPrivateIPAddresses); c != 2 {
		t.Fatalf("simulator saw %d AssignPrivateIpAddresses calls, want 2 (the first, then one for all %d)", c, n)
	}
	e, _ := srv.Sim().Snapshot().ENI(inst.PrimaryENI)
	want := make([]string, 0, 8)
	for _, a := range ips[:8] {
		want = append(want, a.String())
	}
	if got := sortedStrings(e.SecondaryIPs); !slices.Equal(got, want) {
		t.Fatalf("ENI secondaries = %v, want %v (not the leaver's %v)", got, want, ips[8])
	}
	if w := histogramCount(t, reg, "ipledger_ec2_limiter_wait_seconds", map[string]string{"bucket": "assign", "priority": "pod-waiting"}); w != 1 {
		t.Fatalf("pod-waiting waits in the assign bucket = %d, want 1 (the merged call)", w)
	}
}

// TestGatewayPriorityUnderContention checks that pod-waiting requests complete before reconcile
// requests that were queued earlier in the same bucket.
func TestGatewayPriorityUnderContention(t *testing.T) {
	srv := startSim(t, 1, nil)
	// One shared bucket, stricter than the simulator's: one token, then 5 per second.
	buckets := []BucketConfig{
		{Name: "shared", Capacity: 1, RefillPerSecond: 5, Actions: []string{ActionAssignPrivateIPAddresses, ActionDescribeNetworkInterfaces}},
		{Name: "rest", Capacity: 50, RefillPerSecond: 5, Actions: []string{FallbackAction}},
	}
	g, _ := newSimGateway(t, srv, 1, func(c *Config) { c.Buckets = buckets })
	ctx := t.Context()
	st := srv.Sim().Snapshot()
	pick := newAddrPicker(t, st)

	type done struct {
		pod bool
		err error
	}
	results := make(chan done, 16)
	const nRec, nPod = 8, 4
	for range nRec {
		go func() {
			_, err := g.DescribeNetworkInterfaces(ctx, PriorityReconcile, ENIFilter{VPCID: st.VPC.ID})
			results <- done{false, err}
		}()
	}
	waitFor(t, "reconcile requests to queue", 5*time.Second, func() bool { return g.LimiterState().Queue[PriorityReconcile] >= 5 })
	for i := range nPod {
		inst := st.Instances[1+i]
		ip := pick.addrs(inst.SubnetID, 1)
		go func() { results <- done{true, g.AssignAddresses(ctx, PriorityPodWaiting, inst.PrimaryENI, ip)} }()
	}
	// Once every pod request is queued (or done), no reconcile request can be granted before them.
	var order []bool
	var queuedRec int
	waitFor(t, "pod requests to queue", 5*time.Second, func() bool {
		for len(results) > 0 {
			r := <-results
			if r.err != nil {
				t.Fatalf("request failed: %v", r.err)
			}
			order = append(order, r.pod)
		}
		pods := 0
		for _, p := range order {
			if p {
				pods++
			}
		}
		ls := g.LimiterState()
		queuedRec = ls.Queue[PriorityReconcile]
		if ls.Queue[PriorityPodWaiting]+pods == nPod {
			// EstimateWait sees the pod queue ahead of nothing and the reconcile queue behind it.
			if pw, rw := g.EstimateWait(ActionAssignPrivateIPAddresses, PriorityPodWaiting),
				g.EstimateWait(ActionAssignPrivateIPAddresses, PriorityReconcile); queuedRec > 0 && pw >= rw {
				t.Errorf("EstimateWait pod-waiting %v >= reconcile %v with %d reconcile requests queued", pw, rw, queuedRec)
			}
			return true
		}
		return false
	})
	if queuedRec < 2 {
		t.Fatalf("only %d reconcile requests were still queued when the pods queued; no contention to test", queuedRec)
	}
	for len(order) < nRec+nPod {
		r := <-results
		if r.err != nil {
			t.Fatalf("request failed: %v", r.err)
		}
		order = append(order, r.pod)
	}
	lastPod := 0
	for i, p := range order {
		if p {
			lastPod = i
		}
	}
	recBeforeLastPod := lastPod - (nPod - 1)
	if recBeforeLastPod > nRec-queuedRec {
		t.Fatalf("completion order %v: %d reconcile requests finished before the last pod request, but %d were queued behind the pods",
			order, recBeforeLastPod, queuedRec)
	}
}

// TestGatewayClose checks that Close fails waiting calls and later calls with ErrClosed.
func TestGatewayClose(t *testing.T) {
	srv := startSim(t, 1, nil)
	buckets := []BucketConfig{{Name: "all", Capacity: 1, RefillPerSecond: 0.01, Actions: []string{FallbackAction}}}
	g, _ := newSimGateway(t, srv, 1, func(c *Config) { c.Buckets = buckets })
	ctx := t.Context()
	if _, err := g.DescribeSubnets(ctx, PriorityReconcile, nil, ""); err != nil {
		t.Fatalf("first call: %v", err)
	}
	eni := srv.Sim().Snapshot().ENIs[0].ID
	errs := make(chan error, 2)
	go func() { _, err := g.DescribeSubnets(ctx, PriorityReconcile, nil, ""); errs <- err }()
	go func() {
		errs <- g.AssignAddresses(ctx, PriorityPodWaiting, eni, []netip.Addr{netip.MustParseAddr("192.168.0.200")})
	}()
	waitFor(t, "two waiters", 5*time.Second, func() bool {
		q := g.LimiterState().Queue
		return q[PriorityReconcile] == 1 && q[PriorityPodWaiting] == 1
	})
	g.Close()
	for range 2 {
		if err := <-errs; !errors.Is(err, ErrClosed) {
			t.Fatalf("waiting call after Close = %v, want ErrClosed", err)
		}
	}
	if _, err := g.DescribeSubnets(ctx, PriorityReconcile, nil, ""); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after Close = %v, want ErrClosed", err)
	}
	if err := g.AssignAddresses(ctx, PriorityPodWaiting, eni, []netip.Addr{netip.MustParseAddr("192.168.0.201")}); !errors.Is(err, ErrClosed) {
		t.Fatalf("assign after Close = %v, want ErrClosed", err)
	}
	if n := srv.Sim().Stats().Total().Calls; n != 1 {
		t.Fatalf("simulator saw %d calls, want 1", n)
	}
}

func sortedAddrs(a []netip.Addr) []netip.Addr {
	out := slices.Clone(a)
	slices.SortFunc(out, func(x, y netip.Addr) int { return x.Compare(y) })
	return out
}

func sortedStrings(s []string) []string {
	out := make([]netip.Addr, 0, len(s))
	for _, v := range s {
		out = append(out, netip.MustParseAddr(v))
	}
	out = sortedAddrs(out)
	res := make([]string, len(out))
	for i, a := range out {
		res[i] = a.String()
	}
	return res
}
