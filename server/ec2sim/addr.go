package ec2sim

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
)

// Address kinds recorded per subnet address.
const (
	kindFree uint8 = iota
	kindPrimary
	kindSecondary
	kindPrefix
)

// CIDR reservation kinds recorded per subnet address.
const (
	resvNone uint8 = iota
	resvExplicit
	resvPrefix
)

const blockSize = 16 // addresses in a /28

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func ip4(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}

// parseIPv4 parses a dotted IPv4 address.
func parseIPv4(s string) (uint32, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() {
		return 0, fmt.Errorf("invalid IPv4 address %q", s)
	}
	return u32(a), nil
}

// parsePrefix28 parses a /28 IPv4 prefix and requires it to be aligned.
func parsePrefix28(s string) (uint32, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return 0, fmt.Errorf("invalid IPv4 prefix %q", s)
	}
	if p.Bits() != 28 {
		return 0, fmt.Errorf("prefix %q is not a /28", s)
	}
	if p.Masked() != p {
		return 0, fmt.Errorf("prefix %q is not aligned on a /28 boundary", s)
	}
	return u32(p.Addr()), nil
}

func prefixString(base uint32) string {
	return netip.PrefixFrom(ip4(base), 28).String()
}

// subnet holds one subnet's address ownership: one slot per address (a /16 is 65,536 slots),
// per-/28 usage counts so free aligned blocks are found without scanning addresses, and
// counters kept up to date on every claim and release.
type subnet struct {
	id    string
	vpcID string
	az    string
	azID  string
	cidr  netip.Prefix
	base  uint32
	size  int
	tags  map[string]string

	owner     []*eni  // per offset; nil when free
	kind      []uint8 // per offset: kindFree, kindPrimary, kindSecondary, kindPrefix
	resv      []uint8 // per offset: CIDR reservation kind
	blockUsed []uint8 // per /28 block: owned addresses in it
	used      int     // owned addresses (AWS-reserved ones not counted)
	freeAuto  int     // free addresses a count may pick: not AWS-reserved, not CIDR-reserved

	enis         map[string]*eni
	reservations []*cidrReservation
}

type cidrReservation struct {
	id          string
	cidr        netip.Prefix
	kind        string // "prefix" or "explicit"
	description string
}

func newSubnet(id, vpcID, az, azID string, cidr netip.Prefix, tags map[string]string) *subnet {
	size := 1 << (32 - cidr.Bits())
	sn := &subnet{
		id: id, vpcID: vpcID, az: az, azID: azID, cidr: cidr,
		base: u32(cidr.Addr()), size: size, tags: tags,
		owner:     make([]*eni, size),
		kind:      make([]uint8, size),
		resv:      make([]uint8, size),
		blockUsed: make([]uint8, (size+blockSize-1)/blockSize),
		enis:      map[string]*eni{},
	}
	sn.freeAuto = size - 5
	return sn
}

// awsReserved reports the five addresses AWS keeps: network, +1 router, +2 DNS, +3, broadcast.
func (sn *subnet) awsReserved(off int) bool { return off < 4 || off == sn.size-1 }

func (sn *subnet) offset(a uint32) (int, bool) {
	if a < sn.base || uint64(a) >= uint64(sn.base)+uint64(sn.size) {
		return 0, false
	}
	return int(a - sn.base), true
}

func (sn *subnet) addr(off int) uint32 { return sn.base + uint32(off) }

// available is EC2's availableIpAddressCount.
func (sn *subnet) available() int { return sn.size - 5 - sn.used }

func (sn *subnet) claim(off int, e *eni, kind uint8) {
	sn.owner[off] = e
	sn.kind[off] = kind
	sn.blockUsed[off/blockSize]++
	sn.used++
	if sn.resv[off] == resvNone {
		sn.freeAuto--
	}
}

func (sn *subnet) release(off int) {
	if sn.owner[off] == nil {
		return
	}
	sn.owner[off] = nil
	sn.kind[off] = kindFree
	sn.blockUsed[off/blockSize]--
	sn.used--
	if sn.resv[off] == resvNone {
		sn.freeAuto++
	}
}

func (sn *subnet) autoEligible(off int) bool {
	return sn.owner[off] == nil && sn.resv[off] == resvNone && !sn.awsReserved(off)
}

// pickAddresses chooses n distinct free addresses at random among those a count may use (not
// AWS-reserved, not in a CIDR reservation). The caller has checked freeAuto >= n. Rejection
// sampling keeps it O(n) while the subnet is not nearly full; otherwise it lists candidates.
func (sn *subnet) pickAddresses(rng *rand.Rand, n int) []int {
	out := make([]int, 0, n)
	taken := func(off int) bool {
		for _, o := range out {
			if o == off {
				return true
			}
		}
		return false
	}
	for len(out) < n {
		found := false
		for range 32 {
			off := rng.IntN(sn.size)
			if sn.autoEligible(off) && !taken(off) {
				out = append(out, off)
				found = true
				break
			}
		}
		if found {
			continue
		}
		var cands []int
		for off := 0; off < sn.size; off++ {
			if sn.autoEligible(off) && !taken(off) {
				cands = append(cands, off)
			}
		}
		for len(out) < n && len(cands) > 0 {
			i := rng.IntN(len(cands))
			out = append(out, cands[i])
			cands[i] = cands[len(cands)-1]
			cands = cands[:len(cands)-1]
		}
		break
	}
	return out
}

// blockFree reports whether the aligned /28 block b can become a prefix: no address in it is
// owned or AWS-reserved.
func (sn *subnet) blockFree(b int) bool {
	if sn.blockUsed[b] != 0 {
		return false
	}
	first := b * blockSize
	if first+blockSize > sn.size {
		return false
	}
	return !sn.awsReserved(first) && !sn.awsReserved(first+blockSize-1)
}

// blockResv returns the reservation kind covering the whole block, or resvNone when the block
// is unreserved; mixed blocks report resvExplicit so a count never takes them.
func (sn *subnet) blockResv(b int) uint8 {
	if len(sn.reservations) == 0 {
		return resvNone
	}
	first := b * blockSize
	k := sn.resv[first]
	for off := first + 1; off < first+blockSize; off++ {
		if sn.resv[off] != k {
			return resvExplicit
		}
	}
	return k
}

// pickBlocks chooses n free aligned /28 blocks at random, preferring blocks inside `prefix`
// CIDR reservations (as EC2 does) and never taking blocks in `explicit` reservations. It
// returns nil when fewer than n are free.
func (sn *subnet) pickBlocks(rng *rand.Rand, n int) []int {
	var preferred, other []int
	for b := range sn.blockUsed {
		if !sn.blockFree(b) {
			continue
		}
		switch sn.blockResv(b) {
		case resvPrefix:
			preferred = append(preferred, b)
		case resvNone:
			other = append(other, b)
		}
	}
	if len(preferred)+len(other) < n {
		return nil
	}
	out := make([]int, 0, n)
	for _, pool := range [][]int{preferred, other} {
		for len(out) < n && len(pool) > 0 {
			i := rng.IntN(len(pool))
			out = append(out, pool[i])
			pool[i] = pool[len(pool)-1]
			pool = pool[:len(pool)-1]
		}
	}
	return out
}

// freeBlocks counts free aligned /28 blocks.
func (sn *subnet) freeBlocks() int {
	n := 0
	for b := range sn.blockUsed {
		if sn.blockFree(b) {
			n++
		}
	}
	return n
}

// setReservation marks the reservation's addresses and recomputes freeAuto.
func (sn *subnet) setReservation(p netip.Prefix, kind uint8) {
	first, _ := sn.offset(u32(p.Addr()))
	n := 1 << (32 - p.Bits())
	for off := first; off < first+n && off < sn.size; off++ {
		sn.resv[off] = kind
	}
	sn.recount()
}

func (sn *subnet) recount() {
	sn.freeAuto = 0
	for off := 0; off < sn.size; off++ {
		if sn.autoEligible(off) {
			sn.freeAuto++
		}
	}
}
