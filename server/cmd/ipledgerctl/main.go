// Command ipledgerctl is the admin CLI of ipledger, a client of ipledger-server's AdminService.
// Wiring only; the commands live in package ctl (see docs/ipledgerctl.md).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ipledger/ipledger/server/ctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := ctl.Main(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
