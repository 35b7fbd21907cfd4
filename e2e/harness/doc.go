// Package harness is the toolkit of ipledger's end-to-end tests: it builds (once per test
// binary) or finds the binaries (ipledger-agent, the plugin installed as "ipledger",
// ipledger-server, cnitool) and an earlier release's server, agent and plugin from the
// repository's git history (PreviousRelease, for the upgrade test), starts allocator replicas in-process (a --dev server, or replicas
// sharing one embedded etcd and one EC2 simulator) or as ipledger-server processes on that etcd
// and simulator, creates a node's network namespace with its
// agent (as a process or in-process) and pods' namespaces inside it, runs the plugin and cnitool
// inside the node namespace as a container runtime would (or starts Debian's containerd there,
// in a mount namespace of its own, whose ctr makes the CNI calls), and checks the outcome: EC2 (the
// simulator) against etcd, the node's routes and rules, pings between pods.
//
// It is test support: only tests import it. Everything it starts is owned by the test that
// asked for it and stopped in t.Cleanup, even when the test fails: processes (which also get
// SIGKILL from the kernel if the test process dies, Pdeathsig), replicas, namespaces,
// directories, containers (and containerd's shims and runc's cgroups). It never listens on anything but loopback, never signals a process it did not
// start, and never changes the namespace the test runs in (tests use nstest.GuardRootNS to
// prove it).
package harness
