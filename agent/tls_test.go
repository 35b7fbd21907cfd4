package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/internal/mtls"
	"github.com/ipledger/ipledger/internal/mtls/mtlstest"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/dev"
)

// An agent with its node's certificate registers with a mutual-TLS server; an agent whose
// certificate names another node, or whose files do not load, says so at start.
func TestAgentMutualTLS(t *testing.T) {
	ca := mtlstest.NewCA(t, "cluster CA")
	srvFiles := ca.Issue(t, "server", mtlstest.Leaf{Identity: mtls.ServerIdentity, Server: true})
	cfg := config.DevConfig(t.TempDir())
	cfg.Insecure = false
	cfg.SimThrottle = false
	cfg.TLSCertFile, cfg.TLSKeyFile, cfg.TLSClientCAFile = srvFiles.Cert, srvFiles.Key, ca.CAFile
	s, err := dev.Start(t.Context(), cfg, server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	deadline := time.Now().Add(15 * time.Second)
	for !s.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("the server did not lead")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var running []string
	insts := map[string]string{} // node name -> instance id
	for _, in := range s.Sim().Sim().Snapshot().Instances {
		if in.State == "running" {
			running = append(running, in.PrivateDNSName)
			insts[in.PrivateDNSName] = in.ID
		}
	}
	agentFor := func(node string, f mtls.Files) Config {
		ep, err := s.Sim().IMDSEndpoint(insts[node])
		if err != nil {
			t.Fatal(err)
		}
		c := DefaultConfig()
		dir := shortDir(t)
		c.Servers = []string{s.GRPCAddr()}
		c.IMDSEndpoint = ep
		c.SocketPath = dir + "/agent.sock"
		c.CheckpointPath = dir + "/state/checkpoint.json"
		c.MetricsListen = ""
		c.ManageNetworking = false
		c.DiscoveryTimeout = 10 * time.Second
		c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = f.Cert, f.Key, f.CA
		return c
	}

	t.Run("own certificate", func(t *testing.T) {
		node := running[0]
		runAgent(t, agentFor(node, ca.Issue(t, "node", mtlstest.Leaf{Identity: mtls.NodeIdentity(node)})))
		deadline := time.Now().Add(15 * time.Second)
		for {
			if c, ok := s.Ledger().NodeCounts(node); ok && c.Idle >= 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the agent did not register over mutual TLS and get its warm address")
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("another node's certificate", func(t *testing.T) {
		c := agentFor(running[1], ca.Issue(t, "node", mtlstest.Leaf{Identity: mtls.NodeIdentity(running[0])}))
		a, err := New(c)
		if err != nil {
			t.Fatal(err)
		}
		err = a.Run(t.Context())
		if err == nil || !strings.Contains(err.Error(), "not this node "+running[1]) {
			t.Fatalf("Run: %v, want an error naming the mismatch", err)
		}
		if _, ok := s.Ledger().Node(running[1]); ok {
			t.Fatal("the node got registered anyway")
		}
	})

	t.Run("missing files", func(t *testing.T) {
		c := agentFor(running[1], mtls.Files{Cert: "/nonexistent/node.crt", Key: "/nonexistent/node.key", CA: ca.CAFile})
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), "/nonexistent/node.crt") {
			t.Fatalf("New: %v, want an error naming the file", err)
		}
	})
}
