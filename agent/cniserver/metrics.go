package cniserver

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the CNI service's Prometheus metrics (prefix ipledger_agent_).
type Metrics struct {
	addDuration *prometheus.HistogramVec
	adds        prometheus.Counter
	addFailures *prometheus.CounterVec
	dels        prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg (one registry per agent).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		addDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "ipledger_agent_add_duration_seconds",
			Help: "Time CNI Add took to return an address, by whether it had to wait for the allocator.",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
				0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"waited"}),
		adds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ipledger_agent_adds_total",
			Help: "CNI Adds that returned an address (repeated Adds of an attachment included).",
		}),
		addFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_agent_add_failures_total",
			Help: "CNI Adds that failed, by ErrorInfo reason (INTERNAL and CANCELLED for failures without one).",
		}, []string{"reason"}),
		dels: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "ipledger_agent_dels_total",
			Help: "Addresses taken back from attachments by CNI Del or GC.",
		}),
	}
	for _, c := range []prometheus.Collector{m.addDuration, m.adds, m.addFailures, m.dels} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) observeAdd(d time.Duration, waited bool) {
	if m == nil {
		return
	}
	m.addDuration.WithLabelValues(strconv.FormatBool(waited)).Observe(d.Seconds())
	m.adds.Inc()
}

func (m *Metrics) addFailed(reason string) {
	if m == nil {
		return
	}
	m.addFailures.WithLabelValues(reason).Inc()
}

func (m *Metrics) released(n int) {
	if m == nil || n == 0 {
		return
	}
	m.dels.Add(float64(n))
}
