//go:build linux

package pool

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// The benchmarks of the agent's hot path: one pod's ADD is one Assign, its DEL one Release, each
// durable on disk before it returns. They run on a node with 15 ENIs of 49 addresses and 100
// pods, with the checkpoint on tmpfs (/dev/shm: the pool's own cost) and on the machine's disk
// (IPLEDGER_BENCH_DISK_DIR, else the test's temp directory when it is not a tmpfs, else a
// directory beside the package), with fsync on and off, one caller or many (the kubelet starts
// a node's pods concurrently). Besides ns/op they report percentiles of single calls.
//
//	go test -run '^$' -bench . -count 6 ./agent/pool/ | tee new.txt
//	go run golang.org/x/perf/cmd/benchstat@latest old.txt new.txt

const tmpfsMagic = 0x01021994

func isTmpfs(dir string) bool {
	var st syscall.Statfs_t
	return syscall.Statfs(dir, &st) == nil && st.Type == tmpfsMagic
}

// benchDir returns an empty directory on the named filesystem ("tmpfs" or "disk"), removed at
// the end of the benchmark.
func benchDir(b *testing.B, fs string) string {
	b.Helper()
	var parent string
	switch fs {
	case "tmpfs":
		if !isTmpfs("/dev/shm") {
			b.Skip("/dev/shm is not a tmpfs")
		}
		parent = "/dev/shm"
	case "disk":
		parent = os.Getenv("IPLEDGER_BENCH_DISK_DIR")
		if parent == "" {
			if tmp := b.TempDir(); !isTmpfs(tmp) {
				return tmp
			}
			parent = "." // the package's directory, on the disk of the source tree
		}
		if isTmpfs(parent) {
			b.Skipf("%s is a tmpfs; set IPLEDGER_BENCH_DISK_DIR to a directory on a disk", parent)
		}
	}
	dir, err := os.MkdirTemp(parent, "ipledger-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// benchPool opens a pool in dir: 15 ENIs of 49 addresses, 100 pods.
func benchPool(b *testing.B, dir string, fsync bool) *Pool {
	b.Helper()
	p, err := Open(Config{CheckpointPath: dir + "/cp.json", Cooldown: 1, NoFsync: !fsync})
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
	for i := range 100 {
		if _, _, err := p.Assign(Key{ContainerID: fmt.Sprint("base", i), IfName: "eth0"}, PodInfo{}); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() { closePool(b, p) })
	return p
}

// latencies collects the durations of single calls.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d []time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d...)
	l.mu.Unlock()
}

// report adds the median and the 99th percentile of the calls, in microseconds.
func (l *latencies) report(b *testing.B, what string) {
	if len(l.d) == 0 {
		return
	}
	slices.Sort(l.d)
	q := func(f float64) float64 { return float64(l.d[int(f*float64(len(l.d)-1))]) / 1e3 }
	b.ReportMetric(q(0.50), what+"-p50-µs")
	b.ReportMetric(q(0.99), what+"-p99-µs")
}

var benchFS = []string{"tmpfs", "disk"}

func onOff(v bool) string {
	if v {
		return "on"
	}
	return "off"
}

// BenchmarkAddDel: one op is a pod's ADD (Assign) and its DEL (Release), by one caller (seq)
// or by 16 concurrent callers (par). pods/s counts ADD+DEL pairs per second.
func BenchmarkAddDel(b *testing.B) {
	for _, fs := range benchFS {
		for _, fsync := range []bool{true, false} {
			for _, par := range []bool{false, true} {
				mode := "seq"
				if par {
					mode = "par"
				}
				b.Run(fmt.Sprintf("fs=%s/fsync=%s/%s", fs, onOff(fsync), mode), func(b *testing.B) {
					p := benchPool(b, benchDir(b, fs), fsync)
					var adds, dels latencies
					var next atomic.Int64
					one := func(la, ld *[]time.Duration) {
						k := Key{ContainerID: fmt.Sprint("c", next.Add(1)), IfName: "eth0"}
						t0 := time.Now()
						if _, _, err := p.Assign(k, PodInfo{}); err != nil {
							b.Error(err)
							return
						}
						t1 := time.Now()
						if _, _, err := p.Release(k); err != nil {
							b.Error(err)
							return
						}
						*la = append(*la, t1.Sub(t0))
						*ld = append(*ld, time.Since(t1))
					}
					b.ResetTimer()
					if par {
						b.SetParallelism(8)
						b.RunParallel(func(pb *testing.PB) {
							var la, ld []time.Duration
							for pb.Next() {
								one(&la, &ld)
							}
							adds.add(la)
							dels.add(ld)
						})
					} else {
						var la, ld []time.Duration
						for b.Loop() {
							one(&la, &ld)
						}
						adds.add(la)
						dels.add(ld)
					}
					b.StopTimer()
					adds.report(b, "add")
					dels.report(b, "del")
					b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pods/s")
				})
			}
		}
	}
}

// BenchmarkAddBurst: one op is 100 pods started at once on the node (100 concurrent Assigns),
// the first minute of a batch job; their DELs are not timed. pods/s is 100 / the burst's time.
func BenchmarkAddBurst(b *testing.B) {
	const burst = 100
	for _, fs := range benchFS {
		for _, fsync := range []bool{true, false} {
			b.Run(fmt.Sprintf("fs=%s/fsync=%s", fs, onOff(fsync)), func(b *testing.B) {
				p := benchPool(b, benchDir(b, fs), fsync)
				var adds latencies
				var total time.Duration
				b.StopTimer()
				b.ResetTimer()
				for i := range b.N {
					keys := make([]Key, burst)
					for j := range keys {
						keys[j] = Key{ContainerID: fmt.Sprintf("b%d-%d", i, j), IfName: "eth0"}
					}
					lat := make([]time.Duration, burst)
					var wg sync.WaitGroup
					b.StartTimer()
					t0 := time.Now()
					for j := range keys {
						wg.Go(func() {
							s := time.Now()
							if _, _, err := p.Assign(keys[j], PodInfo{}); err != nil {
								b.Error(err)
							}
							lat[j] = time.Since(s)
						})
					}
					wg.Wait()
					total += time.Since(t0)
					b.StopTimer()
					adds.add(lat)
					for _, k := range keys {
						if _, _, err := p.Release(k); err != nil {
							b.Fatal(err)
						}
					}
				}
				adds.report(b, "add")
				b.ReportMetric(float64(burst*b.N)/total.Seconds(), "pods/s")
			})
		}
	}
}
