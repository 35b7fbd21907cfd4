package e2e_test

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/agent/pool"
	"github.com/ipledger/ipledger/e2e/harness"
)

// shippedConflist is what the agent image installs on every node.
const shippedConflist = "../deploy/cni/10-ipledger.conflist"

var podAddr = regexp.MustCompile(`inet (\d+\.\d+\.\d+\.\d+)/32`)

// TestContainerdRunsContainersThroughThePlugin: Debian's containerd (1.6) and runc create
// containers on a node whose agent serves a real dev server, and ctr makes the CNI calls with
// the shipped conflist, as a kubelet's runtime would. The containers get ipledger's addresses
// from the node's pool, reach each other, and their addresses go back to the pool when ctr
// deletes them (DEL comes with an empty CNI_NETNS and no K8S_POD_* arguments). The same
// conflist declaring cniVersion 1.1.0 (what ipledger shipped before) is refused by this
// containerd after a successful ADD, leaving the container and its address behind, which a DEL
// as the runtime sends it (no netns, no arguments) gives back.
func TestContainerdRunsContainersThroughThePlugin(t *testing.T) {
	harness.RequireNodeNamespaces(t)
	harness.RequireContainerd(t)
	nstest.GuardRootNS(t, "eni")
	conflist, err := os.ReadFile(shippedConflist)
	if err != nil {
		t.Fatal(err)
	}
	s := harness.StartDev(t, nil)
	inst := harness.Running(s.Sim().Sim())[2]
	n := harness.NewNode(t, s.Sim(), inst, s.GRPCAddr())
	ag := n.StartAgentInProcess(nil)
	ag.WaitConnected(20*time.Second, 1)
	rt := n.StartContainerd(conflist)

	// Container a stays up until its stop file appears (bounded to a minute); b pings it.
	a := rt.Run("a", "/bin/sh", "-c", "ip -4 -o addr show eth0; i=0; while [ ! -e /stop ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done")
	ipA := waitAddress(t, rt, a)
	view := ag.WaitView(10*time.Second, "container a assigned", func(v agent.PoolView) bool { return podIP(v, rt.CNIContainerID("a")) != "" })
	if got := podIP(view, rt.CNIContainerID("a")); got != ipA.String() {
		t.Fatalf("container a has %s, the agent assigned %s to %s", ipA, got, rt.CNIContainerID("a"))
	}
	if !leasedOnENI(view, ipA) {
		t.Errorf("container a's %s is not one of the node's leased addresses %+v", ipA, view.ENIs)
	}
	for _, p := range view.Pods {
		if p.ContainerID == rt.CNIContainerID("a") && (p.PodName != "" || p.PodNamespace != "") {
			t.Errorf("ctr passes no K8S_POD_* arguments, yet the agent recorded pod %s/%s", p.PodNamespace, p.PodName)
		}
	}

	b := rt.Run("b", "/bin/sh", "-c", "ip -4 -o addr show eth0; ping -c 3 -W 2 "+ipA.String())
	ended, err := b.Wait(60 * time.Second)
	if !ended || err != nil {
		t.Fatalf("container b pinging a: ended %v, %v\n%s\nplugin log:\n%s", ended, err, b.Output(), rt.PluginLog())
	}
	ipB := netip.MustParseAddr(podAddr.FindStringSubmatch(b.Output())[1])
	if ipB == ipA || !strings.Contains(b.Output(), "3 packets received") {
		t.Fatalf("container b (%s) did not get 3 answers from a (%s):\n%s", ipB, ipA, b.Output())
	}
	// ctr run --rm deleted b's network when b ended: the address is back in the pool (cooling
	// before reuse), its veth gone from the node.
	view = ag.WaitView(10*time.Second, "container b's address returned", func(v agent.PoolView) bool {
		return podIP(v, rt.CNIContainerID("b")) == "" && cooling(v, ipB)
	})
	if !leasedOnENI(view, ipB) {
		t.Errorf("b's %s left the node's pool after DEL", ipB)
	}
	if !bytes.Contains([]byte(rt.PluginLog()), []byte(`"DEL done"`)) {
		t.Errorf("the plugin logged no DEL:\n%s", rt.PluginLog())
	}

	// The conflist with cniVersion 1.1.0, as ipledger shipped it before: ADD succeeds, then
	// containerd 1.6 cannot read the 1.1.0 result, and its clean-up DEL stops at the chained
	// portmap (Debian's 1.1.1 speaks up to 1.0.0; DEL runs the list backwards), so ipledger's DEL
	// never comes: the container and its address are left behind.
	rt.SetConflist(bytes.Replace(conflist, []byte(`"cniVersion": "1.0.0"`), []byte(`"cniVersion": "1.1.0"`), 1))
	c := rt.Run("c", "/bin/sh", "-c", "exit 0")
	ended, err = c.Wait(60 * time.Second)
	if !ended || err == nil || !strings.Contains(c.Output(), `unsupported CNI result version "1.1.0"`) {
		t.Errorf("containerd 1.6 with a 1.1.0 conflist: ended %v, err %v, want the result refused:\n%s", ended, err, c.Output())
	}
	rt.SetConflist(conflist)
	ipC := podIP(ag.MustView(), rt.CNIContainerID("c"))
	if ipC == "" {
		t.Errorf("with the 1.1.0 conflist the ADD did not reach the agent (or a DEL did):\n%s", c.Output())
	} else {
		// What a runtime's retry or GC would do, and what ctr does on a normal exit: DEL with
		// an empty CNI_NETNS and no CNI_ARGS. The plugin removes the veth and the agent takes
		// the address back.
		del := n.RunPlugin(map[string]string{"CNI_COMMAND": "DEL", "CNI_PATH": harness.PluginDir(t), "CNI_CONTAINERID": rt.CNIContainerID("c"),
			"CNI_IFNAME": "eth0", "CNI_NETNS": "", "CNI_ARGS": ""}, n.Conf("1.0.0", `"vethPrefix":"eni"`))
		del.MustSucceed(t, "DEL of the container containerd left behind")
		ag.WaitView(10*time.Second, "container c's address returned", func(v agent.PoolView) bool {
			return podIP(v, rt.CNIContainerID("c")) == "" && cooling(v, netip.MustParseAddr(ipC))
		})
	}
	if err := rt.Remove("c"); err != nil {
		t.Errorf("removing the container containerd left behind: %v", err)
	}

	// Stop a; ctr deletes its network.
	if err := os.WriteFile(filepath.Join(a.Rootfs, "stop"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if ended, err := a.Wait(30 * time.Second); !ended || err != nil {
		t.Fatalf("container a: ended %v, %v\n%s", ended, err, a.Output())
	}
	view = ag.WaitView(10*time.Second, "no containers left", func(v agent.PoolView) bool { return len(v.Pods) == 0 && cooling(v, ipA) })
	for _, l := range n.NetState() {
		if strings.Contains(l, "link eni") {
			t.Errorf("a pod's veth is left on the node: %s", l)
		}
	}
	if left := rt.Ctr("containers", "ls", "-q"); strings.TrimSpace(string(left.Stdout)) != "" {
		t.Errorf("containers left: %s", left.Stdout)
	}
	if left := rt.CgroupsLeft(); len(left) > 0 {
		t.Errorf("runc's cgroups left: %v", left)
	}
}

// waitAddress waits for the container to print its eth0 address.
func waitAddress(t *testing.T, rt *harness.Containerd, k *harness.Container) netip.Addr {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if m := podAddr.FindStringSubmatch(k.Output()); m != nil {
			return netip.MustParseAddr(m[1])
		}
		if ended, err := k.Wait(0); ended {
			t.Fatalf("container %s ended (%v) before printing an address:\n%s\nplugin log:\n%s\ncontainerd:\n%s", k.ID, err, k.Output(), rt.PluginLog(), rt.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("container %s printed no address in 60 s:\n%s\nplugin log:\n%s", k.ID, k.Output(), rt.PluginLog())
	return netip.Addr{}
}

func podIP(v agent.PoolView, containerID string) string {
	for _, p := range v.Pods {
		if p.ContainerID == containerID {
			return p.IP
		}
	}
	return ""
}

func cooling(v agent.PoolView, ip netip.Addr) bool {
	return slices.ContainsFunc(v.Cooling, func(c pool.CoolSnapshot) bool { return c.IP == ip.String() })
}

func leasedOnENI(v agent.PoolView, ip netip.Addr) bool {
	for _, e := range v.ENIs {
		for _, a := range e.Addresses {
			if a.IP == ip.String() {
				return true
			}
		}
	}
	return false
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}
