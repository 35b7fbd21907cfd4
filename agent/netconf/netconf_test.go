package netconf_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
)

func TestTableForDevice(t *testing.T) {
	for dev, want := range map[int]int{0: 254, 1: 2, 2: 3, 14: 15} {
		if got := netconf.TableForDevice(dev); got != want {
			t.Errorf("TableForDevice(%d) = %d, want %d", dev, got, want)
		}
	}
}

func TestSimulatedLinkName(t *testing.T) {
	for id, want := range map[string]string{
		"eni-0123456789abcdef0": "sim-6789abcdef0",
		"eni-00000001":          "sim-00000001",
		"eni-ABC/def":           "sim-abcdef",
	} {
		got := netconf.SimulatedLinkName(id)
		if got != want {
			t.Errorf("SimulatedLinkName(%q) = %q, want %q", id, got, want)
		}
		if len(got) > 15 {
			t.Errorf("SimulatedLinkName(%q) = %q is longer than an interface name may be", id, got)
		}
	}
}

func secondaryENI() netconf.ENI {
	return netconf.ENI{
		ID:          "eni-0123456789abcdef0",
		MAC:         "02:42:c0:a8:10:0a",
		DeviceIndex: 1,
		SubnetCIDR:  netip.MustParsePrefix("192.168.16.0/20"),
		PrimaryIP:   netip.MustParseAddr("192.168.16.10"),
		MTU:         9001,
	}
}

func TestENIValidate(t *testing.T) {
	good := secondaryENI()
	tests := []struct {
		name   string
		mutate func(*netconf.ENI)
		want   string
	}{
		{"empty id", func(e *netconf.ENI) { e.ID = "" }, "id"},
		{"bad mac", func(e *netconf.ENI) { e.MAC = "zz:00" }, "MAC"},
		{"negative device", func(e *netconf.ENI) { e.DeviceIndex = -1 }, "negative"},
		{"mtu too small", func(e *netconf.ENI) { e.MTU = 100 }, "MTU"},
		{"no subnet", func(e *netconf.ENI) { e.SubnetCIDR = netip.Prefix{} }, "subnet"},
		{"ipv6 subnet", func(e *netconf.ENI) { e.SubnetCIDR = netip.MustParsePrefix("fd00::/64") }, "IPv4"},
		{"primary outside subnet", func(e *netconf.ENI) { e.PrimaryIP = netip.MustParseAddr("10.0.0.1") }, "not in subnet"},
		{"subnet /31", func(e *netconf.ENI) {
			e.SubnetCIDR = netip.MustParsePrefix("192.168.16.10/31")
		}, "too small"},
	}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid ENI: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := good
			tt.mutate(&e)
			err := e.Validate()
			if !errors.Is(err, netconf.ErrInvalidENI) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want ErrInvalidENI mentioning %q", err, tt.want)
			}
		})
	}
	if gw := good.Gateway(); gw != netip.MustParseAddr("192.168.16.1") {
		t.Errorf("Gateway() = %s, want 192.168.16.1", gw)
	}
}

func newManager(t *testing.T, node ns.NetNS, simulate bool, wait time.Duration) *netconf.Manager {
	t.Helper()
	m, err := netconf.New(netconf.Config{NetNS: node.Path(), SimulateENILinks: simulate, LinkWait: wait})
	if err != nil {
		t.Fatalf("netconf.New: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

type routeView struct {
	dst, gw, dev string
}

func tableRoutes(t *testing.T, h *netlink.Handle, table int) []routeView {
	t.Helper()
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatalf("list table %d: %v", table, err)
	}
	var out []routeView
	for _, r := range routes {
		v := routeView{dst: "default"}
		if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
			v.dst = r.Dst.String()
		}
		if r.Gw != nil {
			v.gw = r.Gw.String()
		}
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			v.dev = l.Attrs().Name
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b routeView) int { return strings.Compare(a.dst, b.dst) })
	return out
}

func TestEnsureENISimulated(t *testing.T) {
	nstest.GuardRootNS(t, "sim-")
	node := nstest.New(t)
	h := nstest.Handle(t, node)
	m := newManager(t, node, true, time.Second)
	eni := secondaryENI()
	name := netconf.SimulatedLinkName(eni.ID)

	check := func(t *testing.T) {
		t.Helper()
		link, err := h.LinkByName(name)
		if err != nil {
			t.Fatalf("simulated link %s: %v", name, err)
		}
		a := link.Attrs()
		if (link.Type() != "dummy" && link.Type() != "ifb") || a.HardwareAddr.String() != eni.MAC || a.MTU != 9001 || a.Flags&net.FlagUp == 0 {
			t.Errorf("link %s: type %s mac %s mtu %d flags %v; want dummy/ifb %s 9001 up", name, link.Type(), a.HardwareAddr, a.MTU, a.Flags, eni.MAC)
		}
		addrs, err := h.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		if len(addrs) != 1 || addrs[0].IPNet.String() != "192.168.16.10/20" {
			t.Errorf("addresses of %s = %v, want [192.168.16.10/20]", name, addrs)
		}
		want := []routeView{{dst: "192.168.16.0/20", dev: name}, {dst: "default", gw: "192.168.16.1", dev: name}}
		slices.SortFunc(want, func(a, b routeView) int { return strings.Compare(a.dst, b.dst) })
		if got := tableRoutes(t, h, 2); !slices.Equal(got, want) {
			t.Errorf("table 2 = %+v, want %+v", got, want)
		}
		for _, r := range tableRoutes(t, h, netconf.MainTable) {
			if r.dev == name {
				t.Errorf("main table still routes through the secondary ENI: %+v", r)
			}
		}
	}

	if err := m.EnsureENI(t.Context(), eni); err != nil {
		t.Fatalf("EnsureENI: %v", err)
	}
	check(t)
	// Idempotent, and it repairs drift: a stale route in the ENI's table and a downed link.
	link, _ := h.LinkByName(name)
	if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: mustIPNet("10.99.0.0/16"), Table: 2}); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetDown(link); err != nil {
		t.Fatal(err)
	}
	if err := m.EnsureENI(t.Context(), eni); err != nil {
		t.Fatalf("EnsureENI again: %v", err)
	}
	check(t)
	if err := m.EnsureENI(t.Context(), eni); err != nil {
		t.Fatalf("EnsureENI a third time: %v", err)
	}
	check(t)

	// The primary ENI is only looked up; when simulating, its dummy gets its address.
	primary := netconf.ENI{ID: "eni-00000000000000aa", MAC: "02:42:c0:a8:10:05", SubnetCIDR: eni.SubnetCIDR,
		PrimaryIP: netip.MustParseAddr("192.168.16.5")}
	if err := m.EnsureENI(t.Context(), primary); err != nil {
		t.Fatalf("EnsureENI(primary): %v", err)
	}
	if _, err := h.LinkByName(netconf.SimulatedLinkName(primary.ID)); err != nil {
		t.Errorf("simulated primary link: %v", err)
	}
	if err := m.RemoveENI(t.Context(), primary); !errors.Is(err, netconf.ErrPrimaryENI) {
		t.Errorf("RemoveENI(primary) = %v, want ErrPrimaryENI", err)
	}

	if err := m.RemoveENI(t.Context(), eni); err != nil {
		t.Fatalf("RemoveENI: %v", err)
	}
	if _, err := h.LinkByName(name); err == nil {
		t.Errorf("simulated link %s still exists after RemoveENI", name)
	}
	if got := tableRoutes(t, h, 2); len(got) != 0 {
		t.Errorf("table 2 after RemoveENI = %+v, want empty", got)
	}
	if err := m.RemoveENI(t.Context(), eni); err != nil {
		t.Errorf("RemoveENI of a removed ENI: %v", err)
	}
}

func TestEnsureENIRealLink(t *testing.T) {
	nstest.GuardRootNS(t, "sim-", "ens")
	node := nstest.New(t)
	h := nstest.Handle(t, node)
	eni := secondaryENI()
	eni.DeviceIndex = 2
	eni.MTU = 0 // default 9001

	t.Run("never appears", func(t *testing.T) {
		m := newManager(t, node, false, 300*time.Millisecond)
		start := time.Now()
		err := m.EnsureENI(t.Context(), eni)
		if !errors.Is(err, netconf.ErrLinkNotFound) {
			t.Fatalf("EnsureENI without a link = %v, want ErrLinkNotFound", err)
		}
		if waited := time.Since(start); waited < 300*time.Millisecond {
			t.Errorf("gave up after %s, before LinkWait", waited)
		}
		links, _ := h.LinkList()
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				t.Errorf("EnsureENI without simulation created link %s", l.Attrs().Name)
			}
		}
	})

	t.Run("appears while waiting", func(t *testing.T) {
		m := newManager(t, node, false, 5*time.Second)
		mac, _ := net.ParseMAC(eni.MAC)
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "ens6"
		attrs.HardwareAddr = mac
		attrs.MTU = 1500
		done := make(chan error, 1)
		go func() { done <- m.EnsureENI(t.Context(), eni) }()
		// The "hot-plugged" device shows up after EnsureENI started looking.
		addErr := addDevice(h, attrs)
		err := <-done // the goroutine ends before the test goes on
		if addErr != nil {
			t.Fatal(addErr)
		}
		if err != nil {
			t.Fatalf("EnsureENI: %v", err)
		}
		link, err := h.LinkByName("ens6")
		if err != nil {
			t.Fatal(err)
		}
		if link.Attrs().MTU != 9001 || link.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("ens6: mtu %d flags %v, want 9001 and up", link.Attrs().MTU, link.Attrs().Flags)
		}
		if got := tableRoutes(t, h, 3); len(got) != 2 {
			t.Errorf("table 3 = %+v, want subnet and default routes", got)
		}
		// A real ENI is brought down, never deleted.
		if err := m.RemoveENI(t.Context(), eni); err != nil {
			t.Fatalf("RemoveENI: %v", err)
		}
		link, err = h.LinkByName("ens6")
		if err != nil {
			t.Fatalf("RemoveENI deleted a real ENI's link: %v", err)
		}
		if link.Attrs().Flags&net.FlagUp != 0 {
			t.Errorf("ens6 still up after RemoveENI")
		}
		if got := tableRoutes(t, h, 3); len(got) != 0 {
			t.Errorf("table 3 after RemoveENI = %+v", got)
		}
	})
}

func TestSimulationRefusedInInitNS(t *testing.T) {
	nstest.RequireRoot(t)
	ref := ""
	for _, p := range []string{"/proc/1/ns/net", "/proc/2/ns/net"} {
		if _, err := os.Stat(p); err == nil {
			ref = p
			break
		}
	}
	if ref == "" {
		t.Skip("skipped: neither /proc/1/ns/net nor /proc/2/ns/net can be read here")
	}
	_, err := netconf.New(netconf.Config{NetNS: ref, SimulateENILinks: true})
	if !errors.Is(err, netconf.ErrSimulationInInitNS) {
		t.Fatalf("New(simulate in %s) = %v, want ErrSimulationInInitNS", ref, err)
	}
	// A namespace of our own is fine.
	m, err := netconf.New(netconf.Config{NetNS: nstest.New(t).Path(), SimulateENILinks: true})
	if err != nil {
		t.Fatalf("New(simulate in a test namespace): %v", err)
	}
	_ = m.Close()
}

type ruleView struct {
	prio  int
	src   string
	dst   string
	table int
}

func listRules(t *testing.T, h *netlink.Handle) []ruleView {
	t.Helper()
	rules, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var out []ruleView
	for _, r := range rules {
		if r.Priority == 0 || r.Priority >= 32766 {
			continue // the kernel's local, main and default rules
		}
		v := ruleView{prio: r.Priority, table: r.Table}
		if r.Src != nil {
			v.src = r.Src.String()
		}
		if r.Dst != nil {
			v.dst = r.Dst.String()
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b ruleView) int {
		if a.prio != b.prio {
			return a.prio - b.prio
		}
		return strings.Compare(a.src+a.dst, b.src+b.dst)
	})
	return out
}

func TestPodRules(t *testing.T) {
	nstest.GuardRootNS(t)
	node := nstest.New(t)
	h := nstest.Handle(t, node)
	m := newManager(t, node, false, time.Second)
	a := netip.MustParseAddr("192.168.16.20")
	b := netip.MustParseAddr("192.168.32.21")

	// A foreign rule at another priority must survive everything below.
	foreign := netlink.NewRule()
	foreign.Priority = 1000
	foreign.Table = 100
	foreign.Src = mustIPNet("10.1.0.0/16")
	if err := h.RuleAdd(foreign); err != nil {
		t.Fatal(err)
	}
	foreignView := ruleView{prio: 1000, src: "10.1.0.0/16", table: 100}

	for range 2 { // idempotent
		if err := m.AddPodRules(netconf.PodRoute{IP: a, Table: netconf.MainTable}); err != nil {
			t.Fatalf("AddPodRules(a): %v", err)
		}
		if err := m.AddPodRules(netconf.PodRoute{IP: b, Table: 3}); err != nil {
			t.Fatalf("AddPodRules(b): %v", err)
		}
	}
	want := []ruleView{
		{prio: 512, dst: "192.168.16.20/32", table: 254},
		{prio: 512, dst: "192.168.32.21/32", table: 254},
		foreignView,
		{prio: 1536, src: "192.168.32.21/32", table: 3},
	}
	if got := listRules(t, h); !slices.Equal(got, want) {
		t.Fatalf("rules = %+v\nwant %+v", got, want)
	}

	// Rules() reports the pods, with the host veth of the /32 route when there is one.
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "enitest0"
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "enitest0p"}); err != nil {
		t.Fatal(err)
	}
	veth, _ := h.LinkByName("enitest0")
	if err := h.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: veth.Attrs().Index, Dst: mustIPNet("192.168.16.20/32"), Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	got, err := m.Rules()
	if err != nil {
		t.Fatal(err)
	}
	wantPods := []netconf.PodRoute{{IP: a, HostVeth: "enitest0", Table: 254}, {IP: b, Table: 3}}
	if !slices.Equal(got, wantPods) {
		t.Fatalf("Rules() = %+v, want %+v", got, wantPods)
	}

	// The address moves to another ENI's table: the old from-rule is replaced.
	if err := m.AddPodRules(netconf.PodRoute{IP: b, Table: 4}); err != nil {
		t.Fatal(err)
	}
	want[3].table = 4
	if got := listRules(t, h); !slices.Equal(got, want) {
		t.Fatalf("rules after table change = %+v\nwant %+v", got, want)
	}

	for range 2 { // missing rules are success
		if err := m.DelPodRules(b); err != nil {
			t.Fatalf("DelPodRules(b): %v", err)
		}
	}
	want = []ruleView{want[0], foreignView}
	if got := listRules(t, h); !slices.Equal(got, want) {
		t.Fatalf("rules after DelPodRules = %+v\nwant %+v", got, want)
	}

	// Bad input changes nothing.
	c := netip.MustParseAddr("192.168.48.30")
	for _, bad := range [][]netconf.PodRoute{
		{{IP: c, Table: 2}, {IP: netip.MustParseAddr("fd00::1"), Table: 2}},
		{{IP: c, Table: 0}},
		{{IP: c, Table: 255}},
	} {
		if err := m.SyncPodRules(bad); !errors.Is(err, netconf.ErrInvalidPodRoute) {
			t.Errorf("SyncPodRules(%v) = %v, want ErrInvalidPodRoute", bad, err)
		}
	}
	if err := m.AddPodRules(netconf.PodRoute{IP: c}); !errors.Is(err, netconf.ErrInvalidPodRoute) {
		t.Errorf("AddPodRules without a table = %v, want ErrInvalidPodRoute", err)
	}
	if got := listRules(t, h); !slices.Equal(got, want) {
		t.Fatalf("rules after bad input = %+v\nwant %+v", got, want)
	}

	// Sync: a (main) is stale, b (table 2) and c (main) are missing; the foreign rule stays.
	if err := m.SyncPodRules([]netconf.PodRoute{{IP: b, Table: 2}, {IP: c, Table: netconf.MainTable}}); err != nil {
		t.Fatalf("SyncPodRules: %v", err)
	}
	want = []ruleView{
		{prio: 512, dst: "192.168.32.21/32", table: 254},
		{prio: 512, dst: "192.168.48.30/32", table: 254},
		foreignView,
		{prio: 1536, src: "192.168.32.21/32", table: 2},
	}
	if got := listRules(t, h); !slices.Equal(got, want) {
		t.Fatalf("rules after SyncPodRules = %+v\nwant %+v", got, want)
	}
	if err := m.SyncPodRules(nil); err != nil {
		t.Fatal(err)
	}
	if got := listRules(t, h); !slices.Equal(got, []ruleView{foreignView}) {
		t.Fatalf("rules after SyncPodRules(nil) = %+v, want only the foreign rule", got)
	}
}

func TestEnableIPv4Forwarding(t *testing.T) {
	node := nstest.New(t)
	read := func() string {
		var v []byte
		err := node.Do(func(ns.NetNS) error {
			var err error
			v, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(v))
	}
	rootBefore, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	if read() != "0" {
		t.Skip("skipped: new namespaces start with forwarding on here (net.core.devconf_inherit_init_net?)")
	}
	m := newManager(t, node, false, time.Second)
	if err := m.EnableIPv4Forwarding(); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "1" {
		t.Errorf("ip_forward in the node namespace = %s, want 1", got)
	}
	rootAfter, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if string(rootBefore) != string(rootAfter) {
		t.Errorf("root namespace ip_forward changed from %q to %q", rootBefore, rootAfter)
	}
}

func mustIPNet(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

// addDevice creates a device standing for a hot-plugged NIC: a dummy, or an ifb on kernels
// without the dummy driver.
func addDevice(h *netlink.Handle, attrs netlink.LinkAttrs) error {
	err := h.LinkAdd(&netlink.Dummy{LinkAttrs: attrs})
	if errors.Is(err, unix.EOPNOTSUPP) {
		err = h.LinkAdd(&netlink.Ifb{LinkAttrs: attrs})
	}
	return err
}
