package ec2gw

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ipledger/ipledger/internal/clock"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// startSim starts the EC2 simulator on loopback with the default scenario, throttling on.
func startSim(t *testing.T, timeScale float64, mutate func(*ec2sim.Config)) *ec2sim.Server {
	t.Helper()
	cfg := ec2sim.DefaultConfig()
	cfg.TimeScale = timeScale
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := ec2sim.Start(cfg, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start simulator: %v", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

// newSimGateway builds a gateway against srv (static credentials: nothing reaches AWS) with its
// own metrics registry.
func newSimGateway(t *testing.T, srv *ec2sim.Server, timeScale float64, mutate func(*Config)) (*Gateway, *prometheus.Registry) {
	t.Helper()
	if !strings.HasPrefix(srv.Endpoint(), "http://127.0.0.1:") {
		t.Fatalf("simulator endpoint %q is not loopback", srv.Endpoint())
	}
	reg := prometheus.NewRegistry()
	cfg := Config{
		Region:      "eu-west-1",
		Endpoint:    srv.Endpoint(),
		Credentials: credentials.NewStaticCredentialsProvider("AKIDEC2GWTEST", "not-a-secret", ""),
		Clock:       clock.Scaled(clock.Real(), timeScale),
		Registerer:  reg,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	g, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(g.Close)
	return g, reg
}

// addrPicker hands out addresses that are free in the simulator's snapshot, never the same twice.
type addrPicker struct {
	t     *testing.T
	st    ec2sim.State
	owned map[string]bool
	next  map[string]netip.Addr // subnet id -> next candidate
}

func newAddrPicker(t *testing.T, st ec2sim.State) *addrPicker {
	owned := map[string]bool{}
	for a := range st.AddressOwners() {
		owned[a] = true
	}
	return &addrPicker{t: t, st: st, owned: owned, next: map[string]netip.Addr{}}
}

func (p *addrPicker) subnetPrefix(subnetID string) netip.Prefix {
	p.t.Helper()
	sn, ok := p.st.Subnet(subnetID)
	if !ok {
		p.t.Fatalf("subnet %s not in snapshot", subnetID)
	}
	pfx, err := netip.ParsePrefix(sn.CIDR)
	if err != nil {
		p.t.Fatalf("subnet %s cidr %q: %v", subnetID, sn.CIDR, err)
	}
	return pfx
}

// addrs returns n free addresses of the subnet (skipping its first /28, whose first four AWS keeps).
func (p *addrPicker) addrs(subnetID string, n int) []netip.Addr {
	p.t.Helper()
	pfx := p.subnetPrefix(subnetID)
	a, ok := p.next[subnetID]
	if !ok {
		a = pfx.Addr()
		for range 16 {
			a = a.Next()
		}
	}
	var out []netip.Addr
	for len(out) < n {
		if !pfx.Contains(a) {
			p.t.Fatalf("subnet %s: out of free addresses", subnetID)
		}
		if !p.owned[a.String()] {
			p.owned[a.String()] = true
			out = append(out, a)
		}
		a = a.Next()
	}
	p.next[subnetID] = a
	return out
}

// block returns a free aligned /28 of the subnet, taken from its upper half.
func (p *addrPicker) block(subnetID string) netip.Prefix {
	p.t.Helper()
	pfx := p.subnetPrefix(subnetID)
	size := 1 << (32 - pfx.Bits())
	base := pfx.Addr().As4()
	u := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	for off := size / 2; off+16 < size; off += 16 {
		free := true
		for i := range 16 {
			if p.owned[u32addr(u+uint32(off+i)).String()] {
				free = false
				break
			}
		}
		if free {
			for i := range 16 {
				p.owned[u32addr(u+uint32(off+i)).String()] = true
			}
			return netip.PrefixFrom(u32addr(u+uint32(off)), 28)
		}
	}
	p.t.Fatalf("subnet %s: no free /28", subnetID)
	return netip.Prefix{}
}

func u32addr(u uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(u >> 24), byte(u >> 16), byte(u >> 8), byte(u)})
}

// simCalls is the simulator's count of calls of one action (throttled ones included).
func simCalls(srv *ec2sim.Server, action string) int {
	return srv.Sim().Stats().Calls[action].Calls
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// metricFamily gathers reg and returns the named family (nil if absent).
func metricFamily(t *testing.T, reg *prometheus.Registry, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

// labelsMatch reports whether m carries every label in want.
func labelsMatch(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// counterValue is the value of the counter with the labels (0 if absent).
func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mf := metricFamily(t, reg, name)
	if mf == nil {
		return 0
	}
	for _, m := range mf.GetMetric() {
		if labelsMatch(m, labels) {
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// histogramCount is the sample count of the histogram with the labels (0 if absent).
func histogramCount(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) uint64 {
	t.Helper()
	mf := metricFamily(t, reg, name)
	if mf == nil {
		return 0
	}
	var n uint64
	for _, m := range mf.GetMetric() {
		if labelsMatch(m, labels) {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}
