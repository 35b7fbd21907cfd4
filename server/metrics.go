package server

import (
	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector exposes the replica's view of the ledger at scrape time: per-subnet budgets
// and forecasts, how nodes' pools are distributed (histograms over the nodes: the series do not
// grow with the cluster; one node's pool is read on demand with AdminService.GetNode, ipledgerctl
// or the dashboard), nodes in deficit, and whether this replica leads. Every replica exports the
// subnet and node series from its own copy; deficits are known only to the leader.
type stateCollector struct {
	s *Server

	subnet     *prometheus.Desc
	prefixes   *prometheus.Desc
	headroom   *prometheus.Desc
	exhaustion *prometheus.Desc
	trend      *prometheus.Desc
	pool       *prometheus.Desc
	deficit    *prometheus.Desc
	nodes      *prometheus.Desc
	leader     *prometheus.Desc
	prewarm    *prometheus.Desc
}

func newStateCollector(s *Server) *stateCollector {
	return &stateCollector{
		s: s,
		subnet: prometheus.NewDesc("ipledger_subnet_addresses", "Addresses of a subnet by kind: size, reserved (AWS), foreign, held (by nodes), eni_primary, in_use (by pods), idle (free on nodes), prewarm, free. size = reserved + foreign + held + prewarm + free; held = eni_primary + in_use + idle.",
			[]string{"subnet", "az", "kind"}, nil),
		prefixes:   prometheus.NewDesc("ipledger_subnet_free_prefixes", "Aligned /28 blocks of the subnet with every address free.", []string{"subnet", "az"}, nil),
		headroom:   prometheus.NewDesc("ipledger_subnet_headroom", "Addresses the cluster may still take in the subnet under its budget.", []string{"subnet", "az"}, nil),
		exhaustion: prometheus.NewDesc("ipledger_subnet_exhaustion_seconds", "Forecast time until the subnet's headroom is used up at the recent trend (absent when it does not run out).", []string{"subnet", "az"}, nil),
		trend:      prometheus.NewDesc("ipledger_subnet_held_per_hour", "Trend of held addresses per hour over the forecast window.", []string{"subnet", "az"}, nil),
		pool:       prometheus.NewDesc("ipledger_node_pool_addresses", "Distribution over the nodes of the pod addresses a node leases, by state: held, in_use, idle.", []string{"state"}, nil),
		deficit:    prometheus.NewDesc("ipledger_nodes_in_deficit", "Nodes holding fewer addresses than their target (leader only).", nil, nil),
		nodes:      prometheus.NewDesc("ipledger_nodes_registered", "Registered nodes.", nil, nil),
		leader:     prometheus.NewDesc("ipledger_leader", "1 when this replica leads.", nil, nil),
		prewarm:    prometheus.NewDesc("ipledger_prewarm_reservations", "Pre-warm reservations by state.", []string{"state"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.subnet, c.prefixes, c.headroom, c.exhaustion, c.trend, c.pool, c.deficit, c.nodes, c.leader, c.prewarm} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	led := c.s.Ledger()
	if led == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, b := range led.Budgets(c.s.clk.Now()) {
		for kind, v := range map[string]int{
			"size": b.Size, "reserved": b.Reserved, "foreign": b.Foreign, "held": b.Held, "eni_primary": b.ENIPrimary,
			"in_use": b.InUse, "idle": b.Idle, "prewarm": b.PrewarmReserved, "free": b.Free,
		} {
			gauge(c.subnet, float64(v), b.SubnetID, b.AvailabilityZone, kind)
		}
		gauge(c.prefixes, float64(b.FreePrefixes), b.SubnetID, b.AvailabilityZone)
		gauge(c.headroom, float64(b.Headroom), b.SubnetID, b.AvailabilityZone)
		fc := c.s.forecast.Forecast(b.SubnetID, b.Headroom)
		gauge(c.trend, fc.HeldPerHour, b.SubnetID, b.AvailabilityZone)
		if fc.OK {
			gauge(c.exhaustion, fc.TimeToExhaustion.Seconds(), b.SubnetID, b.AvailabilityZone)
		}
	}
	nodes := led.Nodes()
	gauge(c.nodes, float64(len(nodes)))
	alloc := c.s.Allocator()
	deficit := 0
	held, inUse, idle := newPoolHistogram(), newPoolHistogram(), newPoolHistogram()
	for _, n := range nodes {
		counts, ok := led.NodeCounts(n.Name)
		if !ok {
			continue
		}
		held.observe(counts.Leased)
		inUse.observe(counts.InUse)
		idle.observe(counts.Idle)
		if alloc != nil {
			if rt, ok := alloc.Runtime(n.Name); ok && counts.Leased-counts.Releasing < rt.Targets.WantAddresses {
				deficit++
			}
		}
	}
	for state, h := range map[string]*poolHistogram{"held": held, "in_use": inUse, "idle": idle} {
		ch <- prometheus.MustNewConstHistogram(c.pool, h.count, h.sum, h.buckets(), state)
	}
	if alloc != nil {
		gauge(c.deficit, float64(deficit))
		gauge(c.leader, 1)
	} else {
		gauge(c.leader, 0)
	}
	states := map[string]int{}
	for _, p := range led.Prewarms() {
		states[p.State]++
	}
	for st, n := range states {
		gauge(c.prewarm, float64(n), st)
	}
}

// poolBounds are the upper bounds of the pool histograms' buckets (addresses per node).
var poolBounds = []float64{0, 1, 2, 4, 8, 16, 32, 64, 128, 256}

// poolHistogram counts nodes by a number of addresses.
type poolHistogram struct {
	count uint64
	sum   float64
	le    []uint64 // nodes with at most poolBounds[i] addresses
}

func newPoolHistogram() *poolHistogram { return &poolHistogram{le: make([]uint64, len(poolBounds))} }

func (h *poolHistogram) observe(n int) {
	h.count++
	h.sum += float64(n)
	for i, b := range poolBounds {
		if float64(n) <= b {
			h.le[i]++
		}
	}
}

func (h *poolHistogram) buckets() map[float64]uint64 {
	out := make(map[float64]uint64, len(poolBounds))
	for i, b := range poolBounds {
		out[b] = h.le[i]
	}
	return out
}
