package netconf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// MainTable is the kernel's main route table. Pods on the primary ENI (device index 0) use it.
const MainTable = 254

// Priorities of the pod policy rules (the Amazon VPC CNI uses the same ones).
const (
	// ToPodRulePriority is the priority of `to <pod>/32 lookup main`: traffic to a pod always
	// finds the pod's /32 route to its host veth in the main table.
	ToPodRulePriority = 512
	// FromPodRulePriority is the priority of `from <pod>/32 lookup <ENI table>` for pods whose
	// address lives on a secondary ENI: their traffic leaves through that ENI.
	FromPodRulePriority = 1536
)

// Defaults.
const (
	// DefaultLinkWait is how long EnsureENI waits for a freshly attached ENI's link to appear.
	DefaultLinkWait = 10 * time.Second
	// DefaultMTU is the MTU of an ENI when ENI.MTU is 0 (EC2's jumbo frames).
	DefaultMTU = 9001
	// MinMTU and MaxMTU bound an ENI's MTU.
	MinMTU = 576
	MaxMTU = 9001
)

// linkPoll is the interval at which EnsureENI looks for a link that has not appeared yet.
const linkPoll = 100 * time.Millisecond

// Errors.
var (
	// ErrInvalidENI: an ENI's fields do not describe an attachable ENI.
	ErrInvalidENI = errors.New("netconf: invalid ENI")
	// ErrLinkNotFound: no link with the ENI's MAC appeared within Config.LinkWait.
	ErrLinkNotFound = errors.New("netconf: ENI link not found")
	// ErrPrimaryENI: the primary ENI (device index 0) is the OS's; netconf does not remove it.
	ErrPrimaryENI = errors.New("netconf: the primary ENI is left as the OS configured it")
	// ErrInvalidPodRoute: a PodRoute is not an IPv4 address with a usable route table.
	ErrInvalidPodRoute = errors.New("netconf: invalid pod route")
	// ErrSimulationInInitNS: SimulateENILinks was asked for the machine's initial namespace.
	ErrSimulationInInitNS = errors.New("netconf: simulated ENI links are never created in the initial network namespace")
)

// TableForDevice is the route table of the ENI at a device index: the main table for the primary
// ENI (device 0) and deviceIndex+1 for the others, as the Amazon VPC CNI numbers them.
func TableForDevice(deviceIndex int) int {
	if deviceIndex <= 0 {
		return MainTable
	}
	return deviceIndex + 1
}

// ENI is one network interface attached to the node, as the agent learns it from the server.
type ENI struct {
	// ID is EC2's ENI id (eni-...).
	ID string
	// MAC is the ENI's MAC address; the kernel link is found by it.
	MAC string
	// DeviceIndex of the attachment; 0 is the primary ENI.
	DeviceIndex int
	// SubnetCIDR is the ENI's subnet; its first address + 1 is the gateway.
	SubnetCIDR netip.Prefix
	// PrimaryIP is the ENI's own address (configured on the link for device index > 0).
	PrimaryIP netip.Addr
	// MTU of the link; 0 means DefaultMTU.
	MTU int
}

// Validate reports whether the ENI can be configured.
func (e ENI) Validate() error {
	switch {
	case e.ID == "" || strings.ContainsAny(e.ID, "/: \t\n"):
		return fmt.Errorf("%w: id %q", ErrInvalidENI, e.ID)
	case e.DeviceIndex < 0:
		return fmt.Errorf("%w %s: device index %d is negative", ErrInvalidENI, e.ID, e.DeviceIndex)
	case e.MTU != 0 && (e.MTU < MinMTU || e.MTU > MaxMTU):
		return fmt.Errorf("%w %s: MTU %d outside %d..%d", ErrInvalidENI, e.ID, e.MTU, MinMTU, MaxMTU)
	}
	if _, err := e.hardwareAddr(); err != nil {
		return err
	}
	if e.DeviceIndex == 0 && !e.SubnetCIDR.IsValid() && !e.PrimaryIP.IsValid() {
		return nil // the primary ENI is only looked up by MAC
	}
	switch {
	case !e.SubnetCIDR.IsValid() || !e.SubnetCIDR.Addr().Is4():
		return fmt.Errorf("%w %s: subnet %q is not an IPv4 CIDR", ErrInvalidENI, e.ID, e.SubnetCIDR)
	case e.SubnetCIDR.Bits() > 30:
		return fmt.Errorf("%w %s: subnet %s is too small for a gateway", ErrInvalidENI, e.ID, e.SubnetCIDR)
	case !e.PrimaryIP.Is4() || !e.SubnetCIDR.Masked().Contains(e.PrimaryIP):
		return fmt.Errorf("%w %s: primary address %s is not in subnet %s", ErrInvalidENI, e.ID, e.PrimaryIP, e.SubnetCIDR)
	}
	return nil
}

func (e ENI) hardwareAddr() (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(e.MAC)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("%w %s: MAC %q is not an Ethernet address", ErrInvalidENI, e.ID, e.MAC)
	}
	return mac, nil
}

// Gateway is the subnet's router: its first address + 1 (the VPC router).
func (e ENI) Gateway() netip.Addr {
	return e.SubnetCIDR.Masked().Addr().Next()
}

func (e ENI) mtu() int {
	if e.MTU == 0 {
		return DefaultMTU
	}
	return e.MTU
}

// SimulatedLinkName is the name of the dummy link that stands for an ENI when SimulateENILinks is
// on: "sim-" and the last 11 characters of the ENI id's hex part (at most 15 characters, and
// never of the shape of a pod's host veth).
func SimulatedLinkName(eniID string) string {
	var b strings.Builder
	for _, r := range strings.TrimPrefix(eniID, "eni-") {
		if (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		}
	}
	s := strings.ToLower(b.String())
	if len(s) > 11 {
		s = s[len(s)-11:]
	}
	return "sim-" + s
}

// Config says where and how the Manager works.
type Config struct {
	// NetNS is the path of the network namespace to configure ("" = the calling process's).
	NetNS string
	// SimulateENILinks creates a dummy (or ifb) link for an ENI whose link does not exist (the EC2
	// simulator cannot create devices). Refused for the machine's initial namespace.
	SimulateENILinks bool
	// LinkWait bounds how long EnsureENI waits for an ENI's link (default DefaultLinkWait).
	LinkWait time.Duration
	// Logger receives what the Manager changes (default: discard).
	Logger *slog.Logger
}

// Manager configures ENIs and pod rules in one network namespace. It is safe for concurrent use.
type Manager struct {
	cfg Config
	h   *netlink.Handle
	log *slog.Logger
}

// New opens a netlink handle in cfg.NetNS. Close releases it.
func New(cfg Config) (*Manager, error) {
	if cfg.LinkWait <= 0 {
		cfg.LinkWait = DefaultLinkWait
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.SimulateENILinks {
		initNS, err := isInitNetNS(cfg.NetNS)
		if err != nil {
			return nil, err
		}
		if initNS {
			return nil, ErrSimulationInInitNS
		}
	}
	var (
		h   *netlink.Handle
		err error
	)
	if cfg.NetNS == "" {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		var nsh netns.NsHandle
		nsh, err = netns.GetFromPath(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("netconf: open network namespace %s: %w", cfg.NetNS, err)
		}
		defer nsh.Close() //nolint:errcheck // the handle's socket keeps the namespace
		h, err = netlink.NewHandleAt(nsh, unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("netconf: netlink handle in %q: %w", cfg.NetNS, err)
	}
	return &Manager{cfg: cfg, h: h, log: cfg.Logger.With("netns", cfg.NetNS)}, nil
}

// initNetNSInode is the fixed inode number of the initial network namespace (PROC_NET_INIT_INO);
// kernels since 6.x give it this number, and dynamically numbered namespaces never have it.
const initNetNSInode = 0xEFFFFFF9

// isInitNetNS reports whether path ("" = this process's namespace) is the machine's initial
// network namespace. It compares with the fixed inode of the initial namespace and with the
// namespaces of pid 1 and pid 2 (kthreadd); when none of them can be read it assumes the worst.
func isInitNetNS(path string) (bool, error) {
	if path == "" {
		path = "/proc/self/ns/net"
	}
	var target unix.Stat_t
	if err := unix.Stat(path, &target); err != nil {
		return false, fmt.Errorf("netconf: stat network namespace %s: %w", path, err)
	}
	if target.Ino == initNetNSInode {
		return true, nil
	}
	known := false
	for _, ref := range []string{"/proc/1/ns/net", "/proc/2/ns/net"} {
		var st unix.Stat_t
		if unix.Stat(ref, &st) != nil {
			continue
		}
		known = true
		if st.Dev == target.Dev && st.Ino == target.Ino {
			return true, nil
		}
	}
	if !known {
		return true, fmt.Errorf("netconf: cannot tell whether %s is the initial network namespace", path)
	}
	return false, nil
}

// Close releases the netlink handle.
func (m *Manager) Close() error {
	m.h.Close()
	return nil
}

// EnsureENI finds (or, when simulating, creates) the ENI's link and, for a secondary ENI, brings
// it up with its MTU and primary address and keeps its route table (TableForDevice) holding
// exactly the subnet route and `default via <gateway>`. The kernel's subnet route for the ENI in
// the main table is removed (the primary ENI already routes the subnet there). Idempotent.
func (m *Manager) EnsureENI(ctx context.Context, e ENI) error {
	if err := e.Validate(); err != nil {
		return err
	}
	link, err := m.waitLink(ctx, e)
	if err != nil {
		return err
	}
	if e.DeviceIndex == 0 {
		// The primary ENI is the OS's. When simulating we are the OS: give the dummy its address.
		if m.isSimulated(link, e) && e.PrimaryIP.IsValid() {
			return m.configureLink(link, e)
		}
		return nil
	}
	if err := m.configureLink(link, e); err != nil {
		return err
	}
	if err := m.dropMainSubnetRoute(link, e); err != nil {
		return err
	}
	return m.syncENITable(link, e)
}

// waitLink returns the link carrying the ENI's MAC, polling until Config.LinkWait passes.
func (m *Manager) waitLink(ctx context.Context, e ENI) (netlink.Link, error) {
	mac, _ := e.hardwareAddr()
	timer := time.NewTimer(m.cfg.LinkWait)
	defer timer.Stop()
	for {
		link, err := m.linkByMAC(mac)
		if err != nil {
			return nil, err
		}
		if link != nil {
			return link, nil
		}
		if m.cfg.SimulateENILinks {
			return m.createSimulatedLink(e, mac)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("netconf: wait for link of %s (%s): %w", e.ID, e.MAC, ctx.Err())
		case <-timer.C:
			return nil, fmt.Errorf("%w: no link with MAC %s for %s after %s", ErrLinkNotFound, e.MAC, e.ID, m.cfg.LinkWait)
		case <-time.After(linkPoll):
		}
	}
}

// linkByMAC returns the non-veth link with the MAC, or nil.
func (m *Manager) linkByMAC(mac net.HardwareAddr) (netlink.Link, error) {
	links, err := dump(m.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("netconf: list links: %w", err)
	}
	for _, l := range links {
		if l.Type() == "veth" {
			continue // a pod's veth is never an ENI
		}
		if bytes.Equal(l.Attrs().HardwareAddr, mac) {
			return l, nil
		}
	}
	return nil, nil
}

// createSimulatedLink creates the link that stands for an ENI: a dummy, or an ifb where the
// kernel has no dummy driver (both are devices that can carry a MAC, an address and routes).
func (m *Manager) createSimulatedLink(e ENI, mac net.HardwareAddr) (netlink.Link, error) {
	name := SimulatedLinkName(e.ID)
	if existing, err := m.h.LinkByName(name); err == nil {
		// Named like our link but with another MAC: ours from an earlier ENI with a colliding
		// name suffix, or someone else's.
		if !simulatedType(existing) {
			return nil, fmt.Errorf("netconf: simulated link name %s for %s is taken by a %s link", name, e.ID, existing.Type())
		}
		if err := m.h.LinkDel(existing); err != nil {
			return nil, fmt.Errorf("netconf: replace simulated link %s for %s: %w", name, e.ID, err)
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.HardwareAddr = mac
	attrs.MTU = e.mtu()
	err := m.h.LinkAdd(&netlink.Dummy{LinkAttrs: attrs})
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = m.h.LinkAdd(&netlink.Ifb{LinkAttrs: attrs})
	}
	if err != nil {
		return nil, fmt.Errorf("netconf: create simulated link %s for %s: %w", name, e.ID, err)
	}
	link, err := m.h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("netconf: look up simulated link %s: %w", name, err)
	}
	m.log.Info("created simulated ENI link", "eni", e.ID, "link", name, "type", link.Type(), "mac", e.MAC)
	return link, nil
}

func simulatedType(l netlink.Link) bool {
	return l.Type() == "dummy" || l.Type() == "ifb"
}

func (m *Manager) isSimulated(link netlink.Link, e ENI) bool {
	return m.cfg.SimulateENILinks && simulatedType(link) && link.Attrs().Name == SimulatedLinkName(e.ID)
}

// configureLink sets the MTU, brings the link up and gives it the primary address.
func (m *Manager) configureLink(link netlink.Link, e ENI) error {
	name := link.Attrs().Name
	if link.Attrs().MTU != e.mtu() {
		if err := m.h.LinkSetMTU(link, e.mtu()); err != nil {
			return fmt.Errorf("netconf: set MTU %d on %s (%s): %w", e.mtu(), name, e.ID, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := m.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("netconf: bring up %s (%s): %w", name, e.ID, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(e.PrimaryIP.AsSlice()),
		Mask: net.CIDRMask(e.SubnetCIDR.Bits(), 32),
	}}
	if err := m.h.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("netconf: add %s to %s (%s): %w", addr.IPNet, name, e.ID, err)
	}
	m.log.Debug("ENI link configured", "eni", e.ID, "link", name, "mtu", e.mtu(), "addr", addr.IPNet.String())
	return nil
}

// dropMainSubnetRoute removes the connected route the kernel added to the main table when the
// secondary ENI got its address.
func (m *Manager) dropMainSubnetRoute(link netlink.Link, e ENI) error {
	routes, err := m.routes(&netlink.Route{Table: MainTable, LinkIndex: link.Attrs().Index},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
	if err != nil {
		return fmt.Errorf("netconf: list main routes of %s: %w", link.Attrs().Name, err)
	}
	subnet := e.SubnetCIDR.Masked()
	for _, r := range routes {
		if r.Dst == nil || prefixOf(r.Dst) != subnet {
			continue
		}
		if err := m.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("netconf: delete main-table route %s dev %s: %w", subnet, link.Attrs().Name, err)
		}
	}
	return nil
}

// syncENITable makes the ENI's table hold exactly its subnet route and its default route.
func (m *Manager) syncENITable(link netlink.Link, e ENI) error {
	table := TableForDevice(e.DeviceIndex)
	idx := link.Attrs().Index
	subnet := e.SubnetCIDR.Masked()
	gw := e.Gateway()
	want := []netlink.Route{
		{LinkIndex: idx, Dst: ipNet(subnet), Scope: netlink.SCOPE_LINK, Table: table},
		{LinkIndex: idx, Dst: ipNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: net.IP(gw.AsSlice()), Table: table},
	}
	for i := range want {
		if err := m.h.RouteReplace(&want[i]); err != nil {
			return fmt.Errorf("netconf: route %s in table %d for %s: %w", routeString(want[i]), table, e.ID, err)
		}
	}
	have, err := m.tableRoutes(table)
	if err != nil {
		return err
	}
	for _, r := range have {
		if sameRoute(r, want[0]) || sameRoute(r, want[1]) {
			continue
		}
		if err := m.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("netconf: delete stale route %s from table %d: %w", routeString(r), table, err)
		}
		m.log.Info("deleted stale ENI route", "eni", e.ID, "table", table, "route", routeString(r))
	}
	m.log.Debug("ENI table in sync", "eni", e.ID, "table", table, "gateway", gw.String())
	return nil
}

func (m *Manager) tableRoutes(table int) ([]netlink.Route, error) {
	routes, err := m.routes(&netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("netconf: list routes of table %d: %w", table, err)
	}
	return routes, nil
}

// RemoveENI flushes the ENI's route table and brings its link down; a simulated dummy link is
// deleted. A link that is already gone (the ENI was detached) is success.
func (m *Manager) RemoveENI(ctx context.Context, e ENI) error {
	if err := e.Validate(); err != nil {
		return err
	}
	if e.DeviceIndex == 0 {
		return fmt.Errorf("%w (%s)", ErrPrimaryENI, e.ID)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("netconf: remove %s: %w", e.ID, err)
	}
	table := TableForDevice(e.DeviceIndex)
	routes, err := m.tableRoutes(table)
	if err != nil {
		return err
	}
	for _, r := range routes {
		if err := m.h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("netconf: flush table %d of %s: %w", table, e.ID, err)
		}
	}
	mac, _ := e.hardwareAddr()
	link, err := m.linkByMAC(mac)
	if err != nil || link == nil {
		return err
	}
	if m.isSimulated(link, e) {
		if err := m.h.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("netconf: delete simulated link %s of %s: %w", link.Attrs().Name, e.ID, err)
		}
		m.log.Info("deleted simulated ENI link", "eni", e.ID, "link", link.Attrs().Name)
		return nil
	}
	if err := m.h.LinkSetDown(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("netconf: bring down %s of %s: %w", link.Attrs().Name, e.ID, err)
	}
	m.log.Info("ENI removed", "eni", e.ID, "link", link.Attrs().Name, "table", table)
	return nil
}

// EnableIPv4Forwarding turns on net.ipv4.ip_forward in the namespace (pods reach each other and
// the VPC through it). It writes only when forwarding is off.
func (m *Manager) EnableIPv4Forwarding() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	set := func(ns.NetNS) error {
		cur, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(cur)) == "1" {
			return nil
		}
		return os.WriteFile(path, []byte("1"), 0o644)
	}
	var err error
	if m.cfg.NetNS == "" {
		err = set(nil)
	} else {
		err = ns.WithNetNSPath(m.cfg.NetNS, set)
	}
	if err != nil {
		return fmt.Errorf("netconf: enable IPv4 forwarding: %w", err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// prefixOf converts a route's or rule's destination to a prefix (nil = the default route).
func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.MustParsePrefix("0.0.0.0/0")
	}
	addr, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones)
}

func sameRoute(a, b netlink.Route) bool {
	return a.LinkIndex == b.LinkIndex && prefixOf(a.Dst) == prefixOf(b.Dst) && a.Gw.Equal(b.Gw)
}

func routeString(r netlink.Route) string {
	s := prefixOf(r.Dst).String()
	if r.Gw != nil {
		s += " via " + r.Gw.String()
	}
	return fmt.Sprintf("%s dev-index %d", s, r.LinkIndex)
}

// dumpAttempts bounds the retries of a netlink dump the kernel interrupted (the table changed
// while it was read).
const dumpAttempts = 5

// dump runs a netlink dump, retrying when the kernel reports it interrupted.
func dump[T any](f func() ([]T, error)) ([]T, error) {
	var (
		out []T
		err error
	)
	for range dumpAttempts {
		out, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}

// routes lists IPv4 routes matching filter, retrying interrupted dumps.
func (m *Manager) routes(filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	var (
		out []netlink.Route
		err error
	)
	for range dumpAttempts {
		out, err = m.h.RouteListFiltered(netlink.FAMILY_V4, filter, mask)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}
