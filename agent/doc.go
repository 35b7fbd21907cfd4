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
// The agent never calls EC2, never hands out an address its pool does not lease as ACTIVE, and
// never touches networking outside the namespace it is told to configure.
package agent
