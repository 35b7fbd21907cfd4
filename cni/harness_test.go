package cni_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/cni"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// ---- the plugin binary, built once per test binary ----

var (
	buildOnce  sync.Once
	binDir     string
	buildErr   error
	cnitoolBin string
	cnitoolErr error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func goBin() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(os.Getenv("GOROOT"), "bin", "go")
}

// pluginPath builds cni/cmd/ipledger-cni (once) into a directory usable as CNI_PATH, where it is
// installed as "ipledger", and returns the binary's path.
func pluginPath(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "ipledger-cni-bin-")
		if buildErr != nil {
			return
		}
		out, err := exec.Command(goBin(), "build", "-o", filepath.Join(binDir, "ipledger"), "./cmd/ipledger-cni").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build ./cmd/ipledger-cni: %v\n%s", err, out)
			return
		}
		out, err = exec.Command(goBin(), "tool", "-n", "cnitool").Output()
		if err != nil {
			cnitoolErr = fmt.Errorf("go tool -n cnitool: %v", err)
			return
		}
		cnitoolBin = strings.TrimSpace(string(out))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "ipledger")
}

// ---- the in-test agent: CNIService from a fixed list of addresses ----

type attKey struct{ cid, ifname string }

type fakeAgent struct {
	ipledgerv1.UnimplementedCNIServiceServer

	socket string

	mu       sync.Mutex
	free     []string
	tables   map[string]uint32 // route table per address (default 254)
	assigned map[attKey]string
	calls    []string
	gcValid  [][]attKey
	addErr   error                         // returned by Add when set
	addBlock bool                          // Add waits for its deadline
	status   *ipledgerv1.CNIStatusResponse // Status answer (default: ready)
	lastAdd  *ipledgerv1.CNIAddRequest
}

func agentError(code codes.Code, reason ipledgerv1.Reason, msg string) error {
	st, err := status.New(code, msg).WithDetails(&errdetails.ErrorInfo{Domain: cni.ErrorDomain, Reason: reason.String()})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

// startAgent serves a fakeAgent on a unix socket in a fresh temporary directory.
func startAgent(t *testing.T, addrs ...string) *fakeAgent {
	t.Helper()
	// Unix socket paths are short (108 bytes); t.TempDir() paths of long test names are not.
	dir, err := os.MkdirTemp("", "ipl-agent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	a := &fakeAgent{
		socket:   filepath.Join(dir, "agent.sock"),
		free:     slices.Clone(addrs),
		tables:   map[string]uint32{},
		assigned: map[attKey]string{},
	}
	lis, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	ipledgerv1.RegisterCNIServiceServer(srv, a)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return a
}

func (a *fakeAgent) record(format string, args ...any) {
	a.calls = append(a.calls, fmt.Sprintf(format, args...))
}

func (a *fakeAgent) Calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls)
}

func (a *fakeAgent) CallsOf(op string) int {
	n := 0
	for _, c := range a.Calls() {
		if strings.HasPrefix(c, op+" ") {
			n++
		}
	}
	return n
}

func (a *fakeAgent) Assigned() map[attKey]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[attKey]string, len(a.assigned))
	for k, v := range a.assigned {
		out[k] = v
	}
	return out
}

func (a *fakeAgent) set(f func(a *fakeAgent)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(a)
}

func (a *fakeAgent) Add(ctx context.Context, req *ipledgerv1.CNIAddRequest) (*ipledgerv1.CNIAddResponse, error) {
	a.mu.Lock()
	a.record("Add %s/%s", req.GetContainerId(), req.GetIfname())
	a.lastAdd = req
	block, addErr := a.addBlock, a.addErr
	a.mu.Unlock()
	if block {
		// A slow agent answers only once the plugin gave up: its answer must never arrive as
		// a success (under load it could, before the plugin's own deadline fired).
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if addErr != nil {
		return nil, addErr
	}
	k := attKey{req.GetContainerId(), req.GetIfname()}
	ip, ok := a.assigned[k]
	if !ok {
		if len(a.free) == 0 {
			return nil, agentError(codes.ResourceExhausted, ipledgerv1.Reason_SUBNET_EXHAUSTED, "subnet subnet-0abc has no free address")
		}
		ip, a.free = a.free[0], a.free[1:]
		a.assigned[k] = ip
	}
	table := a.tables[ip]
	if table == 0 {
		table = netconf.MainTable
	}
	return &ipledgerv1.CNIAddResponse{Ip: ip, EniId: "eni-test", RouteTable: table}, nil
}

func (a *fakeAgent) Del(_ context.Context, req *ipledgerv1.CNIDelRequest) (*ipledgerv1.CNIDelResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.record("Del %s/%s", req.GetContainerId(), req.GetIfname())
	k := attKey{req.GetContainerId(), req.GetIfname()}
	ip, ok := a.assigned[k]
	if !ok {
		return &ipledgerv1.CNIDelResponse{}, nil
	}
	delete(a.assigned, k)
	a.free = append(a.free, ip)
	return &ipledgerv1.CNIDelResponse{Ip: ip}, nil
}

func (a *fakeAgent) Check(_ context.Context, req *ipledgerv1.CNICheckRequest) (*ipledgerv1.CNICheckResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.record("Check %s/%s", req.GetContainerId(), req.GetIfname())
	ip, ok := a.assigned[attKey{req.GetContainerId(), req.GetIfname()}]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such attachment")
	}
	table := a.tables[ip]
	if table == 0 {
		table = netconf.MainTable
	}
	return &ipledgerv1.CNICheckResponse{Ip: ip, EniId: "eni-test", RouteTable: table}, nil
}

func (a *fakeAgent) GC(_ context.Context, req *ipledgerv1.CNIGCRequest) (*ipledgerv1.CNIGCResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var valid []attKey
	for _, v := range req.GetValidAttachments() {
		valid = append(valid, attKey{v.GetContainerId(), v.GetIfname()})
	}
	a.record("GC %d", len(valid))
	a.gcValid = append(a.gcValid, valid)
	resp := &ipledgerv1.CNIGCResponse{}
	for k, ip := range a.assigned {
		if !slices.Contains(valid, k) {
			delete(a.assigned, k)
			a.free = append(a.free, ip)
			resp.Released = append(resp.Released, &ipledgerv1.PodAddress{Ip: ip, ContainerId: k.cid, Ifname: k.ifname})
		}
	}
	return resp, nil
}

func (a *fakeAgent) Status(context.Context, *ipledgerv1.CNIStatusRequest) (*ipledgerv1.CNIStatusResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.record("Status ")
	if a.status != nil {
		return a.status, nil
	}
	return &ipledgerv1.CNIStatusResponse{Ready: true, Free: uint32(len(a.free)), ServerConnected: true}, nil
}

// ---- running the plugin in the node namespace ----

// node is a simulated node: its namespace, and the in-test agent.
type node struct {
	t     *testing.T
	ns    ns.NetNS
	h     *netlink.Handle
	agent *fakeAgent
}

func newNode(t *testing.T, addrs ...string) *node {
	t.Helper()
	nstest.RequireIPNetns(t)
	nstest.GuardRootNS(t, "eni", "tst")
	pluginPath(t)
	n := nstest.New(t)
	return &node{t: t, ns: n, h: nstest.Handle(t, n), agent: startAgent(t, addrs...)}
}

// conf is the plugin config for this node's agent.
func (n *node) conf(version string, extra ...string) []byte {
	s := fmt.Sprintf(`{"cniVersion":%q,"name":"ipl-test","type":"ipledger","agentSocket":%q`, version, n.agent.socket)
	for _, e := range extra {
		s += "," + e
	}
	return []byte(s + "}")
}

type invocation struct {
	cmd, containerID, netns, ifname, args string
	stdin                                 []byte
	unset                                 []string // env vars to leave out
}

type outcome struct {
	stdout, stderr []byte
	err            error
}

// cniError decodes the JSON error a failed plugin printed on stdout.
func (o outcome) cniError(t *testing.T) *types.Error {
	t.Helper()
	if o.err == nil {
		t.Fatalf("plugin succeeded, want an error; stdout: %s", o.stdout)
	}
	var e types.Error
	if err := json.Unmarshal(o.stdout, &e); err != nil {
		t.Fatalf("plugin failed (%v) without a JSON error on stdout: %q (stderr %q)", o.err, o.stdout, o.stderr)
	}
	return &e
}

func (o outcome) mustSucceed(t *testing.T, what string) {
	t.Helper()
	if o.err != nil {
		t.Fatalf("%s: %v\nstdout: %s\nstderr: %s", what, o.err, o.stdout, o.stderr)
	}
}

// run executes the plugin binary inside the node namespace (`ip netns exec`), as a runtime would.
func (n *node) run(inv invocation) outcome {
	n.t.Helper()
	cmd := exec.Command("ip", "netns", "exec", nstest.Name(n.ns), pluginPath(n.t))
	env := map[string]string{
		"PATH":            os.Getenv("PATH"),
		"CNI_COMMAND":     inv.cmd,
		"CNI_CONTAINERID": inv.containerID,
		"CNI_NETNS":       inv.netns,
		"CNI_IFNAME":      inv.ifname,
		"CNI_ARGS":        inv.args,
		"CNI_PATH":        binDir,
	}
	for _, k := range inv.unset {
		delete(env, k)
	}
	for k, v := range env {
		if v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdin = bytes.NewReader(inv.stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return outcome{stdout: stdout.Bytes(), stderr: stderr.Bytes(), err: err}
}

// pod is a pod's namespace and its attachment.
type pod struct {
	ns          ns.NetNS
	containerID string
	ifname      string
}

func (n *node) newPod(containerID string) *pod {
	return &pod{ns: nstest.New(n.t), containerID: containerID, ifname: "eth0"}
}

func (p *pod) inv(cmd string, stdin []byte) invocation {
	return invocation{cmd: cmd, containerID: p.containerID, netns: p.ns.Path(), ifname: p.ifname,
		args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + p.containerID + ";K8S_POD_UID=uid-" + p.containerID, stdin: stdin}
}

func (p *pod) hostVeth() string { return cni.HostVethName("eni", p.containerID, p.ifname) }

// ---- looking at the namespaces ----

// linkNames lists the links of a namespace other than lo.
func linkNames(t *testing.T, h *netlink.Handle) []string {
	t.Helper()
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

// podRules lists the node's pod rules.
func (n *node) podRules() []netconf.PodRoute {
	n.t.Helper()
	m, err := netconf.New(netconf.Config{NetNS: n.ns.Path()})
	if err != nil {
		n.t.Fatal(err)
	}
	defer m.Close() //nolint:errcheck
	rules, err := m.Rules()
	if err != nil {
		n.t.Fatal(err)
	}
	return rules
}

// assertAttached checks the node and the pod after a successful ADD.
func (n *node) assertAttached(p *pod, ip netip.Addr, table int) {
	t := n.t
	t.Helper()
	host, err := n.h.LinkByName(p.hostVeth())
	if err != nil {
		t.Fatalf("host veth %s missing in the node namespace: %v", p.hostVeth(), err)
	}
	if host.Type() != "veth" || host.Attrs().Flags&net.FlagUp == 0 || host.Attrs().MTU != 9001 {
		t.Errorf("host veth %s: type %s flags %v mtu %d; want an up veth with MTU 9001", p.hostVeth(), host.Type(), host.Attrs().Flags, host.Attrs().MTU)
	}
	if _, err := netlink.LinkByName(p.hostVeth()); err == nil {
		t.Errorf("host veth %s exists in the test's own namespace: the plugin did not run in the node namespace", p.hostVeth())
	}
	routes, err := n.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: host.Attrs().Index}, netlink.RT_FILTER_OIF)
	if err != nil {
		t.Fatal(err)
	}
	if len(routes) != 1 || routes[0].Dst.String() != ip.String()+"/32" || routes[0].Scope != netlink.SCOPE_LINK {
		t.Errorf("node routes via %s = %v, want %s/32 scope link", p.hostVeth(), routes, ip)
	}
	want := netconf.PodRoute{IP: ip, HostVeth: p.hostVeth(), Table: table}
	if !slices.Contains(n.podRules(), want) {
		t.Errorf("node pod rules = %+v, want them to contain %+v", n.podRules(), want)
	}

	ph := nstest.Handle(t, p.ns)
	link, err := ph.LinkByName(p.ifname)
	if err != nil {
		t.Fatalf("pod interface %s: %v", p.ifname, err)
	}
	if link.Attrs().MTU != 9001 || link.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("pod %s: mtu %d flags %v", p.ifname, link.Attrs().MTU, link.Attrs().Flags)
	}
	addrs, _ := ph.AddrList(link, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != ip.String()+"/32" {
		t.Errorf("pod addresses = %v, want %s/32", addrs, ip)
	}
	proutes, _ := ph.RouteList(link, netlink.FAMILY_V4)
	var got []string
	for _, r := range proutes {
		s := "default"
		if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
			s = r.Dst.String()
		}
		if r.Gw != nil {
			s += " via " + r.Gw.String()
		}
		got = append(got, s)
	}
	slices.Sort(got)
	if !slices.Equal(got, []string{"169.254.1.1/32", "default via 169.254.1.1"}) {
		t.Errorf("pod routes = %q, want the link route to 169.254.1.1 and the default via it", got)
	}
	neighs, _ := ph.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	found := false
	for _, nb := range neighs {
		if nb.IP.String() == "169.254.1.1" && nb.State == netlink.NUD_PERMANENT && nb.HardwareAddr.String() == host.Attrs().HardwareAddr.String() {
			found = true
		}
	}
	if !found {
		t.Errorf("pod neighbours = %+v, want 169.254.1.1 permanent at %s", neighs, host.Attrs().HardwareAddr)
	}
}

// assertClean checks that the node has no links (but those in keep) and no pod rules.
func (n *node) assertClean(keep ...string) {
	n.t.Helper()
	slices.Sort(keep)
	if got := linkNames(n.t, n.h); !slices.Equal(got, keep) {
		n.t.Errorf("node links = %q, want %q", got, keep)
	}
	if r := n.podRules(); len(r) != 0 {
		n.t.Errorf("node pod rules = %+v, want none", r)
	}
}
