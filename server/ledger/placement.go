package ledger

import (
	"fmt"
	"net/netip"
	"time"
)

// target resolves a reservation's subnet and owner.
func (l *Ledger) target(subnetID string, owner Owner) (*subnet, slot, *prewarm, error) {
	if (owner.Node == "") == (owner.Prewarm == "") {
		return nil, slot{}, nil, fmt.Errorf("%w: owner must name exactly one of node and pre-warm (got %+v)", ErrInvalid, owner)
	}
	s, ok := l.subnets[subnetID]
	if !ok {
		return nil, slot{}, nil, fmt.Errorf("ledger: reserve in subnet %q: %w", subnetID, ErrUnknownSubnet)
	}
	if owner.Node != "" {
		n, ok := l.nodes[owner.Node]
		if !ok {
			return nil, slot{}, nil, fmt.Errorf("ledger: reserve for node %q: %w", owner.Node, ErrUnknownNode)
		}
		return s, slot{kind: kPendNode, ent: n.ent}, nil, nil
	}
	pw, ok := l.prewarms[owner.Prewarm]
	if !ok {
		return nil, slot{}, nil, fmt.Errorf("ledger: reserve for pre-warm %q: %w", owner.Prewarm, ErrUnknownPrewarm)
	}
	if pw.sub != s {
		return nil, slot{}, nil, fmt.Errorf("%w: pre-warm %s is in subnet %s, not %s", ErrInvalid, owner.Prewarm, pw.rec.SubnetID, subnetID)
	}
	return s, slot{kind: kPendPrewarm, ent: pw.ent}, pw, nil
}

// checkBudget fails with ErrBudgetExhausted when the subnet's headroom does not allow need
// more addresses. A pre-warm's own virtual budget covers its reservations.
func (l *Ledger) checkBudget(s *subnet, owner Owner, pw *prewarm, need int, now time.Time) error {
	if owner.IgnoreBudget || need == 0 {
		return nil
	}
	if pw != nil {
		need -= min(need, l.prewarmVirtual(pw))
	}
	b := l.budget(s, now)
	if need > b.Headroom {
		return fmt.Errorf("ledger: subnet %s: %d more addresses for %s exceed the budget (headroom %d, max_held %d, keep_free %d): %w",
			s.rec.ID, need, owner, b.Headroom, b.MaxHeld, b.KeepFree, ErrBudgetExhausted)
	}
	return nil
}

func (l *Ledger) reserve(s *subnet, off uint32, sl slot, owner Owner, prefix netip.Prefix) {
	owner.IgnoreBudget = false
	l.setSlot(s, off, sl)
	s.pending[off] = pend{owner: owner, prefix: prefix}
}

// ReserveAddresses picks n placeable addresses (free, not foreign, not cooling at now) in the
// subnet and marks them pending for owner. Placement packs them into /28 blocks that are
// already broken, fullest first (lowest block on ties, lowest addresses within a block), and
// breaks a whole free block only when no broken block has room; that block is the first of
// the shortest run of free blocks, so long runs stay whole for prefix mode. The same state and
// arguments always give the same addresses.
//
// Errors: ErrInvalid (n < 1, bad owner, pre-warm in another subnet), ErrUnknownSubnet,
// ErrUnknownNode, ErrUnknownPrewarm, ErrSubnetExhausted (fewer than n placeable),
// ErrBudgetExhausted (unless owner.IgnoreBudget). On error nothing changes.
func (l *Ledger) ReserveAddresses(subnetID string, n int, owner Owner, now time.Time) ([]netip.Addr, error) {
	if n < 1 {
		return nil, fmt.Errorf("%w: reserve %d addresses", ErrInvalid, n)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s, sl, pw, err := l.target(subnetID, owner)
	if err != nil {
		return nil, err
	}
	cool, cooling := s.coolingPerBlock(now)
	if avail := s.size - s.occTotal - cooling; avail < n {
		return nil, fmt.Errorf("ledger: subnet %s: %d addresses asked for %s, %d placeable (%d more cooling): %w",
			s.rec.ID, n, owner, avail, cooling, ErrSubnetExhausted)
	}
	if err := l.checkBudget(s, owner, pw, n, now); err != nil {
		return nil, err
	}
	s.expireCooling(now)
	out := make([]netip.Addr, 0, n)
	for len(out) < n {
		b := s.bestBroken(cool)
		if b < 0 {
			b = s.pickRun(func(b int) bool { return s.occ[b] == 0 && cool[b] < blockSize })
		}
		for off := uint32(b * blockSize); off < uint32((b+1)*blockSize) && len(out) < n; off++ {
			if s.placeable(off, now) {
				l.reserve(s, off, sl, owner, netip.Prefix{})
				out = append(out, s.addr(off))
			}
		}
	}
	return out, nil
}

// ReservePrefixes picks n whole aligned /28 blocks (no address occupied or cooling) and marks
// them pending for owner. Each block is the first of the shortest run of such blocks, so
// blocks next to used space go first and long free runs stay intact.
//
// Errors: as ReserveAddresses, and ErrNoFreePrefixBlock when enough addresses are placeable but
// not n whole blocks; ErrSubnetExhausted when fewer than 16 x n addresses are placeable.
func (l *Ledger) ReservePrefixes(subnetID string, n int, owner Owner, now time.Time) ([]netip.Prefix, error) {
	if n < 1 {
		return nil, fmt.Errorf("%w: reserve %d prefixes", ErrInvalid, n)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s, sl, pw, err := l.target(subnetID, owner)
	if err != nil {
		return nil, err
	}
	cool, cooling := s.coolingPerBlock(now)
	whole := 0
	for b, o := range s.occ {
		if o == 0 && cool[b] == 0 {
			whole++
		}
	}
	if whole < n {
		avail := s.size - s.occTotal - cooling
		if avail < n*blockSize {
			return nil, fmt.Errorf("ledger: subnet %s: %d prefixes asked for %s, %d addresses placeable (%d more cooling): %w",
				s.rec.ID, n, owner, avail, cooling, ErrSubnetExhausted)
		}
		return nil, fmt.Errorf("ledger: subnet %s: %d prefixes asked for %s, %d whole /28 blocks placeable (%d addresses placeable, %d cooling): %w",
			s.rec.ID, n, owner, whole, avail, cooling, ErrNoFreePrefixBlock)
	}
	if err := l.checkBudget(s, owner, pw, n*blockSize, now); err != nil {
		return nil, err
	}
	s.expireCooling(now)
	out := make([]netip.Prefix, 0, n)
	for range n {
		b := s.pickRun(func(b int) bool { return s.occ[b] == 0 && cool[b] == 0 })
		p := s.blockPrefix(b)
		for off := uint32(b * blockSize); off < uint32((b+1)*blockSize); off++ {
			l.reserve(s, off, sl, owner, p)
		}
		out = append(out, p)
	}
	return out, nil
}

// ReserveSpecific marks the given addresses and /28 prefixes pending for owner, e.g. to place
// again after EC2 refused part of a batch. Items already pending for the same owner are kept
// (idempotent). Cooling addresses are accepted: the caller chose them. Errors: ErrInvalid
// (bad owner, items outside the subnet, unaligned prefixes), ErrUnknownSubnet, ErrUnknownNode,
// ErrUnknownPrewarm, ErrConflict when an item is reserved by AWS, foreign or owned by anyone
// else (the message names the owner), ErrBudgetExhausted. On error nothing changes.
func (l *Ledger) ReserveSpecific(subnetID string, addrs []netip.Addr, prefixes []netip.Prefix, owner Owner) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, sl, pw, err := l.target(subnetID, owner)
	if err != nil {
		return err
	}
	type item struct {
		off    uint32
		prefix netip.Prefix
	}
	var items []item
	for _, a := range addrs {
		off, ok := s.offset(a)
		if !ok {
			return fmt.Errorf("%w: address %v is not an IPv4 address of subnet %s (%v)", ErrInvalid, a, s.rec.ID, s.rec.CIDR)
		}
		items = append(items, item{off: off})
	}
	for _, p := range prefixes {
		first, err := s.prefixOffset(p)
		if err != nil {
			return fmt.Errorf("ledger: reserve in subnet %s: %w", s.rec.ID, err)
		}
		for i := range uint32(blockSize) {
			items = append(items, item{off: first + i, prefix: p})
		}
	}
	need := 0
	seen := map[uint32]bool{}
	for _, it := range items {
		cur := s.slots[it.off]
		switch {
		case seen[it.off] || cur == sl:
		case cur.kind == kFree && s.flags[it.off] == 0:
			need++
		default:
			return fmt.Errorf("ledger: reserve %v for %s: owned by %s: %w", s.addr(it.off), owner, l.describe(s, it.off), ErrConflict)
		}
		seen[it.off] = true
	}
	// Headroom does not depend on time (cooling addresses count as free).
	if err := l.checkBudget(s, owner, pw, need, time.Time{}); err != nil {
		return err
	}
	for _, it := range items {
		if s.slots[it.off] != sl {
			l.reserve(s, it.off, sl, owner, it.prefix)
		}
	}
	return nil
}

// CancelReservation frees addresses (and every address of the given prefixes) pending for
// owner's node or pre-warm, without cooldown. Items that are not pending for that owner, and
// unknown subnets or owners, are ignored.
func (l *Ledger) CancelReservation(subnetID string, owner Owner, addrs []netip.Addr, prefixes []netip.Prefix) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, sl, _, err := l.target(subnetID, owner)
	if err != nil {
		return
	}
	cancel := func(a netip.Addr) {
		if off, ok := s.offset(a); ok && s.slots[off] == sl {
			l.free(s, off)
		}
	}
	for _, a := range addrs {
		cancel(a)
	}
	for _, p := range prefixes {
		if first, err := s.prefixOffset(p); err == nil {
			for i := range uint32(blockSize) {
				cancel(s.addr(first + i))
			}
		}
	}
}

// MarkForeign records that EC2 says these addresses are used by someone the ledger does not
// manage: they are foreign until PutSubnet brings a fresh scan (a later ForeignScannedAt).
// Pending reservations on them are dropped. Addresses a node or pre-warm holds keep their
// owner (Conflicts reports the overlap); AWS-reserved addresses and addresses outside the
// subnet are ignored, as is an unknown subnet.
func (l *Ledger) MarkForeign(subnetID string, addrs []netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.subnets[subnetID]
	if !ok {
		return
	}
	for _, a := range addrs {
		off, ok := s.offset(a)
		if !ok || s.reserved(off) {
			continue
		}
		if k := s.slots[off].kind; k == kPendNode || k == kPendPrewarm {
			l.free(s, off)
		}
		s.setFlags(off, s.flags[off]|flagMarked)
	}
}

// Hold makes addresses of a subnet unplaceable without changing its record: a registering
// instance's own addresses (EC2 has them on the instance; the last scan may predate it) are
// held from before the node's record is committed until after it is applied, so no other
// node's supply places them meanwhile. Holds of different registrations in one subnet are
// independent of each other (a registration holds only its instance's addresses) and outlive
// any PutSubnet; a node's record may claim a held address. Pending reservations of other
// owners on the addresses are not touched (the caller cancels them). Addresses outside the
// subnet and AWS-reserved ones are ignored; ErrUnknownSubnet if the subnet is not known.
func (l *Ledger) Hold(subnetID string, addrs []netip.Addr) error {
	return l.setHeld(subnetID, addrs, true)
}

// Unhold ends a Hold of the addresses (those still free become placeable again, unless a
// scan or EC2 says they are foreign).
func (l *Ledger) Unhold(subnetID string, addrs []netip.Addr) {
	_ = l.setHeld(subnetID, addrs, false)
}

func (l *Ledger) setHeld(subnetID string, addrs []netip.Addr, on bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.subnets[subnetID]
	if !ok {
		return fmt.Errorf("ledger: hold in subnet %s: %w", subnetID, ErrUnknownSubnet)
	}
	for _, a := range addrs {
		off, ok := s.offset(a)
		if !ok || s.reserved(off) {
			continue
		}
		if on {
			s.setFlags(off, s.flags[off]|flagHeld)
		} else {
			s.setFlags(off, s.flags[off]&^flagHeld)
		}
	}
	return nil
}

// Released records that addresses and prefixes were just unassigned on EC2: each address
// cools down until now + ReleaseCooldown and is not placed before. Cooling applies while the
// address is free, so the caller may PutNode the record without them before or after this
// call. Items outside the subnet, AWS-reserved addresses and an unknown subnet are ignored.
func (l *Ledger) Released(subnetID string, addrs []netip.Addr, prefixes []netip.Prefix, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.subnets[subnetID]
	if !ok {
		return
	}
	s.expireCooling(now)
	if l.cooldown <= 0 {
		return
	}
	until := now.Add(l.cooldown)
	cool := func(off uint32) {
		if !s.reserved(off) {
			s.cooling[off] = until
		}
	}
	for _, a := range addrs {
		if off, ok := s.offset(a); ok {
			cool(off)
		}
	}
	for _, p := range prefixes {
		if first, err := s.prefixOffset(p); err == nil {
			for i := range uint32(blockSize) {
				cool(first + i)
			}
		}
	}
}

// FreePrefixBlocks lists the subnet's aligned /28 blocks that a prefix could be placed in at
// now (no address occupied or cooling), in address order.
func (l *Ledger) FreePrefixBlocks(subnetID string, now time.Time) ([]netip.Prefix, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	s, ok := l.subnets[subnetID]
	if !ok {
		return nil, fmt.Errorf("ledger: free blocks of subnet %q: %w", subnetID, ErrUnknownSubnet)
	}
	cool, _ := s.coolingPerBlock(now)
	var out []netip.Prefix
	for b, o := range s.occ {
		if o == 0 && cool[b] == 0 {
			out = append(out, s.blockPrefix(b))
		}
	}
	return out, nil
}
