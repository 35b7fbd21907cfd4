// Command ipledger-cni-install installs the ipledger CNI plugin and its network config list on
// the node; the agent DaemonSet runs it as an init container. Flags and wiring only; the logic
// is package cniinstall.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/ipledger/ipledger/deploy/cniinstall"
	"github.com/ipledger/ipledger/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout))
}

func run(args []string, stdout io.Writer) int {
	cfg := cniinstall.DefaultConfig()
	fs := flag.NewFlagSet("ipledger-cni-install", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, version.String("ipledger-cni-install"))
		return 0
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
