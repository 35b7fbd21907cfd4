package netconf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PodRoute is one pod's routing on the node.
type PodRoute struct {
	// IP is the pod's IPv4 address.
	IP netip.Addr
	// HostVeth is the node side of the pod's veth. AddPodRules does not use it; Rules fills it
	// from the main table's /32 route to the pod ("" when there is none).
	HostVeth string
	// Table is the route table of the pod's ENI: MainTable for the primary ENI.
	Table int
}

func (p PodRoute) validate() error {
	switch {
	case !p.IP.Is4():
		return fmt.Errorf("%w: %q is not an IPv4 address", ErrInvalidPodRoute, p.IP)
	case p.Table <= 0 || p.Table > 0xfffffffe:
		return fmt.Errorf("%w: %s: route table %d", ErrInvalidPodRoute, p.IP, p.Table)
	case p.Table == 253 || p.Table == 255:
		// 253 (default), 255 (local) are the kernel's; ENI tables are device index + 1.
		return fmt.Errorf("%w: %s: route table %d is reserved", ErrInvalidPodRoute, p.IP, p.Table)
	}
	return nil
}

// podRule is the comparable shape of one of our rules.
type podRule struct {
	prio  int
	ip    netip.Addr
	table int
}

func (r podRule) String() string {
	dir := "to"
	if r.prio == FromPodRulePriority {
		dir = "from"
	}
	return fmt.Sprintf("prio %d %s %s/32 lookup %d", r.prio, dir, r.ip, r.table)
}

func (r podRule) netlink() *netlink.Rule {
	nr := netlink.NewRule()
	nr.Family = netlink.FAMILY_V4
	nr.Priority = r.prio
	nr.Table = r.table
	host := &net.IPNet{IP: net.IP(r.ip.AsSlice()), Mask: net.CIDRMask(32, 32)}
	if r.prio == ToPodRulePriority {
		nr.Dst = host
	} else {
		nr.Src = host
	}
	return nr
}

func wantedRules(p PodRoute) []podRule {
	rules := []podRule{{prio: ToPodRulePriority, ip: p.IP, table: MainTable}}
	if p.Table != MainTable {
		rules = append(rules, podRule{prio: FromPodRulePriority, ip: p.IP, table: p.Table})
	}
	return rules
}

// listPodRules returns the namespace's rules at our two priorities that have the shape of a pod
// rule (a /32 destination at 512, a /32 source at 1536).
func (m *Manager) listPodRules() ([]podRule, error) {
	all, err := dump(func() ([]netlink.Rule, error) { return m.h.RuleList(netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("netconf: list rules: %w", err)
	}
	var out []podRule
	for _, r := range all {
		var n *net.IPNet
		switch r.Priority {
		case ToPodRulePriority:
			n = r.Dst
		case FromPodRulePriority:
			n = r.Src
		default:
			continue
		}
		if n == nil {
			continue
		}
		p := prefixOf(n)
		if !p.IsValid() || p.Bits() != 32 {
			continue
		}
		out = append(out, podRule{prio: r.Priority, ip: p.Addr(), table: r.Table})
	}
	return out, nil
}

func (m *Manager) addRule(r podRule) error {
	if err := m.h.RuleAdd(r.netlink()); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("netconf: add rule %s: %w", r, err)
	}
	return nil
}

func (m *Manager) delRule(r podRule) error {
	if err := m.h.RuleDel(r.netlink()); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("netconf: delete rule %s: %w", r, err)
	}
	return nil
}

// AddPodRules installs `to <ip>/32 lookup main` (priority 512) and, for a pod on a secondary ENI,
// `from <ip>/32 lookup <Table>` (priority 1536). Rules for the same address with another table
// (left from an earlier owner of the address) are replaced. Idempotent.
func (m *Manager) AddPodRules(p PodRoute) error {
	if err := p.validate(); err != nil {
		return err
	}
	have, err := m.listPodRules()
	if err != nil {
		return err
	}
	want := wantedRules(p)
	for _, r := range have {
		if r.ip == p.IP && !slices.Contains(want, r) {
			if err := m.delRule(r); err != nil {
				return err
			}
		}
	}
	for _, r := range want {
		if err := m.addRule(r); err != nil {
			return err
		}
	}
	m.log.Debug("pod rules added", "ip", p.IP.String(), "table", p.Table, "veth", p.HostVeth)
	return nil
}

// DelPodRules removes every pod rule (priorities 512 and 1536) of the address. Missing rules are
// success.
func (m *Manager) DelPodRules(ip netip.Addr) error {
	if !ip.Is4() {
		return fmt.Errorf("%w: %q is not an IPv4 address", ErrInvalidPodRoute, ip)
	}
	have, err := m.listPodRules()
	if err != nil {
		return err
	}
	for _, r := range have {
		if r.ip == ip {
			if err := m.delRule(r); err != nil {
				return err
			}
		}
	}
	m.log.Debug("pod rules deleted", "ip", ip.String())
	return nil
}

// SyncPodRules makes the namespace's pod rules (priorities 512 and 1536 only) exactly the rules of
// pods: it adds what is missing and removes what is stale. The agent calls it after a restart.
// Nothing is changed when an entry of pods is invalid.
func (m *Manager) SyncPodRules(pods []PodRoute) error {
	want := make(map[podRule]bool)
	for _, p := range pods {
		if err := p.validate(); err != nil {
			return err
		}
		for _, r := range wantedRules(p) {
			want[r] = true
		}
	}
	have, err := m.listPodRules()
	if err != nil {
		return err
	}
	present := make(map[podRule]bool, len(have))
	removed := 0
	for _, r := range have {
		present[r] = true
		if !want[r] {
			if err := m.delRule(r); err != nil {
				return err
			}
			removed++
		}
	}
	added := 0
	for r := range want {
		if !present[r] {
			if err := m.addRule(r); err != nil {
				return err
			}
			added++
		}
	}
	m.log.Info("pod rules synced", "pods", len(pods), "added", added, "removed", removed)
	return nil
}

// Rules lists the pods the namespace's rules route, sorted by address: an address with a
// priority-512 rule has Table MainTable unless a priority-1536 rule names another table;
// HostVeth is the link of the main table's /32 route to the address, if any.
func (m *Manager) Rules() ([]PodRoute, error) {
	have, err := m.listPodRules()
	if err != nil {
		return nil, err
	}
	byIP := make(map[netip.Addr]*PodRoute)
	for _, r := range have {
		p := byIP[r.ip]
		if p == nil {
			p = &PodRoute{IP: r.ip, Table: MainTable}
			byIP[r.ip] = p
		}
		if r.prio == FromPodRulePriority {
			p.Table = r.table
		}
	}
	if len(byIP) > 0 {
		veths, err := m.hostRoutes()
		if err != nil {
			return nil, err
		}
		for ip, p := range byIP {
			p.HostVeth = veths[ip]
		}
	}
	out := make([]PodRoute, 0, len(byIP))
	for _, p := range byIP {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b PodRoute) int { return a.IP.Compare(b.IP) })
	return out, nil
}

// hostRoutes maps every /32 of the main table that routes through a link to the link's name.
func (m *Manager) hostRoutes() (map[netip.Addr]string, error) {
	routes, err := m.routes(&netlink.Route{Table: MainTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("netconf: list main routes: %w", err)
	}
	links, err := dump(m.h.LinkList)
	if err != nil {
		return nil, fmt.Errorf("netconf: list links: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	out := make(map[netip.Addr]string)
	for _, r := range routes {
		p := prefixOf(r.Dst)
		if p.IsValid() && p.Bits() == 32 && r.Gw == nil && names[r.LinkIndex] != "" {
			out[p.Addr()] = names[r.LinkIndex]
		}
	}
	return out, nil
}
