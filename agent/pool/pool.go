package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Errors of the pool.
var (
	// ErrNoFreeAddress: every usable address is held, cooling, locked or not ACTIVE.
	ErrNoFreeAddress = errors.New("pool: no free address")
	// ErrAwaitingRestore: new attachments get no address until Restore has run or
	// Config.RestoreWait has passed (it wraps ErrNoFreeAddress: callers wait as for an empty pool).
	ErrAwaitingRestore = fmt.Errorf("%w: waiting for the first registration to restore the pods the server knows", ErrNoFreeAddress)
	// ErrCorruptCheckpoint: the checkpoint file exists but cannot be trusted.
	ErrCorruptCheckpoint = errors.New("pool: corrupt checkpoint")
	// ErrWrongIdentity: a checkpoint or pool names another node or instance.
	ErrWrongIdentity = errors.New("pool: wrong node or instance")
	// ErrInvalidPool: a NodePool from the server is malformed (nothing was applied).
	ErrInvalidPool = errors.New("pool: invalid node pool")
)

// DefaultCooldown is how long an address given back by a pod waits before reuse.
const DefaultCooldown = 30 * time.Second

// maxForgotten bounds the attachments remembered as deleted before the first Restore (an agent
// that never registers must not grow without bound).
const maxForgotten = 4096

// Config configures a Pool.
type Config struct {
	// CheckpointPath is the checkpoint file. Its directory is created (0700) when missing.
	CheckpointPath string
	// NoFsync skips every fsync of the checkpoint. For benchmarks only: a crash of the machine
	// (not of the agent) may then lose assignments that ADD reported as done.
	NoFsync bool
	// NodeName and InstanceID identify the node; a checkpoint or a pool that names another
	// node or instance is refused. Empty fields are not checked.
	NodeName   string
	InstanceID string
	// Cooldown before an address given back by a pod is handed out again (0: DefaultCooldown).
	Cooldown time.Duration
	// Now is the clock (nil: time.Now). Tests inject one.
	Now func() time.Time
	// RestoreWait: after Open, new attachments get no address until Restore has run (the
	// agent's first registration) or this long has passed (0: they do not wait).
	RestoreWait time.Duration
	// OnChange is called (outside the pool's lock) after every change of the pool, assignments,
	// cooldowns or locks; the agent uses it to schedule usage reports. It must not block.
	OnChange func()
	Logger   *slog.Logger

	// faults, when set, is told of every step of the checkpoint's writes before it is taken; an
	// error fails the step (tests crash the pool with it).
	faults func(step, path string) error
}

// Key names one container attachment.
type Key struct {
	ContainerID string
	IfName      string
}

func (k Key) String() string { return k.ContainerID + "/" + k.IfName }

// PodInfo is what the runtime tells about the pod of an attachment.
type PodInfo struct {
	Namespace string
	Name      string
	UID       string
}

// ENI describes the interface an address lives on.
type ENI struct {
	ID          string
	MAC         string
	DeviceIndex uint32
	SubnetID    string
	SubnetCIDR  string
	PrimaryIP   string
}

// Assignment is an address handed to an attachment.
type Assignment struct {
	Key
	IP         netip.Addr
	Pod        PodInfo
	AssignedAt time.Time
	ENI        ENI
	// Leased is false when the address has left the server's pool while the pod still holds it.
	Leased bool
	// Recovered: a pod on the node uses the address (the kernel shows its policy rules) but no
	// attachment known to the pool holds it; Key and Pod are empty (see Recover).
	Recovered bool
}

// ApplyResult says what applying a NodePool did.
type ApplyResult struct {
	// Applied is false when the pool was older than the one already applied (nothing changed).
	Applied    bool
	Generation uint64
	// ENIs are the interfaces of the pool now applied; Removed those that left it.
	ENIs    []ENI
	Removed []ENI
	// Vanished are assignments whose address is no longer leased to the node (kept for the pod).
	Vanished []Assignment
	// Unlocked are release locks dropped because the item left the pool or became ACTIVE again.
	Unlocked []string
}

type assignment struct {
	key        Key // empty when recovered
	pod        PodInfo
	assignedAt time.Time
	recovered  bool
}

// slot is one address the pool knows: leased now, or held by a pod after it left the pool.
type slot struct {
	ip     netip.Addr
	eni    ENI
	prefix netip.Prefix // valid when the address comes from a leased /28 prefix
	item   string       // lease item: the address, or the prefix in CIDR notation
	state  ipledgerv1.LeaseState
	leased bool
	locked bool

	holder     *assignment
	cpJSON     []byte // the holder's checkpoint entry, encoded once (nil: not yet)
	coolUntil  time.Time
	releasedAt time.Time
}

type lock struct {
	proposalID string
	generation uint64 // pool generation applied when the lock was taken
	lockedAt   time.Time
}

// Pool is the node's address pool. Safe for concurrent use.
type Pool struct {
	cfg Config
	log *slog.Logger

	mu         sync.Mutex
	np         *ipledgerv1.NodePool // applied pool (nil before the first)
	npJSON     []byte               // np as compact protojson, for the checkpoint
	generation uint64
	slots      map[netip.Addr]*slot
	order      []*slot // leased slots by address
	byKey      map[Key]*slot
	recovered  map[netip.Addr]*slot // slots held by recovered assignments (no attachment known)
	locks      map[string]lock
	prefixUse  map[netip.Prefix]int
	addsTotal  uint64
	changed    chan struct{}
	version    uint64 // bumped by every change that the checkpoint must hold

	restored bool // a checkpoint was loaded at Open

	// Before the first Restore: new attachments wait until restoreUntil; attachments the runtime
	// deleted meanwhile are remembered so that Restore does not bring them back.
	restoreDone  bool
	restoreUntil time.Time
	forgotten    map[Key]bool // Release of an attachment the pool did not know
	gcValid      map[Key]bool // valid attachments of the last GC (nil: no GC yet)

	// Changes since the last journal record (guarded by mu): addresses whose holder or
	// cooldown changed, lock items taken or dropped, or everything (after Apply, Restore or a
	// failed write).
	dirtyIPs   map[netip.Addr]struct{}
	dirtyItems map[string]struct{}
	dirtyFull  bool

	disk disk
	bg   sync.WaitGroup // the background compaction

	// Group commit (guarded by commitMu): the version the checkpoint on disk holds, whether a
	// caller is writing a record, and the callers waiting for it.
	commitMu sync.Mutex
	durable  uint64
	writing  bool
	waiters  []commitWaiter

	// The checkpoint's files (guarded by persistMu, held while a record is written; see
	// journal.go).
	persistMu     sync.Mutex
	lastSeq       uint64   // the last journal record written (or whose write failed)
	files         []string // journal files not yet removed by a compaction, oldest first
	journal       *os.File // the file records are appended to (nil: the next record starts one)
	journalBytes  int64    // appended since the last compaction started
	snapshotSize  int64    // of the last snapshot written
	compactAt     int64    // journal size that starts a compaction (compactMinBytes; tests lower it)
	inlineCompact bool     // tests: compact in the writer, not in the background
	compacting    bool
	closing       bool
	closed        bool
}

// Open loads the checkpoint (a missing file is a cold start) and returns the pool.
func Open(cfg Config) (*Pool, error) {
	if cfg.CheckpointPath == "" {
		return nil, errors.New("pool: checkpoint path is empty")
	}
	if cfg.Cooldown <= 0 {
		cfg.Cooldown = DefaultCooldown
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Pool{
		cfg:       cfg,
		log:       cfg.Logger,
		slots:     map[netip.Addr]*slot{},
		byKey:     map[Key]*slot{},
		recovered: map[netip.Addr]*slot{},
		locks:     map[string]lock{},
		forgotten: map[Key]bool{},
		prefixUse: map[netip.Prefix]int{},
		changed:   make(chan struct{}),

		dirtyIPs:   map[netip.Addr]struct{}{},
		dirtyItems: map[string]struct{}{},
		disk:       disk{noSync: cfg.NoFsync, hook: cfg.faults},
		compactAt:  compactMinBytes,
	}
	if err := p.load(); err != nil {
		return nil, err
	}
	if cfg.RestoreWait > 0 {
		p.restoreUntil = cfg.Now().Add(cfg.RestoreWait)
	}
	return p, nil
}

// Restored says whether Open loaded a checkpoint (false: cold start).
func (p *Pool) Restored() bool { return p.restored }

// Generation is the generation of the applied pool (0 before any).
func (p *Pool) Generation() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.generation
}

// NodePool returns a copy of the applied pool (nil before any).
func (p *Pool) NodePool() *ipledgerv1.NodePool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.np == nil {
		return nil
	}
	return cloneNodePool(p.np)
}

// Draining says whether the applied pool marks the node as drained.
func (p *Pool) Draining() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.np.GetDraining()
}

// Changed returns a channel that is closed at the next change that may free an address (a pool
// applied, an address given back). Take it before trying Assign to miss no wake-up.
func (p *Pool) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

// notifyLocked wakes waiters; the caller holds mu.
func (p *Pool) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Pool) onChange() {
	if p.cfg.OnChange != nil {
		p.cfg.OnChange()
	}
}

// Apply applies a NodePool from the server if its generation is at least the applied one
// (force applies it whatever its generation: the server has re-created the node). The new state
// is checkpointed before Apply returns; a malformed pool changes nothing.
func (p *Pool) Apply(np *ipledgerv1.NodePool, force bool) (ApplyResult, error) {
	built, err := p.buildSlots(np)
	if err != nil {
		return ApplyResult{}, err
	}
	npJSON, err := compactProtoJSON(np)
	if err != nil {
		return ApplyResult{}, fmt.Errorf("%w: %w", ErrInvalidPool, err)
	}
	p.mu.Lock()
	if np.GetGeneration() < p.generation && !force {
		res := ApplyResult{Generation: p.generation}
		p.mu.Unlock()
		p.log.Debug("ignoring older pool", "generation", np.GetGeneration(), "applied", p.generation)
		return res, nil
	}
	res := p.applyLocked(np, built, force)
	p.npJSON = npJSON
	p.dirtyFull = true
	p.version++
	v := p.version
	p.notifyLocked()
	p.mu.Unlock()

	for _, a := range res.Vanished {
		p.log.Error("address held by a pod is no longer leased to the node; keeping it for the pod and never handing it out again",
			"ip", a.IP, "container", a.ContainerID, "ifname", a.IfName, "generation", res.Generation)
	}
	p.onChange()
	if err := p.persist(v); err != nil {
		return res, err
	}
	return res, nil
}

// buildSlots validates np and returns the slots it leases (in address order). It does not touch
// the pool.
func (p *Pool) buildSlots(np *ipledgerv1.NodePool) ([]*slot, error) {
	if np == nil {
		return nil, fmt.Errorf("%w: nil pool", ErrInvalidPool)
	}
	if p.cfg.NodeName != "" && np.GetNodeName() != "" && np.GetNodeName() != p.cfg.NodeName {
		return nil, fmt.Errorf("%w: pool for node %q, this is node %q", ErrWrongIdentity, np.GetNodeName(), p.cfg.NodeName)
	}
	if p.cfg.InstanceID != "" && np.GetInstanceId() != "" && np.GetInstanceId() != p.cfg.InstanceID {
		return nil, fmt.Errorf("%w: pool for instance %q, this is instance %q", ErrWrongIdentity, np.GetInstanceId(), p.cfg.InstanceID)
	}
	seen := map[netip.Addr]bool{}
	enis := map[string]bool{}
	var out []*slot
	add := func(s *slot) error {
		if seen[s.ip] {
			return fmt.Errorf("%w: address %s listed twice", ErrInvalidPool, s.ip)
		}
		seen[s.ip] = true
		out = append(out, s)
		return nil
	}
	for _, nif := range np.GetInterfaces() {
		if nif.GetEniId() == "" {
			return nil, fmt.Errorf("%w: interface without eni_id", ErrInvalidPool)
		}
		if enis[nif.GetEniId()] {
			return nil, fmt.Errorf("%w: interface %s listed twice", ErrInvalidPool, nif.GetEniId())
		}
		enis[nif.GetEniId()] = true
		eni := eniOf(nif)
		var primary netip.Addr
		if nif.GetPrimaryIp() != "" {
			a, err := netip.ParseAddr(nif.GetPrimaryIp())
			if err != nil || !a.Is4() {
				return nil, fmt.Errorf("%w: interface %s: bad primary ip %q", ErrInvalidPool, nif.GetEniId(), nif.GetPrimaryIp())
			}
			primary = a
		}
		for _, pa := range nif.GetAddresses() {
			a, err := netip.ParseAddr(pa.GetIp())
			if err != nil || !a.Is4() {
				return nil, fmt.Errorf("%w: interface %s: bad address %q", ErrInvalidPool, nif.GetEniId(), pa.GetIp())
			}
			if a == primary {
				return nil, fmt.Errorf("%w: interface %s: primary address %s listed as a pod address", ErrInvalidPool, nif.GetEniId(), a)
			}
			if err := add(&slot{ip: a, eni: eni, item: a.String(), state: pa.GetState(), leased: true}); err != nil {
				return nil, err
			}
		}
		for _, pp := range nif.GetPrefixes() {
			pr, err := netip.ParsePrefix(pp.GetCidr())
			if err != nil || !pr.Addr().Is4() || pr.Bits() != 28 || pr.Masked() != pr {
				return nil, fmt.Errorf("%w: interface %s: bad prefix %q (want an aligned IPv4 /28)", ErrInvalidPool, nif.GetEniId(), pp.GetCidr())
			}
			a := pr.Addr()
			for range 16 {
				if a != primary {
					if err := add(&slot{ip: a, eni: eni, prefix: pr, item: pr.String(), state: pp.GetState(), leased: true}); err != nil {
						return nil, err
					}
				}
				a = a.Next()
			}
		}
	}
	slices.SortFunc(out, func(a, b *slot) int { return a.ip.Compare(b.ip) })
	return out, nil
}

func eniOf(nif *ipledgerv1.NetworkInterface) ENI {
	return ENI{
		ID:          nif.GetEniId(),
		MAC:         nif.GetMacAddress(),
		DeviceIndex: nif.GetDeviceIndex(),
		SubnetID:    nif.GetSubnetId(),
		SubnetCIDR:  nif.GetSubnetCidr(),
		PrimaryIP:   nif.GetPrimaryIp(),
	}
}

// applyLocked installs the new slots, carrying over holders, cooldowns and locks. A forced pool
// is the server's current state whatever its generation: an item it shows ACTIVE is unlocked.
func (p *Pool) applyLocked(np *ipledgerv1.NodePool, built []*slot, force bool) ApplyResult {
	res := ApplyResult{Applied: true, Generation: np.GetGeneration()}
	oldENIs := p.enisLocked()
	newSlots := make(map[netip.Addr]*slot, len(built))
	for _, s := range built {
		if old, ok := p.slots[s.ip]; ok {
			s.holder = old.holder
			s.coolUntil = old.coolUntil
			s.releasedAt = old.releasedAt
			if old.holder != nil {
				p.indexHolderLocked(s)
			}
		}
		newSlots[s.ip] = s
	}
	// Addresses held by pods that left the pool stay, unleased, until the pod gives them back.
	for ip, old := range p.slots {
		if old.holder == nil {
			continue
		}
		if _, ok := newSlots[ip]; ok {
			continue
		}
		wasLeased := old.leased
		old.leased = false
		old.prefix = netip.Prefix{}
		old.locked = false
		old.cpJSON = nil
		newSlots[ip] = old
		if wasLeased {
			res.Vanished = append(res.Vanished, p.assignmentLocked(old))
		}
	}
	// Release locks end when the item left the pool or a newer pool shows it ACTIVE again.
	items := map[string]ipledgerv1.LeaseState{}
	for _, s := range built {
		items[s.item] = s.state
	}
	for item, l := range p.locks {
		st, ok := items[item]
		if !ok || (st == ipledgerv1.LeaseState_LEASE_STATE_ACTIVE && (np.GetGeneration() > l.generation || force)) {
			delete(p.locks, item)
			res.Unlocked = append(res.Unlocked, item)
		}
	}
	slices.Sort(res.Unlocked)

	p.np = cloneNodePool(np)
	p.generation = np.GetGeneration()
	p.slots = newSlots
	p.order = built
	p.recountLocked()

	newENIs := p.enisLocked()
	res.ENIs = newENIs
	for _, e := range oldENIs {
		if !slices.ContainsFunc(newENIs, func(n ENI) bool { return n.ID == e.ID }) {
			res.Removed = append(res.Removed, e)
		}
	}
	return res
}

// recountLocked recomputes lock flags and per-prefix use after slots or locks changed.
func (p *Pool) recountLocked() {
	clear(p.prefixUse)
	for _, s := range p.slots {
		_, s.locked = p.locks[s.item]
		s.locked = s.locked && s.leased
		if s.holder != nil && s.prefix.IsValid() {
			p.prefixUse[s.prefix]++
		}
	}
}

func (p *Pool) enisLocked() []ENI {
	var out []ENI
	for _, nif := range p.np.GetInterfaces() {
		out = append(out, eniOf(nif))
	}
	return out
}

func (p *Pool) assignmentLocked(s *slot) Assignment {
	return Assignment{
		Key:        s.holder.key,
		IP:         s.ip,
		Pod:        s.holder.pod,
		AssignedAt: s.holder.assignedAt,
		ENI:        s.eni,
		Leased:     s.leased,
		Recovered:  s.holder.recovered,
	}
}

// indexHolderLocked files s, which has a holder, under its attachment or as recovered.
func (p *Pool) indexHolderLocked(s *slot) {
	if s.holder.recovered {
		p.recovered[s.ip] = s
	} else {
		p.byKey[s.holder.key] = s
	}
}

// awaitingRestoreLocked says whether new attachments must wait for Restore now.
func (p *Pool) awaitingRestoreLocked(now time.Time) bool {
	return !p.restoreDone && now.Before(p.restoreUntil)
}

// usableLocked says whether s may be handed to a pod now.
func (p *Pool) usableLocked(s *slot, now time.Time) bool {
	return s.holder == nil && s.leased && !s.locked &&
		s.state == ipledgerv1.LeaseState_LEASE_STATE_ACTIVE && !now.Before(s.coolUntil)
}

// better says whether candidate a is preferred over b: the ENI with the lowest device index
// (pods pack onto the first ENIs, so that surplus ENIs drain and the server can release their
// addresses and then the ENIs), then in prefix mode the prefix with more pods (packing, so whole
// prefixes can be given back), then the address given back longest ago (never used counts as
// longest), then the lower address.
func (p *Pool) better(a, b *slot) bool {
	if a.eni.DeviceIndex != b.eni.DeviceIndex {
		return a.eni.DeviceIndex < b.eni.DeviceIndex
	}
	if a.prefix.IsValid() || b.prefix.IsValid() {
		ua, ub := p.prefixUse[a.prefix], p.prefixUse[b.prefix]
		if ua != ub {
			return ua > ub
		}
	}
	if !a.releasedAt.Equal(b.releasedAt) {
		return a.releasedAt.Before(b.releasedAt)
	}
	return a.ip.Less(b.ip)
}

// Assign hands an address to the attachment. An attachment that already has an address gets
// the same one (new is false). The assignment is checkpointed before Assign returns; when the
// checkpoint cannot be written the assignment is undone and the error returned.
// ErrNoFreeAddress when nothing can be handed out now.
func (p *Pool) Assign(key Key, pod PodInfo) (a Assignment, isNew bool, err error) {
	p.mu.Lock()
	if s, ok := p.byKey[key]; ok {
		a := p.assignmentLocked(s)
		v := p.version
		p.mu.Unlock()
		return a, false, p.persist(v)
	}
	now := p.cfg.Now()
	if p.awaitingRestoreLocked(now) {
		p.mu.Unlock()
		return Assignment{}, false, ErrAwaitingRestore
	}
	var best *slot
	for _, s := range p.order {
		if p.usableLocked(s, now) && (best == nil || p.better(s, best)) {
			best = s
		}
	}
	if best == nil {
		p.mu.Unlock()
		return Assignment{}, false, ErrNoFreeAddress
	}
	h := &assignment{key: key, pod: pod, assignedAt: now}
	best.holder = h
	best.cpJSON = nil
	best.coolUntil = time.Time{}
	p.touchLocked(best.ip)
	p.byKey[key] = best
	if best.prefix.IsValid() {
		p.prefixUse[best.prefix]++
	}
	p.addsTotal++
	p.version++
	v := p.version
	a = p.assignmentLocked(best)
	p.mu.Unlock()
	p.onChange()

	if err := p.persist(v); err != nil {
		p.mu.Lock()
		if s, ok := p.byKey[key]; ok && s.holder == h {
			p.dropHolderLocked(s, time.Time{})
			p.addsTotal--
			p.version++
			p.notifyLocked()
		}
		p.mu.Unlock()
		p.onChange()
		return Assignment{}, false, fmt.Errorf("assign %s to %s: %w", a.IP, key, err)
	}
	return a, true, nil
}

// dropHolderLocked frees s. releasedAt zero means the pod never used it (no cooldown).
func (p *Pool) dropHolderLocked(s *slot, releasedAt time.Time) {
	p.touchLocked(s.ip)
	if s.holder.recovered {
		delete(p.recovered, s.ip)
	} else {
		delete(p.byKey, s.holder.key)
	}
	s.holder = nil
	s.cpJSON = nil
	if s.prefix.IsValid() {
		p.prefixUse[s.prefix]--
		if p.prefixUse[s.prefix] <= 0 {
			delete(p.prefixUse, s.prefix)
		}
	}
	if !s.leased {
		// It left the pool while held: it is never handed out again.
		delete(p.slots, s.ip)
		return
	}
	if !releasedAt.IsZero() {
		s.releasedAt = releasedAt
		s.coolUntil = releasedAt.Add(p.cfg.Cooldown)
	}
}

// Lookup returns the attachment's assignment.
func (p *Pool) Lookup(key Key) (Assignment, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.byKey[key]
	if !ok {
		return Assignment{}, false
	}
	return p.assignmentLocked(s), true
}

// Release takes the attachment's address back; it cools down before reuse. found is false for
// an attachment without an address (success: Release is idempotent; before the first Restore the
// attachment is remembered, so Restore does not bring it back). The change is checkpointed
// before Release returns.
func (p *Pool) Release(key Key) (a Assignment, found bool, err error) {
	p.mu.Lock()
	s, ok := p.byKey[key]
	if ok {
		a = p.assignmentLocked(s)
		p.dropHolderLocked(s, p.cfg.Now())
		p.version++
		p.notifyLocked()
	} else if !p.restoreDone && len(p.forgotten) < maxForgotten {
		p.forgotten[key] = true
	}
	v := p.version
	p.mu.Unlock()
	if ok {
		p.onChange()
	}
	if err := p.persist(v); err != nil {
		return a, ok, fmt.Errorf("release %s: %w", key, err)
	}
	return a, ok, nil
}

// GC releases every attachment not in valid and returns what it released. Recovered
// assignments have no attachment to match: GC leaves them (ReleaseRecovered gives them back).
// Before the first Restore the valid list is remembered: Restore brings back no other attachment.
func (p *Pool) GC(valid []Key) ([]Assignment, error) {
	keep := make(map[Key]bool, len(valid))
	for _, k := range valid {
		keep[k] = true
	}
	p.mu.Lock()
	if !p.restoreDone {
		p.gcValid = keep
	}
	now := p.cfg.Now()
	var out []Assignment
	for k, s := range p.byKey {
		if keep[k] {
			continue
		}
		out = append(out, p.assignmentLocked(s))
		p.dropHolderLocked(s, now)
	}
	if len(out) > 0 {
		p.version++
		p.notifyLocked()
	}
	v := p.version
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Assignment) int { return a.IP.Compare(b.IP) })
	if len(out) > 0 {
		p.onChange()
	}
	if err := p.persist(v); err != nil {
		return out, fmt.Errorf("gc: %w", err)
	}
	return out, nil
}

// Assignments returns every assignment (recovered ones included), by address.
func (p *Pool) Assignments() []Assignment {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Assignment, 0, len(p.byKey)+len(p.recovered))
	for _, s := range p.heldLocked() {
		out = append(out, p.assignmentLocked(s))
	}
	return out
}

// NextFreeAt is the earliest time a cooling address becomes free (false when none cools), or
// the end of the wait for Restore while new attachments wait for it.
func (p *Pool) NextFreeAt() (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var t time.Time
	now := p.cfg.Now()
	if p.awaitingRestoreLocked(now) {
		return p.restoreUntil, true
	}
	for _, s := range p.order {
		if s.holder == nil && s.leased && !s.locked && s.state == ipledgerv1.LeaseState_LEASE_STATE_ACTIVE &&
			now.Before(s.coolUntil) && (t.IsZero() || s.coolUntil.Before(t)) {
			t = s.coolUntil
		}
	}
	return t, !t.IsZero()
}
