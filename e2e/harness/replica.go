package harness

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/servertest"
	"github.com/ipledger/ipledger/server/store"
)

// ClusterName is the cluster of StartCluster's replicas.
const ClusterName = "e2e"

// ReplicaProc is an ipledger-server process of a Cluster.
type ReplicaProc struct {
	t       testing.TB
	cmd     *exec.Cmd
	GRPC    string
	HTTP    string
	done    chan struct{}
	waitErr error
	logPath string
}

// StartReplicaProcess starts an ipledger-server process on the cluster's etcd and EC2 simulator
// with short intervals (session TTL 2 s, no release delay, checks every second) and extra flags
// (later flags win). It is killed in t.Cleanup; its log is printed when the test fails.
func (c *Cluster) StartReplicaProcess(t testing.TB, extra ...string) *ReplicaProc {
	t.Helper()
	bin := Binary(t, "ipledger-server")
	dir := t.TempDir()
	r := &ReplicaProc{t: t, GRPC: FreePort(t), HTTP: FreePort(t), done: make(chan struct{}), logPath: filepath.Join(dir, "server.log")}
	logFile, err := os.Create(r.logPath)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{
		"--cluster-name", ClusterName, "--region", "eu-west-1",
		"--etcd-endpoints", strings.Join(c.Etcd.Endpoints(), ","), "--ec2-endpoint", c.Sim.Endpoint(),
		"--grpc-listen", r.GRPC, "--http-listen", r.HTTP, "--data-dir", dir,
		"--session-ttl", "2s", "--release-delay", "0s", "--release-cooldown", "1s", "--proposal-timeout", "5s",
		"--reconcile-interval", "1h", "--drift-grace", "1ms", "--instance-check-interval", "1s",
		"--log-level", "debug",
	}
	r.cmd = exec.Command(bin, append(args, extra...)...)
	// The simulator accepts any signature; these are never real credentials.
	r.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "AWS_ACCESS_KEY_ID=ipledger-e2e", "AWS_SECRET_ACCESS_KEY=ipledger-e2e", "AWS_EC2_METADATA_DISABLED=true"}
	r.cmd.Stdout, r.cmd.Stderr = logFile, logFile
	if os.Getenv(LogEnv) != "" {
		w := io.MultiWriter(logFile, os.Stderr)
		r.cmd.Stdout, r.cmd.Stderr = w, w
	}
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := Start(r.cmd); err != nil {
		_ = logFile.Close()
		t.Fatalf("start ipledger-server: %v", err)
	}
	go func() {
		r.waitErr = r.cmd.Wait()
		_ = logFile.Close()
		close(r.done)
	}()
	t.Cleanup(func() {
		r.Kill()
		if t.Failed() {
			t.Logf("log of the replica at %s:\n%s", r.GRPC, tail(r.logPath, 60))
		}
	})
	return r
}

// Exited reports whether the process has ended.
func (r *ReplicaProc) Exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL and waits for the process.
func (r *ReplicaProc) Kill() {
	if !r.Exited() {
		_ = r.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-r.done
}

// Status asks the replica for its cluster status (one second at most).
func (r *ReplicaProc) Status() (*ipledgerv1.ClusterStatus, error) {
	if r.Exited() {
		return nil, fmt.Errorf("replica %s exited: %v", r.GRPC, r.waitErr)
	}
	ctx, cancel := context.WithTimeout(r.t.Context(), time.Second)
	defer cancel()
	return Admin(r.t, r.GRPC).GetClusterStatus(ctx, &ipledgerv1.GetClusterStatusRequest{})
}

// IsLeader reports whether the replica answers that it leads.
func (r *ReplicaProc) IsLeader() bool {
	st, err := r.Status()
	return err == nil && st.GetIsLeader()
}

// LeaderProc waits until one of the replicas leads and returns it.
func LeaderProc(t testing.TB, d time.Duration, rs ...*ReplicaProc) *ReplicaProc {
	t.Helper()
	var leader *ReplicaProc
	servertest.WaitFor(t, d, "a replica to lead", func() bool {
		for _, r := range rs {
			if r.IsLeader() {
				leader = r
				return true
			}
		}
		return false
	})
	return leader
}

// Store opens a client of the cluster's etcd (closed in t.Cleanup), for consistency checks.
func (c *Cluster) Store(t testing.TB) *store.Store {
	t.Helper()
	st, err := store.Open(t.Context(), store.Config{Endpoints: c.Etcd.Endpoints(), ClusterName: ClusterName})
	if err != nil {
		t.Fatalf("open etcd: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}
