package server_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
	"github.com/ipledger/ipledger/server/store"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// serverBinary returns ipledger-server: from $IPLEDGER_BIN_DIR (make test builds it) or built
// once for this test binary.
func serverBinary(t *testing.T) string {
	t.Helper()
	if dir := os.Getenv("IPLEDGER_BIN_DIR"); dir != "" {
		if p := filepath.Join(dir, "ipledger-server"); fileExists(p) {
			return p
		}
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "ipledger-server-bin")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "ipledger-server")
		out, err := exec.Command("go", "build", "-o", buildPath, "./cmd/ipledger-server").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildPath
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

type replicaProc struct {
	cmd  *exec.Cmd
	grpc string
	done chan struct{}
}

func startReplica(t *testing.T, bin string, etcd []string, ec2 string) *replicaProc {
	t.Helper()
	r := &replicaProc{grpc: freePort(t), done: make(chan struct{})}
	r.cmd = exec.Command(bin,
		"--cluster-name", "ft", "--region", "eu-west-1",
		"--etcd-endpoints", etcd[0], "--ec2-endpoint", ec2,
		"--grpc-listen", r.grpc, "--http-listen", freePort(t),
		"--session-ttl", "2s", "--release-delay", "0s",
		"--reconcile-interval", "1s", "--drift-grace", "1ms", "--instance-check-interval", "1s",
		"--log-level", "warn",
	)
	r.cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test", "AWS_EC2_METADATA_DISABLED=true")
	r.cmd.Stderr = os.Stderr
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.cmd.Wait(); close(r.done) }()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.done
	})
	return r
}

func (r *replicaProc) status(ctx context.Context, t *testing.T) (*ipledgerv1.ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	return ipledgerv1.NewAdminServiceClient(servertest.Dial(t, r.grpc)).GetClusterStatus(ctx, &ipledgerv1.GetClusterStatusRequest{})
}

func leaderOf(t *testing.T, rs ...*replicaProc) *replicaProc {
	for _, r := range rs {
		select {
		case <-r.done:
			continue
		default:
		}
		if st, err := r.status(t.Context(), t); err == nil && st.GetIsLeader() {
			return r
		}
	}
	return nil
}

// TestFailoverMidAllocation kills -9 the leader while it creates ENIs and assigns addresses
// for five nodes; the standby must lead within a few seconds, finish the work, lease no address
// twice and leave nothing leaked (checked against the simulator's state and etcd).
func TestFailoverMidAllocation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	bin := serverBinary(t)
	be := servertest.StartBackends(t)
	emb, sim := be.Etcd, be.Sim
	// Slow EC2 down so the kill lands while calls are in flight.
	for _, action := range []string{"AssignPrivateIpAddresses", "CreateNetworkInterface", "AttachNetworkInterface"} {
		sim.Sim().SetFault(action, ec2sim.Fault{Latency: 150 * time.Millisecond})
	}

	a := startReplica(t, bin, emb.Endpoints(), sim.Endpoint())
	b := startReplica(t, bin, emb.Endpoints(), sim.Endpoint())
	var first *replicaProc
	servertest.WaitFor(t, 20*time.Second, "a leader", func() bool { first = leaderOf(t, a, b); return first != nil })
	standby := a
	if first == a {
		standby = b
	}
	conn := servertest.Dial(t, first.grpc)
	if _, err := ipledgerv1.NewAdminServiceClient(conn).SetPolicy(t.Context(), &ipledgerv1.SetPolicyRequest{Policy: &ipledgerv1.NodePolicy{
		Name: "min14", MinimumIpTarget: proto.Uint32(14),
	}}); err != nil {
		t.Fatal(err)
	}
	var insts []ec2sim.InstanceInfo
	for _, in := range sim.Sim().Snapshot().Instances {
		insts = append(insts, in)
	}
	for _, in := range insts {
		ag := servertest.NewAgent(t, conn, in)
		ag.Register()
	}
	// Let the leader get some way into the work, then kill it.
	time.Sleep(400 * time.Millisecond)
	killedAt := time.Now()
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-first.done
	servertest.WaitFor(t, 15*time.Second, "the standby to lead", func() bool { return leaderOf(t, standby) != nil })
	tookOver := time.Since(killedAt)

	// Agents reconnect to the new leader and every node reaches its target.
	conn2 := servertest.Dial(t, standby.grpc)
	var agents []*servertest.Agent
	for _, in := range insts {
		ag := servertest.NewAgent(t, conn2, in)
		ag.Register()
		ag.Sync()
		agents = append(agents, ag)
	}
	firstServed := time.Time{}
	for _, ag := range agents {
		ag.WaitPool(30*time.Second, "14 addresses after failover", func(p *ipledgerv1.NodePool) bool {
			ok := len(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) == 14
			if ok && firstServed.IsZero() {
				firstServed = time.Now()
			}
			return ok
		})
	}
	t.Logf("leader killed; standby led after %s; first node at target %s after the kill", tookOver.Round(time.Millisecond), firstServed.Sub(killedAt).Round(time.Millisecond))

	// Reconciliation (every second, no grace) settles whatever the dead leader left half done.
	st, err := store.Open(t.Context(), store.Config{Endpoints: emb.Endpoints(), ClusterName: "ft"})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	servertest.WaitFor(t, 30*time.Second, "EC2 and etcd to agree", func() bool { return servertest.Consistent(t.Context(), sim.Sim(), st, "ft") == nil })
	if err := servertest.Consistent(t.Context(), sim.Sim(), st, "ft"); err != nil {
		t.Fatal(err)
	}
	rep, err := ipledgerv1.NewAdminServiceClient(conn2).Check(t.Context(), &ipledgerv1.CheckRequest{IncludeEc2: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.GetOk() {
		t.Fatalf("check after failover: %v", rep.GetFindings())
	}
}
