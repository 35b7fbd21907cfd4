// Package agent is the ipledger node agent (ipledger-agent): it discovers its instance through
// IMDS, loads the pool checkpoint, serves CNIService on a unix socket (package cniserver),
// registers with the allocator and keeps the sync stream (package serverconn), keeps the node's
// secondary ENIs and, after a restart, its pods' policy rules (package netconf), and serves
// Prometheus metrics, /healthz and the read-only /v1/pool introspection over HTTP.
//
// The address pool itself (assignments, cooldown, release locks, checkpoint) is package pool.
// This package wires the parts: Config (defaults, flags, IPLEDGER_AGENT_* environment, an
// optional file, Validate), New and Run. Many agents can run in one process (the benchmark
// does): nothing here is global, and every agent has its own metrics registry.
//
// # A checkpoint older than the pods
//
// The checkpoint is written before every ADD returns, but it can still be older than the
// node's pods: restored from a copy, or lost. Their addresses would then look free. Two
// sources put them back, and the agent uses both:
//
//   - The kernel (--manage-networking). Before the CNI socket serves anything, every address
//     the node namespace routes to a pod (its pod rules and the /32 route to a host veth) that
//     the checkpoint gives to no attachment is held as a recovered assignment: never handed
//     out, in use in usage reports, left alone by GC, kept in the checkpoint, its rules kept.
//     It is given back (with the cooldown) once its rules or its veth are gone: looked at on
//     every pass of the networking loop, every 5 s while any are held, and at once after a Del
//     of an attachment the agent does not know (the plugin's DEL removes the rules first). Pod
//     rules of addresses neither assigned nor recovered are removed after a restart.
//   - The server. The first registration returns the pods the node last reported to the
//     leader; those the checkpoint lacks come back with their attachments, when the leader
//     leases their address to the node, so the runtime's DEL and CHECK find them. A recovered
//     address gets its attachment. Where the report and the checkpoint disagree (another pod,
//     another address) the newer assignment wins and the disagreement is logged as an error;
//     attachments the runtime deleted since the start are not brought back.
//
// New pods wait for the first registration after every start, at most --restore-wait (5 s by
// default), without asking the allocator for addresses meanwhile. The kernel pass alone misses
// pods whose rules are not there (an ADD that ended as the agent died) and the server pass
// alone misses pods started after the last usage report or before a leader change; so both
// run, and the short wait costs nothing when the allocator answers. When it cannot be reached
// the checkpointed pool serves after the wait, with what the kernel pass found held. Without
// --manage-networking (the demo, the benchmark) only the server pass exists.
//
// The agent never calls EC2, never hands out an address its pool does not lease as ACTIVE, and
// never touches networking outside the namespace it is told to configure.
package agent
