// Package store is ipledger's only door to etcd. It owns:
//
//   - the key layout under /ipledger/<cluster>/ (election/, nodes/, subnets/, policies/,
//     prewarm/, identities/) and the encoding of every value (JSON records, protojson policies);
//   - the etcd client for an external cluster (Open) and an embedded single-member etcd for dev
//     mode and tests (StartEmbedded);
//   - leader election (concurrency.Session + concurrency.Election on election/) and the
//     Leadership that fences every write;
//   - reading the whole state (Load) and following it (Watch) for standbys, and reading node
//     attestations (Identity, Identities) for the identity service;
//   - conditional commits (CommitIf: the fence plus "this record is still at the revision I
//     read"), so that two attestations of one instance cannot both win.
//
// The package must never write a record without the leadership fence: the only write path is
// Leadership.Commit, one transaction whose If compares the create revision of the leader's
// election key with the revision it won at, so a deposed leader's writes fail with ErrNotLeader
// and change nothing. It holds no allocation logic and never interprets records beyond
// validating and (de)serialising them.
package store
