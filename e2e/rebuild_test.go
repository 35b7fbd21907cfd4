package e2e_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"google.golang.org/protobuf/proto"

	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// TestEtcdLossRebuildsFromEC2 loses etcd whole under a running cluster (every key of the
// cluster deleted, as a new empty etcd would be) while pods run on two nodes. The replicas then
// refuse to lead, saying why and which flag rebuilds; started again with --rebuild-from-ec2
// they rebuild the ledger from EC2 (the cluster"s ENIs, the addresses on them) and the agents"
// registrations: every running pod keeps its address, leased to its node again, new pods get
// addresses no running pod uses, and EC2, etcd and the agents agree (`ipledgerctl check` clean).
func TestEtcdLossRebuildsFromEC2(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: starts etcd, two servers and agents")
	}
	nstest.RequireIPNetns(t)
	nstest.GuardRootNS(t, "eni", "sim-")
	c := harness.StartProcCluster(t, harness.ProcClusterConfig{Name: "rebuild", Replicas: 2})
	rs := &resilience{c: c}
	// Nodes of role "rebuild" hold 12 addresses: more than an m5.large"s primary ENI takes, so
	// each has an ENI of ipledger"s, tagged for the cluster, with pods on it.
	policies := append(rolePolicies(), &ipledgerv1.NodePolicy{Name: "e2e-rebuild", Order: 5,
		Selector: &ipledgerv1.NodeSelector{Labels: map[string]string{"e2e-role": "rebuild"}}, MinimumIpTarget: proto.Uint32(12)})
	for _, p := range policies {
		if _, err := c.LeaderAdmin().SetPolicy(t.Context(), &ipledgerv1.SetPolicyRequest{Policy: p}); err != nil {
			t.Fatalf("set policy %s: %v", p.GetName(), err)
		}
	}
	rs.watch(t)
	rs.figs.name = "rebuild.txt"
	defer rs.figs.report(t)

	insts := rs.launch(t, subnetAgent, 3)
	nodes := []*rsNode{rs.join(t, insts[0], "rebuild"), rs.join(t, insts[1], "rebuild")}
	for _, n := range nodes {
		n.Agent().WaitView(30*time.Second, "12 addresses on two ENIs", func(v agentPoolView) bool {
			return v.Server.Connected && len(poolIPs(v)) == 12 && len(v.ENIs) == 2
		})
	}
	// Pods on both ENIs of each node.
	before := map[string]*podRun{}
	for _, n := range nodes {
		for range 11 {
			pr := startPod(n, n.pod("before"), time.Now().Add(45*time.Second))
			if pr.err != nil {
				t.Fatalf("pod before the loss: %s", pr)
			}
			before[pr.ip.String()] = pr
		}
	}
	rs.settle(t, "before etcd is lost")

	// etcd loses everything of the cluster.
	lostAt := time.Now()
	resp, err := c.Store.Client().Delete(t.Context(), "/ipledger/"+c.Name+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Deleted == 0 {
		t.Fatal("the wipe deleted nothing: is the key prefix right?")
	}

	// Every replica refuses to lead, and says what to do.
	harness.Eventually(t, 60*time.Second, "the replicas to refuse an empty etcd", func() error {
		for _, r := range c.Replicas {
			b, err := os.ReadFile(r.LogPath)
			if err != nil {
				return err
			}
			if !strings.Contains(string(b), "etcd holds no state for cluster") || !strings.Contains(string(b), "--rebuild-from-ec2") {
				return fmt.Errorf("replica %d has not refused yet", r.Index)
			}
		}
		return nil
	})
	if l := c.Leader(t.Context()); l != nil {
		t.Fatalf("replica %d leads an empty etcd without --rebuild-from-ec2", l.Index)
	}
	// Meanwhile the pods keep their addresses, and nothing is leased.
	for _, n := range nodes {
		v := n.Agent().MustView()
		if v.Counts.InUse != 11 {
			t.Fatalf("%s: %d pods in use while etcd is lost, want 11", n.Name(), v.Counts.InUse)
		}
	}

	// The operator starts the replicas with --rebuild-from-ec2.
	rebuildAt := time.Now()
	for _, r := range c.Replicas {
		r.SetArgs(append(r.Args(), "--rebuild-from-ec2"))
		if r.PID() != 0 {
			if _, err := r.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	leader := c.WaitLeader(60*time.Second, nil)
	ledAt := time.Now()

	// New pods: addresses no running pod uses, leased by the rebuilt ledger.
	var after []*podRun
	for _, n := range nodes {
		pr := startPod(n, n.pod("after"), time.Now().Add(60*time.Second))
		if pr.err != nil {
			t.Fatalf("pod after the rebuild: %s", pr)
		}
		if old, ok := before[pr.ip.String()]; ok {
			t.Fatalf("%s got %s, which pod %s on %s uses", pr.pod.Name, pr.ip, old.pod.Name, old.node.Name())
		}
		after = append(after, pr)
	}
	served := after[0].done
	// A node that joins now is served by new allocations (warm_ip_target 0: its pod"s ADD
	// waits for one), from addresses no running pod uses.
	joined := rs.join(t, insts[2], roleProbe)
	joined.Agent().WaitConnected(30*time.Second, 0)
	pr := startPod(joined, joined.pod("joined"), time.Now().Add(60*time.Second))
	if pr.err != nil {
		t.Fatalf("a pod on a node that joined after the rebuild: %s", pr)
	}
	if old, ok := before[pr.ip.String()]; ok {
		t.Fatalf("%s got %s, which pod %s on %s uses", pr.pod.Name, pr.ip, old.pod.Name, old.node.Name())
	}
	rs.settle(t, "after the rebuild")
	// Every pod of before still has its address, leased to its node (settle checked the leases
	// against etcd and EC2; here: the agents still hold them for the same pods).
	for ip, pr := range before {
		v := pr.node.Agent().MustView()
		if _, ok := podIPs(v)[ip]; !ok {
			t.Errorf("pod %s on %s lost %s in the rebuild", pr.pod.Name, pr.node.Name(), ip)
		}
	}
	rs.figs.add("etcd lost with %d pods running: replicas refused to lead an empty etcd; restarted with --rebuild-from-ec2, replica %d led after %s, first new pod served %s after the restart (%s after the loss); every pod kept its address",
		len(before), leader.Index, ms(ledAt.Sub(rebuildAt)), ms(served.Sub(rebuildAt)), ms(served.Sub(lostAt)))
}
