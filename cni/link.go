package cni

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// GatewayIP is the pod's next hop: a link-local address nobody owns. The pod reaches it through a
// static neighbour entry naming the host veth's MAC, so every packet goes to the node.
var GatewayIP = netip.MustParseAddr("169.254.1.1")

var defaultDst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(32, 32)}
}

// nodeSide works in the namespace the plugin runs in (the node's).
type nodeSide struct{ h *netlink.Handle }

// podSide works in the pod's namespace through a handle bound to it.
type podSide struct {
	h  *netlink.Handle
	ns ns.NetNS
}

func newNodeSide() (*nodeSide, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in the node namespace: %w", err)
	}
	return &nodeSide{h: h}, nil
}

func newPodSide(n ns.NetNS) (*podSide, error) {
	// The NetNS keeps the descriptor open; the handle's socket keeps the namespace.
	h, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd())), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", n.Path(), err)
	}
	return &podSide{h: h, ns: n}, nil
}

// createVeth creates the pair from the node: hostName here, ifname in the pod's namespace, both
// with the MTU. Nothing is created when either name is taken.
func createVeth(node *nodeSide, pod *podSide, hostName, ifname string, mtu int) (host, peer netlink.Link, err error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = mtu
	veth := &netlink.Veth{
		LinkAttrs:     attrs,
		PeerName:      ifname,
		PeerNamespace: netlink.NsFd(int(pod.ns.Fd())),
		PeerMTU:       uint32(mtu),
	}
	if err := node.h.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			if _, lerr := node.h.LinkByName(hostName); lerr == nil {
				return nil, nil, fmt.Errorf("create veth: host interface %s already exists in the node namespace", hostName)
			}
			if _, lerr := pod.h.LinkByName(ifname); lerr == nil {
				return nil, nil, fmt.Errorf("create veth: interface %s already exists in the pod namespace %s", ifname, pod.ns.Path())
			}
		}
		return nil, nil, fmt.Errorf("create veth %s <-> %s: %w", hostName, ifname, err)
	}
	host, err = node.h.LinkByName(hostName)
	if err == nil {
		peer, err = pod.h.LinkByName(ifname)
	}
	if err != nil {
		_ = node.h.LinkDel(veth)
		return nil, nil, fmt.Errorf("look up new veth %s <-> %s: %w", hostName, ifname, err)
	}
	return host, peer, nil
}

// disableIPv6 turns IPv6 off on an interface of the current namespace; best effort (kernels
// without IPv6 have no such file). Done before the link is up, so no link-local address appears.
func disableIPv6(ifname string) {
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+ifname+"/disable_ipv6", []byte("1"), 0o644)
}

// configurePod gives the pod's interface its /32, the link route to the gateway, the default
// route through it and the static neighbour entry for the host veth's MAC.
func configurePod(pod *podSide, link netlink.Link, ip netip.Addr, hostMAC net.HardwareAddr) error {
	name := link.Attrs().Name
	_ = pod.ns.Do(func(ns.NetNS) error { disableIPv6(name); return nil })
	if err := pod.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up %s in the pod: %w", name, err)
	}
	if err := pod.h.AddrReplace(link, &netlink.Addr{IPNet: hostNet(ip)}); err != nil {
		return fmt.Errorf("add %s/32 to %s in the pod: %w", ip, name, err)
	}
	idx := link.Attrs().Index
	gw := net.IP(GatewayIP.AsSlice())
	routes := []netlink.Route{
		{LinkIndex: idx, Dst: hostNet(GatewayIP), Scope: netlink.SCOPE_LINK},
		{LinkIndex: idx, Dst: defaultDst, Gw: gw},
	}
	for i := range routes {
		if err := pod.h.RouteReplace(&routes[i]); err != nil {
			return fmt.Errorf("add route %s in the pod: %w", routes[i].Dst, err)
		}
	}
	neigh := &netlink.Neigh{LinkIndex: idx, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: hostMAC}
	if err := pod.h.NeighSet(neigh); err != nil {
		return fmt.Errorf("add neighbour %s lladdr %s in the pod: %w", GatewayIP, hostMAC, err)
	}
	return nil
}

// configureHost brings the host veth up and routes the pod's /32 to it (main table).
func configureHost(node *nodeSide, link netlink.Link, ip netip.Addr) error {
	name := link.Attrs().Name
	if err := node.h.LinkSetUp(link); err != nil {
		return fmt.Errorf("bring up host veth %s: %w", name, err)
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: hostNet(ip), Scope: netlink.SCOPE_LINK}
	if err := node.h.RouteReplace(r); err != nil {
		return fmt.Errorf("route %s/32 to host veth %s: %w", ip, name, err)
	}
	return nil
}

// podIPsVia returns the /32 destinations of the main table routed through the link.
func podIPsVia(node *nodeSide, link netlink.Link) ([]netip.Addr, error) {
	routes, err := node.h.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Table: unix.RT_TABLE_MAIN, LinkIndex: link.Attrs().Index},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	if err != nil {
		return nil, fmt.Errorf("list routes of %s: %w", link.Attrs().Name, err)
	}
	var out []netip.Addr
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if ones, bits := r.Dst.Mask.Size(); ones != 32 || bits != 32 {
			continue
		}
		if a, ok := netip.AddrFromSlice(r.Dst.IP.To4()); ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// linkByName returns the link or nil when there is none.
func linkByName(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	return l, nil
}

// deleteLink deletes a link; a link already gone is success.
func deleteLink(h *netlink.Handle, l netlink.Link) error {
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete %s: %w", l.Attrs().Name, err)
	}
	return nil
}

// isHostVeth reports whether a link is one of our host veths: a veth named prefix + 11 hex.
func isHostVeth(l netlink.Link, prefix string) bool {
	name := l.Attrs().Name
	if l.Type() != "veth" || len(name) != len(prefix)+11 || !strings.HasPrefix(name, prefix) {
		return false
	}
	for _, c := range name[len(prefix):] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// checkPod verifies the pod's side: the interface (a veth, up) with the /32, the link route to the
// gateway, the default route through it and the neighbour entry with the host veth's MAC.
func checkPod(pod *podSide, ifname string, ip netip.Addr, hostMAC net.HardwareAddr) (netlink.Link, error) {
	link, err := linkByName(pod.h, ifname)
	if err != nil {
		return nil, err
	}
	if link == nil {
		return nil, fmt.Errorf("interface %s is missing in the pod namespace %s", ifname, pod.ns.Path())
	}
	if link.Type() != "veth" {
		return nil, fmt.Errorf("interface %s in the pod is a %s, not a veth", ifname, link.Type())
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return nil, fmt.Errorf("interface %s in the pod is down", ifname)
	}
	addrs, err := pod.h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s in the pod: %w", ifname, err)
	}
	found := false
	for _, a := range addrs {
		if ones, _ := a.Mask.Size(); ones == 32 && a.IP.Equal(net.IP(ip.AsSlice())) {
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("interface %s in the pod lacks its address %s/32", ifname, ip)
	}
	routes, err := pod.h.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Table: unix.RT_TABLE_MAIN, LinkIndex: link.Attrs().Index},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	if err != nil {
		return nil, fmt.Errorf("list routes of %s in the pod: %w", ifname, err)
	}
	var gwRoute, defRoute bool
	for _, r := range routes {
		dst := r.Dst
		if dst == nil {
			dst = defaultDst
		}
		ones, _ := dst.Mask.Size()
		switch {
		case ones == 32 && dst.IP.Equal(net.IP(GatewayIP.AsSlice())) && r.Scope == netlink.SCOPE_LINK:
			gwRoute = true
		case ones == 0 && r.Gw.Equal(net.IP(GatewayIP.AsSlice())):
			defRoute = true
		}
	}
	if !gwRoute {
		return nil, fmt.Errorf("the pod lacks its link route to %s via %s", GatewayIP, ifname)
	}
	if !defRoute {
		return nil, fmt.Errorf("the pod lacks its default route via %s dev %s", GatewayIP, ifname)
	}
	neighs, err := pod.h.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list neighbours of %s in the pod: %w", ifname, err)
	}
	for _, n := range neighs {
		if n.IP.Equal(net.IP(GatewayIP.AsSlice())) {
			if n.State&netlink.NUD_PERMANENT == 0 || !bytes.Equal(n.HardwareAddr, hostMAC) {
				return nil, fmt.Errorf("the pod's neighbour entry for %s is %s (state %#x), want permanent %s",
					GatewayIP, n.HardwareAddr, n.State, hostMAC)
			}
			return link, nil
		}
	}
	return nil, fmt.Errorf("the pod lacks its static neighbour entry %s lladdr %s", GatewayIP, hostMAC)
}
