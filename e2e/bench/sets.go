package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ipledger/ipledger/e2e/vpccni"
)

// Standard is the set `make bench` runs (under 10 minutes on 2 cores): every trace at the
// trace's defaults (steady: 100 nodes x 12 pods, 1,080 pods; burst: 1,000 nodes).
func Standard() []TraceParams {
	return []TraceParams{
		{Trace: TraceSeed},
		{Trace: TraceSteady},
		{Trace: TraceBurst},
		{Trace: TraceBurstLaunch},
		{Trace: TraceBatch},
		{Trace: TracePrefix},
		{Trace: TraceGatewayBurst},
		{Trace: TraceCustom},
	}
}

// Quick is the small set `make bench-quick` runs (under 2 minutes).
func Quick() []TraceParams {
	two := []string{SystemIPLedger, vpccni.NameDefault}
	return []TraceParams{
		{Trace: TraceSeed, Systems: []string{SystemIPLedger, vpccni.NameDefault, vpccni.NameMin5}, Duration: 120 * time.Second, TimeScale: 30},
		{Trace: TraceSteady, Nodes: 20, Duration: 180 * time.Second, Systems: two},
		{Trace: TraceBurst, Nodes: 100, Systems: two, TimeScale: 20, Duration: 600 * time.Second},
		{Trace: TraceBurstLaunch, Nodes: 100, Systems: two, TimeScale: 20, Duration: 600 * time.Second},
		{Trace: TraceGatewayBurst, GatewayPerAction: 120},
	}
}

// RunAll runs the traces one after another.
func RunAll(ctx context.Context, sets []TraceParams, env Env) ([]Report, error) {
	var out []Report
	for _, p := range sets {
		rep, err := Run(ctx, p, env)
		if err != nil {
			return out, err
		}
		out = append(out, rep)
	}
	return out, nil
}

// WriteOutputs writes report.json, report.md and one chart per trace with systems into dir.
func WriteOutputs(dir string, reps []Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	write := func(name string, fn func(f *os.File) error) error {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			f.Close()
			return fmt.Errorf("bench: %s: %w", name, err)
		}
		return f.Close()
	}
	if err := write("report.json", func(f *os.File) error { return WriteJSON(f, reps) }); err != nil {
		return err
	}
	if err := write("report.md", func(f *os.File) error { return WriteMarkdown(f, reps) }); err != nil {
		return err
	}
	for _, rep := range reps {
		if len(rep.Systems) == 0 {
			continue
		}
		if err := WriteChartFile(filepath.Join(dir, rep.Trace+".png"), rep); err != nil {
			return err
		}
	}
	return nil
}
