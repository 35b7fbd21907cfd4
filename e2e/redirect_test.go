package e2e_test

import (
	"testing"
	"time"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
	"github.com/ipledger/ipledger/server/servertest"
)

// TestLeaderRedirect: two replicas share one etcd and one EC2; the agent is told only the
// standby's address, follows its NOT_LEADER answer to the leader, and serves pods. When the
// leader goes away the standby takes over and the agent follows it there.
func TestLeaderRedirect(t *testing.T) {
	harness.RequireNodeNamespaces(t)
	c := harness.StartCluster(t, 2, nil)
	leader, standby := c.Leader(), c.Standby()
	if leader == nil || standby == nil {
		t.Fatal("want one leader and one standby")
	}
	inst := harness.Running(c.Sim.Sim())[4]
	n := harness.NewNode(t, c.Sim, inst, standby.GRPCAddr())
	ag := n.StartAgentInProcess(nil)
	v := ag.WaitConnected(20*time.Second, 1)
	if v.Server.Target != leader.Advertise() {
		t.Fatalf("agent connected to %s, want the leader %s (told only the standby %s)", v.Server.Target, leader.Advertise(), standby.GRPCAddr())
	}
	first := n.NewPod("first")
	ip1 := n.Add(first)
	waitServerPods(t, harness.Admin(t, leader.GRPCAddr()), n.Name(), map[string]string{ip1.String(): first.ContainerID})

	// The leader goes away; the standby leads after the session TTL, and the agent follows.
	if err := leader.Close(); err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, 20*time.Second, "the standby to lead", standby.IsLeader)
	ag.WaitView(30*time.Second, "the agent on the new leader", func(v agent.PoolView) bool {
		return v.Server.Connected && v.Server.Target == standby.GRPCAddr()
	})
	second := n.NewPod("second")
	ip2 := n.Add(second)
	if ip2 == ip1 {
		t.Fatalf("the new leader's pool gave %s again", ip1)
	}
	n.Plugin("CHECK", first, "1.1.0").MustSucceed(t, "CHECK of the first pod after the failover")
	if err := nstest.Ping(second.NS, ip1); err != nil {
		t.Errorf("second -> first after the failover: %v", err)
	}
	waitServerPods(t, harness.Admin(t, standby.GRPCAddr()), n.Name(),
		map[string]string{ip1.String(): first.ContainerID, ip2.String(): second.ContainerID})
	n.Del(first)
	n.Del(second)
	harness.Eventually(t, 10*time.Second, "EC2 and etcd to agree", func() error {
		return servertest.ConsistentMidRelease(t.Context(), c.Sim.Sim(), standby.Store(), harness.ClusterName)
	})
}

// TestLeaderKilled: replicas and the agent are processes; the agent lists the standby first and
// is sent on to the leader. The leader is killed with SIGKILL mid-life: the standby leads within
// the session TTL, the agent follows, its pods keep their addresses, new pods get new ones, and
// EC2 and etcd agree.
func TestLeaderKilled(t *testing.T) {
	harness.RequireNodeNamespaces(t)
	c := harness.StartCluster(t, 0, nil)
	r1, r2 := c.StartReplicaProcess(t), c.StartReplicaProcess(t)
	leader := harness.LeaderProc(t, 30*time.Second, r1, r2)
	standby := r1
	if leader == r1 {
		standby = r2
	}
	inst := harness.Running(c.Sim.Sim())[0]
	n := harness.NewNode(t, c.Sim, inst, standby.GRPC, leader.GRPC)
	ag := n.StartAgent()
	v := ag.WaitConnected(20*time.Second, 1)
	if v.Server.Target != leader.GRPC {
		t.Fatalf("agent connected to %s, want the leader %s", v.Server.Target, leader.GRPC)
	}
	first := n.NewPod("first")
	ip1 := n.Add(first)

	killed := time.Now()
	leader.Kill()
	servertest.WaitFor(t, 20*time.Second, "the standby to lead", standby.IsLeader)
	v = ag.WaitView(30*time.Second, "the agent on the new leader", func(v agent.PoolView) bool {
		return v.Server.Connected && v.Server.Target == standby.GRPC
	})
	t.Logf("leader killed; the agent's stream was up on the new leader %v later", time.Since(killed).Round(time.Millisecond))
	second := n.NewPod("second")
	ip2 := n.Add(second)
	if ip2 == ip1 {
		t.Fatalf("the new leader's pool gave %s again", ip1)
	}
	n.Plugin("CHECK", first, "1.1.0").MustSucceed(t, "CHECK of the first pod after the leader died")
	waitServerPods(t, harness.Admin(t, standby.GRPC), n.Name(),
		map[string]string{ip1.String(): first.ContainerID, ip2.String(): second.ContainerID})
	st := c.Store(t)
	harness.Eventually(t, 20*time.Second, "EC2 and etcd to agree", func() error {
		return servertest.ConsistentMidRelease(t.Context(), c.Sim.Sim(), st, harness.ClusterName)
	})
	n.Del(first)
	n.Del(second)
}
