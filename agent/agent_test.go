package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/agent/cniserver"
	"github.com/ipledger/ipledger/agent/internal/rpcerr"
	"github.com/ipledger/ipledger/agent/pool"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// simulator starts the EC2 simulator on loopback and returns it with its running instances.
func simulator(t *testing.T) (*ec2sim.Server, []ec2sim.InstanceInfo, map[string]ec2sim.SubnetInfo) {
	t.Helper()
	srv, err := ec2sim.Start(ec2sim.DefaultConfig(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	st := srv.Sim().Snapshot()
	var running []ec2sim.InstanceInfo
	for _, in := range st.Instances {
		if in.State == "running" {
			running = append(running, in)
		}
	}
	if len(running) < 2 {
		t.Fatalf("simulator has %d running instances, want 2 or more", len(running))
	}
	subnets := map[string]ec2sim.SubnetInfo{}
	for _, sn := range st.Subnets {
		subnets[sn.ID] = sn
	}
	return srv, running, subnets
}

func TestDiscoverFromSimulator(t *testing.T) {
	srv, running, subnets := simulator(t)
	for _, in := range running[:2] {
		ep, err := srv.IMDSEndpoint(in.ID)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Discover(t.Context(), ep)
		if err != nil {
			t.Fatal(err)
		}
		want := Instance{
			InstanceID: in.ID, InstanceType: in.InstanceType, AvailabilityZone: in.AvailabilityZone,
			LocalIPv4: in.PrivateIP, LocalHostname: in.PrivateDNSName, MAC: in.MAC, ENIID: in.PrimaryENI,
			SubnetID: in.SubnetID, SubnetCIDR: subnets[in.SubnetID].CIDR,
			VPCCIDRs: srv.Sim().Snapshot().VPC.CIDRs,
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Discover(%s):\n got %+v\nwant %+v", in.ID, got, want)
		}
	}
}

func TestDiscoverUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err := Discover(ctx, "http://"+deadAddr(t))
	if !errors.Is(err, ErrDiscovery) || !strings.Contains(err.Error(), "instance-id") {
		t.Fatalf("Discover: %v, want ErrDiscovery about instance-id", err)
	}
}

func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// agentConfig is an agent for instance in of the simulator, with an allocator nobody serves.
func agentConfig(t *testing.T, srv *ec2sim.Server, in ec2sim.InstanceInfo, dir string) Config {
	t.Helper()
	ep, err := srv.IMDSEndpoint(in.ID)
	if err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.Servers = []string{deadAddr(t)}
	c.IMDSEndpoint = ep
	c.SocketPath = filepath.Join(dir, "agent.sock")
	c.CheckpointPath = filepath.Join(dir, "state", "checkpoint.json")
	c.MetricsListen = "127.0.0.1:0"
	c.ManageNetworking = false
	c.AddWait = 300 * time.Millisecond
	c.DiscoveryTimeout = 10 * time.Second
	c.RestoreWait = 0 // nobody answers the registration it would wait for
	return c
}

// seedCheckpoint writes the checkpoint a previous run of the agent would have left: a pool
// with addresses of the instance's subnet and one pod.
func seedCheckpoint(t *testing.T, c Config, in ec2sim.InstanceInfo, addrs ...string) {
	t.Helper()
	p, err := pool.Open(pool.Config{CheckpointPath: c.CheckpointPath, NodeName: in.PrivateDNSName, InstanceID: in.ID})
	if err != nil {
		t.Fatal(err)
	}
	var as []*ipledgerv1.PoolAddress
	for _, a := range addrs {
		as = append(as, &ipledgerv1.PoolAddress{Ip: a, State: ipledgerv1.LeaseState_LEASE_STATE_ACTIVE})
	}
	np := &ipledgerv1.NodePool{NodeName: in.PrivateDNSName, InstanceId: in.ID, Generation: 4,
		Mode: ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP,
		Interfaces: []*ipledgerv1.NetworkInterface{{EniId: in.PrimaryENI, MacAddress: in.MAC, DeviceIndex: 0,
			SubnetId: in.SubnetID, PrimaryIp: in.PrivateIP, Addresses: as}}}
	if _, err := p.Apply(np, false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Assign(pool.Key{ContainerID: "old-pod", IfName: "eth0"}, pool.PodInfo{Namespace: "ns", Name: "old"}); err != nil {
		t.Fatal(err)
	}
}

// runAgent runs an agent until the test ends; stop stops it and returns Run's error.
func runAgent(t *testing.T, c Config) (a *Agent, stop func() error) {
	t.Helper()
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	var runErr error
	stop = func() error {
		if !stopped {
			cancel()
			runErr = <-done
			stopped = true
		}
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case <-a.Ready():
	case err := <-done:
		stopped, runErr = true, err
		t.Fatalf("agent did not start: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("agent not ready after 20s")
	}
	return a, stop
}

func cniClient(t *testing.T, socket string) ipledgerv1.CNIServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return ipledgerv1.NewCNIServiceClient(cc)
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestAgentServesFromCheckpointWithoutServer: two agents in one process, each for an instance
// of the simulator, neither with a reachable allocator: each serves its checkpointed pool,
// answers on its socket and HTTP endpoint, and survives a restart with its assignments.
func TestAgentServesFromCheckpointWithoutServer(t *testing.T) {
	srv, running, _ := simulator(t)
	type node struct {
		in    ec2sim.InstanceInfo
		cfg   Config
		agent *Agent
		stop  func() error
	}
	var nodes []*node
	for i, in := range running[:2] {
		dir := shortDir(t)
		c := agentConfig(t, srv, in, dir)
		seedCheckpoint(t, c, in, fmt.Sprintf("10.%d.0.11", i), fmt.Sprintf("10.%d.0.12", i))
		n := &node{in: in, cfg: c}
		n.agent, n.stop = runAgent(t, c)
		nodes = append(nodes, n)
	}
	ctx := t.Context()
	for i, n := range nodes {
		if got := n.agent.NodeName(); got != n.in.PrivateDNSName {
			t.Fatalf("node name %q, want IMDS local-hostname %q", got, n.in.PrivateDNSName)
		}
		cl := cniClient(t, n.cfg.SocketPath)
		chk, err := cl.Check(ctx, &ipledgerv1.CNICheckRequest{ContainerId: "old-pod", Ifname: "eth0"})
		if err != nil || chk.Ip != fmt.Sprintf("10.%d.0.11", i) || chk.EniId != n.in.PrimaryENI {
			t.Fatalf("node %d: checkpointed pod: %v %v", i, chk, err)
		}
		r, err := cl.Add(ctx, &ipledgerv1.CNIAddRequest{ContainerId: "new-pod", Ifname: "eth0", PodNamespace: "ns", PodName: "new"})
		if err != nil || r.Ip != fmt.Sprintf("10.%d.0.12", i) || r.RouteTable != 254 || r.EniMac != n.in.MAC {
			t.Fatalf("node %d: add: %v %v", i, r, err)
		}
		// Pool empty, allocator unreachable: the next pod fails after the wait, saying why.
		_, err = cl.Add(ctx, &ipledgerv1.CNIAddRequest{ContainerId: "third", Ifname: "eth0"})
		if reason, _ := rpcerr.Info(err); status.Code(err) != codes.Unavailable || reason != ipledgerv1.Reason_SERVER_UNREACHABLE {
			t.Fatalf("node %d: add on empty pool: %v", i, err)
		}
		st, err := cl.Status(ctx, &ipledgerv1.CNIStatusRequest{})
		if err != nil || st.Ready || st.ServerConnected || st.Reason != ipledgerv1.Reason_SERVER_UNREACHABLE {
			t.Fatalf("node %d: status %v %v", i, st, err)
		}

		base := "http://" + n.agent.MetricsAddr()
		if code, body := httpGet(t, base+"/healthz"); code != 200 || body != "ok\n" {
			t.Fatalf("node %d: healthz %d %q", i, code, body)
		}
		code, body := httpGet(t, base+"/metrics")
		for _, want := range []string{
			"ipledger_agent_adds_total 1",
			`ipledger_agent_add_failures_total{reason="SERVER_UNREACHABLE"} 1`,
			`ipledger_agent_pool_addresses{state="in_use"} 2`,
			`ipledger_agent_pool_addresses{state="free"} 0`,
			"ipledger_agent_server_connected 0",
			"ipledger_agent_pods_waiting 0",
			"ipledger_agent_pool_generation 4",
			`ipledger_agent_add_duration_seconds_count{waited="false"} 1`,
			`ipledger_agent_release_acks_total{result="confirmed"} 0`,
			`ipledger_agent_dels_total 0`,
		} {
			if code != 200 || !strings.Contains(body, want+"\n") {
				t.Fatalf("node %d: /metrics lacks %q:\n%s", i, want, body)
			}
		}
		code, body = httpGet(t, base+"/v1/pool")
		var view PoolView
		if err := json.Unmarshal([]byte(body), &view); code != 200 || err != nil {
			t.Fatalf("node %d: /v1/pool %d %v: %s", i, code, err, body)
		}
		if view.NodeName != n.in.PrivateDNSName || view.InstanceID != n.in.ID || view.Generation != 4 ||
			len(view.Pods) != 2 || len(view.ENIs) != 1 || len(view.ENIs[0].Addresses) != 2 ||
			view.Server.Connected || view.Server.Registered || view.Server.LastError == "" || view.Instance.ENIID != n.in.PrimaryENI {
			t.Fatalf("node %d: /v1/pool %s", i, body)
		}
	}

	// Restart the first agent: it keeps both pods, and Del gives one back.
	n := nodes[0]
	if err := n.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(n.cfg.SocketPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after stop: %v", err)
	}
	n.agent, n.stop = runAgent(t, n.cfg)
	cl := cniClient(t, n.cfg.SocketPath)
	for _, cid := range []string{"old-pod", "new-pod"} {
		if _, err := cl.Check(ctx, &ipledgerv1.CNICheckRequest{ContainerId: cid, Ifname: "eth0"}); err != nil {
			t.Fatalf("%s lost across restart: %v", cid, err)
		}
	}
	del, err := cl.Del(ctx, &ipledgerv1.CNIDelRequest{ContainerId: "old-pod", Ifname: "eth0"})
	if err != nil || del.Ip != "10.0.0.11" {
		t.Fatalf("del after restart: %v %v", del, err)
	}
	// The other agent was not disturbed by the restart.
	if _, err := cniClient(t, nodes[1].cfg.SocketPath).Check(ctx, &ipledgerv1.CNICheckRequest{ContainerId: "new-pod", Ifname: "eth0"}); err != nil {
		t.Fatal(err)
	}
}

func TestAgentStartFailures(t *testing.T) {
	srv, running, _ := simulator(t)
	in := running[0]

	t.Run("corrupt checkpoint", func(t *testing.T) {
		c := agentConfig(t, srv, in, shortDir(t))
		if err := os.MkdirAll(filepath.Dir(c.CheckpointPath), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.CheckpointPath, []byte(`{"format":1,"sha256":"00","data":{}}`), 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		err = a.Run(t.Context())
		if !errors.Is(err, pool.ErrCorruptCheckpoint) || !strings.Contains(err.Error(), c.CheckpointPath) {
			t.Fatalf("Run: %v, want a corrupt checkpoint error naming the file", err)
		}
		if _, err := os.Stat(c.SocketPath); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("socket created by an agent that could not start")
		}
	})

	t.Run("checkpoint of another instance", func(t *testing.T) {
		c := agentConfig(t, srv, in, shortDir(t))
		seedCheckpoint(t, c, running[1], "10.9.0.11")
		c.NodeName = running[1].PrivateDNSName
		a, _ := New(c)
		if err := a.Run(t.Context()); !errors.Is(err, pool.ErrWrongIdentity) {
			t.Fatalf("Run: %v, want ErrWrongIdentity", err)
		}
	})

	t.Run("socket taken by another agent", func(t *testing.T) {
		dir := shortDir(t)
		c := agentConfig(t, srv, in, dir)
		runAgent(t, c)
		c2 := agentConfig(t, srv, in, shortDir(t))
		c2.SocketPath = c.SocketPath
		a, _ := New(c2)
		if err := a.Run(t.Context()); !errors.Is(err, cniserver.ErrSocketInUse) {
			t.Fatalf("Run: %v, want ErrSocketInUse", err)
		}
	})

	t.Run("imds unreachable", func(t *testing.T) {
		c := agentConfig(t, srv, in, shortDir(t))
		c.IMDSEndpoint = "http://" + deadAddr(t)
		c.DiscoveryTimeout = 500 * time.Millisecond
		a, _ := New(c)
		if err := a.Run(t.Context()); !errors.Is(err, ErrDiscovery) {
			t.Fatalf("Run: %v, want ErrDiscovery", err)
		}
	})

	t.Run("node name from imds", func(t *testing.T) {
		c := agentConfig(t, srv, in, shortDir(t))
		c.NodeName = ""
		a, _ := New(c)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		select {
		case <-a.Ready():
		case err := <-done:
			t.Fatalf("Run: %v", err)
		}
		cancel()
		if err := <-done; err != nil || a.NodeName() != in.PrivateDNSName {
			t.Fatalf("Run: %v, node %q", err, a.NodeName())
		}
	})
}
