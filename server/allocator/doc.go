// Package allocator is the leader's control loop: it registers nodes (verified against EC2),
// keeps every node's pool at its policy's target by placing addresses in the ledger and assigning
// them through EC2, commits every lease change to the store before telling the node's agent,
// releases surplus only through the handshake with the agent, deletes ENIs nobody needs, cleans
// up after terminated instances and reconciles with EC2 (diff.Diff's findings, repaired).
//
// It runs only on the leader. It depends on small interfaces it defines (EC2, Store) and on an
// injected clock, and never calls EC2 except through EC2 (the gateway, in production).
// Its arithmetic (policies, targets, rates, forecasts, CanFit) is package policy; its
// comparison with EC2 is package diff. It speaks its own types; package api converts.
//
// # Concurrency and the lock order
//
// No mutex is held across a call of EC2 or the store: work is planned under a lock, the I/O is
// done outside it, and the result is applied if what it was planned from has not changed. The
// package's tests enforce it (lockwatch_test.go: the fakes of EC2 and the store fail a test
// called with a mutex held).
//
// Locks, in the order they may be taken (a goroutine holding one takes only those below it):
//
//  1. commit slots (slots): one per record (node, subnet, policy, pre-warm reservation, a
//     registration's instance), taken all at once by acquire, each waited for with a context.
//     A change to a record is read, committed and applied under its slot, so the ledger applies
//     a record's writes in the order the store took them. A slot is held across a store commit,
//     never across an EC2 call. A slot may be taken shared by holders that do not write the
//     record (registrations and leases that name no foreign address take their subnet's slot
//     shared, so they commit concurrently while a scan of the subnet, which takes it
//     exclusively, waits).
//  2. Allocator.mu: the allocator's maps and every nodeState's runtime fields. Never held
//     across I/O or while waiting for a slot.
//  3. leaf locks, taken under Allocator.mu or alone, never holding another: slots.mu,
//     workQueue.mu, Subscription.mu, instanceBatcher.mu, randMu, events.mu, Forecaster.mu,
//     and the Cluster's reads (cache lookups under the Cluster's own locks; no I/O).
//  4. the ledger's own lock (package ledger), inside every ledger call.
//
// Goroutines: Run owns them all and waits for them: a bounded set of node workers and release
// workers fed by work queues (a node is queued by events and once a Tick, never given a
// goroutine of its own), the tick, and one goroutine each for reconciliation, instance checks,
// the sweep of leftover ENIs and pre-warming. The instance batcher's flush runs one at a time.
package allocator
