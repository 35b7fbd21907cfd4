// Command ipledger-bench runs ipledger and a model of today's VPC CNI side by side on simulated
// clusters and reports both (JSON, Markdown, PNG chart). Flags and wiring only; everything else
// is package bench.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ipledger/ipledger/e2e/bench"
	"github.com/ipledger/ipledger/internal/version"
	"github.com/ipledger/ipledger/server/ec2sim"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// withProfile runs a set of traces on the given clock of EC2.
func withProfile(sets []bench.TraceParams, profile string) []bench.TraceParams {
	for i := range sets {
		sets[i].EC2Profile = profile
	}
	return sets
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("ipledger-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		p         bench.TraceParams
		systems   = fs.String("systems", "", "comma-separated systems (default: the trace's); known: ipledger, ipledger-k8s (a real kube-apiserver; needs make tools), vpc-cni-default, vpc-cni-warm-ip, vpc-cni-min5, vpc-cni-prefix, vpc-cni-custom (custom-networking only)")
		format    = fs.String("o", "markdown", "output format: json or markdown")
		chart     = fs.String("chart", "", "write a PNG chart of held vs in use to this file (one trace)")
		standard  = fs.Bool("standard", false, "run the standard set (make bench) and write the report and charts")
		quick     = fs.Bool("quick", false, "run the small set (make bench-quick)")
		outDir    = fs.String("out-dir", "", "with --standard/--quick: directory for report.json, report.md and the charts (default: a new temporary directory)")
		serverBin = fs.String("server-bin", "", "ipledger-server binary (default: $IPLEDGER_BIN_DIR, ./bin, or go build)")
		logDir    = fs.String("log-dir", "", "keep the server's and agents' logs here")
		quiet     = fs.Bool("q", false, "no progress lines on stderr")
	)
	fs.StringVar(&p.Trace, "trace", "", "trace: "+strings.Join(bench.Traces(), ", "))
	fs.IntVar(&p.Nodes, "nodes", 0, "nodes (default: the trace's)")
	fs.IntVar(&p.Pods, "pods", 0, "pods per node (default: the trace's)")
	fs.Float64Var(&p.TimeScale, "time-scale", 0, "time scale F (default: the trace's)")
	fs.Int64Var(&p.Seed, "seed", 1, "seed of the simulator and the workload")
	fs.DurationVar(&p.Duration, "duration", 0, "simulated duration of the measured part (default: the trace's)")
	fs.StringVar(&p.InstanceType, "instance-type", "", "instance type of the nodes (default: the trace's)")
	fs.IntVar(&p.IPLedgerFloor, "ipledger-adaptive-floor", 0, "adaptive floor of ipledger's default policy (0: the built-in 1)")
	fs.DurationVar(&p.EC2Latency, "ec2-latency", 0, "latency added to every simulated EC2 call (simulated time), on top of the profile's")
	fs.DurationVar(&p.KubeletDelay, "kubelet-delay", 0, "simulated time from a pod's binding to its first CNI ADD, for every system (ipledger-k8s supplies for the binding meanwhile)")
	fs.StringVar(&p.EC2Profile, "ec2-profile", ec2sim.ProfileRealistic, "clock of the simulated EC2: realistic (published latencies, attach and detach phases, describe lag) or instant (every call answered at once)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, version.String("ipledger-bench"))
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "ipledger-bench: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *format != "json" && *format != "markdown" {
		fmt.Fprintf(stderr, "ipledger-bench: -o %q: want json or markdown\n", *format)
		return 2
	}
	if _, err := ec2sim.ProfileByName(p.EC2Profile); err != nil {
		fmt.Fprintf(stderr, "ipledger-bench: --ec2-profile: %v\n", err)
		return 2
	}
	var sets []bench.TraceParams
	switch {
	case *standard && *quick:
		fmt.Fprintln(stderr, "ipledger-bench: --standard and --quick exclude each other")
		return 2
	case *standard:
		sets = withProfile(bench.Standard(), p.EC2Profile)
	case *quick:
		sets = withProfile(bench.Quick(), p.EC2Profile)
	case p.Trace == "":
		fmt.Fprintln(stderr, "ipledger-bench: --trace, --standard or --quick is required")
		return 2
	default:
		if *systems != "" {
			list, err := bench.ParseSystems(*systems)
			if err != nil {
				fmt.Fprintf(stderr, "ipledger-bench: --systems: %v\n", err)
				return 2
			}
			p.Systems = list
		}
		if _, err := bench.Defaults(p); err != nil {
			fmt.Fprintf(stderr, "ipledger-bench: %v\n", err)
			return 2
		}
		sets = []bench.TraceParams{p}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	work, err := bench.NewWorkDir()
	if err != nil {
		fmt.Fprintf(stderr, "ipledger-bench: %v\n", err)
		return 1
	}
	defer os.RemoveAll(work)
	env := bench.Env{WorkDir: work, LogDir: *logDir}
	if !*quiet {
		env.Progress = stderr
	}
	if env.ServerBin, err = bench.ResolveServerBin(ctx, *serverBin, work); err != nil {
		fmt.Fprintf(stderr, "ipledger-bench: %v\n", err)
		return 1
	}
	start := time.Now()
	reps, err := bench.RunAll(ctx, sets, env)
	if err != nil {
		fmt.Fprintf(stderr, "ipledger-bench: %v\n", err)
		return 1
	}
	if *standard || *quick {
		dir := *outDir
		if dir == "" {
			if dir, err = os.MkdirTemp("", "ipledger-bench-out-"); err != nil {
				fmt.Fprintf(stderr, "ipledger-bench: %v\n", err)
				return 1
			}
		}
		if err := bench.WriteOutputs(dir, reps); err != nil {
			fmt.Fprintf(stderr, "ipledger-bench: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "ipledger-bench: %d traces in %.0f s; report and charts in %s\n", len(reps), time.Since(start).Seconds(), dir)
	} else if *chart != "" {
		if err := bench.WriteChartFile(*chart, reps[0]); err != nil {
			fmt.Fprintf(stderr, "ipledger-bench: %v\n", err)
			return 1
		}
		fmt.Fprintf(stderr, "ipledger-bench: chart in %s\n", filepath.Clean(*chart))
	}
	if *format == "json" {
		err = bench.WriteJSON(stdout, reps)
	} else {
		err = bench.WriteMarkdown(stdout, reps)
	}
	if err != nil {
		fmt.Fprintf(stderr, "ipledger-bench: %v\n", err)
		return 1
	}
	return 0
}
