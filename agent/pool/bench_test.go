package pool

import (
	"fmt"
	"os"
	"testing"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// BenchmarkAssignRelease measures one Assign and one Release (each with its checkpoint write) on
// a node with 15 ENIs of 49 addresses. IPLEDGER_BENCH_DIR puts the checkpoint elsewhere (a tmpfs
// shows the cost without the disk's fsync).
func BenchmarkAssignRelease(b *testing.B) {
	dir := os.Getenv("IPLEDGER_BENCH_DIR")
	if dir == "" {
		dir = b.TempDir()
	} else {
		var err error
		if dir, err = os.MkdirTemp(dir, "bench"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = os.RemoveAll(dir) })
	}
	p, err := Open(Config{CheckpointPath: dir + "/cp.json", Cooldown: 1})
	if err != nil {
		b.Fatal(err)
	}
	var enis []*ipledgerv1.NetworkInterface
	for e := range 15 {
		var as []*ipledgerv1.PoolAddress
		for i := range 49 {
			as = append(as, &ipledgerv1.PoolAddress{Ip: fmt.Sprintf("10.%d.%d.%d", e, i/200, 1+i%200), State: active})
		}
		enis = append(enis, &ipledgerv1.NetworkInterface{EniId: fmt.Sprint("eni-", e), DeviceIndex: uint32(e), Addresses: as})
	}
	if _, err := p.Apply(&ipledgerv1.NodePool{Generation: 1, Interfaces: enis}, false); err != nil {
		b.Fatal(err)
	}
	// A node with 100 pods.
	for i := range 100 {
		if _, _, err := p.Assign(Key{ContainerID: fmt.Sprint("base", i), IfName: "eth0"}, PodInfo{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		k := Key{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}
		if _, _, err := p.Assign(k, PodInfo{}); err != nil {
			b.Fatal(err)
		}
		if _, _, err := p.Release(k); err != nil {
			b.Fatal(err)
		}
	}
}
