package cni_test

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"
	"github.com/vishvananda/netlink"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/cni"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// withPrevResult adds the ADD result to a config, as a runtime does for CHECK and DEL.
func withPrevResult(t *testing.T, conf, result []byte) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	var prev map[string]any
	if err := json.Unmarshal(result, &prev); err != nil {
		t.Fatal(err)
	}
	m["prevResult"] = prev
	out, _ := json.Marshal(m)
	return out
}

// parseResult decodes an ADD result printed for version and checks its shape.
func parseResult(t *testing.T, out []byte, version string, p *pod) *types100.Result {
	t.Helper()
	var head struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(out, &head); err != nil || head.CNIVersion != version {
		t.Fatalf("result cniVersion = %q (%v), want %q; result: %s", head.CNIVersion, err, version, out)
	}
	r, err := create.Create(version, out)
	if err != nil {
		t.Fatalf("decode %s result: %v\n%s", version, err, out)
	}
	res, err := types100.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Interfaces) != 2 || res.Interfaces[0].Name != p.hostVeth() || res.Interfaces[0].Mac == "" ||
		res.Interfaces[1].Name != p.ifname || res.Interfaces[1].Sandbox != p.ns.Path() || res.Interfaces[1].Mac == "" {
		t.Errorf("result interfaces = %s, want the host veth %s and %s in %s", mustJSON(res.Interfaces), p.hostVeth(), p.ifname, p.ns.Path())
	}
	if len(res.IPs) != 1 || res.IPs[0].Interface == nil || *res.IPs[0].Interface != 1 || res.IPs[0].Gateway.String() != "169.254.1.1" {
		t.Errorf("result IPs = %s, want one /32 on interface 1 with gateway 169.254.1.1", mustJSON(res.IPs))
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[0].GW.String() != "169.254.1.1" {
		t.Errorf("result routes = %s, want default via 169.254.1.1", mustJSON(res.Routes))
	}
	if version == "0.4.0" {
		var v040 struct {
			IPs []struct {
				Version string `json:"version"`
			} `json:"ips"`
		}
		if err := json.Unmarshal(out, &v040); err != nil || len(v040.IPs) != 1 || v040.IPs[0].Version != "4" {
			t.Errorf("0.4.0 result lacks the IP version field: %s", out)
		}
	}
	return res
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func resultIP(t *testing.T, r *types100.Result) netip.Addr {
	t.Helper()
	if len(r.IPs) == 0 {
		t.Fatal("result has no IP")
	}
	ones, _ := r.IPs[0].Address.Mask.Size()
	if ones != 32 {
		t.Errorf("result address %s is not a /32", r.IPs[0].Address.String())
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	return a
}

func TestLifecycleThroughBinary(t *testing.T) {
	for _, version := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(version, func(t *testing.T) {
			n := newNode(t, "192.168.16.20", "192.168.16.21")
			p := n.newPod("ctr-" + strings.ReplaceAll(version, ".", ""))
			conf := n.conf(version)

			out := n.run(p.inv("ADD", conf))
			out.mustSucceed(t, "ADD")
			res := parseResult(t, out.stdout, version, p)
			ip := resultIP(t, res)
			if ip != netip.MustParseAddr("192.168.16.20") {
				t.Errorf("ADD gave %s, want the agent's first address", ip)
			}
			n.assertAttached(p, ip, netconf.MainTable)
			n.agent.set(func(a *fakeAgent) {
				if a.lastAdd.GetPodName() != p.containerID || a.lastAdd.GetPodNamespace() != "default" ||
					a.lastAdd.GetPodUid() != "uid-"+p.containerID || a.lastAdd.GetNetns() != p.ns.Path() {
					t.Errorf("agent saw Add %v, want the pod's CNI_ARGS and netns", a.lastAdd)
				}
				if w := a.lastAdd.GetWait().AsDuration(); w <= 0 || w >= cniDefaultTimeout {
					t.Errorf("agent was told to wait %s, want less than the plugin's addTimeout", w)
				}
			})

			// CHECK with the previous result, as runtimes pass it.
			n.run(p.inv("CHECK", withPrevResult(t, conf, out.stdout))).mustSucceed(t, "CHECK")

			// CHECK notices a pod whose default route is gone.
			ph := nstest.Handle(t, p.ns)
			link, _ := ph.LinkByName("eth0")
			routes, _ := ph.RouteList(link, netlink.FAMILY_V4)
			var removed []netlink.Route
			for _, r := range routes {
				if r.Gw != nil {
					if err := ph.RouteDel(&r); err != nil {
						t.Fatal(err)
					}
					removed = append(removed, r)
				}
			}
			e := n.run(p.inv("CHECK", withPrevResult(t, conf, out.stdout))).cniError(t)
			if !strings.Contains(e.Msg, "default route") {
				t.Errorf("CHECK of a broken pod: %q, want it to name the default route", e.Msg)
			}
			for _, r := range removed {
				if err := ph.RouteAdd(&r); err != nil {
					t.Fatal(err)
				}
			}
			n.run(p.inv("CHECK", withPrevResult(t, conf, out.stdout))).mustSucceed(t, "CHECK of the repaired pod")
			// CHECK also notices a missing policy rule on the node.
			m, err := netconf.New(netconf.Config{NetNS: n.ns.Path()})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close() //nolint:errcheck
			if err := m.DelPodRules(ip); err != nil {
				t.Fatal(err)
			}
			e = n.run(p.inv("CHECK", conf)).cniError(t)
			if !strings.Contains(e.Msg, "policy rule") {
				t.Errorf("CHECK without the node's rule: %q, want it to name the policy rule", e.Msg)
			}
			if err := m.AddPodRules(netconf.PodRoute{IP: ip, Table: netconf.MainTable}); err != nil {
				t.Fatal(err)
			}
			// CHECK with a previous result naming another address fails.
			wrong := strings.Replace(string(out.stdout), ip.String()+"/32", "192.168.16.222/32", 1)
			e = n.run(p.inv("CHECK", withPrevResult(t, conf, []byte(wrong)))).cniError(t)
			if !strings.Contains(e.Msg, "previous result does not list") {
				t.Errorf("CHECK with a wrong prevResult: %q", e.Msg)
			}

			gcConf := n.conf(version, `"cni.dev/valid-attachments":[{"containerID":"`+p.containerID+`","ifname":"eth0"}]`)
			if version == "1.1.0" {
				n.run(invocation{cmd: "STATUS", stdin: conf}).mustSucceed(t, "STATUS")
				n.run(invocation{cmd: "GC", stdin: gcConf}).mustSucceed(t, "GC")
				if got := n.agent.Assigned(); len(got) != 1 {
					t.Errorf("GC with the pod valid released it: agent holds %v", got)
				}
				n.assertAttached(p, ip, netconf.MainTable)
			} else {
				for _, cmd := range []string{"STATUS", "GC"} {
					e := n.run(invocation{cmd: cmd, stdin: gcConf}).cniError(t)
					if e.Code != types.ErrIncompatibleCNIVersion {
						t.Errorf("%s with cniVersion %s: code %d %q, want %d", cmd, version, e.Code, e.Msg, types.ErrIncompatibleCNIVersion)
					}
				}
			}

			for i := range 2 { // DEL is idempotent
				n.run(p.inv("DEL", withPrevResult(t, conf, out.stdout))).mustSucceed(t, "DEL")
				n.assertClean()
				if got := n.agent.Assigned(); len(got) != 0 {
					t.Errorf("after DEL %d the agent still holds %v", i+1, got)
				}
			}
			if got := n.agent.CallsOf("Del"); got != 2 {
				t.Errorf("agent saw %d Del calls, want 2", got)
			}
		})
	}
}

// cniDefaultTimeout is the plugin's default addTimeout.
const cniDefaultTimeout = 12 * time.Second

func statusWithField(code codes.Code, field string) (error, error) {
	st, err := status.New(code, "bad "+field).WithDetails(&errdetails.ErrorInfo{
		Domain: cni.ErrorDomain, Reason: ipledgerv1.Reason_INVALID_ARGUMENT.String(), Metadata: map[string]string{"field": field},
	})
	if err != nil {
		return nil, err
	}
	return st.Err(), nil
}

// staleSocket is a unix socket file nobody listens on (an agent that died).
func staleSocket(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ipl-stale-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "agent.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	_ = l.Close()
	return path
}

func mustHostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(32, 32)}
}

func TestVersion(t *testing.T) {
	n := newNode(t)
	out := n.run(invocation{cmd: "VERSION"})
	out.mustSucceed(t, "VERSION")
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out.stdout, &v); err != nil {
		t.Fatalf("VERSION output %q: %v", out.stdout, err)
	}
	if v.CNIVersion != "1.1.0" || !slices.Equal(v.SupportedVersions, []string{"0.4.0", "1.0.0", "1.1.0"}) {
		t.Errorf("VERSION = %+v, want 1.1.0 supporting 0.4.0, 1.0.0, 1.1.0", v)
	}
}

// Two pods on one node reach each other through their host veths; one of them lives on a
// secondary ENI (its own route table), and both reach an address of the node.
func TestPodsPingEachOther(t *testing.T) {
	n := newNode(t, "192.168.16.30", "192.168.32.31")
	n.agent.set(func(a *fakeAgent) { a.tables["192.168.32.31"] = 3 })
	// A simulated secondary ENI gives the node an address of its own (and table 3 its routes).
	m, err := netconf.New(netconf.Config{NetNS: n.ns.Path(), SimulateENILinks: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close() //nolint:errcheck
	eni := netconf.ENI{ID: "eni-0aaaabbbbcccc", MAC: "02:00:c0:a8:20:05", DeviceIndex: 2,
		SubnetCIDR: netip.MustParsePrefix("192.168.32.0/20"), PrimaryIP: netip.MustParseAddr("192.168.32.5")}
	if err := m.EnsureENI(t.Context(), eni); err != nil {
		t.Fatal(err)
	}

	a, b := n.newPod("pod-a"), n.newPod("pod-b")
	conf := n.conf("1.1.0")
	var ips []netip.Addr
	for _, p := range []*pod{a, b} {
		out := n.run(p.inv("ADD", conf))
		out.mustSucceed(t, "ADD "+p.containerID)
		ips = append(ips, resultIP(t, parseResult(t, out.stdout, "1.1.0", p)))
	}
	n.assertAttached(a, ips[0], netconf.MainTable)
	n.assertAttached(b, ips[1], 3)

	rx := func(p *pod) uint64 {
		l, err := n.h.LinkByName(p.hostVeth())
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Statistics.RxPackets
	}
	beforeA, beforeB := rx(a), rx(b)
	if err := nstest.Ping(a.ns, ips[1]); err != nil {
		t.Fatalf("pod A (%s) -> pod B (%s): %v", ips[0], ips[1], err)
	}
	if err := nstest.Ping(b.ns, ips[0]); err != nil {
		t.Fatalf("pod B (%s) -> pod A (%s): %v", ips[1], ips[0], err)
	}
	if rx(a) == beforeA || rx(b) == beforeB {
		t.Errorf("host veths received nothing (A %d->%d, B %d->%d): the pings did not pass through them", beforeA, rx(a), beforeB, rx(b))
	}
	if err := nstest.Ping(a.ns, eni.PrimaryIP); err != nil {
		t.Errorf("pod A -> node address %s: %v", eni.PrimaryIP, err)
	}

	for _, p := range []*pod{a, b} {
		n.run(p.inv("DEL", conf)).mustSucceed(t, "DEL "+p.containerID)
	}
	n.assertClean(netconf.SimulatedLinkName(eni.ID))
	if err := nstest.Ping(a.ns, ips[1]); err == nil {
		t.Errorf("pod A still reaches pod B after both were deleted")
	}
}

func TestAddFailureUndoes(t *testing.T) {
	t.Run("host veth name taken", func(t *testing.T) {
		n := newNode(t, "192.168.16.40")
		p := n.newPod("ctr-undo")
		// Something else holds the host veth's name in the node namespace.
		attrs := netlink.NewLinkAttrs()
		attrs.Name = p.hostVeth()
		if err := n.h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "tstpeer0"}); err != nil {
			t.Fatal(err)
		}
		e := n.run(p.inv("ADD", n.conf("1.0.0"))).cniError(t)
		if !strings.Contains(e.Msg, "already exists") || !strings.Contains(e.Msg, p.hostVeth()) {
			t.Errorf("ADD error %q, want it to say %s already exists", e.Msg, p.hostVeth())
		}
		// The foreign links stay, nothing of ours is left, and the address went back.
		n.assertClean(p.hostVeth(), "tstpeer0")
		if got := linkNames(t, nstest.Handle(t, p.ns)); len(got) != 0 {
			t.Errorf("pod namespace links after a failed ADD = %q, want none", got)
		}
		if calls := n.agent.Calls(); !slices.Equal(calls, []string{"Add ctr-undo/eth0", "Del ctr-undo/eth0"}) {
			t.Errorf("agent calls = %q, want Add then Del", calls)
		}
		if got := n.agent.Assigned(); len(got) != 0 {
			t.Errorf("agent still holds %v after the failed ADD", got)
		}
	})
	t.Run("pod interface name taken", func(t *testing.T) {
		n := newNode(t, "192.168.16.41")
		p := n.newPod("ctr-undo2")
		ph := nstest.Handle(t, p.ns)
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "eth0"
		if err := ph.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "tstpeer1"}); err != nil {
			t.Fatal(err)
		}
		e := n.run(p.inv("ADD", n.conf("1.1.0"))).cniError(t)
		if !strings.Contains(e.Msg, "eth0 already exists in the pod") {
			t.Errorf("ADD error %q, want it to say eth0 already exists in the pod", e.Msg)
		}
		n.assertClean()
		if got := n.agent.CallsOf("Del"); got != 1 || len(n.agent.Assigned()) != 0 {
			t.Errorf("agent saw %d Del and holds %v, want the address given back", got, n.agent.Assigned())
		}
	})
	t.Run("agent too slow", func(t *testing.T) {
		n := newNode(t, "192.168.16.42")
		n.agent.set(func(a *fakeAgent) { a.addBlock = true })
		p := n.newPod("ctr-slow")
		e := n.run(p.inv("ADD", n.conf("1.1.0", `"addTimeout":"1s"`))).cniError(t)
		if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "did not answer") {
			t.Errorf("ADD with a slow agent: code %d %q, want 11 saying the agent did not answer", e.Code, e.Msg)
		}
		n.assertClean()
		if got := n.agent.CallsOf("Del"); got != 1 {
			t.Errorf("agent saw %d Del calls, want the plugin to give back what the agent may have assigned", got)
		}
	})
}

// TestAddAgainKeepsThePod: a second ADD of an attachment that is attached (a runtime retrying
// ADD) gets the same address and leaves the pod attached; it must not undo the first ADD.
func TestAddAgainKeepsThePod(t *testing.T) {
	n := newNode(t, "192.168.16.45", "192.168.16.46")
	a, b := n.newPod("ctr-again-a"), n.newPod("ctr-again-b")
	conf := n.conf("1.1.0")
	out := n.run(a.inv("ADD", conf))
	out.mustSucceed(t, "ADD")
	ipA := resultIP(t, parseResult(t, out.stdout, "1.1.0", a))
	out = n.run(b.inv("ADD", conf))
	out.mustSucceed(t, "ADD pod B")
	ipB := resultIP(t, parseResult(t, out.stdout, "1.1.0", b))

	out = n.run(a.inv("ADD", conf))
	out.mustSucceed(t, "second ADD")
	if got := resultIP(t, parseResult(t, out.stdout, "1.1.0", a)); got != ipA {
		t.Fatalf("second ADD returned %s, want %s", got, ipA)
	}
	n.assertAttached(a, ipA, netconf.MainTable)
	n.run(a.inv("CHECK", withPrevResult(t, conf, out.stdout))).mustSucceed(t, "CHECK after the second ADD")
	if err := nstest.Ping(b.ns, ipA); err != nil {
		t.Errorf("pod B -> pod A after the second ADD: %v", err)
	}
	if err := nstest.Ping(a.ns, ipB); err != nil {
		t.Errorf("pod A -> pod B after the second ADD: %v", err)
	}
	if got := n.agent.Assigned()[attKey{a.containerID, "eth0"}]; got != ipA.String() {
		t.Errorf("agent holds %q for pod A after the second ADD, want %s", got, ipA)
	}
	if got := n.agent.CallsOf("Del"); got != 0 {
		t.Errorf("agent saw %d Del calls, want none", got)
	}
}

func TestDelIdempotent(t *testing.T) {
	n := newNode(t, "192.168.16.50", "192.168.16.51")
	conf := n.conf("1.1.0")

	t.Run("unknown container", func(t *testing.T) {
		p := n.newPod("ctr-never-added")
		n.run(p.inv("DEL", conf)).mustSucceed(t, "DEL of an unknown container")
	})
	t.Run("missing netns", func(t *testing.T) {
		p := n.newPod("ctr-nons")
		n.run(p.inv("ADD", conf)).mustSucceed(t, "ADD")
		inv := p.inv("DEL", conf)
		inv.netns = "/var/run/netns/ipl-does-not-exist"
		n.run(inv).mustSucceed(t, "DEL with a missing netns")
		inv.unset = []string{"CNI_NETNS"}
		n.run(inv).mustSucceed(t, "DEL without CNI_NETNS")
		n.assertClean()
	})
	t.Run("as ctr sends it", func(t *testing.T) {
		// containerd's ctr (run --rm --cni): CNI_CONTAINERID "<namespace>-<id>", no CNI_ARGS at
		// all, and the DEL after the task ended with CNI_NETNS set but empty.
		p := n.newPod("default-ctr1")
		add := p.inv("ADD", conf)
		add.args = ""
		out := n.run(add)
		out.mustSucceed(t, "ADD without CNI_ARGS")
		ip := resultIP(t, parseResult(t, out.stdout, "1.1.0", p))
		if got := n.agent.Assigned()[attKey{p.containerID, "eth0"}]; got != ip.String() {
			t.Fatalf("agent holds %q for the container, want %s", got, ip)
		}
		del := p.inv("DEL", conf)
		del.args, del.netns = "", ""
		n.run(del).mustSucceed(t, "DEL with an empty CNI_NETNS and no CNI_ARGS")
		if _, ok := n.agent.Assigned()[attKey{p.containerID, "eth0"}]; ok {
			t.Errorf("the agent still holds the container's address after DEL")
		}
		n.assertClean()
	})
	t.Run("pod namespace already gone", func(t *testing.T) {
		p := n.newPod("ctr-gone")
		out := n.run(p.inv("ADD", conf))
		out.mustSucceed(t, "ADD")
		ip := resultIP(t, parseResult(t, out.stdout, "1.1.0", p))
		// The runtime removed the sandbox first: the veth pair died with it, the rules did not.
		nstest.Remove(t, p.ns)
		if r := n.podRules(); !slices.ContainsFunc(r, func(r netconf.PodRoute) bool { return r.IP == ip }) {
			t.Fatalf("rules of %s vanished with the namespace: %+v", ip, r)
		}
		for range 2 {
			n.run(p.inv("DEL", conf)).mustSucceed(t, "DEL after the netns is gone")
		}
		n.assertClean()
	})
	if got := n.agent.Assigned(); len(got) != 0 {
		t.Errorf("agent still holds %v", got)
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	n := newNode(t, "192.168.16.60")
	p := n.newPod("ctr-bad")
	good := n.conf("1.1.0")
	tests := []struct {
		name    string
		mutate  func(*invocation)
		code    uint
		message string
	}{
		{"malformed stdin", func(i *invocation) { i.stdin = []byte(`{"cniVersion":"1.1.0","name":`) }, types.ErrDecodingFailure, "unmarshal"},
		{"unknown field", func(i *invocation) { i.stdin = n.conf("1.1.0", `"vethPrefx":"eni"`) }, types.ErrInvalidNetworkConfig, `unknown field "vethPrefx"`},
		{"mtu as a string", func(i *invocation) { i.stdin = n.conf("1.1.0", `"mtu":"9001"`) }, types.ErrInvalidNetworkConfig, `"mtu"`},
		{"mtu too large", func(i *invocation) { i.stdin = n.conf("1.1.0", `"mtu":65000`) }, types.ErrInvalidNetworkConfig, "mtu 65000"},
		{"bad veth prefix", func(i *invocation) { i.stdin = n.conf("1.1.0", `"vethPrefix":"Eni0"`) }, types.ErrInvalidNetworkConfig, "vethPrefix"},
		{"bad timeout", func(i *invocation) { i.stdin = n.conf("1.1.0", `"addTimeout":"soon"`) }, types.ErrInvalidNetworkConfig, "addTimeout"},
		{"relative socket", func(i *invocation) {
			i.stdin = []byte(`{"cniVersion":"1.1.0","name":"x","type":"ipledger","agentSocket":"agent.sock"}`)
		}, types.ErrInvalidNetworkConfig, "agentSocket"},
		{"old cni version", func(i *invocation) { i.stdin = n.conf("0.3.1") }, types.ErrIncompatibleCNIVersion, "incompatible CNI versions"},
		{"future cni version", func(i *invocation) { i.stdin = n.conf("2.0.0") }, types.ErrIncompatibleCNIVersion, "incompatible CNI versions"},
		{"missing netns", func(i *invocation) { i.unset = []string{"CNI_NETNS"} }, types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"netns does not exist", func(i *invocation) { i.netns = "/var/run/netns/ipl-missing" }, types.ErrInvalidEnvironmentVariables, "CNI_NETNS /var/run/netns/ipl-missing does not exist"},
		{"netns not a namespace", func(i *invocation) { i.netns = "/etc/hostname" }, types.ErrInvalidEnvironmentVariables, "not a network namespace"},
		{"netns is the node's", func(i *invocation) { i.netns = n.ns.Path() }, types.ErrInvalidEnvironmentVariables, "node's own network namespace"},
		{"missing container id", func(i *invocation) { i.unset = []string{"CNI_CONTAINERID"} }, types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID"},
		{"bad container id", func(i *invocation) { i.containerID = "bad/id" }, types.ErrInvalidEnvironmentVariables, "containerID"},
		{"missing ifname", func(i *invocation) { i.unset = []string{"CNI_IFNAME"} }, types.ErrInvalidEnvironmentVariables, "CNI_IFNAME"},
		{"ifname too long", func(i *invocation) { i.ifname = "eth0123456789abc" }, types.ErrInvalidEnvironmentVariables, "too long"},
		{"bad CNI_ARGS", func(i *invocation) { i.args = "K8S_POD_NAME" }, types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
		{"unknown CNI_ARGS", func(i *invocation) { i.args = "FOO=bar" }, types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inv := p.inv("ADD", good)
			tt.mutate(&inv)
			out := n.run(inv)
			e := out.cniError(t)
			if e.Code != tt.code || !strings.Contains(e.Error(), tt.message) {
				t.Errorf("ADD: code %d %q, want code %d mentioning %q", e.Code, e.Error(), tt.code, tt.message)
			}
			n.assertClean()
			if got := linkNames(t, nstest.Handle(t, p.ns)); len(got) != 0 {
				t.Errorf("pod links = %q, want none", got)
			}
			if got := n.agent.CallsOf("Add"); got != 0 {
				t.Errorf("agent saw %d Add calls for bad input", got)
			}
		})
	}
}

func TestAgentErrors(t *testing.T) {
	t.Run("subnet exhausted", func(t *testing.T) {
		n := newNode(t) // no address to give
		p := n.newPod("ctr-exhausted")
		e := n.run(p.inv("ADD", n.conf("1.1.0"))).cniError(t)
		if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "subnet") || !strings.Contains(e.Msg, "ctr-exhausted") {
			t.Errorf("ADD: code %d %q, want 11 explaining the subnet is exhausted for the pod", e.Code, e.Msg)
		}
		n.assertClean()
		if got := n.agent.CallsOf("Del"); got != 0 {
			t.Errorf("agent saw %d Del calls after refusing the address itself", got)
		}
	})
	t.Run("ec2 throttled", func(t *testing.T) {
		n := newNode(t)
		n.agent.set(func(a *fakeAgent) {
			a.addErr = agentError(codes.Unavailable, ipledgerv1.Reason_EC2_THROTTLED, "waited 10s for EC2")
		})
		e := n.run(n.newPod("ctr-throttled").inv("ADD", n.conf("1.1.0"))).cniError(t)
		if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "throttling") || !strings.Contains(e.Details, "waited 10s") {
			t.Errorf("ADD: code %d %q (%q), want 11 saying EC2 throttles", e.Code, e.Msg, e.Details)
		}
	})
	t.Run("agent refuses the argument", func(t *testing.T) {
		n := newNode(t)
		st, _ := statusWithField(codes.InvalidArgument, "pod_uid")
		n.agent.set(func(a *fakeAgent) { a.addErr = st })
		e := n.run(n.newPod("ctr-invalid").inv("ADD", n.conf("1.1.0"))).cniError(t)
		if e.Code != types.ErrInvalidEnvironmentVariables || !strings.Contains(e.Msg, "pod_uid") {
			t.Errorf("ADD: code %d %q, want 4 naming pod_uid", e.Code, e.Msg)
		}
	})
	t.Run("agent unreachable", func(t *testing.T) {
		n := newNode(t)
		p := n.newPod("ctr-noagent")
		conf := []byte(`{"cniVersion":"1.1.0","name":"x","type":"ipledger","agentSocket":"/run/ipledger-test-none/agent.sock"}`)
		for _, cmd := range []string{"ADD", "DEL", "CHECK"} {
			e := n.run(p.inv(cmd, conf)).cniError(t)
			if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "agent unreachable at /run/ipledger-test-none/agent.sock") {
				t.Errorf("%s: code %d %q, want 11 agent unreachable", cmd, e.Code, e.Msg)
			}
		}
		e := n.run(invocation{cmd: "STATUS", stdin: conf}).cniError(t)
		if e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, "agent unreachable") {
			t.Errorf("STATUS: code %d %q, want 50 agent unreachable", e.Code, e.Msg)
		}
		n.assertClean()
	})
	t.Run("stale socket", func(t *testing.T) {
		n := newNode(t)
		sock := staleSocket(t)
		conf := []byte(`{"cniVersion":"1.1.0","name":"x","type":"ipledger","agentSocket":"` + sock + `"}`)
		e := n.run(n.newPod("ctr-stale").inv("ADD", conf)).cniError(t)
		if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "agent unreachable at "+sock) {
			t.Errorf("ADD: code %d %q, want 11 agent unreachable", e.Code, e.Msg)
		}
		n.assertClean()
	})
}

func TestStatus(t *testing.T) {
	n := newNode(t, "192.168.16.70")
	conf := n.conf("1.1.0")
	n.run(invocation{cmd: "STATUS", stdin: conf}).mustSucceed(t, "STATUS of a ready agent")
	n.agent.set(func(a *fakeAgent) {
		a.status = &ipledgerv1.CNIStatusResponse{Ready: false, Reason: ipledgerv1.Reason_SERVER_UNREACHABLE, Message: "no leader since 12:00:00"}
	})
	e := n.run(invocation{cmd: "STATUS", stdin: conf}).cniError(t)
	if e.Code != types.ErrPluginNotAvailable || !strings.Contains(e.Msg, "cannot reach the ipledger server") || !strings.Contains(e.Msg, "no leader since") {
		t.Errorf("STATUS of a stranded agent: code %d %q, want 50 with the reason", e.Code, e.Msg)
	}
}

func TestGC(t *testing.T) {
	n := newNode(t, "192.168.16.80", "192.168.16.81", "192.168.16.82")
	conf := n.conf("1.1.0")
	keep, drop := n.newPod("ctr-keep"), n.newPod("ctr-drop")
	var ips []netip.Addr
	for _, p := range []*pod{keep, drop} {
		out := n.run(p.inv("ADD", conf))
		out.mustSucceed(t, "ADD")
		ips = append(ips, resultIP(t, parseResult(t, out.stdout, "1.1.0", p)))
	}
	// A plugin killed mid-ADD left a veth with a route and rules the agent no longer knows.
	leaked := "eni" + "0123456789a"
	attrs := netlink.NewLinkAttrs()
	attrs.Name = leaked
	if err := n.h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "tstleak0"}); err != nil {
		t.Fatal(err)
	}
	l, _ := n.h.LinkByName(leaked)
	if err := n.h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	leakedIP := netip.MustParseAddr("192.168.16.99")
	if err := n.h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: mustHostNet(leakedIP), Scope: netlink.SCOPE_LINK}); err != nil {
		t.Fatal(err)
	}
	m, err := netconf.New(netconf.Config{NetNS: n.ns.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close() //nolint:errcheck
	if err := m.AddPodRules(netconf.PodRoute{IP: leakedIP, Table: 2}); err != nil {
		t.Fatal(err)
	}

	gc := n.conf("1.1.0", `"cni.dev/valid-attachments":[{"containerID":"ctr-keep","ifname":"eth0"}]`)
	n.run(invocation{cmd: "GC", stdin: gc}).mustSucceed(t, "GC")

	n.agent.set(func(a *fakeAgent) {
		if len(a.gcValid) != 1 || !slices.Equal(a.gcValid[0], []attKey{{"ctr-keep", "eth0"}}) {
			t.Errorf("agent GC saw valid attachments %v, want [ctr-keep/eth0]", a.gcValid)
		}
	})
	if got := n.agent.Assigned(); len(got) != 1 || got[attKey{"ctr-keep", "eth0"}] != ips[0].String() {
		t.Errorf("agent holds %v after GC, want only ctr-keep", got)
	}
	n.assertAttached(keep, ips[0], netconf.MainTable)
	if got := linkNames(t, n.h); !slices.Equal(got, []string{keep.hostVeth()}) {
		t.Errorf("node links after GC = %q, want only %s", got, keep.hostVeth())
	}
	if got := n.podRules(); len(got) != 1 || got[0].IP != ips[0] {
		t.Errorf("node rules after GC = %+v, want only those of %s", got, ips[0])
	}
}

func TestLogFile(t *testing.T) {
	n := newNode(t, "192.168.16.100")
	logFile := filepath.Join(t.TempDir(), "log", "plugin.log")
	conf := n.conf("1.1.0", `"logFile":"`+logFile+`","logLevel":"debug"`)
	p := n.newPod("ctr-logged")
	out := n.run(p.inv("ADD", conf))
	out.mustSucceed(t, "ADD")
	parseResult(t, out.stdout, "1.1.0", p) // stdout holds the result and nothing else
	n.run(p.inv("DEL", conf)).mustSucceed(t, "DEL")
	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		if rec["container_id"] != "ctr-logged" || rec["ifname"] != "eth0" {
			t.Errorf("log line lacks the attachment: %q", line)
		}
		msgs = append(msgs, fmt.Sprint(rec["cmd"], ": ", rec["msg"]))
	}
	for _, want := range []string{"ADD: agent assigned address", "ADD: pod attached", "DEL: DEL done"} {
		if !slices.Contains(msgs, want) {
			t.Errorf("log %q lacks %q", msgs, want)
		}
	}
}
