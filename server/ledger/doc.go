// Package ledger is ipledger's in-memory ledger of every subnet's addresses: who owns each
// address, the nodes and their ENIs and leases, the pre-warm reservations, placement of new
// addresses and prefixes, and the per-subnet budget. The durable part of its state is the
// records in records.go, which package store keeps in etcd; the allocator rebuilds the ledger
// from them (PutSubnet first, then PutNode and PutPrewarm) and drives it.
//
// # Contract
//
// The ledger is pure: it does no I/O, starts no goroutines and keeps no clock (methods that
// depend on time take a now argument). It is deterministic: the same sequence of calls gives
// the same results, placements included (no map order leaks out; lists are sorted). It is
// safe for concurrent use: one sync.RWMutex guards everything and every method is atomic. A
// Put method validates its record completely before changing anything: it either applies the
// whole record or returns an error wrapping one of the sentinels in errors.go and changes
// nothing (CheckNode and CheckPrewarm run the same validation without applying, so a record
// can be checked before it is committed to etcd). Every other method that can fail changes
// nothing on error either. Records are deep-copied in and out. It must never do I/O or call
// EC2.
//
// # Ownership model
//
// Subnets are IPv4, /16 to /28. Every address of a subnet has at most one ledger owner:
//
//   - AWS-reserved: the first four and the last address;
//   - a node ENI's primary address (ENIRecord.PrimaryIP);
//   - leased to a node on one of its ENIs (ENIRecord.Addresses, or all 16 addresses of each
//     ENIRecord.Prefixes), in any lease state;
//   - pending: reserved in memory for a node or a pre-warm reservation while an EC2 call is in
//     flight (ReserveAddresses, ReservePrefixes, ReserveSpecific); PutNode / PutPrewarm of the
//     same owner turns it into a lease / pre-warm address, CancelReservation frees it,
//     MarkForeign, DeleteNode and DeletePrewarm drop it;
//   - pre-warm: the primary and addresses of a reservation's ENIs that are not attached and
//     that no node lists. When a node record lists a pre-warm ENI's id, the addresses pass to
//     the node; if the node lets go of the ENI (record or DeleteNode) while the reservation
//     still lists it as not attached, they return to the reservation (an address someone
//     else took meanwhile stays theirs and Conflicts reports a double owner). An attached
//     ENI's addresses in a reservation record are history: they claim nothing.
//
// Foreign addresses (SubnetRecord.Foreign from the last EC2 scan, plus MarkForeign since that
// scan) are a layer below: an address is foreign only while no ledger owner holds it. A ledger
// owner and a foreign claim on the same address are reported by Conflicts, never refused by
// PutSubnet; PutNode and PutPrewarm refuse new claims on addresses that MarkForeign marked
// (EC2 refused them to us) but accept addresses that only the scan lists, so that rebuilding
// from etcd never depends on the order records arrive in.
//
// Cooling is a state of free addresses: Released starts a cooldown (Options.ReleaseCooldown)
// for addresses unassigned on EC2; until it ends they are not placed (ReserveAddresses,
// ReservePrefixes) but count as free in budgets. Addresses freed by DeleteNode do not cool.
// ReserveSpecific accepts cooling addresses (the caller chose them). OwnerOf reports a free
// address with a cooldown on record as OwnerCooling with its end time (it takes no now).
//
// Usage is volatile: SetUsage replaces a node's report (reports for unknown nodes are
// dropped); addresses not leased to that node do not count and appear in Conflicts.
//
// # Placement
//
// Single addresses go into /28 blocks that are already broken (one address or more occupied:
// owned or foreign), the fullest block first (lowest block on ties, lowest addresses within a
// block), and only when no broken block has a placeable address is a whole free block broken. Whole blocks (for singles, or for ReservePrefixes) are
// taken from the edge of the shortest run of free blocks, so the longest runs stay intact.
// Placement is O(blocks + cooling addresses) per block taken; a /16 has 4096 blocks.
//
// # Accounting (Budget)
//
// For each subnet, with every address counted exactly once:
//
//	Size            = addresses in the CIDR
//	Reserved        = AWS-reserved addresses (5)
//	Foreign         = foreign addresses with no ledger owner
//	Held            = ENIPrimary + leased addresses (any lease state) + pending for nodes
//	ENIPrimary      = primary addresses of node ENIs (pre-warm ENI primaries are PrewarmReserved)
//	InUse           = leased addresses the node's agent reports in use
//	Idle            = Held - ENIPrimary - InUse: leased addresses not reported in use (any lease
//	                  state, so addresses being released count here) plus pending for nodes
//	PrewarmReserved = pre-warm ENI addresses + pending for pre-warms + budget a pending or ready
//	                  reservation holds as a number for ENIs not created yet:
//	                  NodeCount*(1+AddressesPerNode) - (1+AddressesPerNode) per ENI taken by a
//	                  node - its addresses and pending, at least 0; the numbers of all
//	                  reservations of the subnet are capped at the unowned addresses
//	Free            = everything else: unowned, not foreign (cooling addresses included)
//	Cooling         = free addresses whose cooldown has not ended at now, at most Free (a
//	                  pre-warm number absorbs placeable addresses before cooling ones)
//	Pending         = pending addresses (part of Held or PrewarmReserved)
//	FreePrefixes    = aligned /28 blocks with no address owned or foreign (cooling ones count)
//	Headroom        = min(MaxHeld - (Held + PrewarmReserved), Free - KeepFree), at least 0; the
//	                  first term only when MaxHeld > 0
//
// so Size = Reserved + Foreign + Held + PrewarmReserved + Free and Held = ENIPrimary + InUse +
// Idle always hold. Reservations fail with ErrBudgetExhausted when they need more than
// Headroom (a pre-warm's own number covers its reservations), unless Owner.IgnoreBudget. The
// physical check comes first: fewer placeable addresses than asked is ErrSubnetExhausted
// (ErrNoFreePrefixBlock when enough addresses but not enough whole /28 blocks are placeable).
//
// Per node, NodeCounts gives ENIs, Leased (every leased address, a prefix counting 16), InUse
// (leased and reported in use), Idle (active leases not in use: the warm pool), Pending,
// Proposed and Releasing; note that the subnet's Idle also counts non-active leases and
// pending addresses, so that Held = ENIPrimary + InUse + Idle holds.
package ledger
