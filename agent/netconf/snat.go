package netconf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Source NAT for pods' traffic leaving the VPC, as the Amazon VPC CNI does by default
// (AWS_VPC_K8S_CNI_EXTERNALSNAT=false): a pod's packet to an address outside the VPC's CIDR
// blocks and the excluded CIDRs, and not local to the node, is marked in prerouting, routed by
// the main table (out of the primary ENI, whichever ENI holds the pod's address: an ENI only
// passes its own addresses) and its source rewritten to the node's primary address. Replies
// are de-NATed by conntrack and reach the pod by its /32 route. Everything lives in the nftables
// table SNATTable and one policy rule, both removed by RemoveSNAT.
const (
	// SNATTable is the nftables table (family ip) the agent owns.
	SNATTable = "ipledger"
	// SNATMark is the packet mark of pods' outbound traffic (the VPC CNI's 0x80).
	SNATMark = 0x80
	// SNATRulePriority is the priority of `fwmark 0x80/0x80 lookup main`: before the pods'
	// `from <pod> lookup <ENI table>` rules (FromPodRulePriority), after `to <pod>`.
	SNATRulePriority = 1024
)

// ErrInvalidSNAT: an SNAT configuration is not usable.
var ErrInvalidSNAT = errors.New("netconf: invalid source NAT")

// SNAT says how pods' traffic that leaves the VPC is translated.
type SNAT struct {
	// NodeIP is the primary ENI's address, the source pods' outbound traffic gets.
	NodeIP netip.Addr
	// Exclude are the destinations that keep the pod's source: the VPC's CIDR blocks and the
	// operator's exclusions (AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS).
	Exclude []netip.Prefix
	// PodLinkPrefix is the prefix of the pods' host-side veths (the plugin's vethPrefix):
	// traffic arriving on them is pods' traffic.
	PodLinkPrefix string
}

// Validate checks the configuration.
func (s SNAT) Validate() error {
	if !s.NodeIP.Is4() {
		return fmt.Errorf("%w: node address %v is not IPv4", ErrInvalidSNAT, s.NodeIP)
	}
	if len(s.Exclude) == 0 {
		return fmt.Errorf("%w: no VPC CIDR to exclude (every pod-to-pod packet would be translated)", ErrInvalidSNAT)
	}
	for _, p := range s.Exclude {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("%w: exclusion %v is not an IPv4 prefix", ErrInvalidSNAT, p)
		}
	}
	if s.PodLinkPrefix == "" || len(s.PodLinkPrefix) > 14 {
		return fmt.Errorf("%w: pod link prefix %q must be 1..14 bytes", ErrInvalidSNAT, s.PodLinkPrefix)
	}
	return nil
}

// nft opens an nftables connection in the Manager's namespace.
func (m *Manager) nft() (*nftables.Conn, func(), error) {
	if m.cfg.NetNS == "" {
		c, err := nftables.New()
		return c, func() {}, err
	}
	h, err := netns.GetFromPath(m.cfg.NetNS)
	if err != nil {
		return nil, nil, fmt.Errorf("netconf: open network namespace %s: %w", m.cfg.NetNS, err)
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		_ = h.Close()
		return nil, nil, err
	}
	return c, func() { _ = h.Close() }, nil
}

// EnsureSNAT programs source NAT as s says, replacing what an earlier call programmed in one
// nftables transaction (never a moment without it, never two versions), and the policy rule.
// Idempotent.
func (m *Manager) EnsureSNAT(s SNAT) error {
	if err := s.Validate(); err != nil {
		return err
	}
	c, done, err := m.nft()
	if err != nil {
		return fmt.Errorf("netconf: nftables: %w", err)
	}
	defer done()
	if tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err == nil {
		for _, t := range tables {
			if t.Name == SNATTable {
				c.DelTable(t) // replaced in the same batch
			}
		}
	} else {
		return fmt.Errorf("netconf: list nftables tables: %w", err)
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: SNATTable})
	excluded := &nftables.Set{Table: t, Name: "excluded", KeyType: nftables.TypeIPAddr, Interval: true}
	var elems []nftables.SetElement
	for _, p := range mergePrefixes(s.Exclude) {
		first, end := prefixRange(p)
		elems = append(elems, nftables.SetElement{Key: first.AsSlice()})
		if end.IsValid() {
			elems = append(elems, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
		}
	}
	if err := c.AddSet(excluded, elems); err != nil {
		return fmt.Errorf("netconf: nftables set: %w", err)
	}
	accept := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Table: t, Name: "prerouting", Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept})
	post := c.AddChain(&nftables.Chain{Table: t, Name: "postrouting", Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	mark := binaryutil.NativeEndian.PutUint32(SNATMark)
	notMark := binaryutil.NativeEndian.PutUint32(^uint32(SNATMark))
	// prerouting: iifname "<prefix>*" ip daddr != @excluded fib daddr type != local meta mark set mark | 0x80
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(s.PodLinkPrefix)},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: excluded.Name, SetID: excluded.ID, Invert: true},
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: notMark, Xor: mark}, // (mark & ^0x80) ^ 0x80
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}})
	// postrouting: meta mark & 0x80 == 0x80 snat to <node ip>
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mark, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: mark},
		&expr.Immediate{Register: 1, Data: s.NodeIP.AsSlice()},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, Specified: true},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netconf: program source NAT: %w", err)
	}
	if err := m.ensureSNATRule(); err != nil {
		return err
	}
	m.log.Info("source NAT programmed", "node_ip", s.NodeIP, "excluded", s.Exclude, "pod_links", s.PodLinkPrefix+"*")
	return nil
}

// snatRule is `fwmark 0x80/0x80 lookup main`.
func snatRule() *netlink.Rule {
	r := netlink.NewRule()
	r.Family = unix.AF_INET
	r.Mark = SNATMark
	mask := uint32(SNATMark)
	r.Mask = &mask
	r.Table = MainTable
	r.Priority = SNATRulePriority
	return r
}

func (m *Manager) snatRules() ([]netlink.Rule, error) {
	rules, err := dump(func() ([]netlink.Rule, error) { return m.h.RuleList(unix.AF_INET) })
	if err != nil {
		return nil, fmt.Errorf("netconf: list rules: %w", err)
	}
	var out []netlink.Rule
	for _, r := range rules {
		if r.Priority == SNATRulePriority && r.Mark == SNATMark && r.Table == MainTable {
			out = append(out, r)
		}
	}
	return out, nil
}

func (m *Manager) ensureSNATRule() error {
	have, err := m.snatRules()
	if err != nil {
		return err
	}
	if len(have) > 0 {
		return nil
	}
	if err := m.h.RuleAdd(snatRule()); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("netconf: add rule fwmark %#x lookup main: %w", SNATMark, err)
	}
	return nil
}

// RemoveSNAT removes the table and the policy rule EnsureSNAT added; nothing there is success.
func (m *Manager) RemoveSNAT() error {
	c, done, err := m.nft()
	if err != nil {
		return fmt.Errorf("netconf: nftables: %w", err)
	}
	defer done()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return fmt.Errorf("netconf: list nftables tables: %w", err)
	}
	removed := false
	for _, t := range tables {
		if t.Name == SNATTable {
			c.DelTable(t)
			removed = true
		}
	}
	if removed {
		if err := c.Flush(); err != nil {
			return fmt.Errorf("netconf: remove source NAT: %w", err)
		}
	}
	rules, err := m.snatRules()
	if err != nil {
		return err
	}
	for i := range rules {
		if err := m.h.RuleDel(&rules[i]); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("netconf: delete rule fwmark %#x lookup main: %w", SNATMark, err)
		}
	}
	if removed || len(rules) > 0 {
		m.log.Info("source NAT removed")
	}
	return nil
}

// SNATProgrammed reports whether the table and the policy rule are there.
func (m *Manager) SNATProgrammed() (bool, error) {
	c, done, err := m.nft()
	if err != nil {
		return false, fmt.Errorf("netconf: nftables: %w", err)
	}
	defer done()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("netconf: list nftables tables: %w", err)
	}
	table := slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == SNATTable })
	rules, err := m.snatRules()
	if err != nil {
		return false, err
	}
	return table && len(rules) > 0, nil
}

// mergePrefixes sorts prefixes and drops those inside another (an interval set refuses
// overlapping elements).
func mergePrefixes(in []netip.Prefix) []netip.Prefix {
	ps := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		ps = append(ps, p.Masked())
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	var out []netip.Prefix
	for _, p := range ps {
		if n := len(out); n > 0 && out[n-1].Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// prefixRange returns the first address of p and the first address after it (invalid when p
// reaches the end of the address space).
func prefixRange(p netip.Prefix) (first, end netip.Addr) {
	first = p.Masked().Addr()
	a := binary.BigEndian.Uint32(first.AsSlice())
	size := uint64(1) << (32 - p.Bits())
	if uint64(a)+size > 0xffffffff {
		return first, netip.Addr{}
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(uint64(a)+size))
	return first, netip.AddrFrom4(b)
}
