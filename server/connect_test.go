package server_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/dev"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
	"github.com/ipledger/ipledger/server/store"
)

// A replica that cannot reach etcd stays up, answers /healthz, says why it is not ready, and
// leads once etcd is there: under Kubernetes this avoids a crash loop whose back-off would
// delay recovery long after quorum returns.
func TestReplicaWaitsForEtcd(t *testing.T) {
	addr := freePort(t)
	cfg := config.DevConfig(t.TempDir())
	cfg.EtcdEndpoints = []string{"http://" + addr}
	cfg.SessionTTL = config.Duration(2 * time.Second)
	// --dev with --etcd-endpoints needs a simulator that outlives the replica, as that etcd does.
	simCfg := ec2sim.DefaultConfig()
	simCfg.Throttle = false
	sim, err := ec2sim.Start(simCfg, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	cfg.EC2Endpoint = sim.Endpoint()
	s, err := dev.Start(t.Context(), cfg, server.Options{Logger: servertest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	base := "http://" + s.HTTPAddr()
	servertest.WaitFor(t, 10*time.Second, "readyz to say it waits for etcd", func() bool {
		code, body := get(t, base+"/readyz")
		return code == 503 && strings.Contains(body, "waiting for etcd")
	})
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz %d while etcd is down", code)
	}
	if st := s.ClusterStatus(t.Context()); st.GetStoreHealthy() || st.GetIsLeader() || !strings.Contains(st.GetStoreMessage(), "etcd") {
		t.Fatalf("status while etcd is down: %v", st)
	}

	emb, err := store.StartEmbedded(t.Context(), store.EmbeddedConfig{Dir: t.TempDir(), ClientAddr: addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	servertest.WaitFor(t, 20*time.Second, "leadership once etcd is up", s.IsLeader)
	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, "leader") {
		t.Fatalf("/readyz after etcd came: %d %q", code, body)
	}
}

// The production path constructs no simulator and no etcd: server.Start refuses a
// configuration that needs them, and package dev starts them.
func TestStartNeedsTheDevCompositionForItsBackends(t *testing.T) {
	cfg := config.DevConfig(t.TempDir())
	if _, err := server.Start(t.Context(), cfg, server.Options{}); !errors.Is(err, server.ErrNeedsBackends) {
		t.Fatalf("server.Start with --dev and no endpoints: %v, want ErrNeedsBackends", err)
	}
	cfg.EC2Endpoint = "http://127.0.0.1:1"
	if _, err := server.Start(t.Context(), cfg, server.Options{}); !errors.Is(err, server.ErrNeedsBackends) {
		t.Fatalf("server.Start without etcd endpoints: %v, want ErrNeedsBackends", err)
	}
	s := servertest.StartDev(t, nil)
	if s.Sim() == nil || s.Store() == nil {
		t.Fatal("dev.Start did not give the replica its simulator and etcd")
	}
}
