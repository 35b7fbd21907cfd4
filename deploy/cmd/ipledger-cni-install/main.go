// Command ipledger-cni-install installs the ipledger CNI plugin and its network config list on
// the node; the agent DaemonSet runs it as an init container. Flags and wiring only; the logic
// is package cniinstall.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/ipledger/ipledger/deploy/cniinstall"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	cfg := cniinstall.DefaultConfig()
	fs := flag.NewFlagSet("ipledger-cni-install", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "ipledger-cni-install: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "ipledger-cni-install: %v\n", err)
		return 2
	}
	cfg.Logger = cfg.NewLogger(os.Stderr)
	if _, err := cniinstall.Install(cfg); err != nil {
		fmt.Fprintf(os.Stderr, "ipledger-cni-install: %v\n", err)
		return 1
	}
	return 0
}
