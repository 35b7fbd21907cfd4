package ec2sim

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ipledger/ipledger/server/instancetypes"
)

// Config configures a simulator. Start from DefaultConfig.
type Config struct {
	// Scenario to load; nil means DefaultScenario().
	Scenario *Scenario
	// Seed of every random choice (ids, MACs, addresses, prefixes, faults). The same seed and
	// the same request sequence give the same ids and addresses.
	Seed int64
	// Throttle turns EC2's token buckets on.
	Throttle bool
	// TimeScale (>= 1; 0 means 1) multiplies the buckets' refill rates and divides injected
	// latencies, the profile's latencies and describe lag, and the eventual-consistency delay,
	// for fast tests.
	TimeScale float64
	// Logger receives one debug line per request; nil discards.
	Logger *slog.Logger
	// InstanceTags are put on every instance the simulator launches (the scenario's and
	// RunInstances'), under the launch's own tags: ipledger-server --dev gives the cluster tag
	// its attestation checks.
	InstanceTags map[string]string
	// Profile is the clock of EC2 (ProfileInstant, ProfileRealistic, or one of the caller's);
	// nil means the scenario's ec2_profile, and without one ProfileInstant.
	Profile *Profile
	// Clock drives latencies, token refills, attach and detach phases and the describe lag;
	// nil is the real clock. Tests inject a fake one.
	Clock clockwork.Clock
}

// DefaultConfig is the default scenario, seed 1, throttling on, time scale 1, the instant
// profile.
func DefaultConfig() Config {
	return Config{Scenario: DefaultScenario(), Seed: 1, Throttle: true, TimeScale: 1}
}

// Validate reports the first problem of the configuration.
func (c Config) Validate() error {
	if c.TimeScale != 0 && c.TimeScale < 1 {
		return fmt.Errorf("ec2sim: time scale %v must be >= 1 (0 means 1)", c.TimeScale)
	}
	if c.Scenario != nil {
		if err := c.Scenario.Validate(); err != nil {
			return err
		}
	}
	if c.Profile != nil {
		if err := c.Profile.Validate(); err != nil {
			return err
		}
	}
	return nil
}

// APIError is an EC2 error: its code, message and HTTP status, as written in EC2's error XML.
// The programmatic API wraps it, so errors.As finds it.
type APIError struct {
	Code       string
	Message    string
	HTTPStatus int
}

func (e *APIError) Error() string { return "ec2sim: " + e.Code + ": " + e.Message }

func apiErr(code, format string, args ...any) *APIError {
	return &APIError{Code: code, Message: fmt.Sprintf(format, args...), HTTPStatus: statusForCode(code)}
}

// Sentinel errors of the programmatic API (besides wrapped *APIError values).
var (
	ErrClosed = errors.New("ec2sim: simulator closed")
)

// instanceHooks is told when instances start and stop; the Server uses it to open and close
// IMDS listeners.
type instanceHooks interface {
	instanceStarted(id string)
	instanceStopped(id string)
}

type eni struct {
	id          string
	sn          *subnet
	mac         string
	description string
	groups      []string
	primary     uint32
	secondaries []uint32
	prefixes    []uint32 // /28 bases
	tags        map[string]string
	att         *attachment
	created     time.Time
	foreign     bool
	srcDstCheck bool
}

func (e *eni) status() string {
	if e.att != nil {
		return "in-use"
	}
	return "available"
}

// slots is the number of IPv4 slots in use: primary + secondaries + prefixes.
func (e *eni) slots() int { return 1 + len(e.secondaries) + len(e.prefixes) }

type attachment struct {
	id                  string
	inst                *instance
	deviceIndex         int
	cardIndex           int
	deleteOnTermination bool
	attachTime          time.Time
	// usableAt: until then the attachment is `attaching` (and absent from IMDS).
	usableAt time.Time
	// detaching is set by DetachNetworkInterface; the detach completes at detachAt.
	detaching bool
	detachAt  time.Time
}

// statusAt is the attachment's status at now: attaching, attached or detaching.
func (a *attachment) statusAt(now time.Time) string {
	switch {
	case a.detaching:
		return "detaching"
	case now.Before(a.usableAt):
		return "attaching"
	}
	return "attached"
}

type instance struct {
	id            string
	itype         instancetypes.Type
	sn            *subnet
	reservationID string
	launchIndex   int
	state         string
	launchTime    time.Time
	privateIP     uint32
	enis          []*eni // attached, in attach order
	tags          map[string]string
	imdsEndpoint  string
}

func (in *instance) primaryENI() *eni {
	for _, e := range in.enis {
		if e.att.deviceIndex == 0 && e.att.cardIndex == 0 {
			return e
		}
	}
	return nil
}

type tokenRecord struct {
	params string
	eniID  string
}

type runRecord struct {
	params        string
	reservationID string
	ids           []string
}

// tagIndex maps tag key -> value -> resource ids.
type tagIndex map[string]map[string]map[string]struct{}

func (ti tagIndex) add(id, k, v string) {
	byV, ok := ti[k]
	if !ok {
		byV = map[string]map[string]struct{}{}
		ti[k] = byV
	}
	ids, ok := byV[v]
	if !ok {
		ids = map[string]struct{}{}
		byV[v] = ids
	}
	ids[id] = struct{}{}
}

func (ti tagIndex) remove(id, k, v string) {
	byV := ti[k]
	if byV == nil {
		return
	}
	delete(byV[v], id)
	if len(byV[v]) == 0 {
		delete(byV, v)
	}
	if len(byV) == 0 {
		delete(ti, k)
	}
}

// Sim is the simulated EC2 account and region. All state is under one RWMutex; describes take
// the read lock.
type Sim struct {
	log       *slog.Logger
	scale     float64
	accountID string
	region    string
	vpcID     string
	vpcCIDRs  []netip.Prefix // primary first
	defaultSG string
	ecDelay   time.Duration // eventual-consistency delay, already scaled
	deny      map[string]bool
	clk       atomic.Pointer[simClock]
	profile   atomic.Pointer[Profile]
	delays    *sampler
	done      chan struct{}
	closeOnce sync.Once
	reqSeq    atomic.Uint64

	throttle *throttle
	faults   *faults
	// instanceTags go on every launched instance (Config.InstanceTags).
	instanceTags map[string]string
	stats        *stats

	hooksMu sync.Mutex
	hooks   instanceHooks

	mu              sync.RWMutex
	idRNG           *rand.Rand
	addrRNG         *rand.Rand
	usedIDs         map[string]bool
	subnets         []*subnet
	subnetByID      map[string]*subnet
	enis            map[string]*eni
	eniOrder        []string // sorted ids
	eniByAttachment map[string]*eni
	eniTags         tagIndex
	instances       map[string]*instance
	instOrder       []string // sorted ids
	instTags        tagIndex
	clientTokens    map[string]tokenRecord
	runTokens       map[string]runRecord
	reservations    map[string]*subnet // CIDR reservation id -> its subnet
	// lags holds the views Describe still shows of ENIs mutated recently (describe lag), by ENI
	// id; a deleted ENI stays here until its deletion is visible.
	lags map[string]*eniLag
	// due holds the pending detach completions and lag expiries, soonest first; nextDue is the
	// soonest (UnixNano, or math.MaxInt64) so readers can tell without the lock.
	due     dueHeap
	nextDue atomic.Int64
}

// maxIPv4PerENI is the largest IPv4-per-ENI limit of any type: the limit of an ENI that is
// not attached (EC2 checks the instance type's limit again when it is attached).
var maxIPv4PerENI = func() int {
	m := 1
	for _, t := range instancetypes.All() {
		m = max(m, t.IPv4PerENI)
	}
	return m
}()

// New builds a simulator from the configuration: the scenario's VPC, subnets and running
// instances.
func New(cfg Config) (*Sim, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := instancetypes.Err(); err != nil {
		return nil, fmt.Errorf("ec2sim: %w", err)
	}
	sc := cfg.Scenario
	if sc == nil {
		sc = DefaultScenario()
		if err := sc.Validate(); err != nil {
			return nil, err
		}
	}
	scale := cfg.TimeScale
	if scale == 0 {
		scale = 1
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	seed := uint64(cfg.Seed)
	s := &Sim{
		log:             log,
		scale:           scale,
		accountID:       sc.accountID(),
		region:          sc.region(),
		deny:            map[string]bool{},
		done:            make(chan struct{}),
		throttle:        newThrottle(cfg.Throttle, scale),
		faults:          &faults{rng: rand.New(rand.NewPCG(seed, 0xfa17)), m: map[string]Fault{}},
		stats:           newStats(),
		idRNG:           rand.New(rand.NewPCG(seed, 0x1d5)),
		addrRNG:         rand.New(rand.NewPCG(seed, 0xadd7)),
		usedIDs:         map[string]bool{},
		subnetByID:      map[string]*subnet{},
		enis:            map[string]*eni{},
		eniByAttachment: map[string]*eni{},
		eniTags:         tagIndex{},
		instances:       map[string]*instance{},
		instTags:        tagIndex{},
		clientTokens:    map[string]tokenRecord{},
		runTokens:       map[string]runRecord{},
		reservations:    map[string]*subnet{},
		lags:            map[string]*eniLag{},
		delays:          newSampler(seed),
	}
	s.nextDue.Store(math.MaxInt64)
	clk := cfg.Clock
	if clk == nil {
		clk = clockwork.NewRealClock()
	}
	s.clk.Store(&simClock{clk})
	prof := InstantProfile()
	switch {
	case cfg.Profile != nil:
		prof = cfg.Profile.clone()
	case sc.Profile != "":
		p, err := ProfileByName(sc.Profile)
		if err != nil {
			return nil, err
		}
		prof = p
	}
	s.profile.Store(&prof)
	s.instanceTags = maps.Clone(cfg.InstanceTags)
	s.ecDelay = s.scaled(time.Duration(sc.EventualConsistencyDelay))
	for _, a := range sc.Deny {
		s.deny[a] = true
	}
	for a, f := range sc.Faults {
		s.faults.m[a] = f
	}
	s.vpcCIDRs, _ = sc.VPC.cidrs() // validated
	s.vpcID = sc.VPC.ID
	for _, sp := range sc.Subnets {
		if sp.ID != "" {
			s.usedIDs[sp.ID] = true
		}
	}
	if s.vpcID == "" {
		s.vpcID = s.newID("vpc-")
	}
	s.usedIDs[s.vpcID] = true
	s.defaultSG = s.newID("sg-")
	for _, sp := range sc.Subnets {
		id := sp.ID
		if id == "" {
			id = s.newID("subnet-")
		}
		p, _ := parseCIDR(sp.CIDR)
		tags := map[string]string{}
		for k, v := range sp.Tags {
			tags[k] = v
		}
		sn := newSubnet(id, s.vpcID, sp.AvailabilityZone, azID(s.region, sp.AvailabilityZone), p, tags)
		s.subnets = append(s.subnets, sn)
		s.subnetByID[id] = sn
	}
	for i, g := range sc.Instances {
		t, _ := instancetypes.Lookup(g.Type)
		sn := s.subnets[sc.findSubnet(g.Subnet)]
		count := max(g.Count, 1)
		for j := range count {
			tags := map[string]string{}
			for k, v := range g.Tags {
				tags[k] = v
			}
			if g.Name != "" {
				tags["Name"] = g.Name
				if count > 1 {
					tags["Name"] = fmt.Sprintf("%s-%d", g.Name, j+1)
				}
			}
			if _, aerr := s.runLocked(t, sn, 1, 1, tags, LaunchInterface{}); aerr != nil {
				return nil, fmt.Errorf("ec2sim: scenario instances[%d]: %w", i, aerr)
			}
		}
	}
	return s, nil
}

// simClock holds the simulator's clock (atomic.Pointer needs a concrete type).
type simClock struct{ clockwork.Clock }

// nowOnly is a clock whose Now is f and whose timers are the real clock's (setClock).
type nowOnly struct {
	clockwork.Clock
	f func() time.Time
}

func (n nowOnly) Now() time.Time { return n.f() }

func (s *Sim) clock() clockwork.Clock { return s.clk.Load().Clock }

func (s *Sim) now() time.Time { return s.clock().Now() }

// setClock replaces what the simulator takes for now; timers stay on the real clock (tests
// that freeze the buckets).
func (s *Sim) setClock(f func() time.Time) {
	s.clk.Store(&simClock{nowOnly{clockwork.NewRealClock(), f}})
}

func (s *Sim) scaled(d time.Duration) time.Duration {
	return time.Duration(float64(d) / s.scale)
}

func (s *Sim) setHooks(h instanceHooks) {
	s.hooksMu.Lock()
	defer s.hooksMu.Unlock()
	s.hooks = h
}

func (s *Sim) notify(started, stopped []string) {
	s.hooksMu.Lock()
	h := s.hooks
	s.hooksMu.Unlock()
	if h == nil {
		return
	}
	for _, id := range stopped {
		h.instanceStopped(id)
	}
	for _, id := range started {
		h.instanceStarted(id)
	}
}

// close ends pending injected latencies; the Server calls it when it closes.
func (s *Sim) close() { s.closeOnce.Do(func() { close(s.done) }) }

const hexDigits = "0123456789abcdef"

// newID returns prefix + 17 hex digits, unique in this simulator. Callers hold s.mu (or are
// in New).
func (s *Sim) newID(prefix string) string {
	for {
		var b strings.Builder
		b.WriteString(prefix)
		b.WriteByte('0')
		for range 16 {
			b.WriteByte(hexDigits[s.idRNG.IntN(16)])
		}
		id := b.String()
		if !s.usedIDs[id] {
			s.usedIDs[id] = true
			return id
		}
	}
}

func (s *Sim) newMAC() string {
	for {
		b := []byte{0x02, byte(s.idRNG.IntN(256)), byte(s.idRNG.IntN(256)), byte(s.idRNG.IntN(256)), byte(s.idRNG.IntN(256)), byte(s.idRNG.IntN(256))}
		mac := fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5])
		if !s.usedIDs[mac] {
			s.usedIDs[mac] = true
			return mac
		}
	}
}

func insertSorted(list []string, id string) []string {
	i := sort.SearchStrings(list, id)
	list = append(list, "")
	copy(list[i+1:], list[i:])
	list[i] = id
	return list
}

func removeSorted(list []string, id string) []string {
	i := sort.SearchStrings(list, id)
	if i < len(list) && list[i] == id {
		list = append(list[:i], list[i+1:]...)
	}
	return list
}

func removeU32(list []uint32, v uint32) []uint32 {
	for i, x := range list {
		if x == v {
			return append(list[:i], list[i+1:]...)
		}
	}
	return list
}

// subnetOf finds the subnet holding an address.
func (s *Sim) subnetOf(a uint32) (*subnet, int, bool) {
	for _, sn := range s.subnets {
		if off, ok := sn.offset(a); ok {
			return sn, off, true
		}
	}
	return nil, 0, false
}

// visible reports whether an ENI can be seen yet (eventual consistency).
func (s *Sim) visible(e *eni, now time.Time) bool {
	return s.ecDelay == 0 || e.foreign || !now.Before(e.created.Add(s.ecDelay))
}

func eniNotFound(id string) *APIError {
	return apiErr("InvalidNetworkInterfaceID.NotFound", "The networkInterface ID '%s' does not exist", id)
}

// lookupENI returns a visible ENI or InvalidNetworkInterfaceID.NotFound.
func (s *Sim) lookupENI(id string) (*eni, *APIError) {
	e, ok := s.enis[id]
	if !ok || !s.visible(e, s.now()) {
		return nil, eniNotFound(id)
	}
	return e, nil
}

func (s *Sim) lookupSubnet(id string) (*subnet, *APIError) {
	sn, ok := s.subnetByID[id]
	if !ok {
		return nil, apiErr("InvalidSubnetID.NotFound", "The subnet ID '%s' does not exist", id)
	}
	return sn, nil
}

func (s *Sim) lookupInstance(id string) (*instance, *APIError) {
	in, ok := s.instances[id]
	if !ok {
		return nil, apiErr("InvalidInstanceID.NotFound", "The instance ID '%s' does not exist", id)
	}
	return in, nil
}

func (s *Sim) setENITag(e *eni, k, v string) {
	if old, ok := e.tags[k]; ok {
		s.eniTags.remove(e.id, k, old)
	}
	e.tags[k] = v
	s.eniTags.add(e.id, k, v)
}

func (s *Sim) deleteENITag(e *eni, k string) {
	if old, ok := e.tags[k]; ok {
		s.eniTags.remove(e.id, k, old)
		delete(e.tags, k)
	}
}

func (s *Sim) setInstanceTag(in *instance, k, v string) {
	if old, ok := in.tags[k]; ok {
		s.instTags.remove(in.id, k, old)
	}
	in.tags[k] = v
	s.instTags.add(in.id, k, v)
}

func (s *Sim) deleteInstanceTag(in *instance, k string) {
	if old, ok := in.tags[k]; ok {
		s.instTags.remove(in.id, k, old)
		delete(in.tags, k)
	}
}

// allocPlan is what an ENI asks of its subnet in one create or assign.
type allocPlan struct {
	needPrimary   bool   // create: the ENI needs a primary address
	primary       string // explicit primary, or "" for a random one
	ips           []string
	ipCount       int
	prefixes      []string
	prefixCount   int
	allowReassign bool
}

// allocate claims the plan's addresses for e, all or nothing. It returns the addresses and
// prefixes newly assigned (the primary first when the plan asks for one).
func (s *Sim) allocate(e *eni, p allocPlan) (ips, prefixes []uint32, aerr *APIError) {
	sn := e.sn
	var undo []func()
	defer func() {
		if aerr != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			ips, prefixes = nil, nil
		}
	}()
	claimIP := func(off int, primary bool) {
		a := sn.addr(off)
		if primary {
			sn.claim(off, e, kindPrimary)
			e.primary = a
			undo = append(undo, func() { sn.release(off); e.primary = 0 })
		} else {
			sn.claim(off, e, kindSecondary)
			e.secondaries = append(e.secondaries, a)
			undo = append(undo, func() { sn.release(off); e.secondaries = removeU32(e.secondaries, a) })
		}
		ips = append(ips, a)
	}
	claimBlock := func(b int) {
		first := b * blockSize
		for off := first; off < first+blockSize; off++ {
			sn.claim(off, e, kindPrefix)
		}
		base := sn.addr(first)
		e.prefixes = append(e.prefixes, base)
		prefixes = append(prefixes, base)
		undo = append(undo, func() {
			for off := first; off < first+blockSize; off++ {
				sn.release(off)
			}
			e.prefixes = removeU32(e.prefixes, base)
		})
	}

	// Explicit prefixes.
	seenBlocks := map[int]bool{}
	for _, ps := range p.prefixes {
		base, err := parsePrefix28(ps)
		if err != nil {
			return nil, nil, apiErr("InvalidParameterValue", "Invalid value '%s' for Ipv4Prefix: %v", ps, err)
		}
		off, ok := sn.offset(base)
		if !ok {
			return nil, nil, apiErr("InvalidParameterValue", "Prefix %s does not fall within the subnet's address range (%s)", ps, sn.cidr)
		}
		b := off / blockSize
		if seenBlocks[b] {
			return nil, nil, apiErr("InvalidParameterValue", "Prefix %s is given twice", ps)
		}
		seenBlocks[b] = true
		if sn.awsReserved(off) || sn.awsReserved(off+blockSize-1) {
			return nil, nil, apiErr("InvalidParameterValue", "Prefix %s overlaps addresses reserved by AWS in subnet %s", ps, sn.id)
		}
		if !sn.blockFree(b) {
			return nil, nil, apiErr("InvalidIPAddress.InUse", "Prefix %s overlaps addresses already in use", ps)
		}
		claimBlock(b)
	}
	// Explicit addresses (primary first).
	explicit := p.ips
	if p.primary != "" {
		explicit = append([]string{p.primary}, p.ips...)
	}
	seen := map[uint32]bool{}
	for i, as := range explicit {
		a, err := parseIPv4(as)
		if err != nil {
			return nil, nil, apiErr("InvalidParameterValue", "Invalid value '%s' for PrivateIpAddress", as)
		}
		if seen[a] {
			return nil, nil, apiErr("InvalidParameterValue", "Address %s is given twice", as)
		}
		seen[a] = true
		off, ok := sn.offset(a)
		if !ok {
			return nil, nil, apiErr("InvalidParameterValue", "Address %s does not fall within the subnet's address range", as)
		}
		if sn.awsReserved(off) {
			return nil, nil, apiErr("InvalidParameterValue", "Address %s is reserved by AWS in subnet %s", as, sn.id)
		}
		if old := sn.owner[off]; old != nil {
			if !p.allowReassign || old == e || sn.kind[off] != kindSecondary {
				return nil, nil, apiErr("InvalidIPAddress.InUse", "Address %s is in use.", as)
			}
			// AllowReassignment moves a secondary address from another ENI.
			sn.release(off)
			old.secondaries = removeU32(old.secondaries, a)
			undo = append(undo, func() {
				sn.claim(off, old, kindSecondary)
				old.secondaries = append(old.secondaries, a)
			})
		}
		claimIP(off, p.primary != "" && i == 0)
	}
	// Prefixes by count.
	if p.prefixCount > 0 {
		blocks := sn.pickBlocks(s.addrRNG, p.prefixCount)
		if blocks == nil {
			return nil, nil, apiErr("InsufficientCidrBlocks", "The specified subnet does not have enough free cidr blocks to satisfy the request.")
		}
		for _, b := range blocks {
			claimBlock(b)
		}
	}
	// Addresses by count (and a random primary).
	n := p.ipCount
	wantRandomPrimary := p.needPrimary && p.primary == ""
	if wantRandomPrimary {
		n++
	}
	if n > 0 {
		if sn.freeAuto < n {
			return nil, nil, apiErr("InsufficientFreeAddressesInSubnet", "The specified subnet does not have enough free addresses to satisfy the request.")
		}
		for i, off := range sn.pickAddresses(s.addrRNG, n) {
			claimIP(off, wantRandomPrimary && i == 0)
		}
	}
	if wantRandomPrimary && len(ips) > 0 && ips[0] != e.primary {
		// The random primary was picked after explicit secondaries: report it first.
		for i, a := range ips {
			if a == e.primary {
				ips[0], ips[i] = ips[i], ips[0]
				break
			}
		}
	}
	return ips, prefixes, nil
}

// newENI creates an ENI in sn with the plan's addresses and registers it.
func (s *Sim) newENI(sn *subnet, p allocPlan, description string, groups []string, tags map[string]string, foreign bool) (*eni, *APIError) {
	e := &eni{
		sn: sn, description: description, groups: groups, tags: map[string]string{},
		created: s.now(), foreign: foreign, srcDstCheck: true,
	}
	if len(e.groups) == 0 {
		e.groups = []string{s.defaultSG}
	}
	p.needPrimary = true
	if _, _, aerr := s.allocate(e, p); aerr != nil {
		return nil, aerr
	}
	e.id = s.newID("eni-")
	e.mac = s.newMAC()
	s.enis[e.id] = e
	s.eniOrder = insertSorted(s.eniOrder, e.id)
	sn.enis[e.id] = e
	for k, v := range tags {
		s.setENITag(e, k, v)
	}
	return e, nil
}

// deleteENI releases every address of a detached ENI and forgets it.
func (s *Sim) deleteENI(e *eni) {
	sn := e.sn
	for _, a := range append([]uint32{e.primary}, e.secondaries...) {
		if off, ok := sn.offset(a); ok {
			sn.release(off)
		}
	}
	for _, base := range e.prefixes {
		if off, ok := sn.offset(base); ok {
			for i := off; i < off+blockSize; i++ {
				sn.release(i)
			}
		}
	}
	for k := range e.tags {
		s.deleteENITag(e, k)
	}
	delete(s.enis, e.id)
	delete(sn.enis, e.id)
	s.eniOrder = removeSorted(s.eniOrder, e.id)
}

// attach attaches e to in, `attaching` until usableAt; the caller has checked the limits.
func (s *Sim) attach(e *eni, in *instance, device, card int, dot bool, usableAt time.Time) *attachment {
	att := &attachment{
		id: s.newID("eni-attach-"), inst: in, deviceIndex: device, cardIndex: card,
		deleteOnTermination: dot, attachTime: s.now(), usableAt: usableAt,
	}
	e.att = att
	in.enis = append(in.enis, e)
	s.eniByAttachment[att.id] = e
	return att
}

func (s *Sim) detach(e *eni) {
	if e.att == nil {
		return
	}
	in := e.att.inst
	for i, x := range in.enis {
		if x == e {
			in.enis = append(in.enis[:i], in.enis[i+1:]...)
			break
		}
	}
	delete(s.eniByAttachment, e.att.id)
	e.att = nil
}

// LaunchInterface is what the primary network interface of an instance carries at launch, as
// a launch template's NetworkInterfaces entry for device index 0 says: secondary addresses or
// /28 prefixes placed by EC2 (counted, at random among free addresses, as for any count), and
// security groups. The zero value is a plain primary ENI.
type LaunchInterface struct {
	SecondaryPrivateIPAddressCount int      `json:"secondary_private_ip_address_count,omitempty"`
	IPv4PrefixCount                int      `json:"ipv4_prefix_count,omitempty"`
	SecurityGroupIDs               []string `json:"security_group_ids,omitempty"`
}

// check refuses what no instance of type t can carry on one interface (EC2's errors).
func (li LaunchInterface) check(t instancetypes.Type) *APIError {
	switch {
	case li.SecondaryPrivateIPAddressCount < 0 || li.IPv4PrefixCount < 0:
		return apiErr("InvalidParameterValue", "address and prefix counts must not be negative")
	case li.SecondaryPrivateIPAddressCount > 0 && li.IPv4PrefixCount > 0:
		return apiErr("InvalidParameterCombination", "SecondaryPrivateIpAddressCount and Ipv4PrefixCount cannot be specified on the same network interface")
	case li.IPv4PrefixCount > 0 && !t.PrefixDelegation():
		return apiErr("InvalidParameterValue", "Instance type %s does not support IPv4 prefix delegation.", t.Name)
	case 1+li.SecondaryPrivateIPAddressCount+li.IPv4PrefixCount > t.IPv4PerENI:
		return apiErr("PrivateIpAddressLimitExceeded", "Number of private addresses and prefixes %d exceeds the limit of %d for an interface of %s.",
			1+li.SecondaryPrivateIPAddressCount+li.IPv4PrefixCount, t.IPv4PerENI, t.Name)
	}
	return nil
}

// runLocked launches between min and max instances of type t in sn, each with a primary ENI at
// device index 0 carrying what li asks for. Launching stops at the first instance whose
// interface cannot be placed; fewer than minCount undo them all and fail with EC2's error for
// the subnet (InsufficientFreeAddressesInSubnet, InsufficientCidrBlocks). The caller holds s.mu
// and notifies hooks after unlocking.
func (s *Sim) runLocked(t instancetypes.Type, sn *subnet, minCount, maxCount int, tags map[string]string, li LaunchInterface) ([]*instance, *APIError) {
	if aerr := li.check(t); aerr != nil {
		return nil, aerr
	}
	n := min(maxCount, sn.freeAuto/(1+li.SecondaryPrivateIPAddressCount))
	if n < minCount {
		return nil, apiErr("InsufficientFreeAddressesInSubnet",
			"There are not enough free addresses in subnet '%s' to satisfy the requested number of instances.", sn.id)
	}
	for _, g := range li.SecurityGroupIDs {
		if !strings.HasPrefix(g, "sg-") {
			return nil, apiErr("InvalidGroupId.Malformed", "Invalid id: \"%s\" (expecting \"sg-...\")", g)
		}
	}
	resID := s.newID("r-")
	now := s.now()
	out := make([]*instance, 0, n)
	for i := range n {
		in := &instance{
			id: s.newID("i-"), itype: t, sn: sn, reservationID: resID, launchIndex: i,
			state: "running", launchTime: now, tags: map[string]string{},
		}
		e, aerr := s.newENI(sn, allocPlan{ipCount: li.SecondaryPrivateIPAddressCount, prefixCount: li.IPv4PrefixCount},
			"", li.SecurityGroupIDs, nil, false)
		if aerr != nil {
			if len(out) >= minCount {
				break // launch what fits, as EC2 does between MinCount and MaxCount
			}
			for _, o := range out {
				s.unlaunchLocked(o)
			}
			return nil, aerr
		}
		s.attach(e, in, 0, 0, true, time.Time{})
		in.privateIP = e.primary
		s.instances[in.id] = in
		s.instOrder = insertSorted(s.instOrder, in.id)
		for k, v := range s.instanceTags {
			if _, own := tags[k]; !own {
				s.setInstanceTag(in, k, v)
			}
		}
		for k, v := range tags {
			s.setInstanceTag(in, k, v)
		}
		out = append(out, in)
	}
	return out, nil
}

// unlaunchLocked undoes a launch that has not been reported (a RunInstances that failed below
// its MinCount): the instance and its primary ENI are gone as if never made.
func (s *Sim) unlaunchLocked(in *instance) {
	for _, e := range append([]*eni(nil), in.enis...) {
		s.detach(e)
		s.deleteENI(e)
	}
	delete(s.instances, in.id)
	s.instOrder = removeSorted(s.instOrder, in.id)
}

// terminateLocked terminates an instance: ENIs with DeleteOnTermination go away with their
// addresses, the others are detached and become available.
func (s *Sim) terminateLocked(in *instance) (previous string) {
	previous = in.state
	if in.state == "terminated" {
		return previous
	}
	for _, e := range append([]*eni(nil), in.enis...) {
		dot := e.att.deleteOnTermination
		before := s.lagBefore(e)
		s.detach(e)
		if dot {
			s.deleteENI(e)
		}
		s.lagged(e.id, before)
	}
	in.state = "terminated"
	in.imdsEndpoint = ""
	return previous
}

// typeLimit is the IPv4-per-ENI limit that applies to e now.
func typeLimit(e *eni) int {
	if e.att != nil {
		return e.att.inst.itype.IPv4PerENI
	}
	return maxIPv4PerENI
}

func ipString(a uint32) string { return ip4(a).String() }

// privateDNS is EC2's private DNS name of an address.
func (s *Sim) privateDNS(a uint32) string {
	b := ip4(a).As4()
	domain := s.region + ".compute.internal"
	if s.region == "us-east-1" {
		domain = "ec2.internal"
	}
	return fmt.Sprintf("ip-%d-%d-%d-%d.%s", b[0], b[1], b[2], b[3], domain)
}
