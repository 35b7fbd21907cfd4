// Package vpccni is the benchmark's model of today's Amazon VPC CNI: one ipamd per node, written
// from the facts in ../shared/brief/PROBLEM.md, so that ipledger-bench can run it side by side
// with ipledger against the same EC2 simulator, and the demo can compute what the VPC CNI would
// hold in its account.
//
// The model is a separate system, not a client of ipledger: it imports the aws-sdk-go-v2 EC2
// client directly (one client per node, as every aws-node pod has its own) and talks to the
// simulator over HTTP with the SDK's default retryer (standard mode, 3 attempts, the client-side
// retry quota) and no client-side rate limiter. Only the retryer's backoff is divided by the time
// scale, like every other timer of the model.
//
// What it models, per node (Node):
//
//   - a pool loop every 5 s (Timers.PoolLoop) that either grows the pool by one EC2 step, or
//     shrinks it at most every 30 s (Timers.ReleaseInterval);
//   - growth: first the existing ENIs (AssignPrivateIpAddresses with
//     SecondaryPrivateIpAddressCount, or Ipv4PrefixCount in prefix mode), and only when none has
//     room a new ENI, which costs DescribeSubnets, CreateNetworkInterface, DescribeInstances (to
//     find a free device index), AttachNetworkInterface and ModifyNetworkInterfaceAttribute
//     (DeleteOnTermination), followed by the Assign that fills it;
//   - the targets of ipamd: WARM_ENI_TARGET keeps whole warm ENIs beyond the ENIs pods fill (the
//     primary ENI counts as filled) and fills every ENI it uses; WARM_IP_TARGET / MINIMUM_IP_TARGET
//     keep short = max(WARM_IP_TARGET - available, MINIMUM_IP_TARGET - total) and release the
//     surplus above both; WARM_PREFIX_TARGET keeps that many whole free /28 prefixes;
//   - a new ENI's addresses go to the datastore only once the instance's IMDS lists the ENI
//     (ipamd's waitENIAttached: polls from 100 ms doubling, at most 1 min, 12 tries; with the
//     simulator's realistic profile an attached ENI takes 0.3 s / 3 s to show there);
//   - release: in the default mode only whole ENIs with no pods (DetachNetworkInterface, 2 s
//     later DeleteNetworkInterface, retried from 500 ms doubling, 12 tries, while EC2 still
//     detaches it); in warm-IP mode free addresses (UnassignPrivateIpAddresses); in prefix mode
//     free prefixes;
//   - a 30 s cooldown before an address a pod gave back is handed out again;
//   - when an ENI's fill gets InsufficientFreeAddressesInSubnet, one more Assign of a single
//     address (ipamd's "try to just get one more IP");
//   - a 120 s pause of growth after InsufficientCidrBlocks or InsufficientFreeAddressesInSubnet
//     (after the single address is refused too);
//   - custom networking (Settings.CustomNetworking, Config.ENIConfig): secondary ENIs in the
//     zone's ENIConfig subnet with its security groups (none: the primary ENI's), no pods on the
//     primary ENI, WARM_ENI_TARGET counted over pod ENIs;
//   - Add fails at once when no address is free (ErrNoAvailableIP): the caller (the kubelet in
//     the benchmark) retries later.
//
// The instance type's limits come from the embedded table of package instancetypes (ipamd ships
// the same table). The package never configures networking and never talks to anything but the
// endpoint it is given (the simulator on loopback).
package vpccni
