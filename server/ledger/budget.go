package ledger

import (
	"fmt"
	"net/netip"
	"time"
)

// Budget accounts for every address of a subnet (see the package documentation for the
// exact definitions). Always:
//
//	Size = Reserved + Foreign + Held + PrewarmReserved + Free
//	Held = ENIPrimary + InUse + Idle
type Budget struct {
	SubnetID         string
	AvailabilityZone string
	CIDR             netip.Prefix

	Size            int
	Reserved        int
	Foreign         int
	Held            int
	ENIPrimary      int
	InUse           int
	Idle            int
	PrewarmReserved int
	Free            int
	// FreePrefixes: aligned /28 blocks with no occupied address (cooling ones count as free).
	FreePrefixes int
	// Cooling: free addresses cooling down at the given time (included in Free: when a
	// pre-warm's number absorbs free addresses, it takes placeable ones first).
	Cooling int
	// Pending: addresses reserved in memory while an EC2 call is in flight (included in Held
	// or PrewarmReserved).
	Pending int

	// MaxHeld and KeepFree are the subnet record's settings (MaxHeld 0: no cap).
	MaxHeld  int
	KeepFree int
	// Headroom is what the cluster may still take: min(MaxHeld - (Held + PrewarmReserved),
	// Free - KeepFree), never below zero (the first term is left out when MaxHeld is 0).
	Headroom int
}

func (l *Ledger) budget(s *subnet, now time.Time) Budget {
	b := Budget{
		SubnetID:         s.rec.ID,
		AvailabilityZone: s.rec.AvailabilityZone,
		CIDR:             s.rec.CIDR,
		Size:             s.size,
		Reserved:         s.count[kReserved],
		Foreign:          s.foreignFree,
		ENIPrimary:       s.count[kPrimary],
		Held:             s.count[kPrimary] + s.count[kLease] + s.count[kPendNode],
		InUse:            s.inUse,
		Pending:          s.count[kPendNode] + s.count[kPendPrewarm],
		FreePrefixes:     s.freeBlocks(),
		MaxHeld:          s.rec.MaxHeld,
		KeepFree:         s.rec.KeepFree,
	}
	b.Idle = b.Held - b.ENIPrimary - b.InUse
	unowned := s.count[kFree] - s.foreignFree
	virtual := 0
	for _, pw := range l.prewarms {
		if pw.sub == s {
			virtual += l.prewarmVirtual(pw)
		}
	}
	virtual = min(virtual, unowned)
	b.PrewarmReserved = s.count[kPrewarm] + s.count[kPendPrewarm] + virtual
	b.Free = unowned - virtual
	for off, until := range s.cooling {
		if until.After(now) && !s.occupied(off) {
			b.Cooling++
		}
	}
	// The pre-warm number takes placeable addresses before cooling ones.
	b.Cooling = min(b.Cooling, b.Free)
	b.Headroom = b.Free - b.KeepFree
	if b.MaxHeld > 0 {
		b.Headroom = min(b.Headroom, b.MaxHeld-(b.Held+b.PrewarmReserved))
	}
	b.Headroom = max(0, b.Headroom)
	return b
}

// Budget returns the accounting of one subnet at now (now only decides which free addresses
// are still cooling).
func (l *Ledger) Budget(subnetID string, now time.Time) (Budget, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	s, ok := l.subnets[subnetID]
	if !ok {
		return Budget{}, fmt.Errorf("ledger: budget of subnet %q: %w", subnetID, ErrUnknownSubnet)
	}
	return l.budget(s, now), nil
}

// Budgets returns the accounting of every subnet at now, sorted by subnet id.
func (l *Ledger) Budgets(now time.Time) []Budget {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]Budget, 0, len(l.subnets))
	for _, id := range sortedKeys(l.subnets) {
		out = append(out, l.budget(l.subnets[id], now))
	}
	return out
}

// NodeCounts is the per-node accounting the allocator works from. All counts are addresses
// (a leased prefix counts 16); ENI primaries are not counted except in ENIs.
type NodeCounts struct {
	// ENIs attached to the node (its record's ENIs).
	ENIs int
	// Leased: every leased address, whatever its lease state.
	Leased int
	// InUse: leased addresses the agent reports in use (any lease state).
	InUse int
	// Idle: active leased addresses the agent does not report in use (the warm pool).
	Idle int
	// Pending: addresses reserved for the node while an EC2 call is in flight.
	Pending int
	// Proposed and Releasing: leased addresses in those release-handshake states.
	Proposed  int
	Releasing int
}

// NodeCounts returns the accounting of one node.
func (l *Ledger) NodeCounts(name string) (NodeCounts, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	n, ok := l.nodes[name]
	if !ok {
		return NodeCounts{}, false
	}
	c := NodeCounts{ENIs: len(n.rec.ENIs), Leased: n.leased, Pending: n.pending}
	usage := n.usedSet()
	for _, cl := range n.claims {
		if cl.kind != kLease {
			continue
		}
		_, used := usage[cl.sub.addr(cl.off)]
		switch {
		case used:
			c.InUse++
		case cl.state == LeaseActive:
			c.Idle++
		}
		switch cl.state {
		case LeaseReleaseProposed:
			c.Proposed++
		case LeaseReleasing:
			c.Releasing++
		}
	}
	return c, true
}

// usedSet returns the node's usage as a set.
func (n *node) usedSet() map[netip.Addr]struct{} {
	m := make(map[netip.Addr]struct{}, len(n.usage))
	for _, a := range n.usage {
		m[a] = struct{}{}
	}
	return m
}
