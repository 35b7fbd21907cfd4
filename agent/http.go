package agent

import (
	"encoding/json"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ipledger/ipledger/agent/pool"
	"github.com/ipledger/ipledger/agent/serverconn"
)

// PoolView is what /v1/pool returns: the pool, who waits, and the allocator connection.
type PoolView struct {
	pool.Snapshot
	Waiting  int              `json:"waiting"`
	Server   serverconn.State `json:"server"`
	Instance Instance         `json:"instance_info"`
	Identity IdentityView     `json:"identity"`
	// Conflist says whether the agent installed the CNI network config (--cni-conf-dir).
	Conflist bool `json:"conflist_installed"`
}

// View returns the agent's pool view (false before the agent has started its pool).
func (a *Agent) View() (PoolView, bool) {
	a.mu.Lock()
	p, cni, conn, inst := a.pool, a.cni, a.conn, a.inst
	a.mu.Unlock()
	if p == nil {
		return PoolView{}, false
	}
	return PoolView{Snapshot: p.Snapshot(), Waiting: cni.Waiting(), Server: conn.State(), Instance: inst,
		Identity: a.identityView(), Conflist: a.cniDone.Load()}, true
}

func (a *Agent) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{Registry: a.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		select {
		case <-a.ready:
			_, _ = w.Write([]byte("ok\n"))
		default:
			http.Error(w, "starting: the CNI socket is not served yet", http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("GET /v1/pool", func(w http.ResponseWriter, _ *http.Request) {
		v, ok := a.View()
		if !ok {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	})
	return mux
}

// registerMetrics adds the pool, waiting, connection and ack metrics to the agent's registry
// (the CNI service registers its own).
func (a *Agent) registerMetrics() error {
	a.acks.WithLabelValues("confirmed")
	a.acks.WithLabelValues("refused")
	collectors := []prometheus.Collector{
		a.acks,
		poolCollector{a},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ipledger_agent_pods_waiting",
			Help: "CNI Adds waiting for an address.",
		}, func() float64 { return float64(a.cni.Waiting()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ipledger_agent_server_connected",
			Help: "1 while the sync stream to the allocator's leader is up.",
		}, func() float64 {
			if a.conn.State().Connected {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "ipledger_agent_pool_generation",
			Help: "Generation of the applied pool.",
		}, func() float64 { return float64(a.pool.Generation()) }),
	}
	for _, c := range collectors {
		if err := a.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

var (
	poolAddressesDesc = prometheus.NewDesc("ipledger_agent_pool_addresses",
		"Addresses of the node's pool by state (each counted once: in_use, else locked, else cooling, else free).",
		[]string{"state"}, nil)
	unleasedDesc = prometheus.NewDesc("ipledger_agent_unleased_in_use",
		"Addresses pods hold that the allocator no longer leases to the node (kept until the pod goes).", nil, nil)
)

// poolCollector reads the pool's counts at scrape time.
type poolCollector struct{ a *Agent }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- poolAddressesDesc
	ch <- unleasedDesc
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.a.pool.Counts()
	for state, v := range map[string]int{
		pool.StateFree: n.Free, pool.StateInUse: n.InUse, pool.StateCooling: n.Cooling, pool.StateLocked: n.Locked,
	} {
		ch <- prometheus.MustNewConstMetric(poolAddressesDesc, prometheus.GaugeValue, float64(v), state)
	}
	ch <- prometheus.MustNewConstMetric(unleasedDesc, prometheus.GaugeValue, float64(n.Unleased))
}
