package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/ipledger/ipledger/server/ec2sim"
)

// Kubelet retry of a failed CNI ADD: 1 s doubling to 10 s (simulated).
const (
	kubeletBackoffMin = time.Second
	kubeletBackoffMax = 10 * time.Second
	sampleEvery       = 5 * time.Second
)

// runner runs one system through one trace on its own simulator.
type runner struct {
	cfg  runConfig
	sim  *ec2sim.Server
	sys  system
	clk  *simClock
	rng  *rand.Rand
	base ec2sim.Stats

	ctx    context.Context // the trace's: ends when the trace ends
	cancel context.CancelFunc
	podWG  sync.WaitGroup

	mu          sync.Mutex
	nodes       []*nodeRec
	pods        map[string]*podRec
	adds        []addRecord
	failedAdds  int
	phases      []*phase
	windowStart time.Duration
	samples     []Sample
	lags        []float64
	podSeq      int
	running     atomic.Int64
	podStarts   atomic.Int64
	startErrors []error
	// burst-launch: the template the nodes launched from, and the system's check after it.
	template *LaunchTemplate
	check    *CheckResult
}

// runConfig is everything one system's run of a trace needs.
type runConfig struct {
	trace     string
	system    string
	timeScale float64
	seed      int64
	scenario  *ec2sim.Scenario
	profile   string // the simulator's clock of EC2 (ec2sim.ProfileByName)
	// kubeletDelay is the simulated time from a pod's binding to its first CNI ADD.
	kubeletDelay time.Duration
	env          systemEnv // sim filled in by the runner
	progress     func(format string, args ...any)
}

type nodeRec struct {
	inst    ec2sim.InstanceInfo
	h       node
	role    role
	started time.Duration
	readyAt time.Duration // -1 until ready
	ready   chan struct{}
	running atomic.Int32
	pods    int // pods the trace placed here (for round-robin choices)
}

type podRec struct {
	name        string
	n           *nodeRec
	hostNet     bool
	phase       *phase
	mu          sync.Mutex
	running     bool
	deleted     bool
	cancel      context.CancelFunc
	runningAt   time.Duration
	scheduledAt time.Duration
}

// stuckAfter: a pod still pending this long before the trace ends counts as not running.
const stuckAfter = 60 * time.Second

// pending: scheduled, not deleted, never ran (p.mu held).
func (p *podRec) pendingLocked() bool {
	return !p.running && !p.deleted && !p.hostNet && p.runningAt == 0
}

type addRecord struct {
	phase     *phase
	scheduled time.Duration
	wait      time.Duration // simulated, from scheduling to success
	noWait    bool
}

// phase is a set of pods started together (the initial placement, a batch wave).
type phase struct {
	start   time.Duration
	pending int
	done    time.Duration // -1 until every pod ran
	doneCh  chan struct{}
}

func newRunner(cfg runConfig) *runner {
	return &runner{cfg: cfg, rng: rand.New(rand.NewPCG(uint64(cfg.seed), 0x1b3)), pods: map[string]*podRec{}}
}

// start brings up the simulator and the system.
func (r *runner) start(ctx context.Context, setup func(ctx context.Context, sim *ec2sim.Server) error) error {
	simCfg := ec2sim.DefaultConfig()
	simCfg.Scenario = r.cfg.scenario
	simCfg.Seed = r.cfg.seed
	simCfg.TimeScale = r.cfg.timeScale
	prof, err := ec2sim.ProfileByName(r.cfg.profile)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	simCfg.Profile = &prof
	sim, err := ec2sim.Start(simCfg, "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("bench: simulator: %w", err)
	}
	r.sim = sim
	if setup != nil {
		if err := setup(ctx, sim); err != nil {
			return err
		}
	}
	env := r.cfg.env
	env.sim = sim
	env.timeScale = r.cfg.timeScale
	for _, s := range sim.Sim().Snapshot().Subnets {
		env.subnets = append(env.subnets, s.ID)
	}
	env.podSubnets = podSubnetsByZone(sim)
	switch r.cfg.system {
	case SystemIPLedger:
		r.sys, err = startIPLedger(ctx, env)
	case SystemIPLedgerK8s:
		r.sys, err = startIPLedgerK8s(ctx, env)
	default:
		r.sys, err = newVPCCNISystem(ctx, r.cfg.system, env)
	}
	if err != nil {
		return err
	}
	r.base = sim.Sim().Stats()
	r.ctx, r.cancel = context.WithCancel(ctx)
	r.clk = newClock(r.cfg.timeScale)
	return nil
}

// stop ends the trace: pods' kubelet loops end, the system and the simulator close. It returns
// the system's resources measured before it closed.
func (r *runner) stop(ctx context.Context) (Resources, ec2sim.Stats) {
	var res Resources
	var stats ec2sim.Stats
	if r.cancel != nil {
		r.cancel()
	}
	r.podWG.Wait()
	if r.sim != nil {
		stats = r.sim.Sim().Stats()
	}
	if r.sys != nil {
		res = r.sys.Resources(ctx)
		if err := r.sys.Close(); err != nil {
			r.cfg.progress("  %s: close: %v", r.cfg.system, err)
		}
	}
	if r.sim != nil {
		r.sim.Close()
	}
	return res, stats
}

// startNodes starts the system's software on running instances; onReady runs once per node
// when it can first start a pod.
func (r *runner) startNodes(ctx context.Context, insts []ec2sim.InstanceInfo, rl role, onReady func(*nodeRec)) ([]*nodeRec, error) {
	recs := make([]*nodeRec, len(insts))
	var errs []error
	for i, in := range insts {
		h, err := r.sys.StartNode(ctx, in, rl)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		recs[i] = &nodeRec{inst: in, h: h, role: rl, started: r.clk.Now(), readyAt: -1, ready: make(chan struct{})}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.nodes = append(r.nodes, recs...)
	r.mu.Unlock()
	r.podWG.Add(1)
	go func() {
		defer r.podWG.Done()
		r.watchReady(recs, onReady)
	}()
	return recs, nil
}

// watchReady polls nodes until each is ready (about once per simulated second, bounded).
func (r *runner) watchReady(recs []*nodeRec, onReady func(*nodeRec)) {
	left := append([]*nodeRec(nil), recs...)
	every := max(r.clk.Real(time.Second), 20*time.Millisecond)
	for len(left) > 0 {
		var still []*nodeRec
		for _, n := range left {
			if n.h.Ready() {
				r.mu.Lock()
				n.readyAt = r.clk.Now()
				r.mu.Unlock()
				close(n.ready)
				if onReady != nil {
					onReady(n)
				}
			} else {
				still = append(still, n)
			}
		}
		left = still
		if len(left) == 0 {
			return
		}
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

func (r *runner) newPhase() *phase {
	p := &phase{start: r.clk.Now(), done: -1, doneCh: make(chan struct{})}
	r.mu.Lock()
	r.phases = append(r.phases, p)
	r.mu.Unlock()
	return p
}

// expect adds n pods to a phase before they are started (so the phase cannot end early).
func (r *runner) expect(ph *phase, n int) {
	r.mu.Lock()
	ph.pending += n
	r.mu.Unlock()
}

func (r *runner) phaseRan(ph *phase) {
	if ph == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	ph.pending--
	if ph.pending == 0 && ph.done < 0 {
		ph.done = r.clk.Now()
		close(ph.doneCh)
	}
}

// startPod schedules a pod on a node: the kubelet calls CNI ADD until it succeeds, backing off
// 1 s doubling to 10 s after failures. Host-network pods need no address and run at once.
func (r *runner) startPod(n *nodeRec, ph *phase, hostNet bool) *podRec {
	r.mu.Lock()
	r.podSeq++
	name := fmt.Sprintf("pod-%06d", r.podSeq)
	n.pods++
	ctx, cancel := context.WithCancel(r.ctx)
	p := &podRec{name: name, n: n, hostNet: hostNet, phase: ph, cancel: cancel, scheduledAt: r.clk.Now()}
	r.pods[name] = p
	r.mu.Unlock()
	if hostNet {
		p.running, p.runningAt = true, r.clk.Now()
		r.phaseRan(ph)
		cancel()
		return p
	}
	r.podStarts.Add(1)
	r.podWG.Add(1)
	go func() {
		defer r.podWG.Done()
		defer cancel()
		scheduled := r.clk.Now()
		// The scheduler's binding (ipledger-k8s sees it in the API), then the kubelet's
		// delay before its first CNI ADD (sandbox creation), the same for every system.
		if b, ok := n.h.(binder); ok {
			if err := b.Bind(ctx, name); err != nil && ctx.Err() == nil {
				r.cfg.progress("  %s: bind %s: %v", r.cfg.system, name, err)
			}
		}
		if d := r.cfg.kubeletDelay; d > 0 && !r.clk.Sleep(ctx, d) {
			return
		}
		// The kubelet retries a failed sandbox 1 s, 2 s, 4 s, ... up to 10 s apart.
		bo := &backoff.ExponentialBackOff{InitialInterval: kubeletBackoffMin, Multiplier: 2, MaxInterval: kubeletBackoffMax}
		for attempt := 1; ; attempt++ {
			callStart := time.Now()
			waited, err := n.h.Add(ctx, name)
			if err == nil {
				now := r.clk.Now()
				wait := now - scheduled
				if attempt == 1 && !waited {
					// Served from the pool: the call's own latency is CPU and IPC, which the time
					// scale does not speed up, so it counts at wall time.
					wait = time.Since(callStart)
				}
				p.mu.Lock()
				deleted := p.deleted
				if !deleted {
					p.running, p.runningAt = true, now
				}
				p.mu.Unlock()
				r.mu.Lock()
				r.adds = append(r.adds, addRecord{phase: ph, scheduled: scheduled, wait: wait, noWait: attempt == 1 && !waited})
				r.mu.Unlock()
				if deleted {
					_ = n.h.Del(context.WithoutCancel(ctx), name)
				} else {
					r.running.Add(1)
					n.running.Add(1)
				}
				r.phaseRan(ph)
				return
			}
			if ctx.Err() != nil {
				return
			}
			r.mu.Lock()
			r.failedAdds++
			r.mu.Unlock()
			if !r.clk.Sleep(ctx, bo.NextBackOff()) {
				return
			}
		}
	}()
	return p
}

// deletePod stops a pod: CNI DEL if it runs, else its start is abandoned.
func (r *runner) deletePod(ctx context.Context, p *podRec) {
	p.mu.Lock()
	if p.deleted {
		p.mu.Unlock()
		return
	}
	p.deleted = true
	wasRunning := p.running
	p.running = false
	p.mu.Unlock()
	p.cancel()
	r.mu.Lock()
	delete(r.pods, p.name)
	r.mu.Unlock()
	if wasRunning && !p.hostNet {
		r.running.Add(-1)
		p.n.running.Add(-1)
		if err := p.n.h.Del(ctx, p.name); err != nil && ctx.Err() == nil {
			r.cfg.progress("  %s: CNI DEL %s: %v", r.cfg.system, p.name, err)
		}
	}
	if b, ok := p.n.h.(binder); ok && !p.hostNet {
		b.Unbind(ctx, p.name)
	}
}

// runningPods lists the pod-network pods that run now.
func (r *runner) runningPods() []*podRec {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*podRec
	for _, p := range r.pods {
		p.mu.Lock()
		if p.running && !p.hostNet {
			out = append(out, p)
		}
		p.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// waitPhase waits until every pod of the phase ran, ctx ends, or the simulated deadline passes.
func (r *runner) waitPhase(ph *phase, deadline time.Duration) bool {
	t := time.NewTimer(max(r.clk.Real(deadline-r.clk.Now()), 0))
	defer t.Stop()
	select {
	case <-ph.doneCh:
		return true
	case <-r.ctx.Done():
	case <-t.C:
	}
	return false
}

// sampleLoop records a sample every sampleEvery until the trace ends.
func (r *runner) sampleLoop() {
	next := time.Duration(0)
	for {
		if !r.clk.SleepUntil(r.ctx, next) {
			return
		}
		lag := r.clk.Now() - next
		r.sample()
		r.mu.Lock()
		r.lags = append(r.lags, lag.Seconds())
		r.mu.Unlock()
		next += sampleEvery
	}
}

// sample reads the simulator's state: addresses held by the system (every ENI that is not
// foreign: primaries, secondaries, prefixes x 16), per node, against the pods that run.
func (r *runner) sample() {
	snap := r.sim.Sim().Snapshot()
	t := r.clk.Now()
	inUse := int(r.running.Load())
	held := 0
	perNode := map[string]int{}
	enis := map[string]int{}
	for _, e := range snap.ENIs {
		if e.Foreign {
			continue
		}
		n := len(e.Addresses())
		held += n
		if e.Attachment != nil {
			perNode[e.Attachment.InstanceID] += n
			enis[e.Attachment.InstanceID]++
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := Sample{T: t.Seconds(), Held: held, InUse: inUse}
	var idle, idleIdle float64
	var nodes, idleNodes int
	for _, n := range r.nodes {
		if n.readyAt < 0 {
			continue
		}
		run := int(n.running.Load())
		free := float64(perNode[n.inst.ID] - enis[n.inst.ID] - run)
		idle += free
		nodes++
		if run == 0 {
			idleIdle += free
			idleNodes++
		}
	}
	if nodes > 0 {
		s.IdlePerNode = idle / float64(nodes)
	}
	if idleNodes > 0 {
		v := idleIdle / float64(idleNodes)
		s.IdlePerIdleNode = &v
		s.IdleNodes = idleNodes
	}
	r.samples = append(r.samples, s)
}

// setWindow starts the measurement window (means are taken over samples from now on).
func (r *runner) setWindow() {
	r.mu.Lock()
	r.windowStart = r.clk.Now()
	r.mu.Unlock()
}

// launch starts instances in the simulator (as an autoscaler would), count per subnet.
func (r *runner) launch(ctx context.Context, instanceType string, perSubnet []int) ([]ec2sim.InstanceInfo, error) {
	var out []ec2sim.InstanceInfo
	for i, s := range r.sim.Sim().Snapshot().Subnets {
		if i >= len(perSubnet) || perSubnet[i] == 0 {
			continue
		}
		got, err := r.sim.Sim().RunInstances(ctx, ec2sim.InstanceSpec{InstanceType: instanceType, SubnetID: s.ID}, perSubnet[i])
		if err != nil {
			return nil, fmt.Errorf("bench: launch %d %s in %s: %w", perSubnet[i], instanceType, s.ID, err)
		}
		out = append(out, got...)
	}
	return out, nil
}

// runningInstances lists the simulator's running instances by private DNS name.
func runningInstances(sim *ec2sim.Server) []ec2sim.InstanceInfo {
	var out []ec2sim.InstanceInfo
	for _, in := range sim.Sim().Snapshot().Instances {
		if in.State == "running" {
			out = append(out, in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PrivateDNSName < out[j].PrivateDNSName })
	return out
}

// reportStuck prints the nodes with pods that never ran and nodes never ready (progress only).
func (r *runner) reportStuck() {
	r.mu.Lock()
	defer r.mu.Unlock()
	stuck := map[string]int{}
	for _, p := range r.pods {
		p.mu.Lock()
		if p.pendingLocked() && p.scheduledAt < r.clk.Now()-stuckAfter {
			stuck[p.n.inst.PrivateDNSName]++
		}
		p.mu.Unlock()
	}
	for name, k := range stuck {
		r.cfg.progress("  %s: %d pod(s) never ran on %s", r.cfg.system, k, name)
	}
	for _, n := range r.nodes {
		if n.readyAt < 0 {
			r.cfg.progress("  %s: node %s never held a free address", r.cfg.system, n.inst.PrivateDNSName)
		}
	}
}
