// Command ipledger-cni is the ipledger CNI plugin, installed as "ipledger" in the runtime's CNI
// bin directory. All logic lives in package cni.
package main

import (
	"context"
	"log"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/ipledger/ipledger/cni"
	"github.com/ipledger/ipledger/internal/version"
)

func init() {
	// Namespace work happens on locked threads; keep main on the thread group leader.
	runtime.LockOSThread()
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	e := skel.PluginMainFuncsWithError(cni.Funcs(ctx), cni.SupportedVersions(), "CNI plugin "+version.String("ipledger"))
	stop()
	if e != nil {
		if err := e.Print(); err != nil {
			log.Print("writing the error JSON to stdout: ", err)
		}
		os.Exit(1)
	}
}
