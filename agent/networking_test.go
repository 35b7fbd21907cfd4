package agent

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/agent/pool"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// TestAgentNodeNetworking runs an agent that manages a test's node namespace with simulated ENI
// links: after a restart it restores its pods' rules (and drops a stale one), configures the
// secondary ENI of its pool, and removes it when a new pool no longer has it.
func TestAgentNodeNetworking(t *testing.T) {
	nstest.GuardRootNS(t, "sim-")
	node := nstest.New(t)
	h := nstest.Handle(t, node)
	srv, running, subnets := simulator(t)
	in := running[0]
	cidr := subnets[in.SubnetID].CIDR
	sub := netip.MustParsePrefix(cidr)
	at := func(n int) string {
		a := sub.Addr()
		for range n {
			a = a.Next()
		}
		return a.String()
	}
	secondary := &ipledgerv1.NetworkInterface{EniId: "eni-0000000000000a001", MacAddress: "02:00:00:0a:00:01", DeviceIndex: 1,
		SubnetId: in.SubnetID, SubnetCidr: cidr, PrimaryIp: at(200),
		Addresses: []*ipledgerv1.PoolAddress{{Ip: at(201), State: ipledgerv1.LeaseState_LEASE_STATE_ACTIVE}}}
	primary := &ipledgerv1.NetworkInterface{EniId: in.PrimaryENI, MacAddress: in.MAC, DeviceIndex: 0,
		SubnetId: in.SubnetID, SubnetCidr: cidr, PrimaryIp: in.PrivateIP,
		Addresses: []*ipledgerv1.PoolAddress{{Ip: at(150), State: ipledgerv1.LeaseState_LEASE_STATE_ACTIVE}}}
	np := &ipledgerv1.NodePool{NodeName: in.PrivateDNSName, InstanceId: in.ID, Generation: 3,
		Mode: ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP, Interfaces: []*ipledgerv1.NetworkInterface{primary, secondary}}

	c := agentConfig(t, srv, in, shortDir(t))
	c.ManageNetworking, c.SimulateENILinks, c.NetNS = true, true, node.Path()
	// The checkpoint of an earlier run: a pod on each ENI.
	p, err := pool.Open(pool.Config{CheckpointPath: c.CheckpointPath, NodeName: in.PrivateDNSName, InstanceID: in.ID})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Apply(np, false); err != nil {
		t.Fatal(err)
	}
	for _, cid := range []string{"pod-a", "pod-b"} {
		if _, _, err := p.Assign(pool.Key{ContainerID: cid, IfName: "eth0"}, pool.PodInfo{}); err != nil {
			t.Fatal(err)
		}
	}
	// A rule left by a pod that is gone.
	m, err := netconf.New(netconf.Config{NetNS: node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	if err := m.AddPodRules(netconf.PodRoute{IP: netip.MustParseAddr(at(99)), Table: netconf.MainTable}); err != nil {
		t.Fatal(err)
	}

	a, _ := runAgent(t, c)
	wantRules := []netconf.PodRoute{
		{IP: netip.MustParseAddr(at(150)), Table: netconf.MainTable},
		{IP: netip.MustParseAddr(at(201)), Table: 2},
	}
	rules, err := m.Rules()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rules, wantRules) {
		t.Fatalf("pod rules after restart %+v, want %+v", rules, wantRules)
	}
	link := netconf.SimulatedLinkName(secondary.EniId)
	poll(t, "secondary ENI configured", func() bool {
		l, err := h.LinkByName(link)
		if err != nil || l.Attrs().Flags&net.FlagUp == 0 {
			return false
		}
		routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 2}, netlink.RT_FILTER_TABLE)
		return err == nil && slices.ContainsFunc(routes, func(r netlink.Route) bool { return r.Dst == nil || r.Dst.String() == "0.0.0.0/0" })
	})

	// The allocator takes the secondary ENI away: its link goes, and its table empties.
	np2 := &ipledgerv1.NodePool{NodeName: in.PrivateDNSName, InstanceId: in.ID, Generation: 4,
		Mode: ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP, Interfaces: []*ipledgerv1.NetworkInterface{primary}}
	if err := a.ApplyPool(np2, false); err != nil {
		t.Fatal(err)
	}
	poll(t, "secondary ENI removed", func() bool {
		_, err := h.LinkByName(link)
		routes, rerr := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 2}, netlink.RT_FILTER_TABLE)
		return err != nil && rerr == nil && len(routes) == 0
	})
}

func poll(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The agent programs source NAT for pods' traffic leaving the VPC when it starts and removes
// it when it stops; with --external-snat it programs none and removes an earlier run's.
func TestAgentSourceNAT(t *testing.T) {
	nstest.GuardRootNS(t, "sim-")
	node := nstest.New(t)
	srv, running, _ := simulator(t)
	in := running[0]
	m, err := netconf.New(netconf.Config{NetNS: node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	programmed := func() bool {
		ok, err := m.SNATProgrammed()
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	c := agentConfig(t, srv, in, shortDir(t))
	c.ManageNetworking, c.SimulateENILinks, c.NetNS = true, true, node.Path()
	c.SNATExcludeCIDRs = []string{"10.99.0.0/16"}
	_, stop := runAgent(t, c)
	if !programmed() {
		t.Fatal("no source NAT while the agent runs")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if programmed() {
		t.Fatal("source NAT left behind by a stopped agent")
	}

	// An earlier run's source NAT, then an agent told --external-snat.
	if err := m.EnsureSNAT(netconf.SNAT{NodeIP: netip.MustParseAddr(in.PrivateIP), Exclude: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, PodLinkPrefix: "eni"}); err != nil {
		t.Fatal(err)
	}
	c2 := agentConfig(t, srv, in, shortDir(t))
	c2.ManageNetworking, c2.SimulateENILinks, c2.NetNS, c2.ExternalSNAT = true, true, node.Path(), true
	runAgent(t, c2)
	if programmed() {
		t.Fatal("--external-snat left source NAT in place")
	}
}
