package server

import (
	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector exposes the replica's view of the ledger at scrape time: per-subnet budgets
// and forecasts, per-node pools, nodes in deficit, and whether this replica leads. Every replica
// exports the subnet and node gauges from its own copy; deficits are known only to the leader.
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
		pool:       prometheus.NewDesc("ipledger_node_pool_addresses", "Pod addresses a node leases by state: held, in_use, idle.", []string{"node", "state"}, nil),
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
	for _, n := range nodes {
		counts, ok := led.NodeCounts(n.Name)
		if !ok {
			continue
		}
		gauge(c.pool, float64(counts.Leased), n.Name, "held")
		gauge(c.pool, float64(counts.InUse), n.Name, "in_use")
		gauge(c.pool, float64(counts.Idle), n.Name, "idle")
		if alloc != nil {
			if rt, ok := alloc.Runtime(n.Name); ok && counts.Leased-counts.Releasing < rt.Targets.WantAddresses {
				deficit++
			}
		}
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
