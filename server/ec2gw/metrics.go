package ec2gw

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus metrics. Counters and histograms are updated as calls
// happen; the limiter's gauges are read at scrape time.
type metrics struct {
	reg        prometheus.Registerer
	calls      *prometheus.CounterVec
	throttled  *prometheus.CounterVec
	wait       *prometheus.HistogramVec
	duration   *prometheus.HistogramVec
	collectors []prometheus.Collector
}

func newMetrics(reg prometheus.Registerer, g *Gateway) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		reg: reg,
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_ec2_calls_total",
			Help: "EC2 calls by action and outcome (ok, throttled, the EC2 error code, transport, canceled).",
		}, []string{"action", "outcome"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ipledger_ec2_throttled_total",
			Help: "EC2 calls answered with RequestLimitExceeded, by action.",
		}, []string{"action"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ipledger_ec2_limiter_wait_seconds",
			Help:    "Time a call waited for a token of its bucket, by bucket and priority.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}, []string{"bucket", "priority"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ipledger_ec2_call_duration_seconds",
			Help:    "Duration of EC2 calls (one attempt, without the limiter wait), by action.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 14),
		}, []string{"action"}),
	}
	m.collectors = []prometheus.Collector{m.calls, m.throttled, m.wait, m.duration, &limiterCollector{g: g}}
	for i, c := range m.collectors {
		if err := reg.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				reg.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("ec2gw: register metrics: already registered (one gateway per registry): %w", err)
			}
			return nil, fmt.Errorf("ec2gw: register metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) unregister() {
	if m == nil {
		return
	}
	for _, c := range m.collectors {
		m.reg.Unregister(c)
	}
}

func (m *metrics) observeCall(action, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.calls.WithLabelValues(action, outcome).Inc()
	m.duration.WithLabelValues(action).Observe(d.Seconds())
	if outcome == outcomeThrottled {
		m.throttled.WithLabelValues(action).Inc()
	}
}

func (m *metrics) observeWait(bucket string, p Priority, d time.Duration) {
	if m == nil || bucket == "" {
		return
	}
	m.wait.WithLabelValues(bucket, p.String()).Observe(d.Seconds())
}

// limiterCollector reports the limiter's queue lengths, tokens and refill rates at scrape time.
type limiterCollector struct{ g *Gateway }

var (
	descQueue = prometheus.NewDesc("ipledger_ec2_queue_length",
		"Calls waiting for a token, by priority.", []string{"priority"}, nil)
	descTokens = prometheus.NewDesc("ipledger_ec2_bucket_tokens",
		"Tokens in the limiter's bucket.", []string{"bucket"}, nil)
	descRate = prometheus.NewDesc("ipledger_ec2_bucket_refill_rate",
		"The bucket's effective refill rate in tokens per second (after backoff).", []string{"bucket"}, nil)
)

func (c *limiterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descQueue
	ch <- descTokens
	ch <- descRate
}

func (c *limiterCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.g.lim.state()
	for _, p := range priorities {
		ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(st.Queue[p]), p.String())
	}
	for _, b := range st.Buckets {
		ch <- prometheus.MustNewConstMetric(descTokens, prometheus.GaugeValue, b.Tokens, b.Name)
		ch <- prometheus.MustNewConstMetric(descRate, prometheus.GaugeValue, b.EffectiveRefillPerSecond, b.Name)
	}
}
