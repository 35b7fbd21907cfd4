// Package demo runs ipledger's demo: one ipledger-server replica in --dev mode (embedded etcd and
// the simulated EC2 account of the seed documents: six /19 subnets, five m5.large nodes), an
// agent per node, and the seed's workload (15 pods, 10 of them host network). It prints what
// ipledger holds where the seed saw two idle nodes take a /19's addresses, against what a model
// of the VPC CNI takes on a copy of the account, and where to look, then runs until its context
// ends. It talks only to loopback and needs no root: the agents do not
// touch node networking, and pods are CNI ADDs sent to the agents' sockets as the runtime's plugin
// would send them.
package demo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/ipledger/ipledger/agent"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ctl/ctlconfig"
	"github.com/ipledger/ipledger/server/dev"
	"github.com/ipledger/ipledger/server/ec2sim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Config of a demo run.
type Config struct {
	// DataDir keeps etcd's data and the agents' sockets and checkpoints. Empty: a temporary
	// directory, removed when the demo stops.
	DataDir string
	// GRPCListen and HTTPListen for the server (defaults 127.0.0.1:7400 and :7401, so that
	// ipledgerctl's default --server works; ephemeral ports when those are taken).
	GRPCListen, HTTPListen string
	// BinDir holds ipledgerctl, used to print the subnet table (optional).
	BinDir string
	// ContextFile is ipledgerctl's configuration file (ctlconfig.Path): while the demo runs it
	// holds the context ContextName (the demo's server and --dev certificates), made current,
	// so that ipledgerctl needs no flags; when the demo stops the context is removed and the
	// current-context it replaced is current again. "" leaves ipledgerctl's configuration alone.
	ContextFile string
	// Out receives the demo's report; Logger the components' logs.
	Out    io.Writer
	Logger *slog.Logger
	// Ready, if set, is called once the workload runs and the report is printed.
	Ready func(Report)
}

// Report is what the demo shows once the workload runs.
type Report struct {
	GRPCAddr, HTTPAddr string
	// DevCerts is the server's --dev certificate directory (ipledgerctl --dev-certs).
	DevCerts string
	// CtlFlags are the global flags that give ipledgerctl the demo's certificates without its
	// context.
	CtlFlags []string
	// ContextFile is where the demo's ipledgerctl context is ("" for none).
	ContextFile string
	Nodes       []NodeReport
	// BusiestSubnet is the subnet with the most nodes (two in the seed's cluster).
	BusiestSubnet SubnetReport
	// VPCCNI is what the VPC CNI's default would hold there with the same nodes and pods.
	VPCCNI VPCCNIComparison
}

// NodeReport is one node and its pods.
type NodeReport struct {
	Name, Subnet, Instance string
	AgentSocket            string
	AgentHTTP              string
	Pods                   []Pod
}

// Pod is one pod of the workload.
type Pod struct {
	Namespace, Name string
	HostNetwork     bool
	IP              string
}

// SubnetReport compares a subnet with the seed's observation.
type SubnetReport struct {
	ID, CIDR string
	Nodes    int
	// InUseOnEC2 is EC2's count: size - 5 reserved - availableIpAddressCount; Available is
	// that count of free addresses and Usable the size less the 5 reserved.
	InUseOnEC2, Available, Usable int
	// Held is what ipledger's nodes hold there (ENI primaries + leased).
	Held, PodsInUse int
}

// seed's workload: per node an aws-node and a kube-proxy (host network), plus coredns x2 and
// nginx-demo x3.
func workload(nodes int) []Pod {
	var pods []Pod
	for i := 0; i < nodes; i++ {
		pods = append(pods,
			Pod{Namespace: "kube-system", Name: "aws-node-" + suffix(), HostNetwork: true},
			Pod{Namespace: "kube-system", Name: "kube-proxy-" + suffix(), HostNetwork: true})
	}
	pods = append(pods,
		Pod{Namespace: "kube-system", Name: "coredns-5947f47f5f-" + suffix()},
		Pod{Namespace: "kube-system", Name: "coredns-5947f47f5f-" + suffix()},
		Pod{Namespace: "nginx-demo", Name: "nginx-demo-deployment-7489d44bbd-" + suffix()},
		Pod{Namespace: "nginx-demo", Name: "nginx-demo-deployment-7489d44bbd-" + suffix()},
		Pod{Namespace: "nginx-demo", Name: "nginx-demo-deployment-7489d44bbd-" + suffix()})
	return pods
}

func suffix() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:5]
}

// Run starts everything, runs the workload, prints the report and blocks until ctx ends; then
// it stops every component and removes what it created.
func Run(ctx context.Context, cfg Config) (err error) {
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	out := cfg.Out
	dir := cfg.DataDir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "ipledger-demo-")
		if err != nil {
			return err
		}
		dir = tmp
		defer os.RemoveAll(tmp)
	}
	scfg := config.DevConfig(filepath.Join(dir, "server"))
	// gRPC is mutual TLS with the certificates --dev creates in <data-dir>/certs, as with
	// ipledger-server --dev: the agents get their nodes' certificates, ipledgerctl the admin's.
	scfg.Insecure = false
	scfg.GRPCListen = pickListen(cfg.GRPCListen, "127.0.0.1:7400")
	scfg.HTTPListen = pickListen(cfg.HTTPListen, "127.0.0.1:7401")
	fmt.Fprintf(out, "ipledger demo: starting ipledger-server --dev (embedded etcd in %s, simulated EC2: the seed's VPC 192.168.0.0/16, six /19 subnets, five m5.large nodes)\n", scfg.DataDir)
	srv, err := dev.Start(ctx, scfg, server.Options{Logger: cfg.Logger.With("component", "server")})
	if err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	defer func() {
		srv.Close()
		fmt.Fprintln(out, "ipledger demo: server stopped")
	}()
	if err := waitUntil(ctx, 20*time.Second, srv.IsLeader); err != nil {
		return fmt.Errorf("server did not take leadership: %w", err)
	}
	certs := srv.DevCerts()
	if certs == nil {
		return errors.New("the server made no --dev certificates")
	}

	// One agent per simulated instance, discovering itself through its IMDS.
	insts := running(srv.Sim())
	agentCtx, stopAgents := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	defer func() {
		stopAgents()
		wg.Wait()
		fmt.Fprintln(out, "ipledger demo: agents stopped")
	}()
	agents := make([]*agent.Agent, len(insts))
	for i, in := range insts {
		imds, err := srv.Sim().IMDSEndpoint(in.ID)
		if err != nil {
			return err
		}
		acfg := agent.DefaultConfig()
		acfg.Servers = []string{srv.GRPCAddr()}
		acfg.IMDSEndpoint = imds
		acfg.SocketPath = filepath.Join(dir, "agents", in.ID, "agent.sock")
		acfg.CheckpointPath = filepath.Join(dir, "agents", in.ID, "checkpoint.json")
		acfg.MetricsListen = "127.0.0.1:0"
		acfg.ManageNetworking = false
		// No node certificate: the agent attests with its instance identity document and gets
		// one from the server (it keeps its key in its identity directory).
		acfg.TLSCAFile = certs.CA()
		acfg.IdentityDir = filepath.Join(dir, "agents", in.ID, "identity")
		acfg.Logger = cfg.Logger.With("component", "agent", "instance", in.ID)
		a, err := agent.New(acfg)
		if err != nil {
			return fmt.Errorf("agent for %s: %w", in.ID, err)
		}
		agents[i] = a
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(agentCtx); err != nil && agentCtx.Err() == nil {
				cfg.Logger.Error("agent stopped", "instance", in.ID, "err", err)
			}
		}()
	}
	for i, a := range agents {
		select {
		case <-a.Ready():
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Second):
			return fmt.Errorf("agent for %s not ready", insts[i].ID)
		}
	}
	fmt.Fprintf(out, "ipledger demo: %d agents attested (no hand-made node certificates) and registered; warm pools filling\n", len(agents))
	if err := waitUntil(ctx, 20*time.Second, func() bool { return allWarm(srv, insts) }); err != nil {
		return fmt.Errorf("pools did not fill: %w", err)
	}

	rep := Report{GRPCAddr: srv.GRPCAddr(), HTTPAddr: srv.HTTPAddr(), DevCerts: certs.Dir}
	for i, in := range insts {
		rep.Nodes = append(rep.Nodes, NodeReport{Name: in.PrivateDNSName, Subnet: in.SubnetID, Instance: in.ID, AgentSocket: agents[i].SocketPath(), AgentHTTP: agents[i].MetricsAddr()})
	}
	if err := runWorkload(ctx, &rep); err != nil {
		return err
	}
	// Let usage reports reach the server and the pools settle at their targets.
	time.Sleep(1500 * time.Millisecond)
	rep.BusiestSubnet = busiest(srv, insts)
	if rep.VPCCNI, err = compareWithVPCCNI(ctx, scfg, rep, cfg.Logger.With("component", "vpccni-model")); err != nil {
		return fmt.Errorf("the VPC CNI comparison: %w", err)
	}
	rep.CtlFlags = []string{"--dev-certs", rep.DevCerts}
	if cfg.ContextFile != "" {
		if err := writeContext(cfg.ContextFile, rep); err != nil {
			fmt.Fprintf(out, "ipledger demo: could not write ipledgerctl's context (%v); use the flags below\n", err)
		} else {
			rep.ContextFile = cfg.ContextFile
			defer func() {
				if err := removeContext(cfg.ContextFile, rep.DevCerts); err != nil {
					fmt.Fprintf(out, "ipledger demo: could not remove ipledgerctl's context %s from %s: %v (ipledgerctl config delete-context %s)\n",
						ContextName, cfg.ContextFile, err, ContextName)
				} else {
					fmt.Fprintf(out, "ipledger demo: ipledgerctl context %s removed from %s\n", ContextName, cfg.ContextFile)
				}
			}()
		}
	}
	printReport(out, cfg, srv, rep)
	if cfg.Ready != nil {
		cfg.Ready(rep)
	}
	<-ctx.Done()
	fmt.Fprintln(out, "\nipledger demo: stopping")
	return nil
}

// ContextName is the ipledgerctl context the demo writes, and its owner.
const ContextName = "ipledger-demo"

// writeContext adds (or replaces, after a demo that did not stop cleanly) the demo's context
// and makes it current, remembering the current-context it replaces.
func writeContext(path string, rep Report) error {
	return ctlconfig.Update(path, func(f *ctlconfig.File) error {
		prev := f.CurrentContext
		if old, ok := f.Get(ContextName); ok && prev == ContextName {
			prev = old.PreviousContext
		}
		f.Set(ctlconfig.Context{Name: ContextName, Server: rep.GRPCAddr, DevCerts: rep.DevCerts, Owner: ContextName, PreviousContext: prev})
		f.CurrentContext = ContextName
		return nil
	})
}

// removeContext removes the demo's context if it is still this run's (another demo may have
// replaced it since); the current-context it replaced is current again.
func removeContext(path, devCerts string) error {
	return ctlconfig.Update(path, func(f *ctlconfig.File) error {
		if c, ok := f.Get(ContextName); ok && c.Owner == ContextName && c.DevCerts == devCerts {
			f.Delete(ContextName)
		}
		return nil
	})
}

// pickListen uses want (or def) when it can be bound, else an ephemeral loopback port.
func pickListen(want, def string) string {
	if want == "" {
		want = def
	}
	l, err := net.Listen("tcp", want)
	if err != nil {
		return "127.0.0.1:0"
	}
	l.Close()
	return want
}

func waitUntil(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func running(sim *ec2sim.Server) []ec2sim.InstanceInfo {
	var out []ec2sim.InstanceInfo
	for _, in := range sim.Sim().Snapshot().Instances {
		if in.State == "running" {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PrivateDNSName < out[j].PrivateDNSName })
	return out
}

// allWarm: every node is registered and holds at least one free address.
func allWarm(srv *server.Server, insts []ec2sim.InstanceInfo) bool {
	led := srv.Ledger()
	for _, in := range insts {
		c, ok := led.NodeCounts(in.PrivateDNSName)
		if !ok || c.Idle < 1 {
			return false
		}
	}
	return true
}

// runWorkload schedules the pods round-robin; pod-network pods get their address through the
// node agent's CNI service, as the ipledger plugin would ask for it.
func runWorkload(ctx context.Context, rep *Report) error {
	pods := workload(len(rep.Nodes))
	next := 0
	for _, p := range pods {
		n := &rep.Nodes[next%len(rep.Nodes)]
		next++
		if !p.HostNetwork {
			conn, err := grpc.NewClient("unix://"+n.AgentSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return err
			}
			actx, cancel := context.WithTimeout(ctx, 15*time.Second)
			resp, err := ipledgerv1.NewCNIServiceClient(conn).Add(actx, &ipledgerv1.CNIAddRequest{
				ContainerId: "demo" + suffix() + suffix(), Ifname: "eth0", Netns: "/var/run/netns/demo-" + p.Name,
				PodNamespace: p.Namespace, PodName: p.Name,
			})
			cancel()
			conn.Close()
			if err != nil {
				return fmt.Errorf("CNI ADD of %s/%s on %s: %w", p.Namespace, p.Name, n.Name, err)
			}
			p.IP = resp.GetIp()
		}
		n.Pods = append(n.Pods, p)
	}
	return nil
}

func busiest(srv *server.Server, insts []ec2sim.InstanceInfo) SubnetReport {
	count := map[string]int{}
	for _, in := range insts {
		count[in.SubnetID]++
	}
	cidr := map[string]string{}
	for _, s := range srv.Sim().Sim().Snapshot().Subnets {
		cidr[s.ID] = s.CIDR
	}
	// Ties go to the lower CIDR, so the seed's 192.168.32.0/19 is chosen where it has two nodes.
	best := ""
	for id, n := range count {
		if best == "" || n > count[best] || (n == count[best] && cidr[id] < cidr[best]) {
			best = id
		}
	}
	rep := SubnetReport{ID: best, Nodes: count[best]}
	if s, ok := srv.Sim().Sim().Snapshot().Subnet(best); ok {
		rep.CIDR = s.CIDR
		rep.InUseOnEC2, rep.Available, rep.Usable = s.Size-5-s.Available, s.Available, s.Size-5
	}
	if b, err := srv.Ledger().Budget(best, time.Now()); err == nil {
		rep.Held, rep.PodsInUse = b.Held, b.InUse
	}
	return rep
}

func printReport(out io.Writer, cfg Config, srv *server.Server, rep Report) {
	fmt.Fprintln(out, "\nWorkload (like the seed's: 15 pods, 10 of them host network):")
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tSUBNET\tPOD\tADDRESS")
	for _, n := range rep.Nodes {
		for _, p := range n.Pods {
			ip := p.IP
			if p.HostNetwork {
				ip = "(host network)"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s/%s\t%s\n", n.Name, n.Subnet, p.Namespace, p.Name, ip)
		}
	}
	tw.Flush()

	fmt.Fprintln(out, "\nSubnet budgets (ipledgerctl subnets):")
	if ctl := filepath.Join(cfg.BinDir, "ipledgerctl"); cfg.BinDir != "" && fileExists(ctl) {
		cmd := exec.Command(ctl, append(append([]string{}, rep.CtlFlags...), "--server", rep.GRPCAddr, "subnets")...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(out, "  (ipledgerctl failed: %v)\n", err)
		}
	} else {
		printBudgets(out, srv)
	}

	b := rep.BusiestSubnet
	v := rep.VPCCNI
	fmt.Fprintf(out, "\nSubnet %s (%s), %d nodes and %d pods with addresses, as in the seed's cluster:\n", b.ID, b.CIDR, b.Nodes, b.PodsInUse)
	fmt.Fprintf(out, "  the VPC CNI's default (WARM_ENI_TARGET=1, modelled on a copy of this account): %d addresses in use (%d of %d left):\n",
		v.InUse, v.Available, v.Usable)
	fmt.Fprintf(out, "    each node keeps %d ENIs of %d addresses, one of them a whole spare ENI kept warm\n", v.ENIsPerNode, v.AddressesPerENI)
	fmt.Fprintf(out, "  ipledger: %d addresses in use (%d of %d left): each node's own address, its pods' and one warm address per node\n",
		b.InUseOnEC2, b.Available, b.Usable)

	fmt.Fprintf(out, "\nWhere to look:\n")
	fmt.Fprintf(out, "  dashboard      http://%s/\n", rep.HTTPAddr)
	fmt.Fprintf(out, "  metrics        http://%s/metrics\n", rep.HTTPAddr)
	fmt.Fprintf(out, "  readiness      http://%s/readyz\n", rep.HTTPAddr)
	if len(rep.Nodes) > 0 {
		fmt.Fprintf(out, "  an agent       http://%s/v1/pool  (and /metrics)\n", rep.Nodes[0].AgentHTTP)
	}
	ctl := "ipledgerctl"
	if cfg.BinDir != "" {
		ctl = filepath.Join(cfg.BinDir, "ipledgerctl")
	}
	if rep.ContextFile != "" {
		fmt.Fprintf(out, "  try            %s subnets | nodes | node %s | identities | limiter | check | status\n", ctl, firstName(rep))
		fmt.Fprintf(out, "                 (gRPC is mutual TLS; ipledgerctl's current context %s, in %s, names the server and the\n", ContextName, rep.ContextFile)
		fmt.Fprintf(out, "                 admin certificate of %s until the demo stops; without it: --dev-certs %s --server %s)\n", rep.DevCerts, rep.DevCerts, rep.GRPCAddr)
	} else {
		flags := strings.Join(rep.CtlFlags, " ")
		if rep.GRPCAddr != "127.0.0.1:7400" {
			flags += " --server " + rep.GRPCAddr
		}
		fmt.Fprintf(out, "  try            %s %s subnets | nodes | node %s | identities | limiter | check | status\n", ctl, flags, firstName(rep))
		fmt.Fprintf(out, "                 (gRPC is mutual TLS; --dev-certs gives ipledgerctl the admin certificate of %s)\n", rep.DevCerts)
	}
	fmt.Fprintf(out, "\nRunning until Ctrl-C.\n")
}

func firstName(rep Report) string {
	if len(rep.Nodes) == 0 {
		return "NODE"
	}
	return rep.Nodes[0].Name
}

// printBudgets prints the subnet budgets when ipledgerctl is not built.
func printBudgets(out io.Writer, srv *server.Server) {
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  SUBNET\tAZ\tCIDR\tHELD\tIN USE\tFREE\tFREE /28")
	for _, b := range srv.Ledger().Budgets(time.Now()) {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%d\t%d\t%d\n", b.SubnetID, b.AvailabilityZone, b.CIDR, b.Held, b.InUse, b.Free, b.FreePrefixes)
	}
	tw.Flush()
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}
