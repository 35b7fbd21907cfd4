package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/ipledger/ipledger/e2e/vpccni"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// Trace names.
const (
	TraceSeed         = "seed"
	TraceSteady       = "steady"
	TraceBurst        = "burst"
	TraceBurstLaunch  = "burst-launch"
	TraceBatch        = "batch"
	TracePrefix       = "prefix"
	TraceGatewayBurst = "gateway-burst"
	TraceCustom       = "custom-networking"
)

// ErrUnknownTrace is returned for a trace name the bench does not know.
var ErrUnknownTrace = errors.New("bench: unknown trace")

// Traces lists the trace names.
func Traces() []string {
	return []string{TraceSeed, TraceSteady, TraceBurst, TraceBurstLaunch, TraceBatch, TracePrefix, TraceGatewayBurst, TraceCustom}
}

// TraceParams are one trace's parameters. Zero values take the trace's defaults (Defaults).
type TraceParams struct {
	Trace        string
	Nodes        int // nodes (prefix: IP-mode nodes; the prefix-mode nodes are PrefixNodes)
	Pods         int // pods per node (batch: per node per wave)
	PrefixNodes  int
	PrefixPods   int
	InstanceType string
	TimeScale    float64
	// Duration is the simulated length of the measured part (steady: churn; seed, prefix: the
	// whole trace; burst: the longest it may take).
	Duration time.Duration
	// Churn is the share of pods replaced per simulated minute (steady).
	Churn float64
	// IdleNodes is the share of nodes that run no pods (steady).
	IdleNodes float64
	// Waves (batch) of pods every WaveEvery that run WaveRun.
	Waves     int
	WaveEvery time.Duration
	WaveRun   time.Duration
	// WholeBlocks is how many free /28 blocks the prefix trace's subnet keeps unfragmented.
	WholeBlocks int
	// EC2Latency is added to every EC2 call (simulated time; the simulator divides it by the
	// time scale). EC2 answers in tens to hundreds of milliseconds; the simulator alone in
	// about one.
	EC2Latency time.Duration
	// EC2Profile is the simulator's clock of EC2 (ec2sim.ProfileRealistic, the default, or
	// ec2sim.ProfileInstant): per-action latencies, attach and detach phases, describe lag.
	// Both systems feel it; EC2Latency adds to it.
	EC2Profile string
	// KubeletDelay is the simulated time from a pod's binding (when the trace schedules it) to
	// its first CNI ADD, the kubelet's sandbox creation, for every system (0: ADD at once).
	// ipledger-k8s sees the binding in the Kubernetes API and supplies for it meanwhile.
	KubeletDelay time.Duration
	// IPLedgerFloor, when > 0, sets the adaptive floor of ipledger's default policy (free
	// addresses every node keeps at least; the built-in default is 1).
	IPLedgerFloor int
	// GatewayPerAction is the gateway-burst's requests per action.
	GatewayPerAction int
	Systems          []string
	Seed             int64
}

// Defaults fills the trace's defaults into zero fields.
func Defaults(p TraceParams) (TraceParams, error) {
	d := TraceParams{Seed: 1, Churn: 0.10, EC2Profile: ec2sim.ProfileRealistic}
	switch p.Trace {
	case TraceSeed:
		d.Nodes, d.InstanceType, d.TimeScale, d.Duration = 5, "m5.large", 20, 120*time.Second
		d.Systems = AllSystems()
	case TraceSteady:
		d.Nodes, d.Pods, d.InstanceType, d.TimeScale, d.Duration, d.IdleNodes = 50, 24, "m5.4xlarge", 30, 600*time.Second, 0.1
		d.Systems = AllSystems()
	case TraceBurst, TraceBurstLaunch:
		// A low time scale: at F the server's and agents' own (unscaled) latencies count F
		// times in simulated time, which at 10 already adds a third to the burst.
		d.Nodes, d.Pods, d.InstanceType, d.TimeScale, d.Duration = 1000, 1, "m5.large", 4, 1200*time.Second
		d.Systems = []string{SystemIPLedger, vpccni.NameDefault}
	case TraceBatch:
		d.Nodes, d.Pods, d.InstanceType, d.TimeScale = 50, 8, "m5.xlarge", 30
		d.Waves, d.WaveEvery, d.WaveRun = 4, 120*time.Second, 60*time.Second
		d.Systems = []string{SystemIPLedger, vpccni.NameDefault, vpccni.NameWarmIP, vpccni.NameMin5}
	case TracePrefix:
		d.Nodes, d.Pods, d.PrefixNodes, d.PrefixPods, d.InstanceType, d.TimeScale, d.Duration = 6, 10, 4, 20, "m5.large", 20, 420*time.Second
		d.WholeBlocks = 16
		d.Systems = []string{SystemIPLedger, vpccni.NamePrefix}
	case TraceGatewayBurst:
		d.GatewayPerAction, d.TimeScale = 200, 1
		d.Systems = []string{SystemIPLedger}
	case TraceCustom:
		d.Nodes, d.Pods, d.InstanceType, d.TimeScale, d.Duration = 9, 12, "m5.large", 20, 300*time.Second
		d.Systems = []string{SystemIPLedger, vpccni.NameCustom}
	default:
		return p, fmt.Errorf("%w %q (known: %s)", ErrUnknownTrace, p.Trace, strings.Join(Traces(), ", "))
	}
	fill := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	fill(&p.Nodes, d.Nodes)
	fill(&p.Pods, d.Pods)
	fill(&p.PrefixNodes, d.PrefixNodes)
	fill(&p.PrefixPods, d.PrefixPods)
	fill(&p.Waves, d.Waves)
	fill(&p.WholeBlocks, d.WholeBlocks)
	fill(&p.GatewayPerAction, d.GatewayPerAction)
	if p.InstanceType == "" {
		p.InstanceType = d.InstanceType
	}
	if p.TimeScale == 0 {
		p.TimeScale = d.TimeScale
	}
	if p.Duration == 0 {
		p.Duration = d.Duration
	}
	if p.Churn == 0 {
		p.Churn = d.Churn
	}
	if p.IdleNodes == 0 {
		p.IdleNodes = d.IdleNodes
	}
	if p.WaveEvery == 0 {
		p.WaveEvery = d.WaveEvery
	}
	if p.WaveRun == 0 {
		p.WaveRun = d.WaveRun
	}
	if len(p.Systems) == 0 {
		p.Systems = d.Systems
	}
	if p.Seed == 0 {
		p.Seed = d.Seed
	}
	if p.EC2Profile == "" {
		p.EC2Profile = d.EC2Profile
	}
	return p, p.validate()
}

func (p TraceParams) validate() error {
	var errs []error
	if p.TimeScale < 1 || p.TimeScale > 200 {
		errs = append(errs, fmt.Errorf("time scale %g is outside 1..200", p.TimeScale))
	}
	if p.Trace != TraceGatewayBurst && (p.Nodes < 1 || p.Nodes > 2000) {
		errs = append(errs, fmt.Errorf("nodes %d is outside 1..2000", p.Nodes))
	}
	if p.Pods < 0 || p.Pods > 250 {
		errs = append(errs, fmt.Errorf("pods per node %d is outside 0..250", p.Pods))
	}
	if p.Churn < 0 || p.Churn > 1 || p.IdleNodes < 0 || p.IdleNodes >= 1 {
		errs = append(errs, errors.New("churn must be in 0..1 and the idle share in 0..<1"))
	}
	if p.Duration < 0 || p.Duration > 4*time.Hour {
		errs = append(errs, fmt.Errorf("duration %v is outside 0..4h", p.Duration))
	}
	if _, err := ec2sim.ProfileByName(p.EC2Profile); err != nil {
		errs = append(errs, err)
	}
	if p.IPLedgerFloor < 0 || p.IPLedgerFloor > 64 {
		errs = append(errs, fmt.Errorf("ipledger adaptive floor %d is outside 0..64", p.IPLedgerFloor))
	}
	if p.Trace == TraceGatewayBurst && (p.GatewayPerAction < 1 || p.GatewayPerAction > 1000) {
		errs = append(errs, fmt.Errorf("gateway requests per action %d is outside 1..1000", p.GatewayPerAction))
	}
	if p.Trace == TraceCustom {
		for _, s := range p.Systems {
			if s != SystemIPLedger && s != vpccni.NameCustom {
				errs = append(errs, fmt.Errorf("the custom-networking trace compares ipledger with %s, not %s", vpccni.NameCustom, s))
			}
		}
	} else {
		for _, s := range p.Systems {
			if s == vpccni.NameCustom {
				errs = append(errs, fmt.Errorf("%s runs only in the %s trace (it needs its pod subnets)", s, TraceCustom))
			}
		}
	}
	if p.Trace == TracePrefix {
		for _, s := range p.Systems {
			if s != SystemIPLedger && s != vpccni.NamePrefix {
				errs = append(errs, fmt.Errorf("the prefix trace compares ipledger with %s, not %s", vpccni.NamePrefix, s))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bench: %s: %w", p.Trace, err)
	}
	return nil
}

// traceDef is how one trace builds its scenario, prepares the simulator and drives a system.
type traceDef struct {
	scenario func(p TraceParams) (*ec2sim.Scenario, error)
	setup    func(ctx context.Context, p TraceParams, sim *ec2sim.Server) error
	drive    func(ctx context.Context, r *runner, p TraceParams) error
}

var traceDefs = map[string]traceDef{
	TraceSeed:   {scenario: func(TraceParams) (*ec2sim.Scenario, error) { return ec2sim.DefaultScenario(), nil }, drive: driveSeed},
	TraceSteady: {scenario: runningScenario, drive: driveSteady},
	TraceBurst: {scenario: func(p TraceParams) (*ec2sim.Scenario, error) {
		return generateScenario(clusterShape{Nodes: p.Nodes, InstanceType: p.InstanceType})
	}, drive: driveBurst},
	TraceBurstLaunch: {scenario: func(p TraceParams) (*ec2sim.Scenario, error) {
		return generateScenario(clusterShape{Nodes: p.Nodes, InstanceType: p.InstanceType})
	}, drive: driveBurstLaunch},
	TraceBatch:  {scenario: runningScenario, drive: driveBatch},
	TracePrefix: {scenario: prefixScenario, setup: fragmentPartly, drive: drivePrefix},
	TraceCustom: {scenario: customScenario, setup: fillNodeSubnets, drive: driveCustom},
}

// Tags of the custom-networking trace's subnets.
const (
	tagRole      = "ipledger-bench/role"
	rolePods     = "pods"
	roleNodes    = "nodes"
	podSubnetLen = 26
)

// customScenario: custom networking, as clusters that ran out of addresses have it. Per zone a
// small node subnet (a /27, filled up by others in setup: the nodes' own addresses and nothing
// more) and two pod subnets of the secondary CIDR 100.64.0.0/16 (/26s, 59 addresses each).
// The VPC CNI's ENIConfig names one subnet per zone (the first); ipledger's policy names both.
// Nodes of the type, spread over the zones.
func customScenario(p TraceParams) (*ec2sim.Scenario, error) {
	sc := &ec2sim.Scenario{VPC: ec2sim.VPCSpec{CIDR: vpcCIDR, SecondaryCIDRs: []string{"100.64.0.0/16"}}}
	per := (p.Nodes + len(azs) - 1) / len(azs)
	left := p.Nodes
	for i, az := range azs {
		node := fmt.Sprintf("192.168.%d.0/27", i)
		sc.Subnets = append(sc.Subnets, ec2sim.SubnetSpec{CIDR: node, AvailabilityZone: az, Tags: map[string]string{"Name": "bench-nodes-" + az, tagRole: roleNodes}})
		for k := 0; k < 2; k++ {
			sc.Subnets = append(sc.Subnets, ec2sim.SubnetSpec{CIDR: fmt.Sprintf("100.64.%d.0/%d", 2*i+k, podSubnetLen), AvailabilityZone: az,
				Tags: map[string]string{"Name": fmt.Sprintf("bench-pods-%s-%d", az, k+1), tagRole: rolePods}})
		}
		if n := min(per, left); n > 0 {
			sc.Instances = append(sc.Instances, ec2sim.InstanceGroup{Type: p.InstanceType, Subnet: node, Count: n, Name: "node-" + az})
			left -= n
		}
	}
	if per+5 > 32 {
		return nil, fmt.Errorf("bench: %s: %d nodes per zone do not fit a /27 node subnet", TraceCustom, per)
	}
	return sc, sc.Validate()
}

// fillNodeSubnets gives what is left of every node subnet to another user (foreign ENIs): the
// node subnets are full, so pods can only live in the pod subnets.
func fillNodeSubnets(ctx context.Context, _ TraceParams, sim *ec2sim.Server) error {
	for _, sn := range sim.Sim().Snapshot().Subnets {
		if sn.Tags[tagRole] != roleNodes || sn.Available == 0 {
			continue
		}
		if _, err := sim.Sim().CreateForeignENI(ctx, sn.ID, sn.Available); err != nil {
			return fmt.Errorf("bench: fill node subnet %s: %w", sn.ID, err)
		}
	}
	return nil
}

// podSubnetsByZone are the scenario's pod subnets per zone, by CIDR (nil when it has none).
func podSubnetsByZone(sim *ec2sim.Server) map[string][]string {
	var out map[string][]string
	subs := sim.Sim().Snapshot().Subnets
	sort.Slice(subs, func(i, j int) bool {
		return netip.MustParsePrefix(subs[i].CIDR).Addr().Less(netip.MustParsePrefix(subs[j].CIDR).Addr())
	})
	for _, sn := range subs {
		if sn.Tags[tagRole] == rolePods {
			if out == nil {
				out = map[string][]string{}
			}
			out[sn.AvailabilityZone] = append(out[sn.AvailabilityZone], sn.ID)
		}
	}
	return out
}

// driveCustom: every node starts with its pods at once (the kubelet retries an ADD until the
// node gives an address, so a node that never gets one shows its pods as not running); the
// measures cover the whole trace, as in the prefix trace.
func driveCustom(ctx context.Context, r *runner, p TraceParams) error {
	insts := runningInstances(r.sim)
	ph := r.newPhase()
	r.expect(ph, len(insts)*p.Pods)
	if _, err := r.startNodes(ctx, insts, roleDefault, func(n *nodeRec) {
		for k := 0; k < p.Pods; k++ {
			r.startPod(n, ph, false)
		}
	}); err != nil {
		return err
	}
	r.clk.SleepUntil(r.ctx, p.Duration)
	return nil
}

func runningScenario(p TraceParams) (*ec2sim.Scenario, error) {
	return generateScenario(clusterShape{Nodes: p.Nodes, InstanceType: p.InstanceType, Running: true})
}

// driveSeed: the seed's cluster and workload: per node two host-network pods (aws-node and
// kube-proxy) and, round-robin, coredns x2 and nginx x3.
func driveSeed(ctx context.Context, r *runner, p TraceParams) error {
	insts := runningInstances(r.sim)
	ph := r.newPhase()
	perNode := map[string]int{}
	for i := 0; i < 5; i++ {
		perNode[insts[i%len(insts)].ID]++
	}
	r.expect(ph, 2*len(insts)+5)
	if _, err := r.startNodes(ctx, insts, roleDefault, func(n *nodeRec) {
		r.startPod(n, ph, true)
		r.startPod(n, ph, true)
		for k := 0; k < perNode[n.inst.ID]; k++ {
			r.startPod(n, ph, false)
		}
	}); err != nil {
		return err
	}
	r.waitPhase(ph, p.Duration)
	r.clk.SleepUntil(r.ctx, p.Duration)
	return nil
}

// driveSteady: nodes start, each non-idle node gets its pods; after the placement (the window
// starts), a share of the pods is replaced every simulated minute (in steps of 6 s).
func driveSteady(ctx context.Context, r *runner, p TraceParams) error {
	insts := runningInstances(r.sim)
	ph := r.newPhase()
	idleEvery := 0
	if p.IdleNodes > 0 {
		idleEvery = int(math.Round(1 / p.IdleNodes))
	}
	busy := func(i int) bool { return idleEvery == 0 || i%idleEvery != idleEvery-1 }
	index := map[string]int{}
	for i, in := range insts {
		index[in.ID] = i
		if busy(i) {
			r.expect(ph, p.Pods)
		}
	}
	if _, err := r.startNodes(ctx, insts, roleDefault, func(n *nodeRec) {
		if busy(index[n.inst.ID]) {
			for k := 0; k < p.Pods; k++ {
				r.startPod(n, ph, false)
			}
		}
	}); err != nil {
		return err
	}
	placementDeadline := r.clk.Now() + p.Duration
	r.waitPhase(ph, placementDeadline)
	r.setWindow()
	end := r.clk.Now() + p.Duration
	const step = 6 * time.Second
	perStep := p.Churn * step.Seconds() / 60
	carry := 0.0
	for t := r.clk.Now() + step; t <= end; t += step {
		if !r.clk.SleepUntil(r.ctx, t) {
			return nil
		}
		pods := r.runningPods()
		carry += perStep * float64(len(pods))
		k := int(carry)
		carry -= float64(k)
		r.rng.Shuffle(len(pods), func(i, j int) { pods[i], pods[j] = pods[j], pods[i] })
		for _, pod := range pods[:min(k, len(pods))] {
			r.deletePod(r.ctx, pod)
			r.startPod(pod.n, nil, false)
		}
	}
	return nil
}

// driveBurst: every node launches at once; each gets its pods as soon as it is ready. The
// trace ends 30 s after every pod runs, or at the duration.
func driveBurst(ctx context.Context, r *runner, p TraceParams) error {
	insts, err := r.launch(ctx, p.InstanceType, nodesPerSubnet(r.cfg.scenario, p.Nodes))
	if err != nil {
		return err
	}
	ph := r.newPhase()
	r.expect(ph, len(insts)*p.Pods)
	if _, err := r.startNodes(ctx, insts, roleDefault, func(n *nodeRec) {
		for k := 0; k < p.Pods; k++ {
			r.startPod(n, ph, false)
		}
	}); err != nil {
		return err
	}
	if r.waitPhase(ph, p.Duration) {
		r.clk.Sleep(r.ctx, min(30*time.Second, max(p.Duration-r.clk.Now(), 0)))
	}
	return nil
}

// driveBatch: once every node is ready, waves of short-lived pods: every WaveEvery each node
// gets Pods pods, started over 10 s, that run WaveRun and end.
func driveBatch(ctx context.Context, r *runner, p TraceParams) error {
	insts := runningInstances(r.sim)
	recs, err := r.startNodes(ctx, insts, roleDefault, nil)
	if err != nil {
		return err
	}
	for _, n := range recs {
		select {
		case <-n.ready:
		case <-r.ctx.Done():
			return nil
		}
	}
	r.setWindow()
	t0 := r.clk.Now()
	for w := 0; w < p.Waves; w++ {
		if !r.clk.SleepUntil(r.ctx, t0+time.Duration(w)*p.WaveEvery) {
			return nil
		}
		ph := r.newPhase()
		r.expect(ph, len(recs)*p.Pods)
		spread := 10 * time.Second / time.Duration(max(p.Pods, 1))
		r.podWG.Add(1)
		go func() {
			defer r.podWG.Done()
			for k := 0; k < p.Pods; k++ {
				for _, n := range recs {
					pod := r.startPod(n, ph, false)
					r.podWG.Add(1)
					go func() {
						defer r.podWG.Done()
						r.endAfterRun(pod, p.WaveRun)
					}()
				}
				if !r.clk.Sleep(r.ctx, spread) {
					return
				}
			}
		}()
	}
	r.clk.SleepUntil(r.ctx, t0+time.Duration(p.Waves-1)*p.WaveEvery+p.WaveRun+p.WaveEvery/2)
	return nil
}

// endAfterRun deletes a job's pod once it has run for d.
func (r *runner) endAfterRun(p *podRec, d time.Duration) {
	every := max(r.clk.Real(time.Second), 10*time.Millisecond)
	for {
		p.mu.Lock()
		running, at := p.running, p.runningAt
		p.mu.Unlock()
		if running {
			if r.clk.SleepUntil(r.ctx, at+d) {
				r.deletePod(r.ctx, p)
			}
			return
		}
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// prefixScenario: one /22 subnet with the IP-mode and the prefix-mode nodes.
func prefixScenario(p TraceParams) (*ec2sim.Scenario, error) {
	sc := &ec2sim.Scenario{
		VPC:     ec2sim.VPCSpec{CIDR: vpcCIDR},
		Subnets: []ec2sim.SubnetSpec{{CIDR: "192.168.0.0/22", AvailabilityZone: "eu-west-1a", Tags: map[string]string{"Name": "bench-fragmented"}}},
		Instances: []ec2sim.InstanceGroup{
			{Type: p.InstanceType, Subnet: "192.168.0.0/22", Count: p.Nodes, Name: "ip-node"},
			{Type: p.InstanceType, Subnet: "192.168.0.0/22", Count: p.PrefixNodes, Name: "prefix-node"},
		},
	}
	return sc, sc.Validate()
}

// fragmentPartly leaves exactly WholeBlocks free /28 blocks in the subnet and one foreign
// address in every other free block: a holder ENI keeps the whole blocks while Fragment
// occupies the rest, then goes away. It runs before the trace's baseline, so its calls do not
// count.
func fragmentPartly(ctx context.Context, p TraceParams, sim *ec2sim.Server) error {
	sub := sim.Sim().Snapshot().Subnets[0]
	c, err := vpccni.NewEC2Client(vpccni.ClientConfig{Endpoint: sim.Endpoint(), TimeScale: p.TimeScale})
	if err != nil {
		return err
	}
	out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId: aws.String(sub.ID), Ipv4PrefixCount: aws.Int32(int32(p.WholeBlocks)), Description: aws.String("bench: keeps whole /28 blocks"),
	})
	if err != nil {
		return fmt.Errorf("bench: holder ENI: %w", err)
	}
	if _, err := sim.Sim().Fragment(ctx, sub.ID); err != nil {
		return fmt.Errorf("bench: fragment: %w", err)
	}
	if _, err := c.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: out.NetworkInterface.NetworkInterfaceId}); err != nil {
		return fmt.Errorf("bench: delete holder ENI: %w", err)
	}
	// The holder's own primary address may have kept one more block whole.
	if got := sim.Sim().Snapshot().Subnets[0].FreeBlocks; got < p.WholeBlocks || got > p.WholeBlocks+1 {
		return fmt.Errorf("bench: fragmented subnet has %d free /28 blocks, want %d", got, p.WholeBlocks)
	}
	return nil
}

// drivePrefix: the IP-mode nodes start with their pods (their single addresses land in the
// subnet: EC2's random picks for the VPC CNI, packed into broken blocks by ipledger); a minute
// later the prefix-mode nodes join and need whole /28 blocks for their pods.
func drivePrefix(ctx context.Context, r *runner, p TraceParams) error {
	var ipNodes, pfxNodes []ec2sim.InstanceInfo
	for _, in := range runningInstances(r.sim) {
		if strings.HasPrefix(in.Tags["Name"], "prefix-node") {
			pfxNodes = append(pfxNodes, in)
		} else {
			ipNodes = append(ipNodes, in)
		}
	}
	sort.Slice(pfxNodes, func(i, j int) bool { return pfxNodes[i].ID < pfxNodes[j].ID })
	ph := r.newPhase()
	r.expect(ph, len(ipNodes)*p.Pods+len(pfxNodes)*p.PrefixPods)
	// Pods are scheduled at once (the kubelet retries until the node gives an address), so a
	// node that never gets one shows its pods as not running.
	recs, err := r.startNodes(ctx, ipNodes, roleSecondary, nil)
	if err != nil {
		return err
	}
	for _, n := range recs {
		for k := 0; k < p.Pods; k++ {
			r.startPod(n, ph, false)
		}
	}
	if !r.clk.SleepUntil(r.ctx, 60*time.Second) {
		return nil
	}
	if recs, err = r.startNodes(ctx, pfxNodes, rolePrefix, nil); err != nil {
		return err
	}
	for _, n := range recs {
		for k := 0; k < p.PrefixPods; k++ {
			r.startPod(n, ph, false)
		}
	}
	r.clk.SleepUntil(r.ctx, p.Duration)
	return nil
}
