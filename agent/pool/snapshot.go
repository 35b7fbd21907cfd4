package pool

import (
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Address states as the introspection endpoint and metrics name them.
const (
	StateFree     = "free"
	StateInUse    = "in_use"
	StateCooling  = "cooling"
	StateLocked   = "locked"   // confirmed for release, or not ACTIVE in the pool
	StateUnleased = "unleased" // held by a pod, no longer leased to the node
)

// Counts are the pool's addresses by state. Every address is counted once: in use, else locked
// (confirmed for release or not ACTIVE), else cooling, else free.
type Counts struct {
	Free    int `json:"free"`
	InUse   int `json:"in_use"`
	Cooling int `json:"cooling"`
	Locked  int `json:"locked"`
	// Unleased are addresses in use that the server no longer leases to the node (also in InUse).
	Unleased int `json:"unleased"`
}

func (p *Pool) stateLocked(s *slot, now time.Time) string {
	switch {
	case s.holder != nil && !s.leased:
		return StateUnleased
	case s.holder != nil:
		return StateInUse
	case s.locked || s.state != ipledgerv1.LeaseState_LEASE_STATE_ACTIVE:
		return StateLocked
	case now.Before(s.coolUntil):
		return StateCooling
	default:
		return StateFree
	}
}

func (p *Pool) countsLocked() Counts {
	var c Counts
	now := p.cfg.Now()
	for _, s := range p.slots {
		switch p.stateLocked(s, now) {
		case StateUnleased:
			c.InUse++
			c.Unleased++
		case StateInUse:
			c.InUse++
		case StateLocked:
			c.Locked++
		case StateCooling:
			c.Cooling++
		default:
			c.Free++
		}
	}
	return c
}

// Counts returns the addresses by state.
func (p *Pool) Counts() Counts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.countsLocked()
}

// Usage returns the usage report for the server (pods_waiting is the caller's to fill).
func (p *Pool) Usage() *ipledgerv1.UsageReport {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.countsLocked()
	u := &ipledgerv1.UsageReport{
		PoolGeneration: p.generation,
		Free:           uint32(c.Free),
		Cooling:        uint32(c.Cooling),
		AddsTotal:      p.addsTotal,
	}
	for _, s := range p.heldLocked() {
		u.InUse = append(u.InUse, &ipledgerv1.PodAddress{
			Ip:           s.ip.String(),
			ContainerId:  s.holder.key.ContainerID,
			Ifname:       s.holder.key.IfName,
			PodNamespace: s.holder.pod.Namespace,
			PodName:      s.holder.pod.Name,
			PodUid:       s.holder.pod.UID,
			AssignedAt:   timestamppb.New(s.holder.assignedAt),
		})
	}
	return u
}

// AddsTotal is the number of assignments made since the checkpoint was first written.
func (p *Pool) AddsTotal() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addsTotal
}

// Snapshot is the pool as the introspection endpoint shows it.
type Snapshot struct {
	NodeName     string         `json:"node"`
	InstanceID   string         `json:"instance"`
	Generation   uint64         `json:"generation"`
	Mode         string         `json:"mode"`
	Draining     bool           `json:"draining"`
	TargetFree   uint32         `json:"target_free"`
	MaxAddresses uint32         `json:"max_addresses"`
	ENIs         []ENISnapshot  `json:"enis"`
	Pods         []PodSnapshot  `json:"pods"`
	Cooling      []CoolSnapshot `json:"cooling"`
	Locked       []LockSnapshot `json:"locked"`
	Counts       Counts         `json:"counts"`
	AddsTotal    uint64         `json:"adds_total"`
	Checkpoint   string         `json:"checkpoint"`
}

// ENISnapshot is one ENI with its addresses.
type ENISnapshot struct {
	ID          string            `json:"eni_id"`
	MAC         string            `json:"mac"`
	DeviceIndex uint32            `json:"device_index"`
	SubnetID    string            `json:"subnet_id"`
	SubnetCIDR  string            `json:"subnet_cidr"`
	PrimaryIP   string            `json:"primary_ip"`
	Prefixes    []LeaseSnapshot   `json:"prefixes,omitempty"`
	Addresses   []AddressSnapshot `json:"addresses"`
}

// LeaseSnapshot is a leased prefix and its lease state.
type LeaseSnapshot struct {
	CIDR  string `json:"cidr"`
	State string `json:"lease_state"`
}

// AddressSnapshot is one address: its lease state on the server and its state on the node.
type AddressSnapshot struct {
	IP         string `json:"ip"`
	Prefix     string `json:"prefix,omitempty"`
	LeaseState string `json:"lease_state"`
	State      string `json:"state"`
	Pod        string `json:"pod,omitempty"` // container id/ifname, or "recovered"
}

// PodSnapshot is one attachment and its address.
type PodSnapshot struct {
	ContainerID  string    `json:"container_id"`
	IfName       string    `json:"ifname"`
	IP           string    `json:"ip"`
	ENIID        string    `json:"eni_id"`
	PodNamespace string    `json:"pod_namespace,omitempty"`
	PodName      string    `json:"pod_name,omitempty"`
	AssignedAt   time.Time `json:"assigned_at"`
	Leased       bool      `json:"leased"`
	// Recovered: a pod on the node uses the address but its attachment is not known (see
	// Pool.Recover); ContainerID and IfName are empty.
	Recovered bool `json:"recovered,omitempty"`
}

// CoolSnapshot is an address cooling down.
type CoolSnapshot struct {
	IP    string    `json:"ip"`
	Until time.Time `json:"until"`
}

// LockSnapshot is an item confirmed for release.
type LockSnapshot struct {
	Item       string    `json:"item"`
	ProposalID string    `json:"proposal_id"`
	Generation uint64    `json:"generation"`
	LockedAt   time.Time `json:"locked_at"`
}

// Snapshot returns the whole pool for introspection.
func (p *Pool) Snapshot() Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.cfg.Now()
	snap := Snapshot{
		NodeName:     p.cfg.NodeName,
		InstanceID:   p.cfg.InstanceID,
		Generation:   p.generation,
		Mode:         p.np.GetMode().String(),
		Draining:     p.np.GetDraining(),
		TargetFree:   p.np.GetTargetFree(),
		MaxAddresses: p.np.GetMaxAddresses(),
		Counts:       p.countsLocked(),
		AddsTotal:    p.addsTotal,
		Checkpoint:   p.cfg.CheckpointPath,
		ENIs:         []ENISnapshot{},
		Pods:         []PodSnapshot{},
		Cooling:      []CoolSnapshot{},
		Locked:       []LockSnapshot{},
	}
	idx := map[string]int{}
	for _, nif := range p.np.GetInterfaces() {
		e := eniOf(nif)
		es := ENISnapshot{ID: e.ID, MAC: e.MAC, DeviceIndex: e.DeviceIndex, SubnetID: e.SubnetID,
			SubnetCIDR: e.SubnetCIDR, PrimaryIP: e.PrimaryIP, Addresses: []AddressSnapshot{}}
		for _, pp := range nif.GetPrefixes() {
			es.Prefixes = append(es.Prefixes, LeaseSnapshot{CIDR: pp.GetCidr(), State: pp.GetState().String()})
		}
		idx[e.ID] = len(snap.ENIs)
		snap.ENIs = append(snap.ENIs, es)
	}
	for _, s := range p.order {
		as := AddressSnapshot{IP: s.ip.String(), LeaseState: s.state.String(), State: p.stateLocked(s, now)}
		if s.prefix.IsValid() {
			as.Prefix = s.prefix.String()
		}
		switch {
		case s.holder != nil && s.holder.recovered:
			as.Pod = "recovered"
		case s.holder != nil:
			as.Pod = s.holder.key.String()
		}
		if i, ok := idx[s.eni.ID]; ok {
			snap.ENIs[i].Addresses = append(snap.ENIs[i].Addresses, as)
		}
		if s.holder == nil && now.Before(s.coolUntil) {
			snap.Cooling = append(snap.Cooling, CoolSnapshot{IP: s.ip.String(), Until: s.coolUntil})
		}
	}
	for _, s := range p.heldLocked() {
		snap.Pods = append(snap.Pods, PodSnapshot{
			ContainerID: s.holder.key.ContainerID, IfName: s.holder.key.IfName, IP: s.ip.String(),
			ENIID: s.eni.ID, PodNamespace: s.holder.pod.Namespace, PodName: s.holder.pod.Name,
			AssignedAt: s.holder.assignedAt, Leased: s.leased, Recovered: s.holder.recovered,
		})
	}
	for item, l := range p.locks {
		snap.Locked = append(snap.Locked, LockSnapshot{Item: item, ProposalID: l.proposalID, Generation: l.generation, LockedAt: l.lockedAt})
	}
	slices.SortFunc(snap.Locked, func(a, b LockSnapshot) int { return strings.Compare(a.Item, b.Item) })
	return snap
}

// heldLocked returns the slots held by pods (recovered ones included), by address.
func (p *Pool) heldLocked() []*slot {
	out := make([]*slot, 0, len(p.byKey)+len(p.recovered))
	for _, s := range p.byKey {
		out = append(out, s)
	}
	for _, s := range p.recovered {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *slot) int { return a.ip.Compare(b.ip) })
	return out
}
