package ctl

import (
	"strings"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/servertest"
)

// TestStandbyRedirectsWritesToTheLeader runs two replicas sharing one etcd and one EC2
// simulator: ipledgerctl pointed at the standby gets reads from the standby and has its
// changes carried out by the leader.
func TestStandbyRedirectsWritesToTheLeader(t *testing.T) {
	be := servertest.StartBackends(t)

	replica := func() *server.Server {
		cfg := devConfig(t)
		be.Use(&cfg)
		return startServer(t, cfg)
	}
	a := replica()
	servertest.WaitFor(t, 15*time.Second, "the first replica to lead", a.IsLeader)
	b := replica()
	leader, standby := a.GRPCAddr(), b.GRPCAddr()
	servertest.WaitFor(t, 15*time.Second, "the standby to know the leader", func() bool { return b.LeaderAddress() == leader })

	// A node, registered with the leader, so there is something to drain.
	ag := newTestAgent(t, servertest.Dial(t, leader), servertest.Running(be.Sim)[0])
	ag.Register()
	servertest.WaitFor(t, 10*time.Second, "the standby to follow the registration", func() bool {
		_, ok := b.Ledger().Node(ag.Name())
		return ok
	})

	// status says who answered.
	var st Status
	decode(t, mustCtl(t, 0, standby, "status", "-o", "json"), &st)
	if st.Replica != standby || st.IsLeader || st.Leader != leader || st.Server != standby {
		t.Fatalf("status from the standby: %+v", st)
	}
	if r := mustCtl(t, 0, standby, "status"); !strings.Contains(r.stdout, standby+" (standby)") {
		t.Fatalf("status table:\n%s", r.stdout)
	}

	// Reads: answered by the standby itself, no redirect.
	r := mustCtl(t, 0, standby, "nodes", "-o", "json")
	var nodes []NodeSummary
	decode(t, r, &nodes)
	if len(nodes) != 1 || nodes[0].NodeName != ag.Name() || r.stderr != "" {
		t.Fatalf("nodes from the standby: %s", r)
	}

	// Writes: redirected once to the leader, which carries them out.
	r = mustCtl(t, 0, standby, "drain", ag.Name(), "-o", "json")
	if !strings.Contains(r.stderr, standby+" is not the leader; sending drain node "+ag.Name()+" to the leader at "+leader) {
		t.Fatalf("drain through the standby: %s", r)
	}
	var d NodeDetail
	decode(t, r, &d)
	if !d.Draining {
		t.Fatalf("drain printed %+v", d)
	}
	if rec, _ := a.Ledger().Node(ag.Name()); !rec.Draining {
		t.Fatal("the leader's ledger does not have the node draining")
	}
	mustCtl(t, 0, standby, "policy", "set", "-f", writeFile(t, "p.yaml", "name: via-standby\nwarm_ip_target: 2\n"))
	ps, err := admin(t, leader).ListPolicies(t.Context(), &ipledgerv1.ListPoliciesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range ps.GetPolicies() {
		found = found || p.GetName() == "via-standby"
	}
	if !found {
		t.Fatalf("the policy set through the standby is not on the leader: %v", ps.GetPolicies())
	}
	// Leader-only reads and check follow the redirect too.
	mustCtl(t, 0, standby, "limiter")
	mustCtl(t, 0, standby, "check", "--no-ec2")

}
