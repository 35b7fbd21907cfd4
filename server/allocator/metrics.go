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
	launchAdopted *prometheus.CounterVec
	removals      prometheus.Counter
	repairs       *prometheus.CounterVec
	leaseOps      *prometheus.CounterVec
	spillovers    *prometheus.CounterVec
	// reclaimsLimited counts reclaim requests of waiting nodes skipped because their subnet
	// was reclaimed less than a tick ago.
	reclaimsLimited prometheus.Counter
	// usageRefused is by node: only nodes that report other nodes' addresses get a series.
	usageRefused *prometheus.CounterVec
	// stalePods counts pods deleted in Kubernetes whose agents were asked to give their
	// addresses back.
	stalePods prometheus.Counter
	// preregistered counts nodes registered before their agents, by what announced them.
	preregistered *prometheus.CounterVec
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
		launchAdopted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_launch_adopted_total", Help: "Addresses and prefixes new nodes arrived with (EC2 put them there at launch), adopted at registration, by kind.",
		}, []string{"kind"}),
		removals: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ipledger_node_removals_total", Help: "Nodes removed because their instance is gone.",
		}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_reconcile_repairs_total", Help: "Differences between etcd and EC2 repaired by reconciliation, by kind.",
		}, []string{"kind"}),
		leaseOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_lease_operations_total", Help: "Lease operations by kind (assign, release, adopt, drop, create-eni, delete-eni, ...) and outcome.",
		}, []string{"op", "outcome"}),
		spillovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_pod_subnet_spillovers_total",
			Help: "New ENIs placed in another pod subnet because the preferred one had no room or EC2 said it was full, by policy and subnets.",
		}, []string{"policy", "from", "to"}),
		reclaimsLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ipledger_reclaims_limited_total", Help: "Reclaims of a dry subnet asked for by waiting nodes and skipped: the subnet was reclaimed less than a tick ago.",
		}),
		usageRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_usage_items_refused_total", Help: "Addresses in nodes' usage reports that are other nodes' (left out of the report), by reporting node.",
		}, []string{"node"}),
		stalePods: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ipledger_stale_pods_named_total", Help: "Pods deleted in Kubernetes without their CNI DEL whose agents were asked to give their addresses back.",
		}),
		preregistered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_nodes_preregistered_total",
			Help: "Nodes registered before their agents, by source: kubernetes (a NodeClaim or a Node) or ec2-pending (a pending instance with the cluster tag).",
		}, []string{"source"}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.acks, m.registrations, m.launchAdopted, m.removals, m.repairs, m.leaseOps, m.reclaimsLimited, m.usageRefused, m.spillovers, m.stalePods, m.preregistered)
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
