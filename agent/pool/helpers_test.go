package pool

import (
	"errors"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

const (
	active   = ipledgerv1.LeaseState_LEASE_STATE_ACTIVE
	proposed = ipledgerv1.LeaseState_LEASE_STATE_RELEASE_PROPOSED
	releasng = ipledgerv1.LeaseState_LEASE_STATE_RELEASING
)

// fakeClock is a clock tests advance by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// addrs is a secondary-IP-mode ENI's address list: "ip" or "ip=state".
func addrs(list ...any) []*ipledgerv1.PoolAddress {
	var out []*ipledgerv1.PoolAddress
	for i := 0; i < len(list); i++ {
		pa := &ipledgerv1.PoolAddress{Ip: list[i].(string), State: active}
		if i+1 < len(list) {
			if st, ok := list[i+1].(ipledgerv1.LeaseState); ok {
				pa.State = st
				i++
			}
		}
		out = append(out, pa)
	}
	return out
}

func eni(id string, dev uint32, primary string, as []*ipledgerv1.PoolAddress, ps ...*ipledgerv1.PoolPrefix) *ipledgerv1.NetworkInterface {
	return &ipledgerv1.NetworkInterface{
		EniId: id, MacAddress: "02:00:00:00:00:0" + string(rune('0'+dev)), DeviceIndex: dev,
		SubnetId: "subnet-1", SubnetCidr: "10.0.0.0/16", PrimaryIp: primary,
		Addresses: as, Prefixes: ps,
	}
}

func prefix(cidr string, st ipledgerv1.LeaseState) *ipledgerv1.PoolPrefix {
	return &ipledgerv1.PoolPrefix{Cidr: cidr, State: st}
}

func nodePool(gen uint64, enis ...*ipledgerv1.NetworkInterface) *ipledgerv1.NodePool {
	mode := ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP
	for _, e := range enis {
		if len(e.Prefixes) > 0 {
			mode = ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX
		}
	}
	return &ipledgerv1.NodePool{NodeName: "node-a", InstanceId: "i-1", Generation: gen, Mode: mode, Interfaces: enis}
}

type testPool struct {
	*Pool
	clock *fakeClock
	path  string
}

func openPool(t *testing.T, dir string, clock *fakeClock) *testPool {
	t.Helper()
	if clock == nil {
		clock = newClock()
	}
	path := filepath.Join(dir, "checkpoint.json")
	p, err := Open(Config{CheckpointPath: path, NodeName: "node-a", InstanceID: "i-1", Now: clock.Now})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return &testPool{Pool: p, clock: clock, path: path}
}

func newPool(t *testing.T, np *ipledgerv1.NodePool) *testPool {
	t.Helper()
	p := openPool(t, t.TempDir(), nil)
	if np != nil {
		p.mustApply(t, np)
	}
	return p
}

func (p *testPool) mustApply(t *testing.T, np *ipledgerv1.NodePool) ApplyResult {
	t.Helper()
	res, err := p.Apply(np, false)
	if err != nil {
		t.Fatalf("Apply gen %d: %v", np.GetGeneration(), err)
	}
	return res
}

func (p *testPool) mustAssign(t *testing.T, cid string) netip.Addr {
	t.Helper()
	a, _, err := p.Assign(Key{ContainerID: cid, IfName: "eth0"}, PodInfo{Namespace: "ns", Name: cid})
	if err != nil {
		t.Fatalf("Assign %s: %v", cid, err)
	}
	return a.IP
}

func (p *testPool) assignErr(cid string) error {
	_, _, err := p.Assign(Key{ContainerID: cid, IfName: "eth0"}, PodInfo{})
	return err
}

func (p *testPool) mustRelease(t *testing.T, cid string) netip.Addr {
	t.Helper()
	a, found, err := p.Release(Key{ContainerID: cid, IfName: "eth0"})
	if err != nil || !found {
		t.Fatalf("Release %s: found=%v err=%v", cid, found, err)
	}
	return a.IP
}

func wantNoFree(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, ErrNoFreeAddress) {
		t.Fatalf("want ErrNoFreeAddress, got %v", err)
	}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// closePool ends a pool a test or benchmark opened.
func closePool(tb testing.TB, p *Pool) {
	tb.Helper()
	if err := p.Close(); err != nil {
		tb.Errorf("close: %v", err)
	}
}

// mustCompact writes the whole state as the snapshot, removing the journal.
func (p *testPool) mustCompact(t *testing.T) {
	t.Helper()
	p.bg.Wait()
	p.persistMu.Lock()
	defer p.persistMu.Unlock()
	if err := p.compactSyncLocked(); err != nil {
		t.Fatalf("compact: %v", err)
	}
}
