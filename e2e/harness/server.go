package harness

import (
	"fmt"
	"log/slog"
	"os"
	"sort"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/dev"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
	"github.com/ipledger/ipledger/server/store"
)

// LogEnv, when set, sends the logs of in-process servers and agents to stderr (debug level)
// and keeps agent process logs on stderr too.
const LogEnv = "IPLEDGER_TEST_LOG"

// Logger is the logger of in-process components: discarded unless $IPLEDGER_TEST_LOG is set.
func Logger(component string) *slog.Logger {
	if os.Getenv(LogEnv) != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("component", component)
	}
	return slog.New(slog.DiscardHandler)
}

// Eventually polls check every 20 ms until it returns nil, failing the test with its last error
// after d.
func Eventually(t testing.TB, d time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", d, what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DevConfig is servertest.DevConfig (embedded etcd in a temporary directory, the in-process
// simulator without throttling, no release delay, short session and intervals) with a 1 s
// release cooldown and instance checks every second, paced for agents and plugins as processes.
func DevConfig(t testing.TB) config.Config {
	t.Helper()
	cfg := servertest.DevConfig(t)
	cfg.ReleaseCooldown = config.Duration(time.Second)
	cfg.InstanceCheckInterval = config.Duration(time.Second)
	return cfg
}

// StartDev starts an in-process --dev replica from DevConfig (changed by mod, when not nil),
// waits until it leads, and closes it in t.Cleanup.
func StartDev(t testing.TB, mod func(*config.Config)) *server.Server {
	t.Helper()
	cfg := DevConfig(t)
	if mod != nil {
		mod(&cfg)
	}
	return StartReplica(t, cfg)
}

// StartReplica starts an in-process replica with cfg, waits until it leads when it is a --dev
// replica with its own etcd, and closes it in t.Cleanup.
func StartReplica(t testing.TB, cfg config.Config) *server.Server {
	t.Helper()
	s, err := dev.Start(t.Context(), cfg, server.Options{Logger: Logger("server")})
	if err != nil {
		t.Fatalf("start server: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if len(cfg.EtcdEndpoints) == 0 {
		servertest.WaitFor(t, 20*time.Second, "the dev server to lead", s.IsLeader)
	}
	return s
}

// Cluster is a set of replicas sharing one embedded etcd and one EC2 simulator, as in
// production (where each replica is its own process).
type Cluster struct {
	Etcd     *store.Embedded
	Sim      *ec2sim.Server
	Replicas []*server.Server
}

// StartCluster starts an embedded etcd, an EC2 simulator (default scenario, no throttling) and
// n replicas of cluster "e2e" in this process, and waits until one of them leads (n may be 0:
// replicas are then started as processes with StartReplicaProcess).
func StartCluster(t testing.TB, n int, mod func(*config.Config)) *Cluster {
	t.Helper()
	emb, err := store.StartEmbedded(t.Context(), store.EmbeddedConfig{Dir: t.TempDir(), Logger: Logger("etcd")})
	if err != nil {
		t.Fatalf("start embedded etcd: %v", err)
	}
	t.Cleanup(func() { _ = emb.Close() })
	simCfg := ec2sim.DefaultConfig()
	simCfg.Throttle = false
	simCfg.Logger = Logger("ec2sim")
	sim, err := ec2sim.Start(simCfg, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start EC2 simulator: %v", err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	c := &Cluster{Etcd: emb, Sim: sim}
	for range n {
		cfg := DevConfig(t)
		cfg.ClusterName = ClusterName
		cfg.EtcdEndpoints = emb.Endpoints()
		cfg.EC2Endpoint = sim.Endpoint()
		if mod != nil {
			mod(&cfg)
		}
		c.Replicas = append(c.Replicas, StartReplica(t, cfg))
	}
	if n > 0 {
		servertest.WaitFor(t, 20*time.Second, "a leader", func() bool { return c.Leader() != nil })
	}
	return c
}

// Leader is the replica that leads (nil when none does).
func (c *Cluster) Leader() *server.Server {
	for _, r := range c.Replicas {
		if r.IsLeader() {
			return r
		}
	}
	return nil
}

// Standby is a replica that does not lead (nil when none).
func (c *Cluster) Standby() *server.Server {
	for _, r := range c.Replicas {
		if !r.IsLeader() {
			return r
		}
	}
	return nil
}

// Dial connects to a gRPC address on loopback; closed in t.Cleanup.
func Dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// Admin is an AdminService client of the replica at addr.
func Admin(t testing.TB, addr string) ipledgerv1.AdminServiceClient {
	t.Helper()
	return ipledgerv1.NewAdminServiceClient(Dial(t, addr))
}

// Running returns the simulator's running instances, by id.
func Running(sim *ec2sim.Sim) []ec2sim.InstanceInfo {
	var out []ec2sim.InstanceInfo
	for _, in := range sim.Snapshot().Instances {
		if in.State == "running" {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// SimENI returns the simulator's view of an ENI.
func SimENI(sim *ec2sim.Sim, id string) (ec2sim.ENIInfo, error) {
	e, ok := sim.Snapshot().ENI(id)
	if !ok {
		return ec2sim.ENIInfo{}, fmt.Errorf("ENI %s is not in the simulator", id)
	}
	return e, nil
}
