package ledger

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// OwnerKind says who owns an address.
type OwnerKind string

// Owner kinds reported by OwnerOf.
const (
	OwnerFree       OwnerKind = "free"
	OwnerCooling    OwnerKind = "cooling"
	OwnerReserved   OwnerKind = "reserved"
	OwnerForeign    OwnerKind = "foreign"
	OwnerENIPrimary OwnerKind = "eni-primary"
	OwnerLeased     OwnerKind = "leased"
	OwnerPending    OwnerKind = "pending"
	OwnerPrewarm    OwnerKind = "prewarm"
)

// OwnerInfo describes the owner of one address.
type OwnerInfo struct {
	SubnetID string
	Kind     OwnerKind
	// Node is set for eni-primary, leased and pending-for-a-node; Prewarm for prewarm and
	// pending-for-a-reservation. ENI is the ENI concerned, if known.
	Node    string
	ENI     string
	Prewarm string
	// Prefix is the /28 a leased or pending address is part of (invalid for single addresses).
	Prefix netip.Prefix
	// State is the lease state of a leased address.
	State LeaseState
	// Foreign: a foreign scan or MarkForeign also claims the address (for a foreign address,
	// and for an overlap with a ledger owner). Marked: MarkForeign did.
	Foreign bool
	Marked  bool
	// Held: a registration holds the address for its instance (Ledger.Hold). A free held
	// address is of Kind foreign: nobody may place it.
	Held bool
	// CoolingUntil: for Kind cooling, the end of the address's cooldown. OwnerOf takes no
	// time, so it may lie in the past (compare with your now).
	CoolingUntil time.Time
}

// OwnerOf says which subnet an address is in and who owns it. ok is false when the address is
// in no known subnet or nobody owns it (Kind free, or cooling for a free address released
// recently; the subnet is still given).
func (l *Ledger) OwnerOf(addr netip.Addr) (OwnerInfo, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	s, off, ok := l.subnetOf(addr)
	if !ok {
		return OwnerInfo{}, false
	}
	info := l.ownerInfo(s, off)
	return info, info.Kind != OwnerFree && info.Kind != OwnerCooling
}

func (l *Ledger) ownerInfo(s *subnet, off uint32) OwnerInfo {
	info := OwnerInfo{
		SubnetID: s.rec.ID,
		Foreign:  s.flags[off]&flagsForeign != 0,
		Marked:   s.flags[off]&flagMarked != 0,
		Held:     s.flags[off]&flagHeld != 0,
	}
	sl := s.slots[off]
	switch sl.kind {
	case kFree:
		info.Kind = OwnerFree
		if info.Foreign || info.Held {
			info.Kind = OwnerForeign
		} else if until, ok := s.cooling[off]; ok {
			info.Kind, info.CoolingUntil = OwnerCooling, until
		}
	case kReserved:
		info.Kind = OwnerReserved
	case kPrimary, kLease:
		n := l.ents[sl.ent].node
		c := n.claims[n.byAddr[s.addr(off)]]
		info.Kind, info.Node, info.ENI, info.Prefix, info.State = OwnerLeased, n.rec.Name, c.eni, c.prefix, c.state
		if sl.kind == kPrimary {
			info.Kind = OwnerENIPrimary
		}
	case kPendNode, kPendPrewarm:
		p := s.pending[off]
		info.Kind, info.Node, info.ENI, info.Prewarm, info.Prefix = OwnerPending, p.owner.Node, p.owner.ENI, p.owner.Prewarm, p.prefix
	case kPrewarm:
		pw := l.ents[sl.ent].pw
		info.Kind, info.Prewarm, info.ENI = OwnerPrewarm, pw.rec.ID, pw.rec.ENIs[pw.byOff[off]].ID
	}
	return info
}

// Conflict kinds.
const (
	// ConflictDoubleOwner: two records claim one address (a pre-warm ENI's address held by
	// someone else).
	ConflictDoubleOwner = "double-owner"
	// ConflictInUseNotLeased: an agent reports in use an address not leased to its node.
	ConflictInUseNotLeased = "in-use-not-leased"
	// ConflictDoubleUse: two nodes (or one node twice) report the same address in use.
	ConflictDoubleUse = "double-use"
	// ConflictForeignOverlap: a foreign scan or MarkForeign claims an address the ledger
	// gives to a node, pre-warm or pending reservation.
	ConflictForeignOverlap = "foreign-overlap"
)

// Conflict is one inconsistency the ledger can see by itself.
type Conflict struct {
	Kind     string
	SubnetID string
	Node     string
	// OtherOwner describes the other party ("foreign", "node b", "pre-warm p1 ENI eni-1", ...).
	OtherOwner string
	ENI        string
	Address    string
	Detail     string
}

// Conflicts lists every inconsistency the ledger can see, sorted by kind, subnet, address,
// node, other owner, ENI and detail. Put methods refuse most conflicts outright; these are the ones that
// arise from outside information (foreign scans, agents' usage reports) or from a pre-warm
// ENI whose addresses were taken while a node held the ENI.
func (l *Ledger) Conflicts() []Conflict {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []Conflict
	for _, s := range l.subnets {
		for off, f := range s.flags {
			o := uint32(off)
			if f&flagsForeign == 0 || s.slots[o].kind == kFree || s.slots[o].kind == kReserved {
				continue
			}
			info := l.ownerInfo(s, o)
			if l.scanPredatesNode(s, o, f) {
				continue
			}
			detail := "the subnet's foreign scan lists an address the ledger gives to " + l.describe(s, o)
			if info.Marked {
				detail = "EC2 refused the address as in use by someone else, but the ledger gives it to " + l.describe(s, o)
			}
			out = append(out, Conflict{Kind: ConflictForeignOverlap, SubnetID: s.rec.ID, Node: info.Node, ENI: info.ENI,
				OtherOwner: "foreign", Address: s.addr(o).String(), Detail: detail})
		}
	}
	for _, pw := range l.prewarms {
		for k, e := range pw.rec.ENIs {
			if !l.prewarmENIActive(e) {
				continue
			}
			for _, off := range pw.eniOffs[k] {
				if pw.sub.slots[off] == (slot{kind: kPrewarm, ent: pw.ent}) {
					continue
				}
				info := l.ownerInfo(pw.sub, off)
				out = append(out, Conflict{Kind: ConflictDoubleOwner, SubnetID: pw.sub.rec.ID, Node: info.Node, ENI: info.ENI,
					OtherOwner: fmt.Sprintf("pre-warm %s ENI %q", pw.rec.ID, e.ID), Address: pw.sub.addr(off).String(),
					Detail: "the pre-warm ENI lists an address held by " + l.describe(pw.sub, off)})
			}
		}
	}
	users := map[netip.Addr][]string{}
	for _, name := range sortedKeys(l.nodes) {
		n := l.nodes[name]
		for _, a := range n.usage {
			users[a] = append(users[a], name)
			if i, ok := n.byAddr[a]; ok && n.claims[i].kind == kLease {
				continue
			}
			c := Conflict{Kind: ConflictInUseNotLeased, Node: name, Address: a.String()}
			if s, off, ok := l.subnetOf(a); ok {
				c.SubnetID, c.OtherOwner = s.rec.ID, l.describe(s, off)
				c.Detail = "the agent reports in use an address the ledger gives to " + c.OtherOwner
			} else {
				c.OtherOwner, c.Detail = "unknown", "the agent reports in use an address in no known subnet"
			}
			out = append(out, c)
		}
		for _, a := range n.usageDup {
			c := Conflict{Kind: ConflictDoubleUse, Node: name, OtherOwner: "node " + name, Address: a.String(),
				Detail: "the agent reports the address in use more than once"}
			if s, _, ok := l.subnetOf(a); ok {
				c.SubnetID = s.rec.ID
			}
			out = append(out, c)
		}
	}
	for a, names := range users {
		if len(names) < 2 {
			continue
		}
		subnetID := ""
		if s, _, ok := l.subnetOf(a); ok {
			subnetID = s.rec.ID
		}
		for i, name := range names {
			for j, other := range names {
				if i != j {
					out = append(out, Conflict{Kind: ConflictDoubleUse, SubnetID: subnetID, Node: name, OtherOwner: "node " + other,
						Address: a.String(), Detail: fmt.Sprintf("%d nodes report the address in use", len(names))})
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b Conflict) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.SubnetID, b.SubnetID),
			compareAddrStrings(a.Address, b.Address), cmp.Compare(a.Node, b.Node), cmp.Compare(a.OtherOwner, b.OtherOwner),
			cmp.Compare(a.ENI, b.ENI), cmp.Compare(a.Detail, b.Detail))
	})
	return out
}

func compareAddrStrings(a, b string) int {
	pa, ea := netip.ParseAddr(a)
	pb, eb := netip.ParseAddr(b)
	if ea == nil && eb == nil {
		return pa.Compare(pb)
	}
	return cmp.Compare(a, b)
}

// scanPredatesNode reports whether an address is foreign only by a scan older than the node
// that holds it: a node's own addresses (its primary, what EC2 had on its instance) were on an
// ENI nobody managed when the subnet was last scanned, and a registration does not rewrite the
// subnet's foreign set (it writes only the node's record), so the node's record wins until the
// next scan (see NodeRecord.RegisteredAt and SubnetRecord.ForeignScannedAt).
func (l *Ledger) scanPredatesNode(s *subnet, off uint32, f uint8) bool {
	if f&flagMarked != 0 {
		return false
	}
	sl := s.slots[off]
	if sl.kind != kPrimary && sl.kind != kLease {
		return false
	}
	n := l.ents[sl.ent].node
	return n != nil && !s.rec.ForeignScannedAt.IsZero() && !n.rec.RegisteredAt.Before(s.rec.ForeignScannedAt)
}
