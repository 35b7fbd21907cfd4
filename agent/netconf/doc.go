// Package netconf owns the node side of ipledger's data path inside one network namespace: the
// links of secondary ENIs (up, MTU, primary address), one route table per ENI (its subnet route
// and its default route through the subnet's gateway) and the policy rules that send a pod's
// traffic to the right table (`to <pod> lookup main` at priority 512, `from <pod> lookup <ENI
// table>` at priority 1536, as the Amazon VPC CNI does).
//
// Both the CNI plugin (a pod's host side) and the agent (ENIs, rules after a restart) use it.
// Every operation works in the namespace named by Config.NetNS ("" is the namespace of the
// calling process: the root namespace in production, a test's node namespace in tests) through
// netlink handles bound to that namespace, so callers never switch their own threads.
//
// It must never touch the primary ENI's configuration or the main table beyond the rules and
// routes named here, never flush a table it does not own, and never create simulated ENI links
// in the machine's initial namespace.
package netconf
