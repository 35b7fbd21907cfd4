package e2e_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// The pod subnets of TestPodSubnets: two in a secondary CIDR in the nodes' zone, one in
// another zone; the nodes live in a small subnet of the primary CIDR.
const (
	psNodeSubnet = "subnet-00000000000000001" // 192.168.0.0/24, eu-west-1a
	psPod1       = "subnet-00000000000000a01" // 100.64.0.0/27, eu-west-1a
	psPod2       = "subnet-00000000000000a02" // 100.64.1.0/26, eu-west-1a
	psPodB       = "subnet-00000000000000b01" // 100.64.2.0/24, eu-west-1b
	psSG1        = "sg-00000000000000a01"
	psSG2        = "sg-00000000000000a02"
	psInternet   = "203.0.113.7"
)

var psGateways = []string{"192.168.0.1/24", "100.64.0.1/27", "100.64.1.1/26"}

// TestPodSubnets is custom networking end to end: a policy names two pod subnets of the nodes'
// zone in the secondary CIDR 100.64.0.0/16 (and one of another zone), with security groups,
// keeping pods off the primary ENI. Real agents, the real plugin, in node namespaces joined by
// a stand-in for the VPC's fabric (every ENI is a macvlan of one segment; a router namespace
// holds the subnets' gateways and a host outside the VPC). Pods get addresses from the pod
// subnets only, on ENIs with the policy's groups; they reach each other across nodes and reach
// the outside host through their node's address (source NAT), and with --external-snat the
// rules are gone; when the pod subnet in use runs out (another user takes what is left), new
// pods are served from the other without a failed ADD, and ipledgerctl subnets shows both.
func TestPodSubnets(t *testing.T) {
	harness.RequireNodeNamespaces(t)
	scenario := filepath.Join(t.TempDir(), "scenario.yaml")
	if err := os.WriteFile(scenario, []byte(`vpc: {cidr: 192.168.0.0/16, secondary_cidrs: [100.64.0.0/16]}
subnets:
  - {id: `+psNodeSubnet+`, cidr: 192.168.0.0/24, availability_zone: eu-west-1a}
  - {id: `+psPod1+`, cidr: 100.64.0.0/27, availability_zone: eu-west-1a}
  - {id: `+psPod2+`, cidr: 100.64.1.0/26, availability_zone: eu-west-1a}
  - {id: `+psPodB+`, cidr: 100.64.2.0/24, availability_zone: eu-west-1b}
instances:
  - {type: m5.large, subnet: `+psNodeSubnet+`, count: 2, name: node}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	s := harness.StartDev(t, func(c *config.Config) { c.SimScenario = scenario })
	sim := s.Sim().Sim()
	admin := harness.Admin(t, s.GRPCAddr())
	ctx := t.Context()

	// Policies naming unusable pod subnets are refused with the field and the reason.
	for field, ps := range map[string]*ipledgerv1.PodSubnets{
		"policy.pod_subnets.subnet_ids[1]":                   {SubnetIds: []string{psPod1, "subnet-0000000000000dead"}},
		"policy.pod_subnets.zones[eu-west-1b].subnet_ids[0]": {Zones: map[string]*ipledgerv1.ZonePodSubnets{"eu-west-1b": {SubnetIds: []string{psPod1}}}},
	} {
		_, err := admin.SetPolicy(ctx, &ipledgerv1.SetPolicyRequest{Policy: &ipledgerv1.NodePolicy{Name: "bad", Order: 1, PodSubnets: ps}})
		if reason, md := api.ReasonOf(err); reason != ipledgerv1.Reason_NO_POD_SUBNET.String() || md["field"] != field {
			t.Fatalf("policy with %v: %v (reason %s, metadata %v), want NO_POD_SUBNET naming %s", ps, err, reason, md, field)
		}
	}
	if _, err := admin.SetPolicy(ctx, &ipledgerv1.SetPolicyRequest{Policy: &ipledgerv1.NodePolicy{Name: "custom", Order: 1,
		PodSubnets: &ipledgerv1.PodSubnets{
			Zones: map[string]*ipledgerv1.ZonePodSubnets{
				"eu-west-1a": {SubnetIds: []string{psPod1, psPod2}, SecurityGroupIds: []string{psSG1, psSG2}},
				"eu-west-1b": {SubnetIds: []string{psPodB}},
			},
			ExcludePrimaryEni: true,
		}}}); err != nil {
		t.Fatal(err)
	}

	fab := newFabric(t, sim)
	insts := harness.Running(sim)
	if len(insts) != 2 {
		t.Fatalf("%d instances", len(insts))
	}
	var nodes []*harness.Node
	var agents []*harness.Agent
	for _, in := range insts {
		n := harness.NewNode(t, s.Sim(), in, s.GRPCAddr())
		fab.attach(n)
		nodes = append(nodes, n)
		agents = append(agents, n.StartAgentInProcess(func(c *agent.Config) { c.SimulateENILinks = false }))
	}
	for _, ag := range agents {
		ag.WaitConnected(30*time.Second, 1)
	}

	// Pods on both nodes: addresses from the zone's pod subnets, on secondary ENIs.
	pod1Pfx, pod2Pfx, podBPfx := netip.MustParsePrefix("100.64.0.0/27"), netip.MustParsePrefix("100.64.1.0/26"), netip.MustParsePrefix("100.64.2.0/24")
	inPodSubnet := func(ip netip.Addr) string {
		switch {
		case pod1Pfx.Contains(ip):
			return psPod1
		case pod2Pfx.Contains(ip):
			return psPod2
		}
		return ""
	}
	type placed struct {
		pod *harness.Pod
		ip  netip.Addr
	}
	var pods [2][]placed
	add := func(i int, name string) placed {
		t.Helper()
		p := nodes[i].NewPod(name)
		ip := nodes[i].Add(p)
		if inPodSubnet(ip) == "" {
			t.Fatalf("pod %s on %s got %s, outside the zone's pod subnets", name, nodes[i].Name(), ip)
		}
		fab.route(ip)
		pl := placed{p, ip}
		pods[i] = append(pods[i], pl)
		return pl
	}
	a0, a1 := add(0, "a0"), add(0, "a1")
	b0 := add(1, "b0")

	// Across nodes, and on one node.
	for _, pair := range [][2]placed{{a0, b0}, {b0, a1}, {a0, a1}} {
		if err := nstest.Ping(pair[0].pod.NS, pair[1].ip); err != nil {
			t.Errorf("%s (%s) -> %s (%s): %v", pair[0].pod.Name, pair[0].ip, pair[1].pod.Name, pair[1].ip, err)
		}
	}

	// Outside the VPC the far end sees the node's address; the rules go with --external-snat.
	internet := fab.listen(psInternet + ":9999")
	if got := fab.sourceSeen(a0.pod, internet, psInternet+":9999"); got != netip.MustParseAddr(insts[0].PrivateIP) {
		t.Fatalf("outside the VPC the far end saw %v, want node %s's %s", got, nodes[0].Name(), insts[0].PrivateIP)
	}
	m, err := netconf.New(netconf.Config{NetNS: nodes[1].NS.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if ok, err := m.SNATProgrammed(); err != nil || !ok {
		t.Fatalf("source NAT on %s: %v, %v", nodes[1].Name(), ok, err)
	}
	if err := agents[1].Stop(); err != nil {
		t.Fatal(err)
	}
	agents[1] = nodes[1].StartAgentInProcess(func(c *agent.Config) { c.SimulateENILinks, c.ExternalSNAT = false, true })
	agents[1].WaitConnected(30*time.Second, 0)
	if ok, err := m.SNATProgrammed(); err != nil || ok {
		t.Fatalf("source NAT still programmed with --external-snat: %v, %v", ok, err)
	}
	if got := fab.sourceSeen(b0.pod, internet, psInternet+":9999"); got != b0.ip {
		t.Fatalf("without source NAT the far end saw %v, want the pod's %s", got, b0.ip)
	}

	// The pod subnet in use runs out: another user of the VPC takes what is left of it.
	first := inPodSubnet(a0.ip)
	other := map[string]string{psPod1: psPod2, psPod2: psPod1}[first]
	for {
		var avail int
		for _, sn := range sim.Snapshot().Subnets {
			if sn.ID == first {
				avail = sn.Available
			}
		}
		if avail == 0 {
			break
		}
		if _, err := sim.CreateForeignENI(ctx, first, min(avail, 40)); err != nil {
			t.Fatalf("foreign ENI in %s: %v", first, err)
		}
	}
	// New pods on node 0 keep starting (every ADD succeeds) and soon come from the other pod
	// subnet; node 0 holds at most 2 x 9 pods with custom networking.
	moved := false
	for i := 0; i < 12 && !moved; i++ {
		p := add(0, fmt.Sprintf("c%d", i))
		moved = inPodSubnet(p.ip) == other
	}
	if !moved {
		t.Fatalf("no pod of node 0 got an address from %s after %s ran out: %v", other, first, pods[0])
	}
	last := pods[0][len(pods[0])-1]
	if err := nstest.Ping(last.pod.NS, b0.ip); err != nil {
		t.Errorf("pod in %s -> %s: %v", other, b0.ip, err)
	}

	// EC2: the nodes' secondary ENIs are in the zone's pod subnets with the policy's groups;
	// the primary ENIs hold no pod address; nothing is in the other zone's subnet.
	snap := sim.Snapshot()
	usedSubnets := map[string]bool{}
	for _, e := range snap.ENIs {
		if e.Attachment == nil || (e.Attachment.InstanceID != insts[0].ID && e.Attachment.InstanceID != insts[1].ID) {
			if e.SubnetID == psPodB && !e.Foreign {
				t.Errorf("ENI %s in the other zone's subnet %s", e.ID, psPodB)
			}
			continue
		}
		if e.Attachment.DeviceIndex == 0 {
			if len(e.SecondaryIPs) != 0 {
				t.Errorf("primary ENI %s holds %v with custom networking", e.ID, e.SecondaryIPs)
			}
			continue
		}
		usedSubnets[e.SubnetID] = true
		if e.SubnetID != psPod1 && e.SubnetID != psPod2 {
			t.Errorf("secondary ENI %s in %s, not a pod subnet of the zone", e.ID, e.SubnetID)
		}
		if !slices.Equal(e.Groups, []string{psSG1, psSG2}) {
			t.Errorf("secondary ENI %s has groups %v, want %v", e.ID, e.Groups, []string{psSG1, psSG2})
		}
		for _, ip := range e.SecondaryIPs {
			if podBPfx.Contains(netip.MustParseAddr(ip)) {
				t.Errorf("address %s of the other zone's subnet on %s", ip, e.ID)
			}
		}
	}
	if !usedSubnets[psPod1] || !usedSubnets[psPod2] {
		t.Errorf("secondary ENIs in %v, want both pod subnets", usedSubnets)
	}

	// Admins see it: both pod subnets of the policy in the zone, the spill-over as an event.
	r := harness.Ctl(t, s.GRPCAddr(), "subnets")
	if r.Exit != 0 {
		t.Fatal(r)
	}
	for _, id := range []string{psPod1, psPod2} {
		line := lineWith(r.Stdout, id)
		if !strings.Contains(line, "custom@eu-west-1a") {
			t.Errorf("ipledgerctl subnets does not show %s as a pod subnet of custom@eu-west-1a:\n%s", id, r.Stdout)
		}
	}
	r = harness.Ctl(t, s.GRPCAddr(), "subnets", "--pod-subnet-groups", "-o", "json")
	var groups []struct {
		Policy    string   `json:"policy"`
		AZ        string   `json:"az"`
		SubnetIDs []string `json:"subnet_ids"`
		Nodes     int      `json:"nodes"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &groups); err != nil || len(groups) != 2 {
		t.Fatalf("pod subnet groups: %v\n%s", err, r)
	}
	if g := groups[0]; g.Policy != "custom" || g.AZ != "eu-west-1a" || g.Nodes != 2 || len(g.SubnetIDs) != 2 || g.SubnetIDs[0] != other {
		t.Errorf("group of eu-west-1a %+v: want both pod subnets, %s (the one with room) first, 2 nodes", g, other)
	}
	r = harness.Ctl(t, s.GRPCAddr(), "events", "--subnet", first)
	if r.Exit != 0 || !strings.Contains(r.Stdout, "PodSubnetSpillover") || !strings.Contains(r.Stdout, other) {
		t.Errorf("no spill-over event from %s to %s:\n%s", first, other, r)
	}
	d := mustNode(t, admin, nodes[0].Name())
	if d.GetSummary().GetPodCapacity() != 18 || !d.GetSummary().GetExcludePrimaryEni() {
		t.Errorf("node 0's capacity %d (custom networking %v), want 2 x 9 = 18", d.GetSummary().GetPodCapacity(), d.GetSummary().GetExcludePrimaryEni())
	}

	for i, list := range pods {
		for _, p := range list {
			nodes[i].Del(p.pod)
		}
	}
	if err := harness.BudgetsAddUp(ctx, admin); err != nil {
		t.Error(err)
	}
}

func lineWith(out, s string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// fabric stands in for the VPC's network in test namespaces: one segment (macvlans in bridge
// mode on an ifb in a "vpc" namespace) that every ENI of the test's nodes joins as the EC2
// hypervisor would attach it (a macvlan with the ENI's MAC, moved into the node's namespace),
// and a router on it holding the subnets' gateways and, on its loopback, a host outside the
// VPC. The router forwards to a pod's address by the ENI that holds it (a static neighbour, as
// the VPC routes by ENI ownership, with no ARP).
type fabric struct {
	t      *testing.T
	sim    *ec2sim.Sim
	vpc    ns.NetNS
	h      *netlink.Handle
	parent netlink.Link
	rtr    netlink.Link

	mu       sync.Mutex
	attached map[string]bool // ENI id
	seq      int
}

func newFabric(t *testing.T, sim *ec2sim.Sim) *fabric {
	f := &fabric{t: t, sim: sim, vpc: nstest.New(t), attached: map[string]bool{}}
	f.h = nstest.Handle(t, f.vpc)
	// The segment's parent: an ifb (a device that carries nothing itself, present where the
	// kernel has no dummy driver); the macvlans switch among themselves in bridge mode.
	if err := f.h.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: "fabric0"}}); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.parent, err = f.h.LinkByName("fabric0"); err != nil {
		t.Fatal(err)
	}
	if err := f.h.LinkSetUp(f.parent); err != nil {
		t.Fatal(err)
	}
	if err := f.h.LinkAdd(&netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: "rtr0", ParentIndex: f.parent.Attrs().Index}, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
		t.Fatal(err)
	}
	if f.rtr, err = f.h.LinkByName("rtr0"); err != nil {
		t.Fatal(err)
	}
	for _, gw := range psGateways {
		psAddr(t, f.h, f.rtr, gw)
	}
	lo, _ := f.h.LinkByName("lo")
	psAddr(t, f.h, lo, psInternet+"/32")
	if err := f.vpc.Do(func(ns.NetNS) error {
		return psSysctls(map[string]string{"net/ipv4/ip_forward": "1", "net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/rtr0/rp_filter": "0"})
	}); err != nil {
		t.Fatal(err)
	}
	return f
}

// attach joins a node to the fabric: its primary ENI's link now (configured as the OS would:
// the primary address and the default route through the subnet's gateway), every further ENI
// of its instance as soon as EC2 attaches it.
func (f *fabric) attach(n *harness.Node) {
	t := f.t
	eth0 := f.plug(n, n.Instance.PrimaryENI, n.Instance.MAC)
	var nodeCIDR string
	for _, sn := range f.sim.Snapshot().Subnets {
		if sn.ID == n.Instance.SubnetID {
			nodeCIDR = sn.CIDR
		}
	}
	bits := netip.MustParsePrefix(nodeCIDR).Bits()
	psAddr(t, n.H, eth0, fmt.Sprintf("%s/%d", n.Instance.PrivateIP, bits))
	if err := n.H.RouteAdd(&netlink.Route{Gw: net.ParseIP("192.168.0.1"), LinkIndex: eth0.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	if err := n.NS.Do(func(ns.NetNS) error {
		return psSysctls(map[string]string{"net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/default/rp_filter": "0", "net/ipv4/conf/" + eth0.Attrs().Name + "/rp_filter": "0"})
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(done); <-stopped })
	go func() {
		defer close(stopped)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			for _, e := range f.sim.Snapshot().ENIs {
				if e.Attachment != nil && e.Attachment.InstanceID == n.Instance.ID && e.Attachment.DeviceIndex > 0 {
					f.plug(n, e.ID, e.MAC)
				}
			}
		}
	}()
}

// plug creates the ENI's link in the node's namespace (once).
func (f *fabric) plug(n *harness.Node, eniID, mac string) netlink.Link {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.attached[eniID] {
		return nil
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		f.t.Errorf("MAC %q of %s: %v", mac, eniID, err)
		return nil
	}
	f.seq++
	name := fmt.Sprintf("ens%d", 4+f.seq)
	if err := f.h.LinkAdd(&netlink.Macvlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: f.parent.Attrs().Index, HardwareAddr: hw}, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
		f.t.Errorf("link of %s: %v", eniID, err)
		return nil
	}
	l, err := f.h.LinkByName(name)
	if err == nil {
		err = f.h.LinkSetNsFd(l, int(n.NS.Fd()))
	}
	if err == nil {
		l, err = n.H.LinkByName(name)
	}
	if err == nil {
		err = n.H.LinkSetUp(l)
	}
	if err == nil {
		err = n.NS.Do(func(ns.NetNS) error { return psSysctls(map[string]string{"net/ipv4/conf/" + name + "/rp_filter": "0"}) })
	}
	if err != nil {
		f.t.Errorf("link of %s in %s: %v", eniID, n.Name(), err)
		return nil
	}
	f.attached[eniID] = true
	return l
}

// route points the router at the ENI holding a pod's address.
func (f *fabric) route(ip netip.Addr) {
	f.t.Helper()
	for _, e := range f.sim.Snapshot().ENIs {
		if slices.Contains(e.SecondaryIPs, ip.String()) {
			hw, _ := net.ParseMAC(e.MAC)
			if err := f.h.NeighSet(&netlink.Neigh{LinkIndex: f.rtr.Attrs().Index, State: netlink.NUD_PERMANENT, IP: net.IP(ip.AsSlice()), HardwareAddr: hw}); err != nil {
				f.t.Fatal(err)
			}
			return
		}
	}
	f.t.Fatalf("no ENI holds %s on EC2", ip)
}

// listen opens a UDP socket of the outside host.
func (f *fabric) listen(addr string) *net.UDPConn {
	var c *net.UDPConn
	if err := f.vpc.Do(func(ns.NetNS) error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		return err
	}); err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { _ = c.Close() })
	return c
}

// sourceSeen sends a datagram from the pod to dst and returns the source address c saw.
func (f *fabric) sourceSeen(p *harness.Pod, c *net.UDPConn, dst string) netip.Addr {
	f.t.Helper()
	if err := p.NS.Do(func(ns.NetNS) error {
		s, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
		if err != nil {
			return err
		}
		defer s.Close()
		_, err = s.Write([]byte("hello"))
		return err
	}); err != nil {
		f.t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 16)
	_, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		f.t.Fatalf("nothing from %s reached %s: %v", p.Name, dst, err)
	}
	return from.Addr()
}

func psAddr(t *testing.T, h *netlink.Handle, l netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatalf("address %s on %s: %v", cidr, l.Attrs().Name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// psSysctls writes sysctls of the current (test-created) namespace.
func psSysctls(kv map[string]string) error {
	for k, v := range kv {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}
