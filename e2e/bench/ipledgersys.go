package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ipledger/ipledger/agent"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Labels the bench gives nodes, and the policy that puts prefix-role nodes in prefix mode.
const (
	labelMode       = "bench.ipledger.io/mode"
	prefixPolicy    = "bench-prefix"
	benchCluster    = "bench"
	benchRegion     = "eu-west-1"
	serverStartWait = 60 * time.Second
)

// ipledgerSystem is a real ipledger-server subprocess, an embedded etcd, and in-process agents.
// A supervisor restarts the server when it exits during the trace, as Kubernetes would restart
// its pod (the server is built to exit when it must rebuild its state from etcd); restarts and
// their reasons are reported.
type ipledgerSystem struct {
	env      systemEnv
	dir      string
	etcd     *store.Embedded
	args     []string
	grpcAddr string
	logFile  *os.File
	logPath  string

	procMu   sync.Mutex
	proc     *serverProc
	closing  bool
	exits    []string
	pastCPU  float64
	pastPeak float64
	superWG  sync.WaitGroup

	agentCtx context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []*grpc.ClientConn
	agentLog *slog.Logger
}

// serverProc is one run of the server process.
type serverProc struct {
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	last    string // the last line the process printed on stderr
}

var _ system = (*ipledgerSystem)(nil)

// serverFlags are the server's flags for a time-scaled run: --time-scale F makes the server's
// clock run F times faster, so its timers are given in simulated time (the defaults, spelled out).
func serverFlags(f float64) []string {
	d := func(x time.Duration) string { return x.String() }
	return []string{
		"--time-scale", strconv.FormatFloat(f, 'f', -1, 64),
		"--release-delay", d(60 * time.Second),
		"--release-cooldown", d(30 * time.Second),
		"--proposal-timeout", d(60 * time.Second),
		"--reconcile-interval", d(5 * time.Minute),
		"--instance-check-interval", d(60 * time.Second),
		"--drift-grace", d(60 * time.Second),
	}
}

// policies are the bench's node group policies: nodes labelled for prefix mode get it (with the
// adaptive target); every other node keeps the built-in default policy, or, when floor > 0, a
// default policy with that adaptive floor (the one tuning the bench allows itself).
//
// With pod subnets (the custom-networking trace), every node's policy names them all, per zone,
// with custom networking (no pods on the primary ENI), as the VPC CNI's ENIConfig does with one.
func policies(floor int, podSubnets map[string][]string) []*ipledgerv1.NodePolicy {
	out := []*ipledgerv1.NodePolicy{{
		Name:     prefixPolicy,
		Order:    10,
		Selector: &ipledgerv1.NodeSelector{Labels: map[string]string{labelMode: "prefix"}},
		Mode:     ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX,
	}}
	if floor > 0 {
		out = append(out, &ipledgerv1.NodePolicy{
			Name: "default", Order: math.MaxInt32, Selector: &ipledgerv1.NodeSelector{},
			Mode:          ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP,
			AdaptiveFloor: proto.Uint32(uint32(floor)), AdaptiveCap: proto.Uint32(uint32(max(16, floor))),
		})
	}
	if len(podSubnets) > 0 {
		ps := &ipledgerv1.PodSubnets{Zones: map[string]*ipledgerv1.ZonePodSubnets{}, ExcludePrimaryEni: true}
		for z, ids := range podSubnets {
			ps.Zones[z] = &ipledgerv1.ZonePodSubnets{SubnetIds: ids}
		}
		out = append(out, &ipledgerv1.NodePolicy{Name: "bench-custom", Order: 20, Selector: &ipledgerv1.NodeSelector{}, PodSubnets: ps})
	}
	return out
}

func writePolicyFile(path string, floor int, podSubnets map[string][]string) error {
	var parts []string
	for _, p := range policies(floor, podSubnets) {
		b, err := protojson.Marshal(p)
		if err != nil {
			return err
		}
		parts = append(parts, string(b))
	}
	return os.WriteFile(path, []byte("["+strings.Join(parts, ",")+"]\n"), 0o600)
}

// serverEnv is the server's environment: the bench's own minus anything AWS or ipledger, plus
// static credentials for the simulator and no AWS configuration files.
func serverEnv(dir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "AWS_") || strings.HasPrefix(kv, "IPLEDGER_") {
			continue
		}
		env = append(env, kv)
	}
	none := filepath.Join(dir, "no-aws-config")
	return append(env,
		"AWS_ACCESS_KEY_ID=ipledger-bench", "AWS_SECRET_ACCESS_KEY=ipledger-bench", "AWS_REGION="+benchRegion,
		"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE="+none, "AWS_SHARED_CREDENTIALS_FILE="+none)
}

// freeLoopbackPort picks a free port so that a restarted server listens where agents look.
func freeLoopbackPort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startIPLedger(ctx context.Context, env systemEnv) (_ *ipledgerSystem, err error) {
	s := &ipledgerSystem{env: env, dir: filepath.Join(env.workDir, "ipledger")}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	s.etcd, err = store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: filepath.Join(s.dir, "etcd")})
	if err != nil {
		return nil, fmt.Errorf("bench: embedded etcd: %w", err)
	}
	policyPath := filepath.Join(s.dir, "policies.json")
	if err := writePolicyFile(policyPath, env.ipledgerFloor, env.podSubnets); err != nil {
		return nil, err
	}
	if s.grpcAddr, err = freeLoopbackPort(); err != nil {
		return nil, err
	}
	s.args = []string{
		"--etcd-endpoints", strings.Join(s.etcd.Endpoints(), ","),
		"--data-dir", filepath.Join(s.dir, "server"),
		"--cluster-name", benchCluster,
		"--region", benchRegion,
		"--ec2-endpoint", env.sim.Endpoint(),
		"--grpc-listen", s.grpcAddr,
		"--http-listen", "127.0.0.1:0",
		"--policy-file", policyPath,
		"--log-level", "warn",
	}
	if len(env.subnets) > 0 {
		s.args = append(s.args, "--subnets", strings.Join(env.subnets, ","))
	}
	s.args = append(s.args, serverFlags(env.timeScale)...)
	s.args = append(s.args, env.extraServerArgs...)
	s.logPath = filepath.Join(s.dir, "server.log")
	if env.logDir != "" {
		s.logPath = filepath.Join(env.logDir, "ipledger-server.log")
	}
	if s.logFile, err = os.Create(s.logPath); err != nil {
		return nil, err
	}
	proc, err := s.spawn(ctx)
	if err != nil {
		return nil, err
	}
	s.procMu.Lock()
	s.proc = proc
	s.procMu.Unlock()
	if err := s.waitLeader(ctx, proc); err != nil {
		return nil, fmt.Errorf("%w; see %s", err, s.logPath)
	}
	s.agentCtx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.superWG.Add(1)
	go func() {
		defer s.superWG.Done()
		s.supervise(s.agentCtx)
	}()
	s.agentLog = slog.New(slog.DiscardHandler)
	if env.logDir != "" {
		f, err := os.Create(filepath.Join(env.logDir, "ipledger-agents.log"))
		if err != nil {
			return nil, err
		}
		s.agentLog = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return s, nil
}

// spawn starts one server process and waits until it serves gRPC.
func (s *ipledgerSystem) spawn(ctx context.Context) (*serverProc, error) {
	// Not CommandContext: the server is stopped with SIGTERM in Close, never killed mid-trace.
	cmd := exec.Command(s.env.serverBin, s.args...)
	cmd.Env = serverEnv(s.dir)
	cmd.Dir = s.dir
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s: %w", s.env.serverBin, err)
	}
	p := &serverProc{cmd: cmd, exited: make(chan struct{})}
	up := make(chan struct{}, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(s.logFile, line)
			if strings.HasPrefix(line, "ipledger-server: ") {
				p.last = line
			}
			if strings.HasPrefix(line, "ipledger-server: gRPC on ") {
				select {
				case up <- struct{}{}:
				default:
				}
			}
		}
		_, _ = io.Copy(s.logFile, stderr)
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	select {
	case <-up:
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("bench: ipledger-server exited at start (%v: %s); see %s", p.waitErr, p.last, s.logPath)
	case <-time.After(serverStartWait):
		_ = cmd.Process.Kill()
		<-p.exited
		return nil, fmt.Errorf("bench: ipledger-server printed no gRPC address within %v; see %s", serverStartWait, s.logPath)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-p.exited
		return nil, ctx.Err()
	}
}

// supervise restarts the server when it exits before Close, after a simulated second.
func (s *ipledgerSystem) supervise(ctx context.Context) {
	for {
		s.procMu.Lock()
		p := s.proc
		s.procMu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-p.exited:
		}
		s.procMu.Lock()
		if s.closing {
			s.procMu.Unlock()
			return
		}
		s.account(p)
		s.exits = append(s.exits, fmt.Sprintf("%v: %s", p.waitErr, p.last))
		s.procMu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(float64(time.Second) / s.env.timeScale)):
		}
		np, err := s.spawn(ctx)
		if err != nil {
			s.procMu.Lock()
			s.exits = append(s.exits, "restart failed: "+err.Error())
			s.procMu.Unlock()
			return
		}
		s.procMu.Lock()
		s.proc = np
		s.procMu.Unlock()
	}
}

// account adds an exited process's CPU time and peak memory (from its rusage). procMu held.
func (s *ipledgerSystem) account(p *serverProc) {
	if st := p.cmd.ProcessState; st != nil {
		s.pastCPU += (st.UserTime() + st.SystemTime()).Seconds()
		if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
			s.pastPeak = max(s.pastPeak, float64(ru.Maxrss)/1024)
		}
	}
}

func (s *ipledgerSystem) waitLeader(ctx context.Context, proc *serverProc) error {
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	admin := ipledgerv1.NewAdminServiceClient(conn)
	deadline := time.Now().Add(serverStartWait)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := admin.GetClusterStatus(cctx, &ipledgerv1.GetClusterStatusRequest{})
		cancel()
		if err == nil && st.GetIsLeader() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: ipledger-server did not lead within %v (last: %v)", serverStartWait, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-proc.exited:
			return fmt.Errorf("bench: ipledger-server exited (%v: %s)", proc.waitErr, proc.last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (s *ipledgerSystem) Name() string { return SystemIPLedger }

func (s *ipledgerSystem) StartNode(ctx context.Context, inst ec2sim.InstanceInfo, r role) (node, error) {
	imds, err := s.env.sim.IMDSEndpoint(inst.ID)
	if err != nil {
		return nil, err
	}
	f := s.env.timeScale
	scale := func(d time.Duration) time.Duration { return time.Duration(float64(d) / f) }
	dir := filepath.Join(s.dir, "agents", inst.ID)
	cfg := agent.DefaultConfig()
	cfg.Servers = []string{s.grpcAddr}
	cfg.IMDSEndpoint = imds
	cfg.SocketPath = filepath.Join(dir, "cni.sock")
	cfg.CheckpointPath = filepath.Join(dir, "checkpoint.json")
	cfg.MetricsListen = ""
	cfg.ManageNetworking = false
	cfg.AddWait = scale(cfg.AddWait)
	cfg.Cooldown = scale(cfg.Cooldown)
	cfg.UsageInterval = scale(cfg.UsageInterval)
	cfg.UsageDebounce = scale(cfg.UsageDebounce)
	cfg.Logger = s.agentLog.With("instance", inst.ID)
	if r == rolePrefix {
		// The policy matches the instance's EC2 tag (as a node group's launch template sets
		// it); the agent's label says the same and is only shown.
		if err := s.env.sim.Sim().TagInstance(ctx, inst.ID, map[string]string{labelMode: "prefix"}); err != nil {
			return nil, fmt.Errorf("bench: tag %s: %w", inst.ID, err)
		}
		cfg.Labels = map[string]string{labelMode: "prefix"}
	}
	a, err := agent.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("bench: agent for %s: %w", inst.ID, err)
	}
	conn, err := grpc.NewClient("unix://"+cfg.SocketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.conns = append(s.conns, conn)
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := a.Run(s.agentCtx); err != nil && s.agentCtx.Err() == nil {
			s.agentLog.Error("agent stopped", "instance", inst.ID, "err", err)
		}
	}()
	return &ipledgerNode{a: a, cni: ipledgerv1.NewCNIServiceClient(conn), addTimeout: 2*cfg.AddWait + 5*time.Second}, nil
}

// Resources reads the server's CPU time and peak memory (every run of the process, the current
// one from /proc) and etcd's database size.
func (s *ipledgerSystem) Resources(ctx context.Context) Resources {
	var r Resources
	s.procMu.Lock()
	cpu, peak := s.pastCPU, s.pastPeak
	r.ServerExits = append([]string(nil), s.exits...)
	p := s.proc
	s.procMu.Unlock()
	if p != nil {
		select {
		case <-p.exited:
		default:
			if c, err := procCPUSeconds(p.cmd.Process.Pid); err == nil {
				cpu += c
			}
			if mb, err := procPeakRSSMB(p.cmd.Process.Pid); err == nil {
				peak = max(peak, mb)
			}
		}
	}
	if cpu > 0 {
		r.ServerCPUSeconds = &cpu
	}
	if peak > 0 {
		r.ServerPeakRSSMB = &peak
	}
	if s.etcd != nil {
		if n, err := etcdDBSize(ctx, s.etcd.Endpoints()); err == nil {
			r.EtcdDBBytes = &n
		}
	}
	return r
}

func (s *ipledgerSystem) Close() error {
	s.procMu.Lock()
	s.closing = true
	p := s.proc
	s.procMu.Unlock()
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
	s.superWG.Wait()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	var errs []error
	if p != nil {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
			errs = append(errs, errors.New("bench: ipledger-server did not stop on SIGTERM; killed"))
		}
	}
	if s.etcd != nil {
		errs = append(errs, s.etcd.Close())
	}
	if s.logFile != nil {
		s.logFile.Close()
	}
	errs = append(errs, os.RemoveAll(s.dir))
	return errors.Join(errs...)
}

type ipledgerNode struct {
	a          *agent.Agent
	cni        ipledgerv1.CNIServiceClient
	addTimeout time.Duration
}

func (n *ipledgerNode) Ready() bool {
	select {
	case <-n.a.Ready():
	default:
		return false
	}
	v, ok := n.a.View()
	return ok && v.Counts.Free > 0
}

func (n *ipledgerNode) Add(ctx context.Context, pod string) (bool, error) {
	actx, cancel := context.WithTimeout(ctx, n.addTimeout)
	defer cancel()
	resp, err := n.cni.Add(actx, &ipledgerv1.CNIAddRequest{
		ContainerId: pod, Ifname: "eth0", Netns: "/var/run/netns/" + pod, PodNamespace: "bench", PodName: pod,
	})
	if err != nil {
		return false, err
	}
	return resp.GetWaited(), nil
}

func (n *ipledgerNode) Del(ctx context.Context, pod string) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := n.cni.Del(dctx, &ipledgerv1.CNIDelRequest{ContainerId: pod, Ifname: "eth0"})
	return err
}

// procCPUSeconds is a process's user + system CPU time (/proc/<pid>/stat, USER_HZ = 100).
func procCPUSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseProcStatCPU(string(b))
}

func parseProcStatCPU(stat string) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("bench: malformed /proc stat")
	}
	f := strings.Fields(stat[i+1:])
	// After the command: state is field 3; utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("bench: short /proc stat")
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("bench: /proc stat: %w", err)
	}
	return float64(ut+st) / 100, nil
}

// procPeakRSSMB is a process's peak resident set (VmHWM) in MiB.
func procPeakRSSMB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseVmHWM(string(b))
}

func parseVmHWM(status string) (float64, error) {
	for _, line := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			kb, err := strconv.ParseFloat(f[0], 64)
			if err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, errors.New("bench: no VmHWM in /proc status")
}

func etcdDBSize(ctx context.Context, endpoints []string) (int64, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Context: ctx})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := c.Status(sctx, endpoints[0])
	if err != nil {
		return 0, err
	}
	return st.DbSize, nil
}

// admin dials the server's AdminService for one call.
func (s *ipledgerSystem) admin() (ipledgerv1.AdminServiceClient, func(), error) {
	conn, err := grpc.NewClient(s.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	return ipledgerv1.NewAdminServiceClient(conn), func() { conn.Close() }, nil
}

// LaunchTemplate asks the server for the policy's launch hint (AdminService.LaunchHint), for
// new nodes that start expectedPods pods in their first minute.
func (s *ipledgerSystem) LaunchTemplate(ctx context.Context, policyName, instanceType string, expectedPods int) (LaunchTemplate, error) {
	admin, done, err := s.admin()
	if err != nil {
		return LaunchTemplate{}, err
	}
	defer done()
	n := uint32(expectedPods)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	h, err := admin.LaunchHint(cctx, &ipledgerv1.LaunchHintRequest{Policy: policyName, InstanceType: instanceType, ExpectedPods: &n})
	if err != nil {
		return LaunchTemplate{}, err
	}
	return LaunchTemplate{Policy: h.GetPolicy(), SecondaryPrivateIPAddressCount: int(h.GetSecondaryPrivateIpAddressCount()),
		IPv4PrefixCount: int(h.GetIpv4PrefixCount()), Source: "server"}, nil
}

// Check runs AdminService.Check with EC2 (what `ipledgerctl check` prints), counts the
// subnets' foreign addresses, and counts addresses two nodes' leases hold (from every node's
// detail).
func (s *ipledgerSystem) Check(ctx context.Context) (CheckResult, error) {
	admin, done, err := s.admin()
	if err != nil {
		return CheckResult{}, err
	}
	defer done()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	rep, err := admin.Check(cctx, &ipledgerv1.CheckRequest{IncludeEc2: true})
	if err != nil {
		return CheckResult{}, err
	}
	out := CheckResult{OK: rep.GetOk(), Findings: []string{}}
	for _, f := range rep.GetFindings() {
		out.Findings = append(out.Findings, f.String())
	}
	subs, err := admin.ListSubnets(cctx, &ipledgerv1.ListSubnetsRequest{})
	if err != nil {
		return out, err
	}
	for _, b := range subs.GetSubnets() {
		out.Foreign += int(b.GetForeign())
	}
	nodes, err := admin.ListNodes(cctx, &ipledgerv1.ListNodesRequest{})
	if err != nil {
		return out, err
	}
	owner := map[string]string{}
	claim := func(node, ip string) {
		out.Leased++
		if o, ok := owner[ip]; ok && o != node {
			out.LeasedTwice++
			return
		}
		owner[ip] = node
	}
	for _, n := range nodes.GetNodes() {
		d, err := admin.GetNode(cctx, &ipledgerv1.GetNodeRequest{NodeName: n.GetNodeName()})
		if err != nil {
			return out, err
		}
		for _, ni := range d.GetPool().GetInterfaces() {
			for _, a := range ni.GetAddresses() {
				claim(n.GetNodeName(), a.GetIp())
			}
			for _, p := range ni.GetPrefixes() {
				pfx, err := netip.ParsePrefix(p.GetCidr())
				if err != nil {
					return out, fmt.Errorf("bench: node %s: prefix %q: %w", n.GetNodeName(), p.GetCidr(), err)
				}
				for ip := pfx.Masked().Addr(); pfx.Contains(ip); ip = ip.Next() {
					claim(n.GetNodeName(), ip.String())
				}
			}
		}
	}
	return out, nil
}
