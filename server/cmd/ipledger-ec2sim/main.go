// Command ipledger-ec2sim runs the EC2 simulator (package ec2sim) standalone: the EC2 Query API
// and control API on --listen, and one IMDS listener per simulated instance on 127.0.0.1. It
// prints the EC2 endpoint and every instance's IMDS endpoint, and stops on SIGINT or SIGTERM.
// For development, tests, the demo and the benchmark only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"syscall"

	"github.com/ipledger/ipledger/internal/version"
	"github.com/ipledger/ipledger/server/ec2sim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "ipledger-ec2sim:", err)
		os.Exit(1)
	}
}

// onOff is a flag that takes on or off.
type onOff bool

func (o *onOff) String() string {
	if *o {
		return "on"
	}
	return "off"
}

func (o *onOff) Set(s string) error {
	switch s {
	case "on", "true":
		*o = true
	case "off", "false":
		*o = false
	default:
		return fmt.Errorf("want on or off, got %q", s)
	}
	return nil
}

func (o *onOff) IsBoolFlag() bool { return true }

// run parses the flags, starts the simulator, prints its endpoints to stdout and serves until
// ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := ec2sim.DefaultConfig()
	fs := flag.NewFlagSet("ipledger-ec2sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:4566", "address of the EC2 endpoint (host:port; loopback unless --allow-non-loopback)")
	scenario := fs.String("scenario", "", "scenario file (YAML or JSON); default: the built-in seed cluster")
	fs.Int64Var(&cfg.Seed, "seed", cfg.Seed, "seed of ids, MACs, addresses and fault decisions")
	throttle := onOff(cfg.Throttle)
	fs.Var(&throttle, "throttle", "EC2's token buckets: on or off")
	fs.Float64Var(&cfg.TimeScale, "time-scale", cfg.TimeScale, "speed-up (>= 1) of bucket refills, latencies, the consistency delay and the describe lag")
	profile := fs.String("ec2-profile", "", "clock of EC2: instant (answers at once) or realistic (EC2's published latencies and describe lag); default: the scenario's, else instant")
	lagShare := fs.Float64("describe-lag-share", 0, "share (0..1) of ENI mutations Describe lags behind (default: the profile's; realistic 0.1)")
	lagMean := fs.Duration("describe-lag-mean", 0, "mean of the exponential describe lag (default: the profile's; realistic 1s)")
	lagCap := fs.Duration("describe-lag-cap", 0, "cap of the describe lag (default: the profile's; realistic 60s)")
	allowNonLoopback := fs.Bool("allow-non-loopback", false, "allow a --listen address other machines can reach")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showVersion {
		_, err := fmt.Fprintln(stdout, version.String("ipledger-ec2sim"))
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg.Throttle = bool(throttle)
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if !*allowNonLoopback {
		if err := ec2sim.CheckLoopback(*listen); err != nil {
			return fmt.Errorf("%w (pass --allow-non-loopback to serve it anyway)", err)
		}
	}
	if *scenario != "" {
		sc, err := ec2sim.LoadScenario(*scenario)
		if err != nil {
			return err
		}
		cfg.Scenario = sc
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["ec2-profile"] || set["describe-lag-share"] || set["describe-lag-mean"] || set["describe-lag-cap"] {
		name := *profile
		if !set["ec2-profile"] && cfg.Scenario != nil {
			name = cfg.Scenario.Profile
		}
		p, err := ec2sim.ProfileByName(name)
		if err != nil {
			return fmt.Errorf("--ec2-profile: %w", err)
		}
		if set["describe-lag-share"] {
			p.DescribeLag.Share = *lagShare
		}
		if set["describe-lag-mean"] {
			p.DescribeLag.Mean = *lagMean
		}
		if set["describe-lag-cap"] {
			p.DescribeLag.Cap = *lagCap
		}
		if p.DescribeLag.Share > 0 && p.DescribeLag.Mean == 0 {
			p.DescribeLag.Mean = ec2sim.RealisticProfile().DescribeLag.Mean
		}
		cfg.Profile = &p
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	srv, err := ec2sim.Start(cfg, *listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "ec2 %s\n", srv.Endpoint())
	eps := srv.IMDSEndpoints()
	ids := make([]string, 0, len(eps))
	for id := range eps {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		fmt.Fprintf(stdout, "imds %s %s\n", id, eps[id])
	}
	<-ctx.Done()
	return srv.Close()
}
