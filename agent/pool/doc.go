// Package pool is the node agent's view of its leased addresses: the last NodePool the server
// pushed (applied by generation), which attachment (container id + interface name) holds which
// address, the cooldown of addresses that pods gave back, the locks taken for the release
// handshake, and the on-disk checkpoint of all of it.
//
// The checkpoint is a snapshot and a journal (journal.go). Every change of assignments or locks
// is appended to the journal as a small checksummed record and fsynced before the call that made
// it returns; concurrent callers share one write and one fsync (group commit). A background
// compaction writes the whole state as the snapshot (temp file, fsync, rename, fsync of the
// directory) and removes the journal files it holds. Open reads the snapshot and replays the
// journal, dropping a torn last record; a crash at any point loses no change that was reported
// done and recovers a state the pool was in. The format before the journal (a snapshot only) is
// read and migrated. Nothing on disk is a cold start; a corrupt checkpoint is an error.
//
// A checkpoint can be older than the node's pods (restored from a copy, or lost): two sources
// put back what it lacks. Recover holds the addresses the node's kernel shows in use by pods
// (their policy rules) that no attachment holds — recovered assignments, with no attachment,
// never handed out, kept by GC, given back by ReleaseRecovered once their rules are gone.
// Restore brings back, once after Open, the pods the server says the node last reported in use,
// with their attachments; where the report and the checkpoint disagree the newer assignment
// wins. Until Restore has run (or Config.RestoreWait has passed) new attachments get no address.
//
// The pool never hands out an address that is not ACTIVE in the applied pool, that a pod holds
// (known or recovered), that is cooling down or that was confirmed for release. It does no
// network I/O and never talks to the server, EC2 or the kernel: the agent feeds it pools,
// release proposals, the kernel's pods and the server's report.
package pool
