package ctl

import (
	"fmt"
	"strings"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/servertest"
)

// TestBoundPodsWithoutAddress: with a view of Kubernetes, nodes counts per node the pods bound
// to it that hold no address yet (BOUND-NO-IP) and those of them bound for 5 s or more
// (WAITING); node lists exactly those pods, bound earliest first, with their state. A bound pod
// the agent reports holding an address is in neither; a node with none shows 0 and an empty
// list. Without a Kubernetes view the columns say "-" and the table is absent.
func TestBoundPodsWithoutAddress(t *testing.T) {
	kc := servertest.NewCluster()
	s := servertest.StartWith(t, devConfig(t), server.Options{Cluster: kc})
	servertest.WaitFor(t, 15*time.Second, "leadership", s.IsLeader)
	conn := servertest.Dial(t, s.GRPCAddr())
	insts := servertest.Running(s.Sim())
	busy, idle := servertest.NewAgent(t, conn, insts[0]), servertest.NewAgent(t, conn, insts[1])
	busy.Register()
	idle.Register()
	busy.Sync()
	idle.Sync()
	ips := busy.WaitPool(15*time.Second, "an address", func(p *ipledgerv1.NodePool) bool {
		return len(servertest.Addresses(p, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)) > 0
	})
	served := servertest.Addresses(ips, ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)[0]
	busy.Report([]*ipledgerv1.PodAddress{{Ip: served, ContainerId: "c-served", Ifname: "eth0", PodNamespace: "shop", PodName: "served", PodUid: "uid-served"}}, 0)

	now := time.Now()
	kc.Bind(busy.Name(), "shop", "served", "uid-served", now.Add(-time.Minute))
	kc.Bind(busy.Name(), "shop", "old", "uid-old", now.Add(-30*time.Second))
	kc.Bind(busy.Name(), "shop", "new", "uid-new", now.Add(time.Second)) // bound "now": within 5 s for the whole test

	var docs []NodeSummary
	decode(t, mustCtl(t, 0, s.GRPCAddr(), "nodes", "-o", "json"), &docs)
	counts := map[string][3]any{}
	for _, d := range docs {
		counts[d.NodeName] = [3]any{d.Kubernetes, d.PodsBoundWithoutAddress, d.PodsWaiting}
	}
	if got, want := counts[busy.Name()], [3]any{true, uint32(2), uint32(1)}; got != want {
		t.Fatalf("busy node: kubernetes, bound without address, waiting = %v, want %v", got, want)
	}
	if got, want := counts[idle.Name()], [3]any{true, uint32(0), uint32(0)}; got != want {
		t.Fatalf("idle node: %v, want %v", got, want)
	}
	table := mustCtl(t, 0, s.GRPCAddr(), "nodes").stdout
	header := strings.Fields(strings.SplitN(table, "\n", 2)[0])
	col := func(name string) int {
		for i, h := range header {
			if h == name {
				return i
			}
		}
		t.Fatalf("no column %s in %v", name, header)
		return -1
	}
	for _, r := range tableRows(t, table, "NODE", "INSTANCE") {
		want := "2 1"
		if r[0] == idle.Name() {
			want = "0 0"
		}
		if got := r[col("BOUND-NO-IP")] + " " + r[col("WAITING")]; got != want {
			t.Errorf("row %v: BOUND-NO-IP WAITING = %q, want %q", r, got, want)
		}
	}

	var d NodeDetail
	decode(t, mustCtl(t, 0, s.GRPCAddr(), "node", busy.Name(), "-o", "json"), &d)
	var got []string
	for _, p := range d.BoundPods {
		got = append(got, fmt.Sprintf("%s/%s %s %v %s", p.Namespace, p.Name, p.UID, p.Waiting, p.WaitReason))
	}
	want := []string{"shop/old uid-old true RefillInFlight", "shop/new uid-new false "}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("bound pods %q, want %q", got, want)
	}
	if d.BoundPods[0].BoundAt == nil || !d.BoundPods[0].BoundAt.Equal(now.Add(-30*time.Second)) {
		t.Fatalf("bound_at %v, want %v", d.BoundPods[0].BoundAt, now.Add(-30*time.Second))
	}
	rows := tableRows(t, mustCtl(t, 0, s.GRPCAddr(), "node", busy.Name()).stdout, "NAMESPACE", "BOUND-POD")
	if len(rows) != 2 || rows[0][1] != "old" || rows[0][len(rows[0])-1] != "waiting:RefillInFlight" ||
		rows[1][1] != "new" || rows[1][len(rows[1])-1] != "address-on-its-way" {
		t.Fatalf("bound pods table %v", rows)
	}
	decode(t, mustCtl(t, 0, s.GRPCAddr(), "node", idle.Name(), "-o", "json"), &d)
	if len(d.BoundPods) != 0 || d.BoundPods == nil {
		t.Fatalf("idle node's bound pods %+v, want []", d.BoundPods)
	}

	// A server without a view of Kubernetes.
	plain := startDev(t)
	pconn := servertest.Dial(t, plain.GRPCAddr())
	pa := servertest.NewAgent(t, pconn, servertest.Running(plain.Sim())[0])
	pa.Register()
	out := mustCtl(t, 0, plain.GRPCAddr(), "nodes").stdout
	header = strings.Fields(strings.SplitN(out, "\n", 2)[0])
	for _, r := range tableRows(t, out, "NODE", "INSTANCE") {
		if r[col("BOUND-NO-IP")] != "-" || r[col("WAITING")] != "-" {
			t.Fatalf("without Kubernetes, row %v", r)
		}
	}
	if node := mustCtl(t, 0, plain.GRPCAddr(), "node", pa.Name()).stdout; strings.Contains(node, "BOUND-POD") {
		t.Fatalf("without Kubernetes, node shows a bound-pods table:\n%s", node)
	}
}
