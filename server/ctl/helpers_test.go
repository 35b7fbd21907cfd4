package ctl

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
)

// devConfig is servertest's dev replica, with reconciliation and instance checks only at
// takeover, so drift injected for check stays until check has seen it.
func devConfig(t *testing.T) config.Config {
	cfg := servertest.DevConfig(t)
	cfg.InstanceCheckInterval = config.Duration(time.Hour)
	cfg.DriftGrace = config.Duration(time.Hour)
	return cfg
}

func startServer(t *testing.T, cfg config.Config) *server.Server { return servertest.Start(t, cfg) }

func startDev(t *testing.T) *server.Server {
	t.Helper()
	s := startServer(t, devConfig(t))
	servertest.WaitFor(t, 15*time.Second, "leadership", s.IsLeader)
	return s
}

func admin(t *testing.T, addr string) ipledgerv1.AdminServiceClient {
	return ipledgerv1.NewAdminServiceClient(servertest.Dial(t, addr))
}

// testRoot is the command tree of an invocation that writes nowhere.
func testRoot() *cobra.Command {
	c := &cli{stdout: io.Discard, stderr: io.Discard}
	return c.newRoot()
}

// result is one run of ipledgerctl.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// ctl runs ipledgerctl against addr (through $IPLEDGER_SERVER, as a user would set it).
func ctl(t *testing.T, addr string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	env := map[string]string{EnvServer: addr}
	code := Main(t.Context(), args, &out, &errOut, func(k string) string { return env[k] })
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// mustCtl runs ipledgerctl and fails the test unless it exits with want.
func mustCtl(t *testing.T, want int, addr string, args ...string) result {
	t.Helper()
	r := ctl(t, addr, args...)
	if r.code != want {
		t.Fatalf("ipledgerctl %s: want exit %d, got %s", strings.Join(args, " "), want, r)
	}
	return r
}

// testAgent is servertest's agent, reporting pods by name and labelled as ctl's (startCluster
// tags the instances the same, which is what policies match).
type testAgent struct{ *servertest.Agent }

func newTestAgent(t *testing.T, conn *grpc.ClientConn, inst ec2sim.InstanceInfo) *testAgent {
	a := servertest.NewAgent(t, conn, inst)
	a.Labels = map[string]string{"ipledger.io/test": "ctl"}
	return &testAgent{a}
}

// report tells the server which pods (ip -> pod name) use which addresses.
func (a *testAgent) report(pods map[string]string) {
	a.T.Helper()
	var in []*ipledgerv1.PodAddress
	for _, ip := range sortedKeys(pods) {
		in = append(in, &ipledgerv1.PodAddress{
			Ip: ip, ContainerId: "container-" + strings.ReplaceAll(ip, ".", "-"), Ifname: "eth0",
			PodNamespace: "default", PodName: pods[ip],
		})
	}
	a.Report(in, 0)
}

// addresses lists the pool's active secondary addresses.
func (a *testAgent) addresses() []string {
	return servertest.Addresses(a.Pool(), ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)
}

func (a *testAgent) waitAddresses(n int) []string {
	a.T.Helper()
	p := a.WaitPool(15*time.Second, fmt.Sprintf("%d addresses", n), func(p *ipledgerv1.NodePool) bool {
		return len(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) >= n
	})
	return servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)
}

// cluster is a dev server with every simulated instance registered as a node; the first node
// runs two pods.
type cluster struct {
	s      *server.Server
	addr   string
	agents []*testAgent
	pods   map[string]string // ip -> pod name on agents[0]
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	s := startDev(t)
	c := &cluster{s: s, addr: s.GRPCAddr()}
	conn := servertest.Dial(t, c.addr)
	for _, in := range servertest.Running(s.Sim()) {
		// Policies match the instance's EC2 tags (what the server verifies), as the labels say.
		if err := s.Sim().Sim().TagInstance(t.Context(), in.ID, map[string]string{"ipledger.io/test": "ctl"}); err != nil {
			t.Fatal(err)
		}
		a := newTestAgent(t, conn, in)
		a.Register()
		a.Sync()
		c.agents = append(c.agents, a)
	}
	for _, a := range c.agents {
		a.waitAddresses(1)
		a.report(nil) // agents report usage; only a node that reported is asked to release
	}
	// Two pods on the first node: its pool grows to keep one free.
	first := c.agents[0]
	ips := first.addresses()
	c.pods = map[string]string{ips[0]: "web-0"}
	first.report(c.pods)
	ips = first.waitAddresses(2)
	for _, ip := range ips {
		if _, ok := c.pods[ip]; !ok {
			c.pods[ip] = "web-1"
			break
		}
	}
	first.report(c.pods)
	first.waitAddresses(3)
	return c
}
