// Package policy is the allocator's arithmetic, pure and deterministic: node group policies
// (validation, matching a node to its policy, the address mode a type allows), the targets a
// policy gives a node (the Amazon VPC CNI's static targets and the adaptive one), a node's pod
// start rate and the cluster's start prior, a subnet's held-address trend and its exhaustion
// forecast, and CanFit over subnet budgets.
//
// It owns no state beyond the values it is given, reads no clock (times are arguments) and
// never does I/O; callers serialise access to the trackers they keep.
package policy
