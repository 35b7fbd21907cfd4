// Package cni is the ipledger CNI plugin's logic (the binary, cni/cmd/ipledger-cni, installed as
// "ipledger", is a thin main over skel and Funcs). For each pod attachment it asks the node's
// agent for an address over CNIService on the agent's unix socket and wires the pod: a veth pair
// (host side named from a hash of container id and interface), the pod's /32, a link route to
// 169.254.1.1, a default route through it and a static neighbour entry for the host veth's MAC;
// on the node the /32 route to the veth and the policy rules (through agent/netconf). ADD undoes
// its partial work and gives the address back on any failure; DEL is idempotent; CHECK, GC
// (spec 1.1.0) and STATUS (1.1.0) ask the agent and look at the node. Errors are CNI errors with
// the spec's codes and messages meant for a human reading kubelet events.
//
// It keeps no state of its own (the agent owns every assignment), talks to nothing but the
// agent, never writes anything but the CNI result to stdout, and only touches the node namespace
// it runs in and the pod namespace the runtime names.
package cni
