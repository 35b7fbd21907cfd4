// Command ipledger-server is the ipledger allocator: one replica of the etcd-backed service that
// owns every subnet's address budget and makes every EC2 call. Flags and wiring only; the logic
// lives in package server and its subpackages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ipledger/ipledger/internal/conf"
	"github.com/ipledger/ipledger/internal/version"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/dev"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg, err := config.Load("ipledger-server", args, os.Getenv)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, conf.ErrVersion) {
		fmt.Println(version.String("ipledger-server"))
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "ipledger-server: %v\n", err)
		return 2
	}
	log := conf.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv, err := dev.Start(ctx, cfg, server.Options{Logger: log})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ipledger-server: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "ipledger-server: gRPC on %s (%s), HTTP on %s (metrics, healthz, readyz, dashboard)\n", srv.GRPCAddr(), cfg.Transport(), srv.HTTPAddr())
	if d := srv.DevCerts(); d != nil {
		fmt.Fprintf(os.Stderr, "ipledger-server: --dev: CA and certificates in %s (ipledgerctl --dev-certs %s; agents: nodes/<node-name>.crt)\n", d.Dir, d.Dir)
	}
	if sim := srv.Sim(); sim != nil {
		fmt.Fprintf(os.Stderr, "ipledger-server: --dev: EC2 simulator on %s, etcd in %s\n", sim.Endpoint(), cfg.DataDir)
	}
	select {
	case <-ctx.Done():
		log.Info("signal received; stopping")
		srv.Close()
		return 0
	case <-srv.Done():
		if err := srv.Wait(); err != nil {
			fmt.Fprintf(os.Stderr, "ipledger-server: %v\n", err)
			return 1
		}
		return 0
	}
}
