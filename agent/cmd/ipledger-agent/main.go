// Command ipledger-agent is the ipledger node agent. It only parses the configuration and runs
// package agent until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/internal/conf"
	"github.com/ipledger/ipledger/internal/version"
)

func main() {
	cfg, err := agent.LoadConfig(os.Args[1:], os.LookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if errors.Is(err, conf.ErrVersion) {
		fmt.Println(version.String("ipledger-agent"))
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipledger-agent:", err)
		os.Exit(2)
	}
	cfg.Logger = cfg.NewLogger(os.Stderr)
	a, err := agent.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipledger-agent:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := a.Run(ctx); err != nil {
		cfg.Logger.Error("agent failed", "err", err)
		os.Exit(1)
	}
}
