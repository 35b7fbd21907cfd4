package ledger

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// Subnet sizes the ledger accepts: AWS allows /16 to /28.
const (
	minSubnetBits = 16
	maxSubnetBits = 28
	blockBits     = 28
	blockSize     = 16
)

// kind is what owns an address in the ledger's own layer. Foreign addresses are a separate
// flag layer (see subnet.flags): the ledger's owners win over foreign scans.
type kind uint8

const (
	kFree        kind = iota
	kReserved         // AWS: first four and last address
	kPrimary          // a node ENI's primary address
	kLease            // leased to a node (single address or part of a prefix)
	kPendNode         // pending for a node
	kPendPrewarm      // pending for a pre-warm reservation
	kPrewarm          // on a pre-warm ENI (primary or secondary)
	numKinds
)

// Foreign flags of an address.
const (
	flagScan   uint8 = 1 << iota // foreign according to the subnet record's last scan
	flagMarked                   // MarkForeign: EC2 refused it to us since the last scan
	flagHeld                     // Hold: an instance's own address while its node registers
)

// flagsForeign are the flags that say someone else has the address on EC2.
const flagsForeign = flagScan | flagMarked

// slot is the ledger owner of one address. ent indexes Ledger.ents (node or pre-warm);
// it is -1 for free and reserved addresses.
type slot struct {
	kind kind
	ent  int32
}

var freeSlot = slot{kind: kFree, ent: -1}

// pend is a pending reservation of one address.
type pend struct {
	owner  Owner // IgnoreBudget cleared
	prefix netip.Prefix
}

// subnet is the per-address state of one subnet. All counters are maintained by
// Ledger.setSlot and subnet.setFlags; nothing else writes slots or flags.
type subnet struct {
	rec  SubnetRecord
	base uint32
	size int

	slots []slot
	flags []uint8
	// occ counts, per /28 block, the addresses that are occupied: owned in the ledger
	// (including AWS-reserved) or foreign. Cooling addresses are not occupied.
	occ      []uint8
	occTotal int
	count    [numKinds]int
	// foreignFree counts foreign addresses without a ledger owner.
	foreignFree int
	// inUse counts addresses leased to a node whose agent reports them in use.
	inUse int

	pending map[uint32]pend
	cooling map[uint32]time.Time
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func addrOf(u uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], u)
	return netip.AddrFrom4(b)
}

// checkCIDR validates a subnet CIDR.
func checkCIDR(p netip.Prefix) error {
	switch {
	case !p.IsValid() || !p.Addr().Is4():
		return fmt.Errorf("%w: subnet CIDR %v is not an IPv4 prefix", ErrInvalid, p)
	case p != p.Masked():
		return fmt.Errorf("%w: subnet CIDR %v has host bits set", ErrInvalid, p)
	case p.Bits() < minSubnetBits || p.Bits() > maxSubnetBits:
		return fmt.Errorf("%w: subnet CIDR %v: size must be /%d to /%d", ErrInvalid, p, minSubnetBits, maxSubnetBits)
	}
	return nil
}

func newSubnet(rec SubnetRecord) *subnet {
	size := 1 << (32 - rec.CIDR.Bits())
	s := &subnet{
		rec:     rec,
		base:    u32(rec.CIDR.Addr()),
		size:    size,
		slots:   make([]slot, size),
		flags:   make([]uint8, size),
		occ:     make([]uint8, size/blockSize),
		pending: map[uint32]pend{},
		cooling: map[uint32]time.Time{},
	}
	for i := range s.slots {
		s.slots[i] = freeSlot
	}
	s.count[kFree] = size
	for _, off := range []uint32{0, 1, 2, 3, uint32(size - 1)} {
		s.slots[off] = slot{kind: kReserved, ent: -1}
		s.count[kFree]--
		s.count[kReserved]++
		s.occ[off/blockSize]++
		s.occTotal++
	}
	return s
}

// offset returns the offset of a in the subnet.
func (s *subnet) offset(a netip.Addr) (uint32, bool) {
	if !a.Is4() || !s.rec.CIDR.Contains(a) {
		return 0, false
	}
	return u32(a) - s.base, true
}

func (s *subnet) addr(off uint32) netip.Addr { return addrOf(s.base + off) }

// blockPrefix returns the /28 of block b.
func (s *subnet) blockPrefix(b int) netip.Prefix {
	return netip.PrefixFrom(s.addr(uint32(b*blockSize)), blockBits)
}

// prefixOffset validates a /28 inside the subnet and returns the offset of its first address.
func (s *subnet) prefixOffset(p netip.Prefix) (uint32, error) {
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() != blockBits || p != p.Masked() {
		return 0, fmt.Errorf("%w: prefix %v is not an aligned IPv4 /28", ErrInvalid, p)
	}
	off, ok := s.offset(p.Addr())
	if !ok {
		return 0, fmt.Errorf("%w: prefix %v is outside subnet %s (%v)", ErrInvalid, p, s.rec.ID, s.rec.CIDR)
	}
	return off, nil
}

func (s *subnet) reserved(off uint32) bool {
	return off < 4 || int(off) == s.size-1
}

func (s *subnet) occupied(off uint32) bool {
	return s.slots[off].kind != kFree || s.flags[off] != 0
}

// placeable: free in the ledger, not foreign, not cooling at now.
func (s *subnet) placeable(off uint32, now time.Time) bool {
	if s.occupied(off) {
		return false
	}
	until, ok := s.cooling[off]
	return !ok || !until.After(now)
}

// setFlags changes the foreign flags of one address, keeping the counters.
func (s *subnet) setFlags(off uint32, f uint8) {
	old := s.flags[off]
	if old == f {
		return
	}
	wasOcc := s.occupied(off)
	if s.slots[off].kind == kFree {
		if old != 0 {
			s.foreignFree--
		}
		if f != 0 {
			s.foreignFree++
		}
	}
	s.flags[off] = f
	s.occChanged(off, wasOcc)
}

func (s *subnet) occChanged(off uint32, wasOcc bool) {
	isOcc := s.occupied(off)
	if wasOcc == isOcc {
		return
	}
	b := off / blockSize
	if isOcc {
		s.occ[b]++
		s.occTotal++
	} else {
		s.occ[b]--
		s.occTotal--
	}
}

// expireCooling forgets cooling entries that ended at or before now.
func (s *subnet) expireCooling(now time.Time) {
	for off, until := range s.cooling {
		if !until.After(now) {
			delete(s.cooling, off)
		}
	}
}

// coolingPerBlock counts, per block, the unoccupied addresses still cooling at now.
func (s *subnet) coolingPerBlock(now time.Time) (perBlock []uint8, total int) {
	perBlock = make([]uint8, len(s.occ))
	for off, until := range s.cooling {
		if until.After(now) && !s.occupied(off) {
			perBlock[off/blockSize]++
			total++
		}
	}
	return perBlock, total
}

// freeBlocks counts the blocks with no occupied address (cooling ones included).
func (s *subnet) freeBlocks() int {
	n := 0
	for _, o := range s.occ {
		if o == 0 {
			n++
		}
	}
	return n
}

// bestBroken returns the broken block (at least one occupied address) with the fewest
// placeable addresses that still has one, lowest index on ties; -1 if none.
func (s *subnet) bestBroken(cool []uint8) int {
	best, bestRoom := -1, blockSize+1
	for b, o := range s.occ {
		if o == 0 {
			continue
		}
		room := blockSize - int(o) - int(cool[b])
		if room > 0 && room < bestRoom {
			best, bestRoom = b, room
		}
	}
	return best
}

// pickRun returns the first block of the shortest run of consecutive candidate blocks
// (lowest start on ties), or -1. Taking blocks from the edge of the shortest run keeps long
// runs of free blocks intact.
func (s *subnet) pickRun(cand func(b int) bool) int {
	best, bestLen := -1, 0
	for b := 0; b < len(s.occ); {
		if !cand(b) {
			b++
			continue
		}
		start := b
		for b < len(s.occ) && cand(b) {
			b++
		}
		if n := b - start; best < 0 || n < bestLen {
			best, bestLen = start, n
		}
	}
	return best
}
