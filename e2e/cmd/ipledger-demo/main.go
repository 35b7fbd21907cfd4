// Command ipledger-demo runs the demo behind `make demo`: a --dev ipledger-server, an agent per
// simulated node and the seed documents' workload; it prints the subnet budgets and where to
// look, and runs until Ctrl-C. Flags and wiring only; the demo lives in package e2e/demo.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ipledger/ipledger/e2e/demo"
	"github.com/ipledger/ipledger/internal/version"
	"github.com/ipledger/ipledger/server/ctl/ctlconfig"
)

func main() {
	fs := flag.NewFlagSet("ipledger-demo", flag.ContinueOnError)
	binDir := fs.String("bin-dir", "bin", "directory with the built binaries (ipledgerctl is used to print the subnet table)")
	dataDir := fs.String("data-dir", "", "keep etcd data, sockets and checkpoints here (default: a temporary directory, removed at exit)")
	grpcListen := fs.String("grpc-listen", "127.0.0.1:7400", "server gRPC address (an ephemeral port when taken)")
	httpListen := fs.String("http-listen", "127.0.0.1:7401", "server HTTP address: dashboard, metrics (an ephemeral port when taken)")
	logLevel := fs.String("log-level", "warn", "log level of the components (logs go to stderr)")
	contextFile := fs.String("context-file", ctlconfig.Path(os.Getenv), "ipledgerctl's configuration file: the demo's context "+demo.ContextName+
		" is added there and made current while it runs, then removed (\"\": leave it alone)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(version.String("ipledger-demo"))
		return
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "ipledger-demo: --log-level: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := demo.Run(ctx, demo.Config{
		DataDir: *dataDir, GRPCListen: *grpcListen, HTTPListen: *httpListen, BinDir: *binDir, ContextFile: *contextFile,
		Out:    os.Stdout,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ipledger-demo: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("ipledger demo: stopped cleanly")
}
