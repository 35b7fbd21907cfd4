package e2e_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/servertest"
)

// TestAgentRestartWithStaleCheckpoint restarts a killed agent on a checkpoint older than the
// server's pool (the server assigned more addresses after it was written, some while the agent
// was down): the agent takes the server's newer pool and keeps every address its pods use.
func TestAgentRestartWithStaleCheckpoint(t *testing.T) {
	harness.RequireNodeNamespaces(t)
	s := harness.StartDev(t, nil)
	admin := harness.Admin(t, s.GRPCAddr())
	nodes := ipledgerv1.NewNodeServiceClient(harness.Dial(t, s.GRPCAddr()))
	inst := harness.Running(s.Sim().Sim())[2]
	n := harness.NewNode(t, s.Sim(), inst, s.GRPCAddr())
	ag := n.StartAgent()
	ag.WaitConnected(20*time.Second, 1)

	p1, p2 := n.NewPod("p1"), n.NewPod("p2")
	ip1, ip2 := n.Add(p1), n.Add(p2)
	stale := harness.CopyCheckpoint(t, n.Checkpoint)
	staleGen := ag.MustView().Generation

	// The server's pool moves on: three more addresses, pushed to the running agent.
	ctx0, cancel0 := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel0()
	resp, err := nodes.RequestAddresses(ctx0, &ipledgerv1.RequestAddressesRequest{NodeName: n.Name(), Count: 3, KnownGeneration: staleGen})
	if err != nil {
		t.Fatal(err)
	}
	checkCIDRs(t, "RequestAddresses", resp.GetPool())
	ag.WaitView(10*time.Second, "the newer pool", func(v agent.PoolView) bool { return v.Generation >= resp.GetPool().GetGeneration() })

	// Crash, and the checkpoint of before comes back (a restored disk, an older copy).
	ag.Kill()
	stale.Put(t, n.Checkpoint)
	// While the agent is down the server moves on again (asking for as many addresses as the
	// pool holds makes it grow whatever is free).
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	grow := uint32(len(harness.PoolAddresses(resp.GetPool(), 0)))
	resp, err = nodes.RequestAddresses(ctx, &ipledgerv1.RequestAddressesRequest{NodeName: n.Name(), Count: grow, KnownGeneration: resp.GetPool().GetGeneration()})
	if err != nil {
		t.Fatal(err)
	}
	newest := resp.GetPool().GetGeneration()
	reg, err := nodes.RegisterNode(t.Context(), &ipledgerv1.RegisterNodeRequest{
		NodeName: n.Name(), InstanceId: inst.ID, InstanceType: inst.InstanceType, AvailabilityZone: inst.AvailabilityZone,
		SubnetId: inst.SubnetID, PrimaryEniId: inst.PrimaryENI, PrimaryIp: inst.PrivateIP,
	})
	if err != nil {
		t.Fatal(err)
	}
	checkCIDRs(t, "a repeated RegisterNode", reg.GetPool())

	ag = n.StartAgent()
	v := ag.WaitView(20*time.Second, "the server's newest pool", func(v agent.PoolView) bool {
		return v.Server.Connected && v.Generation >= newest
	})
	if v.Counts.Unleased != 0 {
		t.Errorf("addresses held but not leased after the restart: %+v", v.Counts)
	}
	// The agent converges to the server's pool (which may still be shrinking: with no release
	// delay the surplus the server grew while the agent was down goes back at once).
	var server *ipledgerv1.NodePool
	v = ag.WaitView(20*time.Second, "the agent's pool to match the server's", func(v agent.PoolView) bool {
		server = mustNode(t, admin, n.Name()).GetPool()
		return slices.Equal(viewAddresses(v), sortedKeys(harness.PoolAddresses(server, 0)))
	})
	for _, e := range v.ENIs {
		if e.SubnetCIDR == "" {
			t.Errorf("ENI %s has no subnet CIDR in the agent's pool", e.ID)
		}
	}
	want := map[string]string{ip1.String(): p1.ContainerID, ip2.String(): p2.ContainerID}
	got := map[string]string{}
	for _, p := range v.Pods {
		got[p.IP] = p.ContainerID
	}
	if len(got) != 2 || got[ip1.String()] != p1.ContainerID || got[ip2.String()] != p2.ContainerID {
		t.Fatalf("pods after the restart %v, want %v", got, want)
	}
	for _, p := range []*harness.Pod{p1, p2} {
		n.Plugin("CHECK", p, "1.1.0").MustSucceed(t, "CHECK "+p.Name+" after the restart")
	}
	waitServerPods(t, admin, n.Name(), want)
	p3 := n.NewPod("p3")
	ip3 := n.Add(p3)
	if ip3 == ip1 || ip3 == ip2 {
		t.Fatalf("a new pod got %s, which p1 (%s) or p2 (%s) holds", ip3, ip1, ip2)
	}
	if err := nstest.Ping(p3.NS, ip1); err != nil {
		t.Errorf("p3 -> p1 after the restart: %v", err)
	}
	for _, p := range []*harness.Pod{p1, p2, p3} {
		n.Del(p)
	}
	ag.WaitView(5*time.Second, "no pods", func(v agent.PoolView) bool { return len(v.Pods) == 0 })
	harness.Eventually(t, 10*time.Second, "EC2 and etcd to agree", func() error {
		return servertest.ConsistentMidRelease(t.Context(), s.Sim().Sim(), s.Store(), "dev")
	})
}

func checkCIDRs(t *testing.T, what string, p *ipledgerv1.NodePool) {
	t.Helper()
	for _, ni := range p.GetInterfaces() {
		if ni.GetSubnetCidr() == "" {
			t.Errorf("%s answered a pool without the subnet CIDR of ENI %s", what, ni.GetEniId())
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
