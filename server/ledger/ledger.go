package ledger

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultReleaseCooldown is how long an address unassigned from EC2 waits before it is placed
// again when Options.ReleaseCooldown is zero.
const DefaultReleaseCooldown = 30 * time.Second

// Options configure a Ledger.
type Options struct {
	// ReleaseCooldown: how long an address unassigned from EC2 waits before it is placed
	// again. Zero means DefaultReleaseCooldown; a negative value disables cooling.
	ReleaseCooldown time.Duration
}

// Owner is who a pending reservation is for: exactly one of Node and Prewarm is set. ENI may
// be "" for an ENI that does not exist yet; it is informative only (OwnerOf reports it):
// reservations are matched by node or pre-warm, whatever the ENI.
type Owner struct {
	Node    string
	ENI     string
	Prewarm string
	// IgnoreBudget lets the reservation exceed the subnet's budget (MaxHeld, KeepFree), for
	// internal moves. It is not part of the owner's identity and is not stored.
	IgnoreBudget bool
}

func (o Owner) String() string {
	if o.Prewarm != "" {
		return "pre-warm " + o.Prewarm
	}
	return "node " + o.Node
}

// Ledger is the in-memory ledger. The zero value is not usable; use New. All methods are
// safe for concurrent use; each is atomic.
type Ledger struct {
	mu       sync.RWMutex
	cooldown time.Duration

	subnets    map[string]*subnet
	nodes      map[string]*node
	byInstance map[string]string // instance id -> node name
	eniNode    map[string]string // ENI id -> node name
	prewarms   map[string]*prewarm
	eniPrewarm map[string]string // ENI id -> pre-warm id

	// ents are the owners slots refer to (slot.ent); freed ids are reused.
	ents     []entRef
	freeEnts []int32
}

type entRef struct {
	node *node
	pw   *prewarm
}

// claim is one address a node record holds.
type claim struct {
	sub    *subnet
	off    uint32
	kind   kind // kPrimary or kLease
	eni    string
	prefix netip.Prefix // the leased /28 the address is part of, if any
	state  LeaseState
}

type node struct {
	ent     int32
	rec     NodeRecord
	claims  []claim
	byAddr  map[netip.Addr]int // claim index
	leased  int                // addresses leased (kLease claims)
	pending int                // addresses pending for the node

	usage    []netip.Addr // sorted, unique
	usageDup []netip.Addr // addresses the agent reported more than once
	inUse    map[*subnet]int
}

type prewarm struct {
	ent     int32
	rec     PrewarmRecord
	sub     *subnet
	eniOffs [][]uint32     // per ENI of rec: primary (if any) and addresses
	byOff   map[uint32]int // offset -> ENI index
	owned   int            // kPrewarm slots
	pending int            // kPendPrewarm slots
}

// New returns an empty ledger.
func New(opts Options) *Ledger {
	cd := opts.ReleaseCooldown
	switch {
	case cd == 0:
		cd = DefaultReleaseCooldown
	case cd < 0:
		cd = 0
	}
	return &Ledger{
		cooldown:   cd,
		subnets:    map[string]*subnet{},
		nodes:      map[string]*node{},
		byInstance: map[string]string{},
		eniNode:    map[string]string{},
		prewarms:   map[string]*prewarm{},
		eniPrewarm: map[string]string{},
	}
}

func (l *Ledger) newEnt(r entRef) int32 {
	if n := len(l.freeEnts); n > 0 {
		id := l.freeEnts[n-1]
		l.freeEnts = l.freeEnts[:n-1]
		l.ents[id] = r
		return id
	}
	l.ents = append(l.ents, r)
	return int32(len(l.ents) - 1)
}

func (l *Ledger) dropEnt(id int32) {
	l.ents[id] = entRef{}
	l.freeEnts = append(l.freeEnts, id)
}

// setSlot changes the ledger owner of one address, keeping every counter.
func (l *Ledger) setSlot(s *subnet, off uint32, ns slot) {
	os := s.slots[off]
	if os == ns {
		return
	}
	wasOcc := s.occupied(off)
	s.count[os.kind]--
	s.count[ns.kind]++
	if s.flags[off] != 0 {
		if os.kind == kFree {
			s.foreignFree--
		}
		if ns.kind == kFree {
			s.foreignFree++
		}
	}
	l.entCount(os, -1)
	l.entCount(ns, +1)
	s.slots[off] = ns
	s.occChanged(off, wasOcc)
}

func (l *Ledger) entCount(sl slot, d int) {
	switch sl.kind {
	case kPendNode:
		l.ents[sl.ent].node.pending += d
	case kPendPrewarm:
		l.ents[sl.ent].pw.pending += d
	case kPrewarm:
		l.ents[sl.ent].pw.owned += d
	}
}

// free makes an address unowned, dropping its pending entry.
func (l *Ledger) free(s *subnet, off uint32) {
	delete(s.pending, off)
	l.setSlot(s, off, freeSlot)
}

func (l *Ledger) subnetOf(a netip.Addr) (*subnet, uint32, bool) {
	if !a.Is4() {
		return nil, 0, false
	}
	for _, s := range l.subnets {
		if off, ok := s.offset(a); ok {
			return s, off, true
		}
	}
	return nil, 0, false
}

// describe names the owner of an address for error messages and conflicts.
func (l *Ledger) describe(s *subnet, off uint32) string {
	sl := s.slots[off]
	switch sl.kind {
	case kFree:
		if s.flags[off]&flagsForeign != 0 {
			return "a foreign ENI"
		}
		if s.flags[off] != 0 {
			return "an instance whose node is registering"
		}
		return "nobody"
	case kReserved:
		return "AWS (reserved)"
	case kPrimary, kLease:
		n := l.ents[sl.ent].node
		c := n.claims[n.byAddr[s.addr(off)]]
		what := "lease"
		if sl.kind == kPrimary {
			what = "primary"
		}
		return fmt.Sprintf("node %s (%s on %s)", n.rec.Name, what, c.eni)
	case kPendNode:
		return fmt.Sprintf("node %s (pending)", l.ents[sl.ent].node.rec.Name)
	case kPendPrewarm:
		return fmt.Sprintf("pre-warm %s (pending)", l.ents[sl.ent].pw.rec.ID)
	case kPrewarm:
		pw := l.ents[sl.ent].pw
		e := pw.rec.ENIs[pw.byOff[off]]
		return fmt.Sprintf("pre-warm %s (ENI %q)", pw.rec.ID, e.ID)
	}
	return "unknown"
}

// ---- subnets ----

// PutSubnet adds a subnet or replaces its record. Foreign ranges are replaced by the new
// record's; foreign addresses that a node, pre-warm or pending reservation owns stay with that
// owner and are reported by Conflicts. Addresses marked by MarkForeign stay foreign until a
// record with a later ForeignScannedAt arrives (a fresh scan). The CIDR of a subnet that is in
// use cannot change (ErrInUse). A CIDR overlapping another subnet is ErrConflict.
func (l *Ledger) PutSubnet(rec SubnetRecord) error {
	if rec.ID == "" {
		return fmt.Errorf("%w: subnet record without id", ErrInvalid)
	}
	if err := checkCIDR(rec.CIDR); err != nil {
		return fmt.Errorf("ledger: put subnet %s: %w", rec.ID, err)
	}
	if rec.MaxHeld < 0 || rec.KeepFree < 0 {
		return fmt.Errorf("%w: subnet %s: negative max_held or keep_free", ErrInvalid, rec.ID)
	}
	for _, r := range rec.Foreign {
		if !r.First.Is4() || !r.Last.Is4() || !rec.CIDR.Contains(r.First) || !rec.CIDR.Contains(r.Last) || r.Last.Less(r.First) {
			return fmt.Errorf("%w: subnet %s: foreign range %v-%v is not an ordered range inside %v", ErrInvalid, rec.ID, r.First, r.Last, rec.CIDR)
		}
	}
	rec = copySubnet(rec)

	l.mu.Lock()
	defer l.mu.Unlock()
	for id, o := range l.subnets {
		if id != rec.ID && o.rec.CIDR.Overlaps(rec.CIDR) {
			return fmt.Errorf("%w: subnet %s: CIDR %v overlaps subnet %s (%v)", ErrConflict, rec.ID, rec.CIDR, id, o.rec.CIDR)
		}
	}
	s := l.subnets[rec.ID]
	if s != nil && s.rec.CIDR != rec.CIDR {
		if user := l.subnetUser(s); user != "" {
			return fmt.Errorf("%w: subnet %s: cannot change CIDR %v to %v: used by %s", ErrInUse, rec.ID, s.rec.CIDR, rec.CIDR, user)
		}
		s = nil
	}
	keepMarks := false
	if s == nil {
		s = newSubnet(rec)
		l.subnets[rec.ID] = s
	} else {
		keepMarks = !rec.ForeignScannedAt.After(s.rec.ForeignScannedAt)
		s.rec = rec
	}
	scan := make([]bool, s.size)
	for _, r := range rec.Foreign {
		for u := u32(r.First); ; u++ {
			scan[u-s.base] = true
			if u == u32(r.Last) {
				break
			}
		}
	}
	for off := range scan {
		o := uint32(off)
		var f uint8
		if s.reserved(o) {
			continue
		}
		if scan[off] {
			f |= flagScan
		}
		if keepMarks {
			f |= s.flags[off] & flagMarked
		}
		f |= s.flags[off] & flagHeld // a registration in flight, whatever the scan says
		s.setFlags(o, f)
	}
	return nil
}

// subnetUser names something that uses the subnet, or returns "".
func (l *Ledger) subnetUser(s *subnet) string {
	id := s.rec.ID
	for _, name := range sortedKeys(l.nodes) {
		n := l.nodes[name]
		if n.rec.SubnetID == id {
			return "node " + name
		}
		for _, e := range n.rec.ENIs {
			if e.SubnetID == id {
				return "node " + name
			}
		}
	}
	for _, pid := range sortedKeys(l.prewarms) {
		if l.prewarms[pid].rec.SubnetID == id {
			return "pre-warm " + pid
		}
	}
	if len(s.pending) > 0 {
		return "pending reservations"
	}
	return ""
}

// DeleteSubnet forgets a subnet. ErrInUse if a node, pre-warm or pending reservation uses it;
// ErrUnknownSubnet if it is not there.
func (l *Ledger) DeleteSubnet(id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.subnets[id]
	if !ok {
		return fmt.Errorf("ledger: delete subnet %s: %w", id, ErrUnknownSubnet)
	}
	if user := l.subnetUser(s); user != "" {
		return fmt.Errorf("ledger: delete subnet %s: used by %s: %w", id, user, ErrInUse)
	}
	delete(l.subnets, id)
	return nil
}

// Subnet returns a copy of a subnet's record.
func (l *Ledger) Subnet(id string) (SubnetRecord, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	s, ok := l.subnets[id]
	if !ok {
		return SubnetRecord{}, false
	}
	return copySubnet(s.rec), true
}

// Subnets returns copies of every subnet record, sorted by id.
func (l *Ledger) Subnets() []SubnetRecord {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]SubnetRecord, 0, len(l.subnets))
	for _, id := range sortedKeys(l.subnets) {
		out = append(out, copySubnet(l.subnets[id].rec))
	}
	return out
}

// ---- nodes ----

var leaseStates = map[LeaseState]bool{LeaseActive: true, LeaseReleaseProposed: true, LeaseReleasing: true}

// nodeClaims checks the shape of a node record and lists the addresses it holds.
func (l *Ledger) nodeClaims(rec *NodeRecord) ([]claim, error) {
	if err := rec.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %s", ErrInvalid, strings.TrimPrefix(err.Error(), "ledger: "))
	}
	var claims []claim
	seen := map[netip.Addr]string{}
	enis := map[string]bool{}
	add := func(s *subnet, a netip.Addr, c claim, what string) error {
		off, ok := s.offset(a)
		switch {
		case !ok:
			return fmt.Errorf("%w: node %s: %s %v is not an IPv4 address of subnet %s (%v)", ErrInvalid, rec.Name, what, a, s.rec.ID, s.rec.CIDR)
		case s.reserved(off):
			return fmt.Errorf("%w: node %s: %s %v is reserved by AWS", ErrInvalid, rec.Name, what, a)
		}
		if prev, dup := seen[a]; dup {
			return fmt.Errorf("%w: node %s: address %v listed twice (%s and %s)", ErrInvalid, rec.Name, a, prev, what)
		}
		seen[a] = what
		c.sub, c.off = s, off
		claims = append(claims, c)
		return nil
	}
	for _, e := range rec.ENIs {
		if enis[e.ID] {
			return nil, fmt.Errorf("%w: node %s: ENI %s listed twice", ErrInvalid, rec.Name, e.ID)
		}
		enis[e.ID] = true
		s, ok := l.subnets[e.SubnetID]
		if !ok {
			return nil, fmt.Errorf("ledger: node %s: ENI %s: subnet %s: %w", rec.Name, e.ID, e.SubnetID, ErrUnknownSubnet)
		}
		if err := add(s, e.PrimaryIP, claim{kind: kPrimary, eni: e.ID}, "primary of "+e.ID); err != nil {
			return nil, err
		}
		for _, la := range e.Addresses {
			if !leaseStates[la.State] {
				return nil, fmt.Errorf("%w: node %s: address %v: unknown lease state %q", ErrInvalid, rec.Name, la.IP, la.State)
			}
			if err := add(s, la.IP, claim{kind: kLease, eni: e.ID, state: la.State}, "address on "+e.ID); err != nil {
				return nil, err
			}
		}
		for _, lp := range e.Prefixes {
			if !leaseStates[lp.State] {
				return nil, fmt.Errorf("%w: node %s: prefix %v: unknown lease state %q", ErrInvalid, rec.Name, lp.Prefix, lp.State)
			}
			first, err := s.prefixOffset(lp.Prefix)
			if err != nil {
				return nil, fmt.Errorf("ledger: node %s: ENI %s: %w", rec.Name, e.ID, err)
			}
			for i := range uint32(blockSize) {
				c := claim{kind: kLease, eni: e.ID, state: lp.State, prefix: lp.Prefix}
				if err := add(s, s.addr(first+i), c, fmt.Sprintf("prefix %v on %s", lp.Prefix, e.ID)); err != nil {
					return nil, err
				}
			}
		}
	}
	return claims, nil
}

// PutNode adds a node or replaces its record. It applies completely or returns an error and
// changes nothing: ErrInvalid for a malformed record, ErrUnknownSubnet if an ENI's subnet is
// unknown, ErrConflict if the instance or an ENI belongs to another node, or if an address or
// prefix is owned by another node, another owner's pending reservation, a pre-warm ENI other
// than the same ENI, or is foreign because MarkForeign said so (EC2 refused it to us). A
// pending reservation of the same node (any ENI) becomes the lease; addresses of a pre-warm
// ENI pass to the node when the node's record lists the same ENI id. Addresses that only the
// subnet's last foreign scan claims are accepted (the ledger's owner wins; Conflicts reports
// the overlap). Addresses the new record no longer lists become free (call Released for those
// unassigned on EC2 so they cool down).
func (l *Ledger) PutNode(rec NodeRecord) error {
	rec = copyNode(rec)
	l.mu.Lock()
	defer l.mu.Unlock()
	claims, err := l.checkNode(&rec)
	if err != nil {
		return err
	}
	l.applyNode(rec, claims)
	return nil
}

// CheckNode says whether PutNode would accept the record now, with the error it would
// return; it changes nothing. The allocator calls it before committing a record to etcd.
func (l *Ledger) CheckNode(rec NodeRecord) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, err := l.checkNode(&rec)
	return err
}

// checkNode validates a node record against the ledger and returns its claims.
func (l *Ledger) checkNode(rec *NodeRecord) ([]claim, error) {
	claims, err := l.nodeClaims(rec)
	if err != nil {
		return nil, err
	}
	old := l.nodes[rec.Name]
	oldEnt := int32(-1)
	if old != nil {
		oldEnt = old.ent
	}
	if other, ok := l.byInstance[rec.InstanceID]; ok && other != rec.Name {
		return nil, fmt.Errorf("ledger: put node %s: instance %s is node %s: %w", rec.Name, rec.InstanceID, other, ErrConflict)
	}
	newENIs := map[string]bool{}
	for _, e := range rec.ENIs {
		newENIs[e.ID] = true
		if other, ok := l.eniNode[e.ID]; ok && other != rec.Name {
			return nil, fmt.Errorf("ledger: put node %s: ENI %s is attached to node %s: %w", rec.Name, e.ID, other, ErrConflict)
		}
	}
	for _, c := range claims {
		sl := c.sub.slots[c.off]
		ok := false
		switch sl.kind {
		case kFree:
			ok = c.sub.flags[c.off]&flagMarked == 0
		case kPrimary, kLease, kPendNode:
			ok = sl.ent == oldEnt
		case kPrewarm:
			pw := l.ents[sl.ent].pw
			id := pw.rec.ENIs[pw.byOff[c.off]].ID
			ok = id != "" && newENIs[id]
		}
		if !ok {
			return nil, fmt.Errorf("ledger: put node %s: address %v is owned by %s: %w", rec.Name, c.sub.addr(c.off), l.describe(c.sub, c.off), ErrConflict)
		}
	}
	return claims, nil
}

// applyNode applies a record checkNode accepted; it cannot fail.
func (l *Ledger) applyNode(rec NodeRecord, claims []claim) {
	old := l.nodes[rec.Name]
	newENIs := map[string]bool{}
	for _, e := range rec.ENIs {
		newENIs[e.ID] = true
	}
	var n *node
	var oldList []ENIRecord
	oldENIs := map[string]bool{}
	if old != nil {
		n = old
		oldList = old.rec.ENIs
		for _, c := range old.claims {
			l.setSlot(c.sub, c.off, freeSlot)
		}
		for _, e := range old.rec.ENIs {
			oldENIs[e.ID] = true
			delete(l.eniNode, e.ID)
		}
		delete(l.byInstance, old.rec.InstanceID)
	} else {
		n = &node{inUse: map[*subnet]int{}}
		n.ent = l.newEnt(entRef{node: n})
		l.nodes[rec.Name] = n
	}
	for _, e := range rec.ENIs {
		l.eniNode[e.ID] = rec.Name
		if !oldENIs[e.ID] {
			l.setPrewarmENI(e.ID, false)
		}
	}
	l.byInstance[rec.InstanceID] = rec.Name
	n.rec = rec
	n.claims = claims
	n.byAddr = make(map[netip.Addr]int, len(claims))
	n.leased = 0
	for i, c := range claims {
		delete(c.sub.pending, c.off)
		l.setSlot(c.sub, c.off, slot{kind: c.kind, ent: n.ent})
		n.byAddr[c.sub.addr(c.off)] = i
		if c.kind == kLease {
			n.leased++
		}
	}
	for _, e := range oldList {
		if !newENIs[e.ID] {
			l.setPrewarmENI(e.ID, true)
		}
	}
	l.recountUsage(n)
}

// setPrewarmENI applies (on) or lifts the claims of the pre-warm ENI with this id, if a
// pre-warm lists it and it is active.
func (l *Ledger) setPrewarmENI(id string, on bool) {
	pid, ok := l.eniPrewarm[id]
	if !ok {
		return
	}
	pw := l.prewarms[pid]
	for k, e := range pw.rec.ENIs {
		if e.ID != id {
			continue
		}
		if on && l.prewarmENIActive(e) {
			l.claimPrewarmENI(pw, k)
		} else if !on {
			l.unclaimPrewarmENI(pw, k)
		}
	}
}

// DeleteNode forgets a node: its ENI primaries and leases become free without cooling (the
// instance is gone), its pending reservations and usage report are dropped, and pre-warm
// ENIs it had taken over return to their reservation if it still lists them as not attached.
// Unknown names are ignored.
func (l *Ledger) DeleteNode(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, ok := l.nodes[name]
	if !ok {
		return
	}
	for _, c := range n.claims {
		l.setSlot(c.sub, c.off, freeSlot)
		delete(c.sub.cooling, c.off)
	}
	n.claims, n.byAddr = nil, nil
	l.dropPending(slot{kind: kPendNode, ent: n.ent})
	n.usage, n.usageDup = nil, nil
	l.recountUsage(n)
	delete(l.byInstance, n.rec.InstanceID)
	for _, e := range n.rec.ENIs {
		delete(l.eniNode, e.ID)
	}
	for _, e := range n.rec.ENIs {
		l.setPrewarmENI(e.ID, true)
	}
	delete(l.nodes, name)
	l.dropEnt(n.ent)
}

// dropPending frees every pending address of one owner in every subnet.
func (l *Ledger) dropPending(sl slot) {
	for _, s := range l.subnets {
		for off := range s.pending {
			if s.slots[off] == sl {
				l.free(s, off)
			}
		}
	}
}

// Node returns a deep copy of a node's record.
func (l *Ledger) Node(name string) (NodeRecord, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	n, ok := l.nodes[name]
	if !ok {
		return NodeRecord{}, false
	}
	return copyNode(n.rec), true
}

// Nodes returns deep copies of every node record, sorted by name.
func (l *Ledger) Nodes() []NodeRecord {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]NodeRecord, 0, len(l.nodes))
	for _, name := range sortedKeys(l.nodes) {
		out = append(out, copyNode(l.nodes[name].rec))
	}
	return out
}

// NodeByInstance returns a deep copy of the record of the node running an instance.
func (l *Ledger) NodeByInstance(instanceID string) (NodeRecord, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	name, ok := l.byInstance[instanceID]
	if !ok {
		return NodeRecord{}, false
	}
	return copyNode(l.nodes[name].rec), true
}

// ---- pre-warm ----

var (
	prewarmStates    = map[string]bool{PrewarmPending: true, PrewarmReady: true, PrewarmExpired: true, PrewarmCancelled: true, PrewarmConsumed: true}
	prewarmENIStates = map[string]bool{PrewarmENICreating: true, PrewarmENIReady: true, PrewarmENIAttached: true, PrewarmENIDeleting: true}
)

// prewarmENIActive: the ENI's addresses are held by its reservation (not attached, and no
// node lists the ENI).
func (l *Ledger) prewarmENIActive(e PrewarmENI) bool {
	if e.State == PrewarmENIAttached {
		return false
	}
	return e.ID == "" || l.eniNode[e.ID] == ""
}

// prewarmVirtual is the budget a reservation holds as a number, beyond the addresses it owns
// or has pending: NodeCount x (1 + AddressesPerNode) while pending or ready, less (1 +
// AddressesPerNode) per ENI a node has taken (attached, or listed by a node), less what it
// owns or has pending; never below zero.
func (l *Ledger) prewarmVirtual(pw *prewarm) int {
	if pw.rec.State != PrewarmPending && pw.rec.State != PrewarmReady {
		return 0
	}
	per := 1 + pw.rec.AddressesPerNode
	v := pw.rec.NodeCount * per
	for _, e := range pw.rec.ENIs {
		if e.State == PrewarmENIAttached || (e.ID != "" && l.eniNode[e.ID] != "") {
			v -= per
		}
	}
	return max(0, v-pw.owned-pw.pending)
}

func (l *Ledger) claimPrewarmENI(pw *prewarm, k int) {
	for _, off := range pw.eniOffs[k] {
		s := pw.sub
		sl := s.slots[off]
		if sl.kind == kFree || (sl.kind == kPendPrewarm && sl.ent == pw.ent) {
			delete(s.pending, off)
			l.setSlot(s, off, slot{kind: kPrewarm, ent: pw.ent})
		}
	}
}

func (l *Ledger) unclaimPrewarmENI(pw *prewarm, k int) {
	for _, off := range pw.eniOffs[k] {
		if pw.sub.slots[off] == (slot{kind: kPrewarm, ent: pw.ent}) {
			l.setSlot(pw.sub, off, freeSlot)
		}
	}
}

// PutPrewarm adds a pre-warm reservation or replaces its record. The primary and addresses of
// its ENIs that are not attached (and that no node lists) are owned by the reservation;
// while it is pending or ready it also holds budget for the ENIs not created yet (see
// prewarmVirtual). ErrInvalid for a malformed record, ErrUnknownSubnet, ErrConflict if an ENI
// id belongs to another reservation or an address has another owner (pending reservations of
// the same pre-warm become its addresses).
func (l *Ledger) PutPrewarm(rec PrewarmRecord) error {
	rec = copyPrewarm(rec)
	l.mu.Lock()
	defer l.mu.Unlock()
	plan, err := l.checkPrewarm(&rec)
	if err != nil {
		return err
	}
	l.applyPrewarm(rec, plan)
	return nil
}

// CheckPrewarm says whether PutPrewarm would accept the record now, with the error it would
// return; it changes nothing.
func (l *Ledger) CheckPrewarm(rec PrewarmRecord) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	_, err := l.checkPrewarm(&rec)
	return err
}

// prewarmPlan is what checkPrewarm computed for applyPrewarm.
type prewarmPlan struct {
	sub     *subnet
	eniOffs [][]uint32
	byOff   map[uint32]int
}

func (l *Ledger) checkPrewarm(rec *PrewarmRecord) (prewarmPlan, error) {
	switch {
	case rec.ID == "":
		return prewarmPlan{}, fmt.Errorf("%w: pre-warm record without id", ErrInvalid)
	case !prewarmStates[rec.State]:
		return prewarmPlan{}, fmt.Errorf("%w: pre-warm %s: unknown state %q", ErrInvalid, rec.ID, rec.State)
	case rec.NodeCount < 0 || rec.AddressesPerNode < 0:
		return prewarmPlan{}, fmt.Errorf("%w: pre-warm %s: negative node count or addresses per node", ErrInvalid, rec.ID)
	}
	s, ok := l.subnets[rec.SubnetID]
	if !ok {
		return prewarmPlan{}, fmt.Errorf("ledger: pre-warm %s: subnet %q: %w", rec.ID, rec.SubnetID, ErrUnknownSubnet)
	}
	old := l.prewarms[rec.ID]
	oldEnt := int32(-1)
	if old != nil {
		oldEnt = old.ent
	}
	eniOffs := make([][]uint32, len(rec.ENIs))
	byOff := map[uint32]int{}
	ids := map[string]bool{}
	for k, e := range rec.ENIs {
		if !prewarmENIStates[e.State] {
			return prewarmPlan{}, fmt.Errorf("%w: pre-warm %s: ENI %q: unknown state %q", ErrInvalid, rec.ID, e.ID, e.State)
		}
		if e.ID != "" {
			if ids[e.ID] {
				return prewarmPlan{}, fmt.Errorf("%w: pre-warm %s: ENI %s listed twice", ErrInvalid, rec.ID, e.ID)
			}
			ids[e.ID] = true
			if other, ok := l.eniPrewarm[e.ID]; ok && other != rec.ID {
				return prewarmPlan{}, fmt.Errorf("ledger: pre-warm %s: ENI %s belongs to pre-warm %s: %w", rec.ID, e.ID, other, ErrConflict)
			}
		}
		if e.State == PrewarmENIAttached {
			// The node holds it now; its addresses are history and claim nothing.
			continue
		}
		addrs := e.Addresses
		if e.PrimaryIP.IsValid() {
			addrs = append([]netip.Addr{e.PrimaryIP}, addrs...)
		}
		for _, a := range addrs {
			off, ok := s.offset(a)
			switch {
			case !ok:
				return prewarmPlan{}, fmt.Errorf("%w: pre-warm %s: address %v is not an IPv4 address of subnet %s (%v)", ErrInvalid, rec.ID, a, s.rec.ID, s.rec.CIDR)
			case s.reserved(off):
				return prewarmPlan{}, fmt.Errorf("%w: pre-warm %s: address %v is reserved by AWS", ErrInvalid, rec.ID, a)
			}
			if _, dup := byOff[off]; dup {
				return prewarmPlan{}, fmt.Errorf("%w: pre-warm %s: address %v listed twice", ErrInvalid, rec.ID, a)
			}
			byOff[off] = k
			eniOffs[k] = append(eniOffs[k], off)
		}
		if !l.prewarmENIActive(e) {
			continue
		}
		for _, off := range eniOffs[k] {
			sl := s.slots[off]
			ok := (sl.kind == kFree && s.flags[off]&(flagMarked|flagHeld) == 0) ||
				((sl.kind == kPrewarm || sl.kind == kPendPrewarm) && sl.ent == oldEnt)
			if !ok {
				return prewarmPlan{}, fmt.Errorf("ledger: pre-warm %s: address %v is owned by %s: %w", rec.ID, s.addr(off), l.describe(s, off), ErrConflict)
			}
		}
	}
	return prewarmPlan{sub: s, eniOffs: eniOffs, byOff: byOff}, nil
}

// applyPrewarm applies a record checkPrewarm accepted; it cannot fail.
func (l *Ledger) applyPrewarm(rec PrewarmRecord, plan prewarmPlan) {
	pw := l.prewarms[rec.ID]
	if pw != nil {
		for k := range pw.rec.ENIs {
			l.unclaimPrewarmENI(pw, k)
		}
		for _, e := range pw.rec.ENIs {
			if e.ID != "" {
				delete(l.eniPrewarm, e.ID)
			}
		}
	} else {
		pw = &prewarm{}
		pw.ent = l.newEnt(entRef{pw: pw})
		l.prewarms[rec.ID] = pw
	}
	pw.rec, pw.sub, pw.eniOffs, pw.byOff = rec, plan.sub, plan.eniOffs, plan.byOff
	for k, e := range rec.ENIs {
		if e.ID != "" {
			l.eniPrewarm[e.ID] = rec.ID
		}
		if l.prewarmENIActive(e) {
			l.claimPrewarmENI(pw, k)
		}
	}
}

// DeletePrewarm forgets a reservation: its ENIs' addresses and its pending reservations
// become free. Unknown ids are ignored.
func (l *Ledger) DeletePrewarm(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pw, ok := l.prewarms[id]
	if !ok {
		return
	}
	for k := range pw.rec.ENIs {
		l.unclaimPrewarmENI(pw, k)
	}
	for _, e := range pw.rec.ENIs {
		if e.ID != "" {
			delete(l.eniPrewarm, e.ID)
		}
	}
	l.dropPending(slot{kind: kPendPrewarm, ent: pw.ent})
	delete(l.prewarms, id)
	l.dropEnt(pw.ent)
}

// Prewarm returns a copy of a reservation's record.
func (l *Ledger) Prewarm(id string) (PrewarmRecord, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	pw, ok := l.prewarms[id]
	if !ok {
		return PrewarmRecord{}, false
	}
	return copyPrewarm(pw.rec), true
}

// Prewarms returns copies of every reservation, sorted by id.
func (l *Ledger) Prewarms() []PrewarmRecord {
	l.mu.RLock()
	defer l.mu.RUnlock()
	out := make([]PrewarmRecord, 0, len(l.prewarms))
	for _, id := range sortedKeys(l.prewarms) {
		out = append(out, copyPrewarm(l.prewarms[id].rec))
	}
	return out
}

// ---- usage ----

// SetUsage replaces the set of addresses a node's agent reports in use. Addresses not leased
// to the node do not count in budgets; Conflicts reports them. Reports for unknown nodes are
// ignored.
func (l *Ledger) SetUsage(name string, inUse []netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, ok := l.nodes[name]
	if !ok {
		return
	}
	u := slices.Clone(inUse)
	slices.SortFunc(u, func(a, b netip.Addr) int { return a.Compare(b) })
	n.usage, n.usageDup = u[:0], nil
	for i, a := range u {
		if i > 0 && a == u[i-1] {
			if len(n.usageDup) == 0 || n.usageDup[len(n.usageDup)-1] != a {
				n.usageDup = append(n.usageDup, a)
			}
			continue
		}
		n.usage = append(n.usage, a)
	}
	l.recountUsage(n)
}

// Usage returns the addresses a node's agent last reported in use, sorted (nil if none or the
// node is unknown).
func (l *Ledger) Usage(name string) []netip.Addr {
	l.mu.RLock()
	defer l.mu.RUnlock()
	n, ok := l.nodes[name]
	if !ok || len(n.usage) == 0 {
		return nil
	}
	return slices.Clone(n.usage)
}

func (l *Ledger) recountUsage(n *node) {
	for s, c := range n.inUse {
		s.inUse -= c
	}
	clear(n.inUse)
	for _, a := range n.usage {
		if i, ok := n.byAddr[a]; ok && n.claims[i].kind == kLease {
			n.inUse[n.claims[i].sub]++
		}
	}
	for s, c := range n.inUse {
		s.inUse += c
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, cmp.Compare[string])
	return keys
}
