package server_test

// Go benchmarks of the server's hot paths, against a real --dev server: embedded etcd on the
// test's temporary directory (on disk, fsync on), the in-process EC2 simulator without
// throttling (instant profile, so the figures are the server's own cost, not EC2's clock).
// `make bench-go` runs them several times and summarises them with benchstat
// (docs/benchmarks.md, "Go benchmarks").

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/servertest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// benchServer is a --dev server for a benchmark: no reconciliation or instance checks during
// the measurement, quiet logs. With raised, every EC2 bucket of the gateway holds and refills
// 1,000 times EC2's default (an account with raised limits): the supply benchmark measures the
// server, not EC2's 5 AssignPrivateIpAddresses per second.
func benchServer(b *testing.B, raised bool) *server.Server {
	b.Helper()
	return servertest.StartDev(b, func(c *config.Config) {
		c.InstanceCheckInterval = config.Duration(time.Hour)
		c.LogLevel = "error"
		if raised {
			for _, bk := range ec2gw.DefaultBuckets() {
				c.EC2Buckets = append(c.EC2Buckets, config.BucketOverride{Name: bk.Name, Capacity: 1000 * bk.Capacity,
					RefillPerSecond: 1000 * bk.RefillPerSecond, Actions: bk.Actions})
			}
		}
	})
}

// launch starts n m5.large instances spread over the simulator's subnets.
func launch(b *testing.B, s *server.Server, n int) []ec2sim.InstanceInfo {
	b.Helper()
	var subnets []string
	for _, sn := range s.Sim().Sim().Snapshot().Subnets {
		subnets = append(subnets, sn.ID)
	}
	var out []ec2sim.InstanceInfo
	for i, sn := range subnets {
		k := n / len(subnets)
		if i < n%len(subnets) {
			k++
		}
		if k == 0 {
			continue
		}
		got, err := s.Sim().Sim().RunInstances(context.Background(), ec2sim.InstanceSpec{InstanceType: "m5.large", SubnetID: sn}, k)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, got...)
	}
	return out
}

// writeMeter sums the bytes (key and value) of every put under the cluster's prefix, as etcd's
// watch delivers them: what the leader writes.
type writeMeter struct {
	bytes, puts atomic.Int64
	stop        func()
}

func meterWrites(b *testing.B, s *server.Server) *writeMeter {
	b.Helper()
	cli := s.Store().Client()
	rev, err := cli.Get(b.Context(), "/ipledger/", clientv3.WithCountOnly())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	m := &writeMeter{}
	done := make(chan struct{})
	ch := cli.Watch(ctx, "/ipledger/", clientv3.WithPrefix(), clientv3.WithRev(rev.Header.Revision+1))
	go func() {
		defer close(done)
		for resp := range ch {
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypePut {
					m.bytes.Add(int64(len(ev.Kv.Key) + len(ev.Kv.Value)))
					m.puts.Add(1)
				}
			}
		}
	}()
	m.stop = func() {
		// Let the watch deliver what was written before the caller reads the totals.
		now, err := cli.Get(context.Background(), "/ipledger/", clientv3.WithCountOnly())
		if err == nil {
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				if r, err := cli.Get(context.Background(), "/ipledger/", clientv3.WithCountOnly()); err == nil && r.Header.Revision == now.Header.Revision {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		time.Sleep(50 * time.Millisecond)
		cancel()
		<-done
	}
	return m
}

// registerAll registers every instance through NodeService with 64 concurrent agents.
func registerAll(b *testing.B, conn ipledgerv1.NodeServiceClient, insts []ec2sim.InstanceInfo) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(insts) {
					return
				}
				in := insts[i]
				req := &ipledgerv1.RegisterNodeRequest{
					NodeName: in.PrivateDNSName, InstanceId: in.ID, InstanceType: in.InstanceType,
					AvailabilityZone: in.AvailabilityZone, SubnetId: in.SubnetID,
					PrimaryEniId: in.PrimaryENI, PrimaryIp: in.PrivateIP,
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				_, err := conn.RegisterNode(ctx, req)
				cancel()
				if err != nil {
					select {
					case errs <- fmt.Errorf("register %s: %w", in.PrivateDNSName, err):
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// BenchmarkRegister registers b.N new nodes (64 at a time, over gRPC, spread over six
// subnets). Reported: registrations per second, the etcd bytes written per registration and
// the size of etcd's database once compacted and defragmented (etcd-MiB; `-benchtime 5000x`
// gives the figure after 5,000 registrations).
func BenchmarkRegister(b *testing.B) {
	s := benchServer(b, false)
	conn := ipledgerv1.NewNodeServiceClient(servertest.Dial(b, s.GRPCAddr()))
	insts := launch(b, s, b.N)
	m := meterWrites(b, s)
	b.ResetTimer()
	start := time.Now()
	registerAll(b, conn, insts)
	elapsed := time.Since(start)
	b.StopTimer()
	m.stop()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "nodes/s")
	b.ReportMetric(float64(m.bytes.Load())/float64(b.N), "etcd-B/node")
	b.ReportMetric(float64(compactedSize(b, s))/(1<<20), "etcd-MiB")
	if got := len(s.Ledger().Nodes()); got < b.N {
		b.Fatalf("%d nodes in the ledger after %d registrations", got, b.N)
	}
}

// compactedSize compacts etcd to its current revision, defragments it and returns the size of
// its database file.
func compactedSize(b *testing.B, s *server.Server) int64 {
	b.Helper()
	cli := s.Store().Client()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cur, err := cli.Get(ctx, "/ipledger/", clientv3.WithCountOnly())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := cli.Compact(ctx, cur.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		b.Fatal(err)
	}
	ep := cli.Endpoints()[0]
	if _, err := cli.Defragment(ctx, ep); err != nil {
		b.Fatal(err)
	}
	st, err := cli.Status(ctx, ep)
	if err != nil {
		b.Fatal(err)
	}
	return st.DbSize
}

// supplyNodes is how many registered nodes the supply, usage and reclaim benchmarks work on.
const supplyNodes = 300

// registered starts a server with supplyNodes registered nodes and waits until each holds its
// first warm address, so that what follows is measured against a settled cluster.
func registered(b *testing.B) (*server.Server, []ec2sim.InstanceInfo) {
	b.Helper()
	s := benchServer(b, true)
	conn := ipledgerv1.NewNodeServiceClient(servertest.Dial(b, s.GRPCAddr()))
	insts := launch(b, s, supplyNodes)
	registerAll(b, conn, insts)
	servertest.WaitFor(b, 60*time.Second, "every node's first warm address", func() bool {
		for _, in := range insts {
			if c, ok := s.Ledger().NodeCounts(in.PrivateDNSName); !ok || c.Idle < 1 {
				return false
			}
		}
		return true
	})
	return s, insts
}

// BenchmarkSupply: b.N urgent requests, spread round-robin over 300 nodes, 64 at a time, each
// as an agent whose pool ran dry sends them: a usage report naming every address the node holds
// as in use with 4 pods waiting, then RequestAddresses for those 4, which returns once the
// addresses are assigned on EC2 (the simulator), committed to etcd and in the node's pool. The
// gateway's buckets are raised (benchServer). Reported: addresses leased per second, and the
// requests that failed (a node at its instance type's limit) per op.
func BenchmarkSupply(b *testing.B) {
	s, insts := registered(b)
	al := s.Allocator()
	var next atomic.Int64
	var leased, failed atomic.Int64
	var adds atomic.Uint64
	b.SetParallelism(32)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)-1) % len(insts)
			name := insts[i].PrivateDNSName
			pool, err := al.Pool(name)
			if err != nil {
				b.Error(err)
				return
			}
			before, _ := s.Ledger().NodeCounts(name)
			u := allocator.Usage{PoolGeneration: pool.Generation, PodsWaiting: 4, AddsTotal: adds.Add(1)}
			for _, e := range pool.Node.ENIs {
				for _, ad := range e.Addresses {
					if ad.State == ledger.LeaseActive {
						u.InUse = append(u.InUse, allocator.PodAddress{IP: ad.IP, ContainerID: "c-" + ad.IP.String(), Ifname: "eth0"})
					}
				}
			}
			if err := al.ReportUsage(name, u); err != nil {
				b.Error(err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err = al.RequestAddresses(ctx, name, 4, pool.Generation)
			cancel()
			if err != nil {
				// A node at its instance type's limit stops growing; that is not a failure of
				// the path measured, but it is counted.
				if failed.Add(1) <= 3 {
					b.Logf("request of %s: %v", name, err)
				}
				continue
			}
			after, _ := s.Ledger().NodeCounts(name)
			leased.Add(int64(max(0, after.Leased-before.Leased)))
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(leased.Load())/elapsed.Seconds(), "addresses/s")
	b.ReportMetric(float64(failed.Load())/float64(b.N), "failed/op")
}

// BenchmarkUsageReport: b.N usage reports (what each agent's Sync stream sends), spread over
// 300 nodes, each naming the node's leased addresses as in use, from 8 goroutines.
func BenchmarkUsageReport(b *testing.B) {
	s, insts := registered(b)
	al := s.Allocator()
	usages := make([]allocator.Usage, len(insts))
	for i, in := range insts {
		pool, err := al.Pool(in.PrivateDNSName)
		if err != nil {
			b.Fatal(err)
		}
		u := allocator.Usage{PoolGeneration: pool.Generation}
		for _, e := range pool.Node.ENIs {
			for _, ad := range e.Addresses {
				u.InUse = append(u.InUse, allocator.PodAddress{IP: ad.IP, ContainerID: "c-" + ad.IP.String(), Ifname: "eth0"})
			}
		}
		usages[i] = u
	}
	var next atomic.Int64
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)-1) % len(insts)
			u := usages[i]
			u.AddsTotal = uint64(next.Load())
			if err := al.ReportUsage(insts[i].PrivateDNSName, u); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkReclaim: a subnet whose budget is spent (max_held = what it holds) while pods wait:
// every urgent request fails with budget exhausted and asks the subnet's other nodes to give
// back their surplus. b.N such requests, from 16 goroutines.
func BenchmarkReclaim(b *testing.B) {
	s, insts := registered(b)
	al := s.Allocator()
	subnet := insts[0].SubnetID
	var inSubnet []string
	for _, in := range insts {
		if in.SubnetID == subnet {
			inSubnet = append(inSubnet, in.PrivateDNSName)
		}
	}
	bud, err := s.Ledger().Budget(subnet, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := al.SetSubnetBudget(b.Context(), subnet, bud.Held+bud.PrewarmReserved, 0); err != nil {
		b.Fatal(err)
	}
	gens := make([]atomic.Uint64, len(inSubnet))
	var next atomic.Int64
	var served atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)-1) % len(inSubnet)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			pool, err := al.RequestAddresses(ctx, inSubnet[i], 8, gens[i].Load())
			cancel()
			if err == nil {
				served.Add(1)
				gens[i].Store(pool.Generation)
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(served.Load())/float64(b.N), "served/op")
}
