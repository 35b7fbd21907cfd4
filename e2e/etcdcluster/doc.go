// Package etcdcluster runs a real multi-member etcd cluster (the etcd binary, by default
// Debian's etcd-server 3.4 at /usr/bin/etcd) on 127.0.0.1 for end-to-end tests: start it, kill
// and restart members, check its health.
//
// It owns only the processes it starts and their data directories. It must never listen on
// anything but loopback, signal a process it did not start, or leave a member running: Stop
// kills every member, and each member also gets SIGKILL from the kernel (Pdeathsig) if the
// test process dies first.
package etcdcluster
