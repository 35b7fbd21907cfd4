package harness

import (
	"bytes"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/cni"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// NetworkName is the CNI network of the harness's plugin configs.
const NetworkName = "ipl-e2e"

// Node is a simulated node: an EC2 instance of the simulator, the network namespace that stands
// for the instance's own namespace, and the directory of its agent (socket, checkpoint, logs).
type Node struct {
	T        testing.TB
	Instance ec2sim.InstanceInfo
	// IMDS is the instance's metadata endpoint in the simulator.
	IMDS string
	// Servers are the allocator addresses the agent is given (--server).
	Servers []string
	NS      ns.NetNS
	// H is a netlink handle in the node namespace.
	H *netlink.Handle
	// Dir holds the agent's socket, checkpoint and log, and the plugin's log (short: unix
	// socket paths are limited to 107 bytes).
	Dir        string
	Socket     string
	Checkpoint string
	// MetricsAddr is the agent's HTTP address (metrics, /healthz, /v1/pool).
	MetricsAddr string
	// ServerCA, when set, is the CA of the server's certificate: the agent attests (no
	// certificate files) and keeps its key and certificate in IdentityDir.
	ServerCA    string
	IdentityDir string
	// CNIConfDir, when set, is where the agent installs ConflistSrc once it can serve
	// (ManagedRuntime sets both).
	CNIConfDir  string
	ConflistSrc string

	binMu     sync.Mutex
	agentBin  string // "" = this checkout's ipledger-agent
	pluginBin string // "" = this checkout's plugin directory
}

// UseBinaries makes the node run another build's agent and plugin from now on (an earlier
// release's, in the upgrade test): the next StartAgent starts agentBin, and the plugin runs
// from pluginDir (a directory holding it as "ipledger"), as a node's agent image and the
// plugin its init container installs change together. Empty strings mean this checkout's.
func (n *Node) UseBinaries(agentBin, pluginDir string) {
	n.binMu.Lock()
	defer n.binMu.Unlock()
	n.agentBin, n.pluginBin = agentBin, pluginDir
}

func (n *Node) agentBinary() string {
	n.binMu.Lock()
	bin := n.agentBin
	n.binMu.Unlock()
	if bin == "" {
		bin = Binary(n.T, "ipledger-agent")
	}
	return bin
}

// PluginBinDir is the directory the node's plugin runs from (CNI_PATH): this checkout's plugin
// (PluginDir), or the one UseBinaries named.
func (n *Node) PluginBinDir() string {
	n.binMu.Lock()
	dir := n.pluginBin
	n.binMu.Unlock()
	if dir == "" {
		dir = PluginDir(n.T)
	}
	return dir
}

// NewNode creates the node namespace and directory for instance, whose metadata the simulator
// serves; the agent will talk to servers. It needs root (the test is skipped otherwise).
func NewNode(t testing.TB, sim *ec2sim.Server, instance ec2sim.InstanceInfo, servers ...string) *Node {
	t.Helper()
	nstest.RequireIPNetns(t)
	imds, err := sim.IMDSEndpoint(instance.ID)
	if err != nil {
		t.Fatalf("IMDS of %s: %v", instance.ID, err)
	}
	dir, err := os.MkdirTemp("", "ipl-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	nsh := nstest.New(t)
	return &Node{
		T: t, Instance: instance, IMDS: imds, Servers: slices.Clone(servers),
		NS: nsh, H: nstest.Handle(t, nsh),
		Dir: dir, Socket: filepath.Join(dir, "agent.sock"), Checkpoint: filepath.Join(dir, "checkpoint.json"),
		MetricsAddr: FreePort(t),
	}
}

// Name is the node's Kubernetes name (the instance's private DNS name, as IMDS reports it).
func (n *Node) Name() string { return n.Instance.PrivateDNSName }

// NSName is the node namespace's name for `ip netns exec`.
func (n *Node) NSName() string { return nstest.Name(n.NS) }

// PluginLog is the file the plugin logs to (JSON lines).
func (n *Node) PluginLog() string { return filepath.Join(n.Dir, "plugin.log") }

// Conf is a plugin config for this node's agent at a CNI version; extra are JSON members
// (`"mtu":1500`) added to it.
func (n *Node) Conf(version string, extra ...string) []byte {
	s := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"type":%q,"agentSocket":%q,"logFile":%q,"logLevel":"debug"`,
		version, NetworkName, PluginName, n.Socket, n.PluginLog())
	for _, e := range extra {
		s += "," + e
	}
	return []byte(s + "}")
}

// Pod is a pod sandbox: its network namespace and its attachment.
type Pod struct {
	Name        string
	NS          ns.NetNS
	ContainerID string
	IfName      string
}

// Attest makes the node's agent attest to a server whose certificate caFile verifies.
func (n *Node) Attest(caFile string) {
	n.ServerCA = caFile
	n.IdentityDir = filepath.Join(n.Dir, "identity")
}

// ManagedRuntime is a cnitool runtime whose config directory the agent fills: the agent
// installs the network config list there (from a source file in the node's directory) once it
// has an identity and a pool, as it does in /etc/cni/net.d on a real node.
func (n *Node) ManagedRuntime(version string) *Runtime {
	n.T.Helper()
	r := n.NewRuntime(version)
	src := filepath.Join(n.Dir, "conflist-src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		n.T.Fatal(err)
	}
	name := "10-" + r.Network + ".conflist"
	if err := os.Rename(filepath.Join(r.ConfDir, name), filepath.Join(src, name)); err != nil {
		n.T.Fatal(err)
	}
	n.CNIConfDir, n.ConflistSrc = r.ConfDir, filepath.Join(src, name)
	return r
}

// Conflist is the path of the conflist the agent installs in a ManagedRuntime ("" without one).
func (n *Node) Conflist() string {
	if n.CNIConfDir == "" {
		return ""
	}
	return filepath.Join(n.CNIConfDir, filepath.Base(n.ConflistSrc))
}

// NewPod creates a pod namespace (removed in t.Cleanup) with a fresh container id.
func (n *Node) NewPod(name string) *Pod {
	n.T.Helper()
	suffix := make([]byte, 6)
	_, _ = rand.Read(suffix)
	return &Pod{Name: name, NS: nstest.New(n.T), ContainerID: name + "-" + hex.EncodeToString(suffix), IfName: "eth0"}
}

// HostVeth is the name of the pod's veth on the node.
func (p *Pod) HostVeth() string {
	return cni.HostVethName(cni.DefaultVethPrefix, p.ContainerID, p.IfName)
}

// Env is the CNI environment of a command for the pod (nil pod: no attachment, as GC and
// STATUS).
func (n *Node) Env(cmd string, p *Pod) map[string]string {
	env := map[string]string{"CNI_COMMAND": cmd, "CNI_PATH": n.PluginBinDir()}
	if p != nil {
		env["CNI_CONTAINERID"] = p.ContainerID
		env["CNI_NETNS"] = p.NS.Path()
		env["CNI_IFNAME"] = p.IfName
		env["CNI_ARGS"] = "IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=" + p.Name + ";K8S_POD_UID=uid-" + p.ContainerID
	}
	return env
}

// Result is what a plugin or cnitool run printed and how it ended.
type Result struct {
	Stdout, Stderr []byte
	Err            error
}

// MustSucceed fails the test when the run failed.
func (r Result) MustSucceed(t testing.TB, what string) Result {
	t.Helper()
	if r.Err != nil {
		t.Fatalf("%s: %v\nstdout: %s\nstderr: %s", what, r.Err, r.Stdout, r.Stderr)
	}
	return r
}

// CNIError decodes the CNI error the plugin printed; the test fails when it succeeded or
// printed none.
func (r Result) CNIError(t testing.TB) *types.Error {
	t.Helper()
	if r.Err == nil {
		t.Fatalf("succeeded, want a CNI error; stdout: %s", r.Stdout)
	}
	var e types.Error
	if err := json.Unmarshal(r.Stdout, &e); err != nil || e.Code == 0 {
		t.Fatalf("failed (%v) without a CNI error on stdout: %q (stderr %q)", r.Err, r.Stdout, r.Stderr)
	}
	return &e
}

// IP is the pod address of a CNI result (any spec version: every one lists "ips").
func (r Result) IP(t testing.TB) netip.Addr {
	t.Helper()
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(r.Stdout, &res); err != nil || len(res.IPs) != 1 {
		t.Fatalf("CNI result %q: want one address (%v)", r.Stdout, err)
	}
	pfx, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil || pfx.Bits() != 32 {
		t.Fatalf("CNI result address %q is not a /32", res.IPs[0].Address)
	}
	return pfx.Addr()
}

// PluginCmd is the plugin binary run inside the node namespace (`ip netns exec`, which execs it:
// the process is the plugin) with env and stdin, unstarted. It is killed if the test process
// dies.
func (n *Node) PluginCmd(env map[string]string, stdin []byte) *exec.Cmd {
	n.T.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.NSName(), filepath.Join(n.PluginBinDir(), PluginName))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// RunPlugin runs the plugin inside the node namespace with env and stdin.
func (n *Node) RunPlugin(env map[string]string, stdin []byte) Result {
	n.T.Helper()
	cmd := n.PluginCmd(env, stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := Run(cmd)
	return Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Err: err}
}

// Plugin runs a CNI command for the pod with the node's config at version.
func (n *Node) Plugin(cmd string, p *Pod, version string, extra ...string) Result {
	n.T.Helper()
	return n.RunPlugin(n.Env(cmd, p), n.Conf(version, extra...))
}

// Add runs ADD for the pod (CNI 1.1.0) and returns its address; the test fails when ADD does.
func (n *Node) Add(p *Pod) netip.Addr {
	n.T.Helper()
	return n.Plugin("ADD", p, "1.1.0").MustSucceed(n.T, "ADD "+p.Name).IP(n.T)
}

// Del runs DEL for the pod (CNI 1.1.0); the test fails when DEL does.
func (n *Node) Del(p *Pod) {
	n.T.Helper()
	n.Plugin("DEL", p, "1.1.0").MustSucceed(n.T, "DEL "+p.Name)
}

// Runtime drives the plugin through cnitool (the reference runtime, libcni) in the node
// namespace, with a conflist of its own.
type Runtime struct {
	n       *Node
	Network string
	ConfDir string
}

// CNIToolCacheDir is where libcni (and so cnitool, which cannot be told otherwise) caches results.
const CNIToolCacheDir = "/var/lib/cni"

// NewRuntime writes a conflist for the node's agent at version and removes cnitool's cached
// results for it in t.Cleanup.
func (n *Node) NewRuntime(version string) *Runtime {
	n.T.Helper()
	CNITool(n.T)
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	r := &Runtime{n: n, Network: "ipl-e2e-" + hex.EncodeToString(suffix), ConfDir: n.T.TempDir()}
	conflist := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":%q,"agentSocket":%q,"logFile":%q,"logLevel":"debug"}]}`,
		version, r.Network, PluginName, n.Socket, n.PluginLog())
	if err := os.WriteFile(filepath.Join(r.ConfDir, "10-"+r.Network+".conflist"), []byte(conflist), 0o644); err != nil {
		n.T.Fatal(err)
	}
	_, statErr := os.Stat(CNIToolCacheDir)
	n.T.Cleanup(func() {
		matches, _ := filepath.Glob(filepath.Join(CNIToolCacheDir, "results", r.Network+"-*"))
		for _, m := range matches {
			_ = os.Remove(m)
		}
		if os.IsNotExist(statErr) {
			_ = os.Remove(filepath.Join(CNIToolCacheDir, "results"))
			_ = os.Remove(CNIToolCacheDir)
		}
	})
	return r
}

// CNIToolPod is a pod whose container id is the one cnitool derives from its netns path.
func (n *Node) CNIToolPod(name string) *Pod {
	p := n.NewPod(name)
	p.ContainerID = CNIToolContainerID(p.NS.Path())
	return p
}

// CNIToolContainerID is the container id cnitool uses for a netns path:
// "cnitool-" and the first 10 bytes of its SHA-512 in hex.
func CNIToolContainerID(netnsPath string) string {
	sum := sha512.Sum512([]byte(netnsPath))
	return fmt.Sprintf("cnitool-%x", sum[:10])
}

// Run runs `cnitool <cmd> <network> <pod netns>` inside the node namespace.
func (r *Runtime) Run(cmd string, p *Pod) Result {
	r.n.T.Helper()
	c := exec.Command("ip", "netns", "exec", r.n.NSName(), CNITool(r.n.T), cmd, r.Network, p.NS.Path())
	c.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"NETCONFPATH=" + r.ConfDir,
		"CNI_PATH=" + r.n.PluginBinDir(),
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME=" + p.Name,
	}
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := Run(c)
	return Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Err: err}
}

// PodRules lists the node namespace's pod rules (netconf's view).
func (n *Node) PodRules() []netconf.PodRoute {
	n.T.Helper()
	m, err := netconf.New(netconf.Config{NetNS: n.NS.Path()})
	if err != nil {
		n.T.Fatal(err)
	}
	defer func() { _ = m.Close() }()
	rules, err := m.Rules()
	if err != nil {
		n.T.Fatal(err)
	}
	return rules
}

// NetState is the node namespace's links, addresses, rules and routes (every table) as sorted
// lines: equal states mean nothing was changed.
func (n *Node) NetState() []string {
	n.T.Helper()
	return NetState(n.T, n.H)
}

// NetState describes a namespace through its netlink handle (see Node.NetState).
func NetState(t testing.TB, h *netlink.Handle) []string {
	t.Helper()
	var out []string
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	names := map[int]string{}
	for _, l := range links {
		a := l.Attrs()
		names[a.Index] = a.Name
		out = append(out, fmt.Sprintf("link %s %s mtu %d flags %v mac %s", a.Name, l.Type(), a.MTU, a.Flags, a.HardwareAddr))
		addrs, err := h.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			t.Fatal(err)
		}
		for _, ad := range addrs {
			out = append(out, fmt.Sprintf("addr %s dev %s", ad.IPNet, a.Name))
		}
	}
	rules, err := h.RuleList(netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		out = append(out, "rule "+r.String())
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: 0}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		out = append(out, fmt.Sprintf("route table %d dst %v gw %v dev %s scope %v", r.Table, r.Dst, r.Gw, names[r.LinkIndex], r.Scope))
	}
	slices.Sort(out)
	return out
}

// DiffNetState returns the lines only in before and only in after, or "" when equal.
func DiffNetState(before, after []string) string {
	var b strings.Builder
	for _, l := range before {
		if !slices.Contains(after, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range after {
		if !slices.Contains(before, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	return b.String()
}

// TableRoutes lists the routes of one route table in the node namespace as "dst via gw dev".
func (n *Node) TableRoutes(table int) []string {
	n.T.Helper()
	routes, err := n.H.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		n.T.Fatal(err)
	}
	var out []string
	for _, r := range routes {
		dst := "default"
		if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
			dst = r.Dst.String()
		}
		if r.Gw != nil {
			dst += " via " + r.Gw.String()
		}
		if l, err := n.H.LinkByIndex(r.LinkIndex); err == nil {
			dst += " dev " + l.Attrs().Name
		}
		out = append(out, dst)
	}
	slices.Sort(out)
	return out
}

// GC runs the plugin's GC (CNI 1.1.0) with valid as the runtime's valid attachments.
func (n *Node) GC(valid ...*Pod) Result {
	n.T.Helper()
	type attachment struct {
		ContainerID string `json:"containerID"`
		IfName      string `json:"ifname"`
	}
	list := []attachment{}
	for _, p := range valid {
		list = append(list, attachment{p.ContainerID, p.IfName})
	}
	b, err := json.Marshal(list)
	if err != nil {
		n.T.Fatal(err)
	}
	return n.RunPlugin(n.Env("GC", nil), n.Conf("1.1.0", `"cni.dev/valid-attachments":`+string(b)))
}

// PodLinks lists the pod namespace's links other than lo.
func PodLinks(t testing.TB, p *Pod) []string {
	t.Helper()
	h, err := netlink.NewHandleAt(netnsHandle(p.NS))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			out = append(out, l.Attrs().Name)
		}
	}
	slices.Sort(out)
	return out
}

// RequireNodeNamespaces skips the test unless it can create network namespaces (root, iproute2),
// and fails it at the end if the test's own (root) namespace gained IPv4 forwarding, pod rules,
// host veths ("eni...") or simulated ENI links ("sim-..."). Call it first.
func RequireNodeNamespaces(t testing.TB) {
	t.Helper()
	nstest.RequireIPNetns(t)
	nstest.GuardRootNS(t, cni.DefaultVethPrefix, "sim-")
}

func netnsHandle(n ns.NetNS) netns.NsHandle { return netns.NsHandle(int(n.Fd())) }
