package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/ctl"
	"github.com/ipledger/ipledger/server/ctl/ctlconfig"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// The demo starts, runs the seed's workload, reports, and stops cleanly when its context ends.
func TestDemoStartsReportsAndStopsCleanly(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out syncBuffer
	var rep Report
	ready := make(chan struct{})
	dir := t.TempDir()
	// The user's ipledgerctl configuration has a context of their own, current.
	ctxFile := filepath.Join(t.TempDir(), "ipledger", "config.yaml")
	if err := ctlconfig.Update(ctxFile, func(f *ctlconfig.File) error {
		f.Set(ctlconfig.Context{Name: "prod", Server: "10.0.1.7:7400"})
		f.CurrentContext = "prod"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{DataDir: dir, GRPCListen: "127.0.0.1:0", HTTPListen: "127.0.0.1:0", Out: &out, ContextFile: ctxFile,
			Ready: func(r Report) { rep = r; close(ready) }})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("demo ended early: %v\n%s", err, out.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("demo not ready\n%s", out.String())
	}
	if len(rep.Nodes) != 5 {
		t.Fatalf("%d nodes", len(rep.Nodes))
	}
	pods, withIP := 0, 0
	seen := map[string]bool{}
	for _, n := range rep.Nodes {
		for _, p := range n.Pods {
			pods++
			if !p.HostNetwork {
				if p.IP == "" || seen[p.IP] {
					t.Fatalf("pod %s/%s has address %q (seen before: %v)", p.Namespace, p.Name, p.IP, seen[p.IP])
				}
				seen[p.IP] = true
				withIP++
			}
		}
	}
	if pods != 15 || withIP != 5 {
		t.Fatalf("workload: %d pods, %d with addresses; want 15 and 5", pods, withIP)
	}
	// Two nodes share a subnet, like the seed's: they hold their two addresses, their pods' and
	// a warm one each, far below the seed's 43.
	b := rep.BusiestSubnet
	if b.Nodes != 2 || b.Held < 2*2 || b.Held > 2+b.PodsInUse+2*2 || b.InUseOnEC2 != b.Held {
		t.Fatalf("busiest subnet: %+v", b)
	}
	// The VPC CNI's side is computed: two m5.large nodes with a pod or none each keep their
	// primary ENI and a whole warm one, 2 x 2 x 10 = 40 addresses (the seed's console showed
	// 8147 left, as here).
	v := rep.VPCCNI
	if v.ENIsPerNode != 2 || v.AddressesPerENI != 10 || v.InUse != b.Nodes*v.ENIsPerNode*v.AddressesPerENI || v.Usable != 8187 || v.Available != v.Usable-v.InUse {
		t.Fatalf("VPC CNI comparison: %+v", v)
	}
	if v.Available != 8147 {
		t.Errorf("VPC CNI model leaves %d of 8187, the seed's console showed 8147", v.Available)
	}
	text := out.String()
	for _, want := range []string{"Subnet budgets", fmt.Sprintf("%d addresses in use (%d of %d left)", v.InUse, v.Available, v.Usable),
		fmt.Sprintf("ipledger: %d addresses in use (%d of %d left)", b.InUseOnEC2, b.Available, b.Usable), "dashboard      http://" + rep.HTTPAddr, "metrics", "Running until Ctrl-C",
		"--dev-certs " + rep.DevCerts} {
		if !strings.Contains(text, want) {
			t.Fatalf("report lacks %q:\n%s", want, text)
		}
	}
	// The agents attested (no node certificate was given to them): each agent's identity is
	// aws-iid, from the certificate the server issued into its identity directory.
	if !strings.Contains(text, "agents attested") {
		t.Fatalf("no attestation reported:\n%s", text)
	}
	for _, n := range rep.Nodes {
		resp, err := http.Get("http://" + n.AgentHTTP + "/v1/pool")
		if err != nil {
			t.Fatal(err)
		}
		var v struct {
			Identity struct {
				Method string `json:"method"`
			} `json:"identity"`
		}
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if err != nil || v.Identity.Method != "aws-iid" {
			t.Fatalf("agent of %s: identity %+v (%v)", n.Name, v.Identity, err)
		}
	}
	// gRPC is mutual TLS: ipledgerctl works as printed, and not without the certificates.
	var ctlOut, ctlErr bytes.Buffer
	args := append(append([]string{}, rep.CtlFlags...), "--server", rep.GRPCAddr, "nodes", "-o", "json")
	if code := ctl.Main(t.Context(), args, &ctlOut, &ctlErr, func(string) string { return "" }); code != 0 || strings.Count(ctlOut.String(), `"node_name"`) != 5 {
		t.Fatalf("ipledgerctl %v: exit %d\n%s%s", args, code, ctlOut.String(), ctlErr.String())
	}
	if code := ctl.Main(t.Context(), []string{"--server", rep.GRPCAddr, "status"}, io.Discard, io.Discard, func(string) string { return "" }); code != ctl.ExitError {
		t.Fatalf("plaintext ipledgerctl against the demo: exit %d", code)
	}
	// After the demo started, ipledgerctl finds its server and certificates without flags:
	// its context is current, and the report says so.
	ctlEnv := func(k string) string { return map[string]string{ctlconfig.EnvFile: ctxFile}[k] }
	ctlOut.Reset()
	ctlErr.Reset()
	if code := ctl.Main(t.Context(), []string{"nodes", "-o", "json"}, &ctlOut, &ctlErr, ctlEnv); code != 0 || strings.Count(ctlOut.String(), `"node_name"`) != 5 {
		t.Fatalf("ipledgerctl nodes with the demo's context: exit %d\n%s%s", code, ctlOut.String(), ctlErr.String())
	}
	if !strings.Contains(text, "ipledgerctl's current context "+ContextName+", in "+ctxFile) || !strings.Contains(text, "ipledgerctl subnets | nodes") {
		t.Fatalf("the report does not say ipledgerctl needs no flags:\n%s", text)
	}
	if f, err := ctlconfig.Load(ctxFile); err != nil || f.CurrentContext != ContextName || len(f.Contexts) != 2 {
		t.Fatalf("the demo's context: %+v %v", f, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo stopped with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("demo did not stop")
	}
	// The demo's context is gone and the user's is current again.
	if f, err := ctlconfig.Load(ctxFile); err != nil || f.CurrentContext != "prod" || len(f.Contexts) != 1 || f.Contexts[0].Name != "prod" {
		t.Fatalf("ipledgerctl's configuration after the demo: %+v %v", f, err)
	}
	// Stopped means stopped: the server's port is free and the agents' sockets are gone.
	if l, err := net.Listen("tcp", rep.GRPCAddr); err != nil {
		t.Fatalf("server port still taken after stop: %v", err)
	} else {
		l.Close()
	}
	for _, n := range rep.Nodes {
		if _, err := os.Stat(n.AgentSocket); !os.IsNotExist(err) {
			t.Fatalf("agent socket %s left behind", n.AgentSocket)
		}
	}
}

// The binary stops cleanly on SIGINT, as Ctrl-C does.
func TestDemoBinaryStopsOnInterrupt(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the demo binary")
	}
	bin := filepath.Join(t.TempDir(), "ipledger-demo")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/ipledger-demo").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var out syncBuffer
	ctxFile := filepath.Join(t.TempDir(), "config.yaml")
	cmd := exec.Command(bin, "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--bin-dir", "")
	// ipledgerctl's configuration goes where the environment says (never the user's here).
	cmd.Env = append(os.Environ(), ctlconfig.EnvFile+"="+ctxFile)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	deadline := time.Now().Add(90 * time.Second)
	for !strings.Contains(out.String(), "Running until Ctrl-C") {
		if time.Now().After(deadline) {
			t.Fatalf("demo not ready:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if f, err := ctlconfig.Load(ctxFile); err != nil || f.CurrentContext != ContextName {
		t.Fatalf("the running demo's context in $%s: %+v %v", ctlconfig.EnvFile, f, err)
	}
	cmd.Process.Signal(os.Interrupt)
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("demo exited with %v:\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("demo did not stop on SIGINT:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "stopped cleanly") {
		t.Fatalf("no clean stop:\n%s", out.String())
	}
	if f, err := ctlconfig.Load(ctxFile); err != nil || f.CurrentContext != "" || len(f.Contexts) != 0 {
		t.Fatalf("the demo left its context: %+v %v", f, err)
	}
}
