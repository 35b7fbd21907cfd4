// Package cni is the ipledger CNI plugin's logic: it asks the node's agent for an address and
// wires the pod (veth pair, /32, routes, neighbour entry, host route and policy rules). It keeps
// no state of its own; the agent owns every assignment.
package cni
