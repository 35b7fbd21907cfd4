package netconf_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
)

func TestSNATValidate(t *testing.T) {
	good := netconf.SNAT{NodeIP: netip.MustParseAddr("192.168.10.10"), Exclude: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/16")}, PodLinkPrefix: "eni"}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*netconf.SNAT){
		"no node ip":   func(s *netconf.SNAT) { s.NodeIP = netip.Addr{} },
		"ipv6 node ip": func(s *netconf.SNAT) { s.NodeIP = netip.MustParseAddr("fd00::1") },
		"no exclusion": func(s *netconf.SNAT) { s.Exclude = nil },
		"ipv6 excl":    func(s *netconf.SNAT) { s.Exclude = []netip.Prefix{netip.MustParsePrefix("fd00::/8")} },
		"no prefix":    func(s *netconf.SNAT) { s.PodLinkPrefix = "" },
	} {
		s := good
		mut(&s)
		if err := s.Validate(); !errors.Is(err, netconf.ErrInvalidSNAT) {
			t.Errorf("%s: %v, want ErrInvalidSNAT", name, err)
		}
	}
}

// sysctl writes a value in the namespace the caller runs in.
func sysctl(t *testing.T, path, v string) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/"+path, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
}

// vethPair creates a veth pair in a and moves its peer to b, with the given names.
func vethPair(t *testing.T, ha *netlink.Handle, nameA string, b ns.NetNS, nameB string) (netlink.Link, netlink.Link) {
	t.Helper()
	if err := ha.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA}, PeerName: nameB}); err != nil {
		t.Fatal(err)
	}
	la, err := ha.LinkByName(nameA)
	if err != nil {
		t.Fatal(err)
	}
	lb, err := ha.LinkByName(nameB)
	if err != nil {
		t.Fatal(err)
	}
	if err := ha.LinkSetNsFd(lb, int(b.Fd())); err != nil {
		t.Fatal(err)
	}
	return la, lb
}

func addAddr(t *testing.T, h *netlink.Handle, l netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// A pod on a node (its address outside the VPC's CIDRs, as with custom networking in a
// secondary CIDR) sends to a host outside the VPC: with source NAT, the far end sees the node's
// primary address; to an address of the VPC it sees the pod's; without source NAT it sees the
// pod's. Everything happens in namespaces the test creates.
func TestSNATInNamespaces(t *testing.T) {
	nstest.RequireRoot(t)
	node, pod, outside := nstest.New(t), nstest.New(t), nstest.New(t)
	hn, hp, ho := nstest.Handle(t, node), nstest.Handle(t, pod), nstest.Handle(t, outside)

	// node eth0 192.168.10.10/24 <-> outside 192.168.10.1/24 (in the VPC), with the "internet
	// host" 203.0.113.7 on the outside's loopback.
	eth0, out0 := vethPair(t, hn, "eth0", outside, "out0")
	addAddr(t, hn, eth0, "192.168.10.10/24")
	out0, _ = ho.LinkByName("out0")
	addAddr(t, ho, out0, "192.168.10.1/24")
	lo, _ := ho.LinkByName("lo")
	addAddr(t, ho, lo, "203.0.113.7/32")
	if err := hn.RouteAdd(&netlink.Route{Dst: nil, Gw: net.ParseIP("192.168.10.1"), LinkIndex: eth0.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	// pod eth0 100.64.1.5/32 <-> node eni0pod1, as the CNI plugin wires a pod.
	hostVeth, _ := vethPair(t, hn, "eni0pod1", pod, "podtmp")
	if err := hn.LinkSetUp(hostVeth); err != nil {
		t.Fatal(err)
	}
	podEth, err := hp.LinkByName("podtmp")
	if err != nil {
		t.Fatal(err)
	}
	if err := hp.LinkSetName(podEth, "eth0"); err != nil {
		t.Fatal(err)
	}
	addAddr(t, hp, podEth, "100.64.1.5/32")
	if err := hp.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.ParseIP("169.254.1.1").To4(), Mask: net.CIDRMask(32, 32)}, LinkIndex: podEth.Attrs().Index, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	if err := hp.RouteAdd(&netlink.Route{Gw: net.ParseIP("169.254.1.1"), LinkIndex: podEth.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	if err := hp.NeighAdd(&netlink.Neigh{LinkIndex: podEth.Attrs().Index, State: netlink.NUD_PERMANENT, IP: net.ParseIP("169.254.1.1"), HardwareAddr: hostVeth.Attrs().HardwareAddr}); err != nil {
		t.Fatal(err)
	}
	if err := hn.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.ParseIP("100.64.1.5").To4(), Mask: net.CIDRMask(32, 32)}, LinkIndex: hostVeth.Attrs().Index, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	if err := node.Do(func(ns.NetNS) error {
		sysctl(t, "net/ipv4/ip_forward", "1")
		sysctl(t, "net/ipv4/conf/all/rp_filter", "0")
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// The far end listens on both of its addresses and reports who sent.
	listen := func(addr string) *net.UDPConn {
		var c *net.UDPConn
		if err := outside.Do(func(ns.NetNS) error {
			var err error
			c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	internet, vpcHost := listen("203.0.113.7:9999"), listen("192.168.10.1:9998")
	source := func(dst string, c *net.UDPConn) netip.Addr {
		t.Helper()
		if err := pod.Do(func(ns.NetNS) error {
			s, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(dst)))
			if err != nil {
				return err
			}
			defer s.Close()
			_, err = s.Write([]byte("hello"))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 16)
		_, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("nothing reached %s: %v", dst, err)
		}
		return from.Addr()
	}

	m, err := netconf.New(netconf.Config{NetNS: node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cfg := netconf.SNAT{NodeIP: netip.MustParseAddr("192.168.10.10"), Exclude: []netip.Prefix{
		netip.MustParsePrefix("192.168.0.0/16"), netip.MustParsePrefix("192.168.10.0/24"), netip.MustParsePrefix("100.64.0.0/16")}, PodLinkPrefix: "eni"}
	for range 2 { // idempotent
		if err := m.EnsureSNAT(cfg); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := m.SNATProgrammed(); err != nil || !ok {
		t.Fatalf("SNATProgrammed = %v, %v after EnsureSNAT", ok, err)
	}
	rules, _ := hn.RuleList(netlink.FAMILY_V4)
	n := 0
	for _, r := range rules {
		if r.Priority == netconf.SNATRulePriority {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d fwmark rules after two EnsureSNAT, want 1", n)
	}
	if got := source("203.0.113.7:9999", internet); got != cfg.NodeIP {
		t.Fatalf("outside the VPC the far end saw %v, want the node's %v", got, cfg.NodeIP)
	}
	if got := source("192.168.10.1:9998", vpcHost); got != netip.MustParseAddr("100.64.1.5") {
		t.Fatalf("inside the VPC the far end saw %v, want the pod's 100.64.1.5", got)
	}

	if err := m.RemoveSNAT(); err != nil {
		t.Fatal(err)
	}
	if err := m.RemoveSNAT(); err != nil { // nothing there: success
		t.Fatal(err)
	}
	if ok, err := m.SNATProgrammed(); err != nil || ok {
		t.Fatalf("SNATProgrammed = %v, %v after RemoveSNAT", ok, err)
	}
	if got := source("203.0.113.7:9999", internet); got != netip.MustParseAddr("100.64.1.5") {
		t.Fatalf("with source NAT off the far end saw %v, want the pod's 100.64.1.5", got)
	}
}
