// Package pool is the node agent's view of its leased addresses: the last NodePool the server
// pushed (applied by generation), which attachment (container id + interface name) holds which
// address, the cooldown of addresses that pods gave back, the locks taken for the release
// handshake, and the on-disk checkpoint of all of it.
//
// Every change of assignments or locks is written to the checkpoint (temp file, fsync, rename,
// fsync of the directory) before the call that made it returns; concurrent callers share one
// write (group commit). A missing checkpoint is a cold start; a corrupt one is an error.
//
// The pool never hands out an address that is not ACTIVE in the applied pool, that a pod holds,
// that is cooling down or that was confirmed for release. It does no network I/O and never talks
// to the server or EC2: the agent feeds it pools and release proposals.
package pool
