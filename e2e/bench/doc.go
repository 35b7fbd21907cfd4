// Package bench is ipledger-bench: it drives simulated clusters through ipledger and through a
// model of today's VPC CNI (package vpccni), each against its own fresh EC2 simulator built from
// the same scenario and seed, and reports both side by side.
//
// It owns the traces (seed, steady, burst, burst-launch: the burst launched over the SDK from a
// template carrying the launch hint, batch, prefix, custom-networking, and the gateway-burst
// measurement of issue #3), the drivers of the two systems, the "kubelet" that starts and stops pods through
// them, the sampler of addresses held versus in use, the metrics, the reports (JSON, Markdown)
// and the PNG chart.
//
// The ipledger system is a real ipledger-server run as a subprocess (so its CPU time and peak
// memory can be read from /proc alone) against an etcd embedded in the bench process and the
// bench's simulator, with one real agent per node in-process (sockets and checkpoints on tmpfs,
// networking off). Pods are CNI Add/Del calls on the agents' sockets, one gRPC connection per
// agent, as a runtime's plugin would make them. The VPC CNI system is one vpccni.Node per node.
//
// Both systems' simulators run the same clock of EC2 (TraceParams.EC2Profile, --ec2-profile):
// realistic by default (ec2sim.RealisticProfile: published per-action latencies, attach and
// detach phases, describe lag), or instant.
//
// Everything is time-scaled by a factor F: the simulator's token buckets refill F times faster
// and its latencies are F times shorter, ipledger's timers (server flags, agent settings) and the
// model's timers are divided by F, and every duration the package reports is in simulated
// seconds (wall time x F).
//
// The package talks only to loopback and to processes it started; it never touches networking
// and never asserts timings: the goals are measured and reported, not tested.
package bench
