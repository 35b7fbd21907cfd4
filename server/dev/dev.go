// Package dev composes an ipledger-server replica with the backends a development setup lacks:
// the in-process EC2 simulator (--dev without --ec2-endpoint) and embedded etcd in the data
// directory (no --etcd-endpoints). It starts them before the replica and hands them to it, which
// closes them after its own resources. ipledger-server, the tests, the demo and the benchmark
// start replicas through it; with external etcd and real EC2 it starts nothing and is
// server.Start.
//
// It owns no logic of the replica and must never point a replica at real AWS: the simulator's
// endpoint is always explicit.
package dev

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/store"
)

// Start starts what cfg needs beyond the production path (the simulator, embedded etcd), then
// the replica (server.Start) on them.
func Start(ctx context.Context, cfg config.Config, opts server.Options) (_ *server.Server, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	b := &backends{}
	defer func() {
		if err != nil {
			_ = b.Close()
		}
	}()
	log := opts.Logger
	if cfg.Dev && cfg.EC2Endpoint == "" {
		scen := ec2sim.DefaultScenario()
		if cfg.SimScenario != "" {
			if scen, err = ec2sim.LoadScenario(cfg.SimScenario); err != nil {
				return nil, fmt.Errorf("sim-scenario: %w", err)
			}
		}
		simCfg := ec2sim.Config{Scenario: scen, Seed: cfg.SimSeed, Throttle: cfg.SimThrottle, TimeScale: cfg.TimeScale,
			InstanceTags: server.SimInstanceTags(cfg)}
		if log != nil {
			simCfg.Logger = log.With("component", "ec2sim")
		}
		if b.sim, err = ec2sim.Start(simCfg, "127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("start EC2 simulator: %w", err)
		}
		cfg.EC2Endpoint = b.sim.Endpoint()
		if len(cfg.Subnets) == 0 {
			for _, sn := range b.sim.Sim().Snapshot().Subnets {
				cfg.Subnets = append(cfg.Subnets, sn.ID)
			}
		}
		if log != nil {
			log.Info("EC2 simulator started", "endpoint", b.sim.Endpoint())
		}
	}
	if len(cfg.EtcdEndpoints) == 0 {
		ecfg := store.EmbeddedConfig{Dir: filepath.Join(cfg.DataDir, "etcd")}
		if log != nil {
			ecfg.Logger = log.With("component", "etcd")
		}
		if b.etcd, err = store.StartEmbedded(ctx, ecfg); err != nil {
			return nil, fmt.Errorf("start embedded etcd in %s: %w", cfg.DataDir, err)
		}
		cfg.EtcdEndpoints = b.etcd.Endpoints()
		if log != nil {
			log.Info("embedded etcd started", "dir", ecfg.Dir, "endpoints", cfg.EtcdEndpoints)
		}
	}
	if b.sim != nil || b.etcd != nil {
		opts.Backends = b
	}
	return server.Start(ctx, cfg, opts)
}

// backends are the simulator and embedded etcd started for one replica.
type backends struct {
	sim  *ec2sim.Server
	etcd *store.Embedded
}

var _ server.Backends = (*backends)(nil)

func (b *backends) Sim() *ec2sim.Server { return b.sim }

// Instances are the simulated instances' node names (private DNS names).
func (b *backends) Instances() []string {
	if b.sim == nil {
		return nil
	}
	var out []string
	for _, in := range b.sim.Sim().Snapshot().Instances {
		if in.PrivateDNSName != "" {
			out = append(out, in.PrivateDNSName)
		}
	}
	return out
}

// Close stops embedded etcd, then the simulator.
func (b *backends) Close() error {
	var errs []error
	if b.etcd != nil {
		errs = append(errs, b.etcd.Close())
	}
	if b.sim != nil {
		errs = append(errs, b.sim.Close())
	}
	return errors.Join(errs...)
}
