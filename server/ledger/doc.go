// Package ledger is ipledger's in-memory ledger of every subnet's addresses: who owns each
// address (AWS, a foreign ENI, a node's ENI primary, a node's lease, a pending assignment, a
// pre-warm ENI, or nobody), the nodes and their ENIs and leases, placement of new addresses and
// prefixes, and the per-subnet budget. It is pure: it does no I/O, keeps no clock of its own
// and is deterministic for the same inputs. The durable part of its state is the records in
// records.go, which package store keeps in etcd.
package ledger
