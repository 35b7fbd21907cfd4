package server_test

import (
	"slices"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
)

// TestPendingInstanceHasAddressesBeforeItsAgent: an instance launched with the cluster tag
// stays pending in the simulator, and no agent runs on it. The leader finds it through its
// filtered DescribeInstances, registers it under its private DNS name and assigns its first
// addresses on its primary ENI, in EC2, while it is still pending. Once it runs, its agent's
// registration adopts exactly those addresses as its lease; a pending instance whose tag names
// another cluster is left alone.
func TestPendingInstanceHasAddressesBeforeItsAgent(t *testing.T) {
	var cfg config.Config
	s := servertest.StartDev(t, func(c *config.Config) {
		c.PendingDiscoveryInterval = config.Duration(200 * time.Millisecond)
		// key=value: the simulator gives every instance this tag, and another value is
		// another cluster's instance.
		c.AttestInstanceTag = "ipledger.io/test-cluster=a"
		cfg = *c
	})
	conn := servertest.Dial(t, s.GRPCAddr())
	admin := ipledgerv1.NewAdminServiceClient(conn)
	sim := s.Sim()
	subnet := servertest.Instances(s)[0].SubnetID
	tags := server.SimInstanceTags(cfg)
	if len(tags) != 1 {
		t.Fatalf("the dev cluster tag is %v", tags)
	}
	run := func(tags map[string]string) ec2sim.InstanceInfo {
		t.Helper()
		infos, err := sim.Sim().RunInstances(t.Context(), ec2sim.InstanceSpec{InstanceType: "m5.large", SubnetID: subnet, Tags: tags, Pending: true}, 1)
		if err != nil {
			t.Fatal(err)
		}
		return infos[0]
	}
	pending := run(nil)
	var key string
	for k := range tags {
		key = k
	}
	if pending.Tags[key] != tags[key] {
		t.Fatalf("the pending instance's tags %v lack the cluster tag %v", pending.Tags, tags)
	}
	other := run(map[string]string{key: "b"})

	node := func(name string) *ipledgerv1.NodeDetail {
		resp, err := admin.GetNode(t.Context(), &ipledgerv1.GetNodeRequest{NodeName: name})
		if err != nil {
			return nil
		}
		return resp
	}
	var onENI []string
	servertest.WaitFor(t, 20*time.Second, "addresses on the pending instance's primary ENI", func() bool {
		onENI = servertest.SimENI(t, sim, pending.PrimaryENI).SecondaryIPs
		return node(pending.PrivateDNSName) != nil && len(onENI) > 0
	})
	if st := instanceState(sim, pending.ID); st != "pending" {
		t.Fatalf("instance is %s, want still pending", st)
	}
	if node(other.PrivateDNSName) != nil {
		t.Fatal("a pending instance of another cluster was registered")
	}
	if e := servertest.SimENI(t, sim, other.PrimaryENI); len(e.SecondaryIPs) != 0 {
		t.Fatalf("a pending instance of another cluster has addresses %v", e.SecondaryIPs)
	}

	if err := sim.Sim().StartInstances(t.Context(), pending.ID); err != nil {
		t.Fatal(err)
	}
	onENI = servertest.SimENI(t, sim, pending.PrimaryENI).SecondaryIPs
	agent := servertest.NewAgent(t, conn, pending)
	pool := agent.Register().GetPool()
	got := servertest.Addresses(pool, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)
	slices.Sort(got)
	want := slices.Clone(onENI)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("the agent's registration leases %v; EC2 has %v on the primary ENI", got, want)
	}
	rep, err := admin.Check(t.Context(), &ipledgerv1.CheckRequest{IncludeEc2: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.GetOk() {
		t.Fatalf("check: %v", rep)
	}
}

func instanceState(sim *ec2sim.Server, id string) string {
	for _, in := range sim.Sim().Snapshot().Instances {
		if in.ID == id {
			return in.State
		}
	}
	return ""
}
