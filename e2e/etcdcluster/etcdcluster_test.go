package etcdcluster_test

import (
	"context"
	"errors"
	"log/slog"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/ipledger/ipledger/e2e/etcdcluster"
)

func startCluster(t *testing.T) *etcdcluster.Cluster {
	t.Helper()
	if _, err := etcdcluster.FindBinary(""); errors.Is(err, etcdcluster.ErrNoBinary) {
		t.Skipf("skipping: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	c, err := etcdcluster.Start(ctx, etcdcluster.Config{
		Dir:    t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("stop cluster: %v", err)
		}
	})
	return c
}

func put(t *testing.T, cli *clientv3.Client, key, val string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	_, err := cli.Put(ctx, key, val)
	return err
}

func healthy(t *testing.T, c *etcdcluster.Cluster, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	return c.Healthy(ctx)
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

func TestKillQuorumLossAndRecovery(t *testing.T) {
	c := startCluster(t)
	if c.Size() != 3 || len(c.Endpoints()) != 3 {
		t.Fatalf("cluster of %d, endpoints %v", c.Size(), c.Endpoints())
	}
	pids := []int{c.PID(0), c.PID(1), c.PID(2)}
	for i, pid := range pids {
		if pid == 0 || !alive(pid) {
			t.Fatalf("member %d: pid %d not running", i, pid)
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if err := put(t, cli, "k", "v1", 5*time.Second); err != nil {
		t.Fatalf("put on a healthy cluster: %v", err)
	}

	// One member down: still a quorum.
	if err := c.Kill(0); err != nil {
		t.Fatal(err)
	}
	if alive(pids[0]) || c.PID(0) != 0 {
		t.Fatalf("member 0 (pid %d) still running after Kill", pids[0])
	}
	if err := c.Kill(0); err == nil {
		t.Fatal("killing a dead member succeeded")
	}
	if err := healthy(t, c, 5*time.Second); err != nil {
		t.Fatalf("cluster with 2 of 3 members: %v", err)
	}
	if err := put(t, cli, "k", "v2", 5*time.Second); err != nil {
		t.Fatalf("put with 2 of 3 members: %v", err)
	}

	// Two down: no quorum, writes time out and the survivor is unhealthy.
	if err := c.Kill(1); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	// A timed-out proposal is indeterminate in etcd: the survivor may still commit it once
	// quorum returns. So it goes to its own key, and "nothing lost" is checked on k.
	if err := put(t, cli, "k-noquorum", "v3", 2*time.Second); err == nil {
		t.Fatal("put without quorum succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("put without quorum took %s with a 2s deadline", d)
	}
	if err := healthy(t, c, 2*time.Second); err == nil {
		t.Fatal("cluster with 1 of 3 members reports healthy")
	}

	// Both come back with their data: healthy again, nothing lost.
	if err := c.Restart(0); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(0); err == nil {
		t.Fatal("restarting a running member succeeded")
	}
	if err := c.Restart(1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatalf("after restarting both: %v", err)
	}
	if err := put(t, cli, "k2", "v", 5*time.Second); err != nil {
		t.Fatalf("put after recovery: %v", err)
	}
	gctx, gcancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer gcancel()
	resp, err := cli.Get(gctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v2" {
		t.Fatalf("get k after recovery: %v %v, want v2", resp, err)
	}
	if resp, err := cli.Get(gctx, "k-noquorum"); err != nil || len(resp.Kvs) > 1 || (len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) != "v3") {
		t.Fatalf("get k-noquorum after recovery: %v %v, want nothing or v3", resp, err)
	}

	// Stop leaves nothing running.
	running := []int{c.PID(0), c.PID(1), c.PID(2)}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range running {
		if alive(pid) {
			t.Errorf("pid %d still running after Stop", pid)
		}
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := c.Restart(0); err == nil {
		t.Fatal("restart after Stop succeeded")
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	if _, err := etcdcluster.Start(t.Context(), etcdcluster.Config{}); err == nil {
		t.Error("Start without a directory succeeded")
	}
	_, err := etcdcluster.Start(t.Context(), etcdcluster.Config{Dir: t.TempDir(), Binary: "/nonexistent/etcd"})
	if !errors.Is(err, etcdcluster.ErrNoBinary) {
		t.Errorf("Start with a missing binary = %v, want ErrNoBinary", err)
	}
}
