package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/ipledger/ipledger/server/ec2sim"
)

// Units explains the report's durations.
const Units = "durations are simulated seconds (wall time x time_scale); add waits are simulated milliseconds, except an Add served from the pool at the first try, which counts at wall time (its latency is CPU and IPC, not EC2)"

// Report is one trace's result for every system.
type Report struct {
	Trace     string  `json:"trace"`
	TimeScale float64 `json:"time_scale"`
	Units     string  `json:"units"`
	Params    Params  `json:"params"`
	// WallSeconds is how long the trace took on this machine, all systems together.
	WallSeconds float64        `json:"wall_s"`
	Systems     []SystemResult `json:"systems"`
	// BurstFloor (burst): the least time EC2's buckets allow for every node to get its first
	// address, from the calls a node start needs.
	BurstFloor *BurstFloor `json:"burst_floor,omitempty"`
	// Gateway (gateway-burst): issue #3's measurement.
	Gateway *GatewayBurst `json:"gateway_burst,omitempty"`
}

// Params are the trace's parameters as run.
type Params struct {
	Nodes        int     `json:"nodes"`
	PodsPerNode  int     `json:"pods_per_node"`
	PrefixNodes  int     `json:"prefix_nodes,omitempty"`
	PrefixPods   int     `json:"prefix_pods_per_node,omitempty"`
	InstanceType string  `json:"instance_type,omitempty"`
	DurationS    float64 `json:"duration_s,omitempty"`
	Churn        float64 `json:"churn_per_minute,omitempty"`
	IdleNodes    float64 `json:"idle_node_share,omitempty"`
	Waves        int     `json:"waves,omitempty"`
	WholeBlocks  int     `json:"whole_blocks,omitempty"`
	EC2LatencyMs float64 `json:"ec2_latency_ms,omitempty"`
	// EC2Profile is the simulator's clock of EC2 (realistic or instant).
	EC2Profile string `json:"ec2_profile"`
	// KubeletDelayS is the simulated time from a pod's binding to its first CNI ADD.
	KubeletDelayS float64 `json:"kubelet_delay_s,omitempty"`
	// IPLedgerFloor is the adaptive floor given to ipledger's default policy (0: built-in, 1).
	IPLedgerFloor int   `json:"ipledger_adaptive_floor,omitempty"`
	Seed          int64 `json:"seed"`
}

// BurstFloor is the burst trace's floor: for each bucket, node starts x the calls one start
// needs through it, beyond the bucket's size, over its refill rate; the largest is the floor.
type BurstFloor struct {
	Nodes             int            `json:"nodes"`
	CallsPerNodeStart map[string]int `json:"calls_per_node_start"`
	FloorS            float64        `json:"floor_s"`
}

// burstFloor: a node can start a pod once it holds one pod address. The fewest calls that takes
// are one DescribeInstances (ipledger verifies the instance; ipamd reads it) and one
// AssignPrivateIpAddresses.
func burstFloor(nodes int) *BurstFloor {
	f := &BurstFloor{Nodes: nodes, CallsPerNodeStart: map[string]int{"DescribeInstances": 1, "AssignPrivateIpAddresses": 1}}
	shapes := ec2sim.BucketShapes()
	for a, c := range f.CallsPerNodeStart {
		f.FloorS = max(f.FloorS, bucketFloor(nodes*c, shapes[ec2sim.BucketFor(a, true)]))
	}
	return f
}

// Env is where a bench run works.
type Env struct {
	// ServerBin is the ipledger-server binary (ResolveServerBin).
	ServerBin string
	// WorkDir holds the systems' files (sockets, checkpoints, etcd); tmpfs is best.
	WorkDir string
	// LogDir, if set, keeps the server's and agents' logs.
	LogDir string
	// Progress receives one line per step (nil: none).
	Progress io.Writer
}

func (e Env) progress(format string, args ...any) {
	if e.Progress != nil {
		fmt.Fprintf(e.Progress, format+"\n", args...)
	}
}

// NewWorkDir makes a temporary directory on tmpfs (/dev/shm) when there is one.
func NewWorkDir() (string, error) {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if d, err := os.MkdirTemp("/dev/shm", "ipledger-bench-"); err == nil {
			return d, nil
		}
	}
	return os.MkdirTemp("", "ipledger-bench-")
}

// ResolveServerBin finds ipledger-server: the given path, $IPLEDGER_BIN_DIR, ./bin, or a fresh
// `go build` into dir.
func ResolveServerBin(ctx context.Context, given, dir string) (string, error) {
	if given != "" {
		if _, err := os.Stat(given); err != nil {
			return "", fmt.Errorf("bench: server binary: %w", err)
		}
		return given, nil
	}
	for _, d := range []string{os.Getenv("IPLEDGER_BIN_DIR"), "bin"} {
		if d == "" {
			continue
		}
		p, err := filepath.Abs(filepath.Join(d, "ipledger-server"))
		if err != nil {
			continue
		}
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	out := filepath.Join(dir, "ipledger-server")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/ipledger/ipledger/server/cmd/ipledger-server")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("bench: go build ipledger-server: %w\n%s", err, b)
	}
	return out, nil
}

// Run runs one trace for each of its systems, one after another, each on a fresh simulator
// built from the same scenario and seed.
func Run(ctx context.Context, p TraceParams, env Env) (Report, error) {
	p, err := Defaults(p)
	if err != nil {
		return Report{}, err
	}
	rep := Report{Trace: p.Trace, TimeScale: p.TimeScale, Units: Units, Params: Params{
		Nodes: p.Nodes, PodsPerNode: p.Pods, InstanceType: p.InstanceType, Seed: p.Seed,
		EC2LatencyMs: float64(p.EC2Latency) / float64(time.Millisecond), IPLedgerFloor: p.IPLedgerFloor,
		EC2Profile: p.EC2Profile, KubeletDelayS: p.KubeletDelay.Seconds(),
	}}
	wall := time.Now()
	defer func() { rep.WallSeconds = time.Since(wall).Seconds() }()
	if p.Trace == TraceGatewayBurst {
		env.progress("gateway-burst: %d requests of each of %d ENI/IP actions at time scale %g, %s EC2", p.GatewayPerAction, len(gatewayActions), p.TimeScale, p.EC2Profile)
		rep.Params = Params{Nodes: 0, Seed: p.Seed, EC2Profile: p.EC2Profile}
		g, err := runGatewayBurst(ctx, p.GatewayPerAction, p.TimeScale, p.EC2Profile)
		if err != nil {
			return rep, err
		}
		rep.Gateway = &g
		rep.WallSeconds = time.Since(wall).Seconds()
		return rep, nil
	}
	switch p.Trace {
	case TraceSteady:
		rep.Params.DurationS, rep.Params.Churn, rep.Params.IdleNodes = p.Duration.Seconds(), p.Churn, p.IdleNodes
	case TraceBatch:
		rep.Params.Waves = p.Waves
	case TracePrefix:
		rep.Params.PrefixNodes, rep.Params.PrefixPods, rep.Params.WholeBlocks, rep.Params.DurationS = p.PrefixNodes, p.PrefixPods, p.WholeBlocks, p.Duration.Seconds()
	case TraceCustom:
		rep.Params.DurationS = p.Duration.Seconds()
	case TraceSeed:
		rep.Params.PodsPerNode, rep.Params.DurationS = 0, p.Duration.Seconds()
	case TraceBurst, TraceBurstLaunch:
		rep.BurstFloor = burstFloor(p.Nodes)
	}
	def := traceDefs[p.Trace]
	for _, sys := range p.Systems {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		res, err := runSystem(ctx, p, def, sys, env)
		if err != nil {
			return rep, fmt.Errorf("bench: %s on %s: %w", sys, p.Trace, err)
		}
		if rep.BurstFloor != nil && res.NodesReadyS != nil && rep.BurstFloor.FloorS > 0 {
			v := *res.NodesReadyS / rep.BurstFloor.FloorS
			res.NodesReadyPerFloor = &v
		}
		rep.Systems = append(rep.Systems, res)
	}
	rep.WallSeconds = time.Since(wall).Seconds()
	return rep, nil
}

func runSystem(ctx context.Context, p TraceParams, def traceDef, sys string, env Env) (SystemResult, error) {
	sc, err := def.scenario(p)
	if err != nil {
		return SystemResult{}, err
	}
	if p.EC2Latency > 0 {
		sc.Faults = map[string]ec2sim.Fault{}
		for _, a := range ec2sim.Actions() {
			if a != "RunInstances" && a != "TerminateInstances" {
				sc.Faults[a] = ec2sim.Fault{Latency: p.EC2Latency}
			}
		}
	}
	env.progress("%s: %s (time scale %g, %s EC2)", p.Trace, sys, p.TimeScale, p.EC2Profile)
	wall := time.Now()
	r := newRunner(runConfig{
		trace: p.Trace, system: sys, timeScale: p.TimeScale, seed: p.Seed, scenario: sc, profile: p.EC2Profile, kubeletDelay: p.KubeletDelay,
		env:      systemEnv{workDir: env.WorkDir, serverBin: env.ServerBin, logDir: env.LogDir, ipledgerFloor: p.IPLedgerFloor},
		progress: env.progress,
	})
	var setup func(context.Context, *ec2sim.Server) error
	if def.setup != nil {
		setup = func(ctx context.Context, sim *ec2sim.Server) error { return def.setup(ctx, p, sim) }
	}
	if err := r.start(ctx, setup); err != nil {
		r.stop(context.WithoutCancel(ctx))
		return SystemResult{}, err
	}
	r.podWG.Add(1)
	go func() { defer r.podWG.Done(); r.sampleLoop() }()
	derr := def.drive(r.ctx, r, p)
	r.sample()
	duration := r.clk.Now()
	freeBlocks, podHeld, podUsed := 0, 0, 0
	for _, s := range r.sim.Sim().Snapshot().Subnets {
		freeBlocks += s.FreeBlocks
		if s.Tags[tagRole] == rolePods {
			// Nobody else uses the pod subnets: what is not available is the system's.
			if used := usableAddresses(s.CIDR) - s.Available; used > 0 {
				podHeld += used
				podUsed++
			}
		}
	}
	r.reportStuck()
	res, stats := r.stop(context.WithoutCancel(ctx))
	if derr != nil && !errors.Is(derr, context.Canceled) {
		return SystemResult{}, derr
	}
	out := r.result(res, stats, duration)
	out.FreeBlocksEnd = freeBlocks
	out.PodSubnetHeldEnd, out.PodSubnetsUsedEnd = podHeld, podUsed
	env.progress("  done in %.1fs wall: held mean %.0f, in use mean %.0f, throttled %d", time.Since(wall).Seconds(), out.HeldMean, out.InUseMean, out.Throttled)
	return out, nil
}

// usableAddresses is a subnet's size less the five addresses EC2 reserves.
func usableAddresses(cidr string) int {
	pf, err := netip.ParsePrefix(cidr)
	if err != nil {
		return 0
	}
	return 1<<(32-pf.Bits()) - 5
}
