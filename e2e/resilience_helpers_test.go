package e2e_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// Node roles: each is a node group policy the resilience tests set, selected by the instance's
// EC2 tag e2e-role=<role> (policies match facts the server verifies, not what agents report).
const (
	// roleProbe keeps no free address (warm_ip_target 0): every ADD on such a node waits for
	// a new allocation, so a successful ADD proves the allocator serves.
	roleProbe = "probe"
	// roleWarm keeps three free addresses (warm_ip_target 3): its pods need no allocation.
	roleWarm = "warm"
	// rolePrefix leases /28 prefixes (one warm prefix).
	rolePrefix = "prefix"
	// roleDefault: the adaptive default policy.
	roleDefault = ""
)

func rolePolicies() []*ipledgerv1.NodePolicy {
	sel := func(role string) *ipledgerv1.NodeSelector {
		return &ipledgerv1.NodeSelector{Labels: map[string]string{"e2e-role": role}}
	}
	return []*ipledgerv1.NodePolicy{
		{Name: "e2e-probe", Order: 10, Selector: sel(roleProbe), WarmIpTarget: proto.Uint32(0)},
		{Name: "e2e-warm", Order: 20, Selector: sel(roleWarm), WarmIpTarget: proto.Uint32(3)},
		{Name: "e2e-prefix", Order: 30, Selector: sel(rolePrefix), Mode: ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX, WarmPrefixTarget: proto.Uint32(1)},
	}
}

// rsNode is a node of the resilience tests: its instance, namespace, agent and cnitool runtime.
type rsNode struct {
	*harness.Node
	RT *harness.Runtime

	mu    sync.Mutex
	agent *harness.Agent // replaced by restartAgent; read by the watchdog
	role  string
	opts  nodeOpts
	pods  int
}

// nodeOpts are a node's agent flags and plugin settings.
type nodeOpts struct {
	// agentArgs are extra ipledger-agent flags.
	agentArgs []string
	// addTimeout is the plugin's addTimeout ("" = its default, 12 s: the agent waits 10 s).
	addTimeout string
	// agentBin and pluginDir are another build's agent and plugin directory ("": this
	// checkout's; the upgrade test starts nodes on the previous release's).
	agentBin, pluginDir string
}

func (o nodeOpts) conf() []string {
	if o.addTimeout == "" {
		return nil
	}
	return []string{fmt.Sprintf(`"addTimeout":%q`, o.addTimeout)}
}

// launch starts count m5.large instances in the subnet with the given CIDR.
func (rs *resilience) launch(t *testing.T, cidr string, count int) []ec2sim.InstanceInfo {
	t.Helper()
	insts, err := rs.c.Sim.Sim().RunInstances(t.Context(), ec2sim.InstanceSpec{InstanceType: "m5.large", SubnetID: rs.subnetID(t, cidr)}, count)
	if err != nil {
		t.Fatalf("run %d instances in %s: %v", count, cidr, err)
	}
	return insts
}

func (rs *resilience) subnetID(t *testing.T, cidr string) string {
	t.Helper()
	for _, sn := range rs.c.Sim.Sim().Snapshot().Subnets {
		if sn.CIDR == cidr {
			return sn.ID
		}
	}
	t.Fatalf("the simulator has no subnet %s", cidr)
	return ""
}

func (rs *resilience) subnetInfo(t *testing.T, cidr string) ec2sim.SubnetInfo {
	t.Helper()
	for _, sn := range rs.c.Sim.Sim().Snapshot().Subnets {
		if sn.CIDR == cidr {
			return sn
		}
	}
	t.Fatalf("the simulator has no subnet %s", cidr)
	return ec2sim.SubnetInfo{}
}

// join makes a node of the instance (its namespace) and starts its agent with the role's label.
// It does not wait for the agent to register.
func (rs *resilience) join(t *testing.T, inst ec2sim.InstanceInfo, role string) *rsNode {
	t.Helper()
	return rs.joinWith(t, inst, role, nodeOpts{})
}

// joinWith is join with agent flags and plugin settings.
func (rs *resilience) joinWith(t *testing.T, inst ec2sim.InstanceInfo, role string, o nodeOpts) *rsNode {
	t.Helper()
	if role != roleDefault {
		if err := rs.c.Sim.Sim().TagInstance(t.Context(), inst.ID, map[string]string{"e2e-role": role}); err != nil {
			t.Fatal(err)
		}
	}
	n := &rsNode{Node: harness.NewNode(t, rs.c.Sim, inst, rs.c.Addrs()...), role: role, opts: o}
	n.UseBinaries(o.agentBin, o.pluginDir)
	n.agent = n.StartAgent(n.agentArgs()...)
	n.RT = n.NewRuntimeConf("1.1.0", o.conf()...)
	rs.mu.Lock()
	rs.nodes = append(rs.nodes, n)
	rs.mu.Unlock()
	t.Cleanup(func() {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		rs.nodes = slices.DeleteFunc(rs.nodes, func(o *rsNode) bool { return o == n })
	})
	return n
}

func (n *rsNode) agentArgs() []string {
	return n.opts.agentArgs
}

// restartAgent starts the node's agent again (after Kill) with the same flags.
func (n *rsNode) restartAgent() {
	n.T.Helper()
	a := n.StartAgent(n.agentArgs()...)
	n.mu.Lock()
	n.agent = a
	n.mu.Unlock()
}

// Agent is the node's current agent.
func (n *rsNode) Agent() *harness.Agent {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.agent
}

// plugin runs the plugin itself (not cnitool) for a CNI command, with the node's settings; the
// result carries the CNI error code.
func (n *rsNode) plugin(cmd string, p *harness.Pod) harness.Result {
	n.T.Helper()
	return n.Plugin(cmd, p, "1.1.0", n.opts.conf()...)
}

// pod creates a pod sandbox (namespace) named for cnitool.
func (n *rsNode) pod(prefix string) *harness.Pod {
	n.pods++
	return n.CNIToolPod(fmt.Sprintf("%s-%d", prefix, n.pods))
}

// podRun is one pod started the way a kubelet starts it: cnitool ADD; after a failure DEL (the
// runtime tears the sandbox down) and ADD again until it succeeds or the deadline passes.
type podRun struct {
	node     *rsNode
	pod      *harness.Pod
	ip       netip.Addr
	attempts int
	failures []string // what each failed ADD said
	began    time.Time
	done     time.Time
	err      error
}

func (p *podRun) String() string {
	return fmt.Sprintf("%s/%s: ip %v after %d attempts in %v (failures %q, err %v)", p.node.Name(), p.pod.Name, p.ip, p.attempts, p.done.Sub(p.began).Round(time.Millisecond), p.failures, p.err)
}

// addOnce runs one cnitool ADD; goroutine-safe (it never fails the test).
func addOnce(n *rsNode, p *harness.Pod) (netip.Addr, error) {
	r := n.RT.Run("add", p)
	if r.Err != nil {
		return netip.Addr{}, fmt.Errorf("%v: %s", r.Err, strings.TrimSpace(string(r.Stderr)))
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(r.Stdout, &res); err != nil || len(res.IPs) != 1 {
		return netip.Addr{}, fmt.Errorf("cnitool add printed %q: want one address (%v)", r.Stdout, err)
	}
	pfx, err := netip.ParsePrefix(res.IPs[0].Address)
	if err != nil || pfx.Bits() != 32 {
		return netip.Addr{}, fmt.Errorf("cnitool add gave %q, not a /32", res.IPs[0].Address)
	}
	return pfx.Addr(), nil
}

// startPod runs ADD (then DEL and ADD again after failures) until it succeeds or deadline.
func startPod(n *rsNode, p *harness.Pod, deadline time.Time) *podRun {
	pr := &podRun{node: n, pod: p, began: time.Now()}
	for {
		pr.attempts++
		ip, err := addOnce(n, p)
		if err == nil {
			pr.ip, pr.done = ip, time.Now()
			return pr
		}
		pr.failures = append(pr.failures, err.Error())
		_ = n.RT.Run("del", p) // the runtime tears down the failed sandbox
		if time.Now().After(deadline) {
			pr.err, pr.done = fmt.Errorf("no address by the deadline: %w", err), time.Now()
			return pr
		}
		time.Sleep(100 * time.Millisecond) // a kubelet's back-off, much shorter
	}
}

// burst starts the pods in the background, at most parallel at once; wait returns their runs.
type burst struct {
	g    errgroup.Group
	runs []*podRun
}

func startBurst(pods map[*rsNode][]*harness.Pod, parallel int, deadline time.Time) *burst {
	b := &burst{}
	b.g.SetLimit(parallel)
	var mu sync.Mutex
	// Interleave the nodes so every node has ADDs in flight at once.
	for i := 0; ; i++ {
		more := false
		for n, ps := range pods {
			if i >= len(ps) {
				continue
			}
			more = true
			p := ps[i]
			b.g.Go(func() error {
				r := startPod(n, p, deadline)
				mu.Lock()
				b.runs = append(b.runs, r)
				mu.Unlock()
				return nil
			})
		}
		if !more {
			break
		}
	}
	return b
}

func (b *burst) wait() []*podRun {
	_ = b.g.Wait()
	return b.runs
}

// checkRuns fails the test unless every pod started, each with its own address.
func checkRuns(t *testing.T, what string, runs []*podRun) (retried int) {
	t.Helper()
	seen := map[netip.Addr]*podRun{}
	for _, r := range runs {
		if r.err != nil {
			t.Errorf("%s: pod %s", what, r)
			continue
		}
		if o, ok := seen[r.ip]; ok {
			t.Errorf("%s: %s and %s got the same address", what, r, o)
		}
		seen[r.ip] = r
		if r.attempts > 1 {
			retried++
			for _, f := range r.failures {
				if !clearReason(f) {
					t.Errorf("%s: a failed ADD of %s/%s gave no clear reason: %s", what, r.node.Name(), r.pod.Name, f)
				}
			}
		}
	}
	return retried
}

// clearReason reports whether a failed ADD's message names why, as the plugin's code-11
// messages do (an ErrorInfo reason in parentheses, or the agent being unreachable).
func clearReason(msg string) bool {
	for _, r := range []string{"(SERVER_UNREACHABLE)", "(SUPPLY_TIMEOUT)", "(EC2_THROTTLED)", "(EC2_ERROR)", "(STORE_UNAVAILABLE)",
		"(SUBNET_EXHAUSTED)", "(BUDGET_EXHAUSTED)", "(NO_FREE_PREFIX_BLOCK)", "(NODE_AT_LIMIT)", "agent unreachable"} {
		if strings.Contains(msg, r) {
			return true
		}
	}
	return false
}

// views returns the pool views of the running agents of nodes, by node name.
func views(nodes []*rsNode) (map[string]agent.PoolView, error) {
	out := map[string]agent.PoolView{}
	for _, n := range nodes {
		if n.Agent().Exited() {
			continue
		}
		v, err := n.Agent().View()
		if err != nil {
			return nil, fmt.Errorf("agent of %s: %w", n.Name(), err)
		}
		out[n.Name()] = v
	}
	return out, nil
}

// poolIPs lists every address of a view (free, used, cooling, locked).
func poolIPs(v agent.PoolView) map[string]bool {
	out := map[string]bool{}
	for _, e := range v.ENIs {
		for _, ad := range e.Addresses {
			out[ad.IP] = true
		}
	}
	return out
}

// podIPs maps the addresses pods use on a node to their container ids.
func podIPs(v agent.PoolView) map[string]string {
	out := map[string]string{}
	for _, p := range v.Pods {
		out[p.IP] = p.ContainerID
	}
	return out
}

// poll calls cond every 20 ms until it holds (true) or d passes (false); unlike WaitFor it
// does not fail the test.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// figures are the measured recovery times, printed at the end and kept as an artifact.
type figures struct {
	// name is the artifact's file name (default resilience.txt): each test keeps its own.
	name  string
	mu    sync.Mutex
	lines []string
}

func (f *figures) add(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines = append(f.lines, fmt.Sprintf(format, args...))
}

func (f *figures) report(t *testing.T) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.lines) == 0 {
		return
	}
	text := "resilience figures:\n  " + strings.Join(f.lines, "\n  ") + "\n"
	t.Log(text)
	if dir := os.Getenv("IPLEDGER_ARTIFACTS_DIR"); dir != "" {
		name := f.name
		if name == "" {
			name = "resilience.txt"
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Errorf("keep figures: %v", err)
		}
	}
}

func ms(d time.Duration) string { return d.Round(10 * time.Millisecond).String() }

type agentPoolView = agent.PoolView

// stopwatch returns a logger of a part's steps, each with the time since the part began.
func stopwatch(t *testing.T) func(format string, args ...any) {
	began := time.Now()
	return func(format string, args ...any) {
		t.Helper()
		t.Logf("[%6s] %s", ms(time.Since(began)), fmt.Sprintf(format, args...))
	}
}
