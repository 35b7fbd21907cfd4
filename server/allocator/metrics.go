package allocator

import (
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the allocator's Prometheus metrics (documented in docs/metrics.md).
type metrics struct {
	connected     prometheus.Gauge
	acks          *prometheus.CounterVec
	registrations prometheus.Counter
	removals      prometheus.Counter
	repairs       *prometheus.CounterVec
	leaseOps      *prometheus.CounterVec
	// usageRefused is by node: only nodes that report other nodes' addresses get a series.
	usageRefused *prometheus.CounterVec
	// stalePods counts pods deleted in Kubernetes whose agents were asked to give their
	// addresses back.
	stalePods prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ipledger_nodes_connected", Help: "Nodes whose agent has a sync stream open to the leader.",
		}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_release_acks_total", Help: "Items agents confirmed or refused in answer to release proposals.",
		}, []string{"result"}),
		registrations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ipledger_node_registrations_total", Help: "Nodes registered.",
		}),
		removals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ipledger_node_removals_total", Help: "Nodes removed because their instance is gone.",
		}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_reconcile_repairs_total", Help: "Differences between etcd and EC2 repaired by reconciliation, by kind.",
		}, []string{"kind"}),
		leaseOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_lease_operations_total", Help: "Lease operations by kind (assign, release, adopt, drop, create-eni, delete-eni, ...) and outcome.",
		}, []string{"op", "outcome"}),
		usageRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_usage_items_refused_total", Help: "Addresses in nodes' usage reports that are other nodes' (left out of the report), by reporting node.",
		}, []string{"node"}),
		stalePods: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ipledger_stale_pods_named_total", Help: "Pods deleted in Kubernetes without their CNI DEL whose agents were asked to give their addresses back.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.acks, m.registrations, m.removals, m.repairs, m.leaseOps, m.usageRefused, m.stalePods)
	}
	return m
}

func (m *metrics) leaseOp(op string, err error) {
	outcome := "ok"
	if err != nil {
		outcome = "error"
	}
	m.leaseOps.WithLabelValues(op, outcome).Inc()
}

func mustAddr(s string) netip.Addr {
	ip, _ := netip.ParseAddr(s)
	return ip
}
