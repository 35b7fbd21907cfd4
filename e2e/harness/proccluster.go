package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ipledger/ipledger/e2e/etcdcluster"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
	"github.com/ipledger/ipledger/server/store"
)

// ProcClusterConfig describes the cluster StartProcCluster runs.
type ProcClusterConfig struct {
	// Name is the cluster name (default "e2e").
	Name string
	// Replicas is the number of ipledger-server processes (default 3).
	Replicas int
	// EtcdMembers is the size of the etcd cluster (default 3).
	EtcdMembers int
	// SessionTTL is every replica's --session-ttl (default 2 s).
	SessionTTL time.Duration
	// Sim configures the EC2 simulator (default: ec2sim.DefaultConfig(), EC2's throttling on).
	Sim *ec2sim.Config
	// Args are extra flags for every replica (later flags win over the defaults).
	Args []string
	// ServerBinary is the ipledger-server the replicas run (default: this checkout's,
	// Binary(t, "ipledger-server")); ServerProc.SetBinary changes a replica's later runs.
	ServerBinary string
}

// ProcCluster is ipledger as it runs in production, on loopback: a real multi-member etcd
// cluster (package etcdcluster), the EC2 simulator (in this process, so a test can inject
// faults and terminate instances directly), and several ipledger-server processes, each kept
// running by a supervisor (ServerProc). Agents join with NewNode(t, c.Sim, instance, c.Addrs()...).
type ProcCluster struct {
	T    testing.TB
	Name string
	// Dir holds the replicas' logs and etcd's data.
	Dir      string
	Etcd     *etcdcluster.Cluster
	Sim      *ec2sim.Server
	Replicas []*ServerProc
	// Store is the test's own etcd client (reads: Load); it writes nothing.
	Store *store.Store

	conns []*grpc.ClientConn
	stop  chan struct{}
	wg    sync.WaitGroup
}

// StartProcCluster starts etcd, the simulator and the replicas, and waits until one of them
// leads. Everything stops in t.Cleanup. It skips the test when the etcd binary is missing
// (Debian: etcd-server; `make test` installs it).
func StartProcCluster(t testing.TB, cfg ProcClusterConfig) *ProcCluster {
	t.Helper()
	if _, err := etcdcluster.FindBinary(""); errors.Is(err, etcdcluster.ErrNoBinary) {
		t.Skipf("skipping: %v", err)
	}
	if cfg.Name == "" {
		cfg.Name = "e2e"
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 3
	}
	if cfg.EtcdMembers == 0 {
		cfg.EtcdMembers = 3
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 2 * time.Second
	}
	simCfg := ec2sim.DefaultConfig()
	if cfg.Sim != nil {
		simCfg = *cfg.Sim
	}
	if simCfg.Logger == nil {
		simCfg.Logger = Logger("ec2sim")
	}
	bin := cfg.ServerBinary
	if bin == "" {
		bin = Binary(t, "ipledger-server")
	}
	c := &ProcCluster{T: t, Name: cfg.Name, Dir: t.TempDir(), stop: make(chan struct{})}

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	etcdDir := filepath.Join(c.Dir, "etcd")
	if err := os.Mkdir(etcdDir, 0o755); err != nil {
		t.Fatal(err)
	}
	etcd, err := etcdcluster.Start(ctx, etcdcluster.Config{Members: cfg.EtcdMembers, Dir: etcdDir, Logger: Logger("etcd")})
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	c.Etcd = etcd
	t.Cleanup(func() {
		if err := etcd.Stop(); err != nil {
			t.Errorf("stop etcd: %v", err)
		}
	})
	sim, err := ec2sim.Start(simCfg, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start EC2 simulator: %v", err)
	}
	c.Sim = sim
	t.Cleanup(func() { _ = sim.Close() })

	st, err := store.Open(ctx, store.Config{Endpoints: etcd.Endpoints(), ClusterName: c.Name, Logger: Logger("store")})
	if err != nil {
		t.Fatalf("open etcd: %v", err)
	}
	c.Store = st
	t.Cleanup(func() { _ = st.Close() })

	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + c.Dir,
		// The simulator accepts any signature; real credentials must never reach it (or AWS).
		"AWS_ACCESS_KEY_ID=ipledger-e2e",
		"AWS_SECRET_ACCESS_KEY=ipledger-e2e",
		"AWS_REGION=" + sim.Sim().Snapshot().Region,
		"AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=/dev/null",
		"AWS_SHARED_CREDENTIALS_FILE=/dev/null",
	}
	for i := range cfg.Replicas {
		r := &ServerProc{
			Index:   i,
			GRPC:    FreePort(t),
			HTTP:    FreePort(t),
			LogPath: filepath.Join(c.Dir, fmt.Sprintf("server-%d.log", i)),
			bin:     bin,
			env:     env,
		}
		r.args = append([]string{
			"--cluster-name", c.Name,
			"--region", sim.Sim().Snapshot().Region,
			"--etcd-endpoints", strings.Join(etcd.Endpoints(), ","),
			"--ec2-endpoint", sim.Endpoint(),
			"--grpc-listen", r.GRPC,
			"--http-listen", r.HTTP,
			"--session-ttl", cfg.SessionTTL.String(),
			"--release-delay", "1s",
			"--release-cooldown", "1s",
			"--proposal-timeout", "5s",
			"--reconcile-interval", "1s",
			"--drift-grace", "1s",
			"--instance-check-interval", "1s",
			"--log-level", "info",
		}, cfg.Args...)
		conn, err := grpc.NewClient(r.GRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		c.conns = append(c.conns, conn)
		c.Replicas = append(c.Replicas, r)
	}
	t.Cleanup(func() {
		close(c.stop)
		c.wg.Wait()
		for _, conn := range c.conns {
			_ = conn.Close()
		}
		if t.Failed() {
			for _, r := range c.Replicas {
				t.Logf("replica %d (%s): runs %d, exits %v; log %s:\n%s", r.Index, r.GRPC, r.Runs(), r.Exits(), r.LogPath, tail(r.LogPath, 60))
				keepArtifact(t, r.LogPath, fmt.Sprintf("%s-server-%d.log", cfg.Name, r.Index))
			}
		}
	})
	for _, r := range c.Replicas {
		c.wg.Go(func() { r.supervise(c.stop) })
	}
	c.WaitLeader(30*time.Second, nil)
	return c
}

// Addrs are the replicas' gRPC addresses (an agent's --server list).
func (c *ProcCluster) Addrs() []string {
	out := make([]string, len(c.Replicas))
	for i, r := range c.Replicas {
		out[i] = r.GRPC
	}
	return out
}

// Admin is an AdminService client of replica i.
func (c *ProcCluster) Admin(i int) ipledgerv1.AdminServiceClient {
	return ipledgerv1.NewAdminServiceClient(c.conns[i])
}

// NodeService is a NodeService client of replica i.
func (c *ProcCluster) NodeService(i int) ipledgerv1.NodeServiceClient {
	return ipledgerv1.NewNodeServiceClient(c.conns[i])
}

// Status asks replica i for GetClusterStatus (within 3 s).
func (c *ProcCluster) Status(ctx context.Context, i int) (*ipledgerv1.ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return c.Admin(i).GetClusterStatus(ctx, &ipledgerv1.GetClusterStatusRequest{})
}

// Leader is the replica that says it leads and whose store is healthy (nil when none does).
func (c *ProcCluster) Leader(ctx context.Context) *ServerProc {
	for _, r := range c.Replicas {
		if r.PID() == 0 {
			continue
		}
		st, err := c.Status(ctx, r.Index)
		if err == nil && st.GetIsLeader() && st.GetStoreHealthy() {
			return r
		}
	}
	return nil
}

// WaitLeader waits up to d for a leader other than not (nil: any) and returns it; the test fails
// when none leads in time.
func (c *ProcCluster) WaitLeader(d time.Duration, not *ServerProc) *ServerProc {
	c.T.Helper()
	var l *ServerProc
	servertest.WaitFor(c.T, d, "a replica to lead", func() bool {
		l = c.Leader(c.T.Context())
		return l != nil && l != not
	})
	return l
}

// LeaderAdmin is an AdminService client of the replica that leads now (waiting up to 20 s).
func (c *ProcCluster) LeaderAdmin() ipledgerv1.AdminServiceClient {
	c.T.Helper()
	return c.Admin(c.WaitLeader(20*time.Second, nil).Index)
}

// Invariants checks EC2 against etcd for the cluster (see Invariants).
func (c *ProcCluster) Invariants(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return Invariants(ctx, c.Sim.Sim(), c.Store, c.Name)
}

// keepArtifact copies a file into $IPLEDGER_ARTIFACTS_DIR (when set) under name, so a failed
// run's whole logs outlive the test's temporary directory.
func keepArtifact(t testing.TB, path, name string) {
	dir := os.Getenv("IPLEDGER_ARTIFACTS_DIR")
	if dir == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Logf("keep %s: %v", path, err)
		return
	}
	dst := filepath.Join(dir, name)
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Logf("keep %s: %v", path, err)
		return
	}
	t.Logf("kept %s as %s", path, dst)
}
