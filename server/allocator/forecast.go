package allocator

import (
	"context"
	"time"

	"github.com/ipledger/ipledger/internal/clock"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ledger"
)

// Forecaster samples every subnet's held addresses (held plus pre-warm) and forecasts when the
// subnet's headroom runs out at the recent trend. Every replica runs one over its own ledger, so
// a new leader has the history at once.
type Forecaster struct {
	led    func() *ledger.Ledger
	window time.Duration
	clk    clock.Clock

	mu     mutex
	trends map[string]*policy.Trend
}

// Forecast is one subnet's exhaustion forecast.
type Forecast = policy.Forecast

// NewForecaster samples the ledger led returns (a replica replaces its ledger when it reloads
// from etcd) and keeps window of history (default 1 h) on clk (nil: the real clock).
func NewForecaster(led func() *ledger.Ledger, window time.Duration, clk clock.Clock) *Forecaster {
	if window <= 0 {
		window = time.Hour
	}
	if clk == nil {
		clk = clock.Real()
	}
	return &Forecaster{led: led, window: window, clk: clk, trends: map[string]*policy.Trend{}}
}

// Sample records every subnet's held addresses now.
func (f *Forecaster) Sample() {
	now := f.clk.Now()
	budgets := f.led().Budgets(now)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range budgets {
		t, ok := f.trends[b.SubnetID]
		if !ok {
			t = policy.NewTrend(f.window)
			f.trends[b.SubnetID] = t
		}
		t.Add(now, b.Held+b.PrewarmReserved)
	}
}

// Forecast returns the subnet's trend and, when it grows, the time until headroom is used up.
func (f *Forecaster) Forecast(subnet string, headroom int) Forecast {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.trends[subnet]
	if !ok {
		return Forecast{}
	}
	return t.Forecast(headroom)
}

// Run samples every interval until ctx ends.
func (f *Forecaster) Run(ctx context.Context, every time.Duration) error {
	t := f.clk.NewTicker(every)
	defer t.Stop()
	f.Sample()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.Chan():
			f.Sample()
		}
	}
}
