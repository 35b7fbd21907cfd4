package agent

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/agent/pool"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// podOnNode gives a pod's address the node side the plugin makes: a veth whose host end routes
// the address (/32), and the pod's policy rules.
func podOnNode(t *testing.T, h *netlink.Handle, m *netconf.Manager, host string, ip netip.Addr) {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: host + "p"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth %s: %v", host, err)
	}
	link, err := h.LinkByName(host)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	dst := &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: net.CIDRMask(32, 32)}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatalf("route %s dev %s: %v", ip, host, err)
	}
	if err := m.AddPodRules(netconf.PodRoute{IP: ip, HostVeth: host, Table: netconf.MainTable}); err != nil {
		t.Fatal(err)
	}
}

// deleteVeth removes a pod's veth (its route goes with it).
func deleteVeth(t *testing.T, h *netlink.Handle, host string) {
	t.Helper()
	link, err := h.LinkByName(host)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(link); err != nil {
		t.Fatal(err)
	}
}

func ruleIPs(t *testing.T, m *netconf.Manager) []netip.Addr {
	t.Helper()
	rules, err := m.Rules()
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Addr
	for _, r := range rules {
		out = append(out, r.IP)
	}
	return out
}

func recoveredIPs(a *Agent) []string {
	v, _ := a.View()
	var out []string
	for _, p := range v.Pods {
		if p.Recovered {
			out = append(out, p.IP)
		}
	}
	return out
}

// TestAgentRecoversPodsAStaleCheckpointLacks: the checkpoint of a node namespace is older than
// three of its pods (their veths, routes and rules exist; the checkpoint gives their addresses
// to no one), and the allocator cannot be reached. The agent holds their addresses (never hands
// them out, keeps their rules, GC keeps them, the checkpoint keeps them) and gives each back
// once its pod is gone: after the pod's DEL (rules removed, then an unknown attachment's Del),
// while the agent was down, and when its veth went without a DEL.
func TestAgentRecoversPodsAStaleCheckpointLacks(t *testing.T) {
	nstest.GuardRootNS(t, "sim-")
	node := nstest.New(t)
	h := nstest.Handle(t, node)
	srv, running, subnets := simulator(t)
	in := running[0]
	sub := netip.MustParsePrefix(subnets[in.SubnetID].CIDR)
	at := func(n int) netip.Addr {
		a := sub.Addr()
		for range n {
			a = a.Next()
		}
		return a
	}
	c := agentConfig(t, srv, in, shortDir(t))
	c.ManageNetworking, c.NetNS = true, node.Path()
	c.Cooldown = 200 * time.Millisecond
	// The stale checkpoint: five addresses, one pod (old, on .150).
	var as []string
	for i := 150; i < 155; i++ {
		as = append(as, at(i).String())
	}
	seedCheckpoint(t, c, in, as...)
	m, err := netconf.New(netconf.Config{NetNS: node.Path()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	// Pods started after the checkpoint was written: b, c and d. And a rule of no pod (no veth).
	podOnNode(t, h, m, "vethb", at(151))
	podOnNode(t, h, m, "vethc", at(152))
	podOnNode(t, h, m, "vethd", at(153))
	if err := m.AddPodRules(netconf.PodRoute{IP: at(99), Table: netconf.MainTable}); err != nil {
		t.Fatal(err)
	}

	a, stop := runAgent(t, c)
	if got, want := recoveredIPs(a), []string{at(151).String(), at(152).String(), at(153).String()}; !slices.Equal(got, want) {
		t.Fatalf("recovered %v, want %v", got, want)
	}
	if got, want := ruleIPs(t, m), []netip.Addr{at(150), at(151), at(152), at(153)}; !slices.Equal(got, want) {
		t.Fatalf("pod rules after the start %v, want %v (the pods' kept, old's put back, the stray one removed)", got, want)
	}
	cl := cniClient(t, c.SocketPath)
	ctx := t.Context()
	r, err := cl.Add(ctx, &ipledgerv1.CNIAddRequest{ContainerId: "new-1", Ifname: "eth0"})
	if err != nil || r.Ip != at(154).String() {
		t.Fatalf("new pod: %v %v, want the one address no pod uses, %s", r, err, at(154))
	}
	if _, err := cl.Add(ctx, &ipledgerv1.CNIAddRequest{ContainerId: "new-2", Ifname: "eth0"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("second new pod: %v, want no address (every other one is in use)", err)
	}
	// The runtime's GC knows only new-1: old's address goes, the recovered ones stay.
	gc, err := cl.GC(ctx, &ipledgerv1.CNIGCRequest{ValidAttachments: []*ipledgerv1.Attachment{{ContainerId: "new-1", Ifname: "eth0"}}})
	if err != nil || len(gc.GetReleased()) != 1 || gc.GetReleased()[0].GetIp() != at(150).String() {
		t.Fatalf("GC released %v %v, want only old's %s", gc.GetReleased(), err, at(150))
	}
	if got := recoveredIPs(a); len(got) != 3 {
		t.Fatalf("recovered after GC: %v", got)
	}

	// b's DEL: the plugin removes its rules and veth, then the agent does not know the attachment.
	if err := m.DelPodRules(at(151)); err != nil {
		t.Fatal(err)
	}
	deleteVeth(t, h, "vethb")
	del, err := cl.Del(ctx, &ipledgerv1.CNIDelRequest{ContainerId: "cid-of-b", Ifname: "eth0"})
	if err != nil || del.GetIp() != "" {
		t.Fatalf("Del of b: %v %v, want success without an address", del, err)
	}
	poll(t, "b's address given back after its DEL", func() bool { return !slices.Contains(recoveredIPs(a), at(151).String()) })

	// The agent stops; the checkpoint keeps c and d. d goes while the agent is down.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	cp, err := pool.Open(pool.Config{CheckpointPath: c.CheckpointPath})
	if err != nil {
		t.Fatal(err)
	}
	if got := cp.Recovered(); !slices.Equal(got, []netip.Addr{at(152), at(153)}) {
		t.Fatalf("checkpoint holds recovered %v, want c's and d's", got)
	}
	if err := m.DelPodRules(at(153)); err != nil {
		t.Fatal(err)
	}
	deleteVeth(t, h, "vethd")
	a, _ = runAgent(t, c)
	if got := recoveredIPs(a); !slices.Equal(got, []string{at(152).String()}) {
		t.Fatalf("recovered after the restart %v, want only c's (d went while the agent was down)", got)
	}
	// The addresses given back cooled down: two new pods get b's and d's (old's .150 too).
	cl = cniClient(t, c.SocketPath)
	var got []string
	for _, cid := range []string{"new-2", "new-3", "new-4"} {
		r, err := cl.Add(ctx, &ipledgerv1.CNIAddRequest{ContainerId: cid, Ifname: "eth0"})
		if err != nil {
			t.Fatalf("%s: %v", cid, err)
		}
		got = append(got, r.Ip)
	}
	slices.Sort(got)
	if want := []string{at(150).String(), at(151).String(), at(153).String()}; !slices.Equal(got, want) {
		t.Fatalf("new pods got %v, want %v (never c's %s)", got, want, at(152))
	}

	// c's veth goes without a DEL: its stray rules are removed and its address given back.
	deleteVeth(t, h, "vethc")
	deadline := time.Now().Add(3 * recoveredCheck)
	for slices.Contains(recoveredIPs(a), at(152).String()) {
		if time.Now().After(deadline) {
			t.Fatalf("c's address still held %v after its veth went", 3*recoveredCheck)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if slices.Contains(ruleIPs(t, m), at(152)) {
		t.Fatalf("c's rules left after its address was given back: %v", ruleIPs(t, m))
	}
}

// TestAgentNewPodsWaitForTheFirstRegistration: after a start, a new pod gets no address until
// the first registration has said which addresses running pods hold; when the allocator cannot
// be reached the wait ends after --restore-wait and the checkpointed pool serves.
func TestAgentNewPodsWaitForTheFirstRegistration(t *testing.T) {
	srv, running, _ := simulator(t)
	in := running[0]
	c := agentConfig(t, srv, in, shortDir(t))
	c.RestoreWait = 700 * time.Millisecond
	c.AddWait = 5 * time.Second
	seedCheckpoint(t, c, in, "10.0.0.11", "10.0.0.12")
	started := time.Now()
	_, _ = runAgent(t, c)
	cl := cniClient(t, c.SocketPath)
	// The checkpointed pod is known at once.
	if chk, err := cl.Check(t.Context(), &ipledgerv1.CNICheckRequest{ContainerId: "old-pod", Ifname: "eth0"}); err != nil || chk.Ip != "10.0.0.11" {
		t.Fatalf("check of the checkpointed pod: %v %v", chk, err)
	}
	r, err := cl.Add(t.Context(), &ipledgerv1.CNIAddRequest{ContainerId: "new-pod", Ifname: "eth0"})
	if err != nil || r.Ip != "10.0.0.12" || !r.Waited {
		t.Fatalf("add: %v %v, want 10.0.0.12 after a wait", r, err)
	}
	if took := time.Since(started); took < c.RestoreWait {
		t.Fatalf("the new pod got its address %v after the start, before --restore-wait %v", took, c.RestoreWait)
	}
}
