package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// TestAgentRestoresPodsFromTheServer: an agent without node networking (as in the demo and the
// benchmark: no kernel to look at) restarts on a checkpoint older than two of its pods. The
// server's answer to its registration names them: the agent restores them with their
// attachments (CHECK and DEL find them) and no new pod gets their addresses. Needs no root.
func TestAgentRestoresPodsFromTheServer(t *testing.T) {
	s := harness.StartDev(t, nil)
	admin := harness.Admin(t, s.GRPCAddr())
	inst := harness.Running(s.Sim().Sim())[1]
	imds, err := s.Sim().IMDSEndpoint(inst.ID)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "ipl-restore-") // short: a unix socket path has 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	cfg := agent.DefaultConfig()
	cfg.Servers = []string{s.GRPCAddr()}
	cfg.IMDSEndpoint = imds
	cfg.SocketPath = filepath.Join(dir, "agent.sock")
	cfg.CheckpointPath = filepath.Join(dir, "checkpoint.json")
	cfg.MetricsListen = ""
	cfg.ManageNetworking = false
	cfg.Cooldown = time.Second
	cfg.UsageInterval = time.Second
	cfg.UsageDebounce = 50 * time.Millisecond
	cfg.Logger = harness.Logger("agent")

	run := func() (ipledgerv1.CNIServiceClient, func()) {
		t.Helper()
		a, err := agent.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		stopped := false
		stop := func() {
			if stopped {
				return
			}
			stopped = true
			cancel()
			if err := <-done; err != nil {
				t.Errorf("agent: %v", err)
			}
		}
		t.Cleanup(stop)
		select {
		case <-a.Ready():
		case err := <-done:
			stopped = true
			t.Fatalf("agent did not start: %v", err)
		case <-time.After(30 * time.Second):
			t.Fatal("agent not ready after 30s")
		}
		cc, err := grpc.NewClient("unix://"+cfg.SocketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		return ipledgerv1.NewCNIServiceClient(cc), stop
	}
	add := func(cl ipledgerv1.CNIServiceClient, cid string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		r, err := cl.Add(ctx, &ipledgerv1.CNIAddRequest{ContainerId: cid, Ifname: "eth0", PodNamespace: "e2e", PodName: cid})
		if err != nil {
			t.Fatalf("ADD %s: %v", cid, err)
		}
		return r.GetIp()
	}

	cl, stop := run()
	pods := map[string]string{} // ip -> container
	for _, cid := range []string{"before-1", "before-2"} {
		pods[add(cl, cid)] = cid
	}
	stale := harness.CopyCheckpoint(t, cfg.CheckpointPath)
	after := map[string]string{} // container -> ip, of the pods the copy lacks
	for _, cid := range []string{"after-1", "after-2"} {
		ip := add(cl, cid)
		pods[ip] = cid
		after[cid] = ip
	}
	waitServerPods(t, admin, inst.PrivateDNSName, pods)

	// The agent stops, and the old checkpoint comes back.
	stop()
	stale.Put(t, cfg.CheckpointPath)
	cl, _ = run()
	// New pods wait for the registration, which restores the pods the copy lacks.
	for i := range 4 {
		cid := fmt.Sprintf("fresh-%d", i)
		ip := add(cl, cid)
		if owner, ok := pods[ip]; ok {
			t.Errorf("new pod %s got %s, which running pod %s holds: an address handed out twice", cid, ip, owner)
		}
		pods[ip] = cid
	}
	for cid, ip := range after {
		chk, err := cl.Check(t.Context(), &ipledgerv1.CNICheckRequest{ContainerId: cid, Ifname: "eth0"})
		if err != nil || chk.GetIp() != ip {
			t.Errorf("CHECK of %s after the restart: %v %v, want %s", cid, chk, err, ip)
		}
	}
	// The runtime's DEL of a restored pod finds its address.
	del, err := cl.Del(t.Context(), &ipledgerv1.CNIDelRequest{ContainerId: "after-1", Ifname: "eth0"})
	if err != nil || del.GetIp() != after["after-1"] {
		t.Fatalf("DEL of after-1: %v %v, want %s", del, err, after["after-1"])
	}
	delete(pods, after["after-1"])
	waitServerPods(t, admin, inst.PrivateDNSName, pods)
}
