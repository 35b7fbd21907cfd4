package bench

import (
	"math"
	"sort"
	"strings"
	"time"

	"github.com/ipledger/ipledger/server/ec2sim"
)

// Sample is one point of the time series (simulated seconds since the trace started).
type Sample struct {
	T     float64 `json:"t_s"`
	Held  int     `json:"held"`
	InUse int     `json:"in_use"`
	// IdlePerNode: pod-capable addresses held and not used by a pod (free or cooling), mean
	// over ready nodes; IdlePerIdleNode the same over nodes without pods (nil when none).
	IdlePerNode     float64  `json:"idle_per_node"`
	IdlePerIdleNode *float64 `json:"idle_per_idle_node,omitempty"`
	IdleNodes       int      `json:"idle_nodes,omitempty"`
}

// SystemResult is one system's run of a trace. Durations are simulated seconds.
type SystemResult struct {
	Name      string `json:"name"`
	Nodes     int    `json:"nodes"`
	PodStarts int    `json:"pod_starts"`
	// Window over which means are taken (after the initial placement where the trace says so).
	WindowStartS float64 `json:"window_start_s"`
	DurationS    float64 `json:"duration_s"`

	HeldMean     float64 `json:"held_mean"`
	HeldPeak     int     `json:"held_peak"`
	InUseMean    float64 `json:"in_use_mean"`
	InUsePeak    int     `json:"in_use_peak"`
	HeldPerInUse float64 `json:"held_per_in_use"`
	// HeldEnd and InUseEnd are the last sample's.
	HeldEnd  int `json:"held_end"`
	InUseEnd int `json:"in_use_end"`
	// IdlePerNode is the window's mean of idle pod-capable addresses per ready node;
	// IdlePerIdleNode over nodes with no pods (null when no node was ever idle in the window).
	IdlePerNode     float64  `json:"idle_per_node"`
	IdlePerIdleNode *float64 `json:"idle_per_idle_node"`

	EC2Calls                      map[string]int `json:"ec2_calls"`
	EC2Errors                     map[string]int `json:"ec2_errors"`
	MutatingCalls                 int            `json:"mutating_calls"`
	MutatingCallsPerNodeStart     float64        `json:"mutating_calls_per_node_start"`
	MutatingCallsPer1000PodStarts float64        `json:"mutating_calls_per_1000_pod_starts"`
	Throttled                     int            `json:"throttled"`
	InsufficientCidrBlocks        int            `json:"insufficient_cidr_blocks"`

	// Add waits and ServedWithoutWait cover the Adds scheduled in the window;
	// ServedWithoutWaitAll every Add of the trace (the initial placement included).
	AddWaitP50Ms         float64 `json:"add_wait_p50_ms"`
	AddWaitP99Ms         float64 `json:"add_wait_p99_ms"`
	AddWaitMaxMs         float64 `json:"add_wait_max_ms"`
	ServedWithoutWait    float64 `json:"served_without_wait"`
	ServedWithoutWaitAll float64 `json:"served_without_wait_all"`
	Adds                 int     `json:"adds"`
	FailedAddAttempts    int     `json:"failed_add_attempts"`
	// PodsNotRunning: pods scheduled at least 60 s before the end of the trace that never ran;
	// PodsPendingEnd: every pod still pending at the end (recent churn included).
	PodsNotRunning int `json:"pods_not_running"`
	PodsPendingEnd int `json:"pods_pending_end"`
	// TimeToAllRunningS: from the start of a phase (the initial placement, a batch wave) until
	// its last pod runs; the longest phase. Null when some phase never completed.
	TimeToAllRunningS *float64 `json:"time_to_all_running_s"`
	// NodesReadyS: until the last node could start a pod (held a free address).
	NodesReadyS *float64 `json:"nodes_ready_s"`
	// NodesNeverReady counts nodes that never held a free address.
	NodesNeverReady int `json:"nodes_never_ready"`
	// NodesReadyPerFloor (burst, burst-launch): NodesReadyS over the burst floor.
	NodesReadyPerFloor *float64 `json:"nodes_ready_per_floor,omitempty"`
	// NodeReadyAfterLaunchP50S and MaxS (burst-launch): each node's time from its instance's
	// launch (RunInstances returned; its software started) until it could start a pod.
	NodeReadyAfterLaunchP50S *float64 `json:"node_ready_after_launch_p50_s,omitempty"`
	NodeReadyAfterLaunchMaxS *float64 `json:"node_ready_after_launch_max_s,omitempty"`
	// LaunchCalls and LaunchThrottled: the trace's own RunInstances (the autoscaler's, not the
	// system's: neither counts in MutatingCalls or Throttled).
	LaunchCalls     int `json:"launch_calls,omitempty"`
	LaunchThrottled int `json:"launch_throttled,omitempty"`
	// LaunchTemplate (burst-launch): what the nodes launched with.
	LaunchTemplate *LaunchTemplate `json:"launch_template,omitempty"`
	// Check (burst-launch, ipledger): AdminService.Check with EC2 after the burst.
	Check *CheckResult `json:"check,omitempty"`

	ServerCPUSeconds *float64 `json:"server_cpu_s"`
	ServerPeakRSSMB  *float64 `json:"server_peak_rss_mb"`
	EtcdDBBytes      *int64   `json:"etcd_db_bytes"`
	// ServerRestarts counts exits of the server during the trace (a supervisor restarted it, as
	// Kubernetes would); ServerExits says why.
	ServerRestarts int      `json:"server_restarts"`
	ServerExits    []string `json:"server_exits,omitempty"`

	// FreeBlocksEnd counts whole free /28 blocks left in the subnets at the end.
	FreeBlocksEnd int `json:"free_blocks_end"`
	// PodSubnetHeldEnd is what the system holds in the pod subnets at the end (custom-networking),
	// PodSubnetsUsedEnd in how many of them, SubnetFull its InsufficientFreeAddressesInSubnet answers.
	PodSubnetHeldEnd  int `json:"pod_subnet_held_end,omitempty"`
	PodSubnetsUsedEnd int `json:"pod_subnets_used_end,omitempty"`
	SubnetFull        int `json:"insufficient_free_addresses_in_subnet"`
	// ClockLagP99S and ClockLagMaxS: how late the sampler woke (simulated seconds); large
	// values mean the machine did not keep up with the time scale.
	ClockLagP99S float64 `json:"clock_lag_p99_s"`
	ClockLagMaxS float64 `json:"clock_lag_max_s"`
	// BucketUse: per throttling bucket, calls that passed / what EC2's bucket allowed in the
	// run (size + refill x duration); > 1 is impossible, values near 1 mean the bucket was the
	// bottleneck.
	BucketUse map[string]float64 `json:"bucket_use"`

	// Phases (batch: one per wave) with their own add statistics.
	Phases []PhaseResult `json:"phases,omitempty"`

	Series []Sample `json:"series"`
}

// PhaseResult is one phase of pods started together (a batch wave).
type PhaseResult struct {
	StartS            float64  `json:"start_s"`
	AllRunningS       *float64 `json:"all_running_s"`
	Adds              int      `json:"adds"`
	ServedWithoutWait float64  `json:"served_without_wait"`
}

// mutating reports whether an EC2 action changes state (every action but describes).
func mutating(action string) bool { return !strings.HasPrefix(action, "Describe") }

func statsDelta(after, before ec2sim.Stats) map[string]ec2sim.ActionStats {
	out := map[string]ec2sim.ActionStats{}
	for a, s := range after.Calls {
		b := before.Calls[a]
		d := ec2sim.ActionStats{Calls: s.Calls - b.Calls, Throttled: s.Throttled - b.Throttled, Errors: map[string]int{}}
		for code, n := range s.Errors {
			if v := n - b.Errors[code]; v > 0 {
				d.Errors[code] = v
			}
		}
		if d.Calls > 0 {
			out[a] = d
		}
	}
	return out
}

func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// result computes the system's result from what the runner recorded.
func (r *runner) result(res Resources, stats ec2sim.Stats, duration time.Duration) SystemResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := SystemResult{
		Name: r.cfg.system, Nodes: len(r.nodes), PodStarts: int(r.podStarts.Load()),
		WindowStartS: r.windowStart.Seconds(), DurationS: duration.Seconds(),
		EC2Calls: map[string]int{}, EC2Errors: map[string]int{}, Series: r.samples,
		ServerCPUSeconds: res.ServerCPUSeconds, ServerPeakRSSMB: res.ServerPeakRSSMB, EtcdDBBytes: res.EtcdDBBytes,
		FailedAddAttempts: r.failedAdds,
		ServerRestarts:    len(res.ServerExits), ServerExits: res.ServerExits,
	}
	// Time series over the window.
	var held, inUse, idle, idleIdle float64
	var n, nIdle int
	for _, s := range r.samples {
		out.HeldPeak = max(out.HeldPeak, s.Held)
		out.InUsePeak = max(out.InUsePeak, s.InUse)
		if s.T < out.WindowStartS {
			continue
		}
		held += float64(s.Held)
		inUse += float64(s.InUse)
		idle += s.IdlePerNode
		n++
		if s.IdlePerIdleNode != nil {
			idleIdle += *s.IdlePerIdleNode
			nIdle++
		}
	}
	if n > 0 {
		out.HeldMean, out.InUseMean, out.IdlePerNode = held/float64(n), inUse/float64(n), idle/float64(n)
	}
	if out.InUseMean > 0 {
		out.HeldPerInUse = out.HeldMean / out.InUseMean
	}
	if nIdle > 0 {
		v := idleIdle / float64(nIdle)
		out.IdlePerIdleNode = &v
	}
	if len(r.samples) > 0 {
		last := r.samples[len(r.samples)-1]
		out.HeldEnd, out.InUseEnd = last.Held, last.InUse
	}
	// EC2 calls.
	delta := statsDelta(stats, r.base)
	bucketCalls := map[string]int{}
	for a, s := range delta {
		out.EC2Calls[a] = s.Calls
		if a == "RunInstances" || a == "TerminateInstances" {
			// The trace's own launches (the autoscaler's), not the system's calls.
			out.LaunchCalls += s.Calls - s.Throttled
			out.LaunchThrottled += s.Throttled
			continue
		}
		out.Throttled += s.Throttled
		for code, k := range s.Errors {
			out.EC2Errors[code] += k
		}
		if mutating(a) {
			out.MutatingCalls += s.Calls - s.Throttled
		}
		// DescribeInstances / DescribeNetworkInterfaces of the systems always name ids or filter.
		bucketCalls[ec2sim.BucketFor(a, true)] += s.Calls - s.Throttled
	}
	out.InsufficientCidrBlocks = out.EC2Errors["InsufficientCidrBlocks"]
	out.SubnetFull = out.EC2Errors["InsufficientFreeAddressesInSubnet"]
	if out.Nodes > 0 {
		out.MutatingCallsPerNodeStart = float64(out.MutatingCalls) / float64(out.Nodes)
	}
	if out.PodStarts > 0 {
		out.MutatingCallsPer1000PodStarts = 1000 * float64(out.MutatingCalls) / float64(out.PodStarts)
	}
	shapes := ec2sim.BucketShapes()
	out.BucketUse = map[string]float64{}
	for b, c := range bucketCalls {
		if sh, ok := shapes[b]; ok {
			allowed := sh.Size + sh.Refill*duration.Seconds()
			out.BucketUse[b] = math.Round(1000*float64(c)/allowed) / 1000
		}
	}
	// Pod adds scheduled in the window; served-without-wait over all adds too.
	waits := make([]float64, 0, len(r.adds))
	noWait, noWaitAll := 0, 0
	for _, a := range r.adds {
		if a.noWait {
			noWaitAll++
		}
		if a.scheduled < r.windowStart {
			continue
		}
		waits = append(waits, float64(a.wait)/float64(time.Millisecond))
		if a.noWait {
			noWait++
		}
	}
	if len(r.adds) > 0 {
		out.ServedWithoutWaitAll = float64(noWaitAll) / float64(len(r.adds))
	}
	sort.Float64s(waits)
	out.AddWaitP50Ms, out.AddWaitP99Ms = percentile(waits, 0.50), percentile(waits, 0.99)
	if len(waits) > 0 {
		out.AddWaitMaxMs = waits[len(waits)-1]
		out.ServedWithoutWait = float64(noWait) / float64(len(waits))
	}
	out.Adds = len(waits)
	for _, p := range r.pods {
		p.mu.Lock()
		if p.pendingLocked() {
			out.PodsPendingEnd++
			if p.scheduledAt < duration-stuckAfter {
				out.PodsNotRunning++
			}
		}
		p.mu.Unlock()
	}
	// Phases and readiness.
	longest, complete := 0.0, len(r.phases) > 0
	for _, ph := range r.phases {
		if ph.done < 0 {
			complete = false
			break
		}
		longest = max(longest, (ph.done - ph.start).Seconds())
	}
	if complete {
		out.TimeToAllRunningS = &longest
	}
	ready, allReady := 0.0, len(r.nodes) > 0
	for _, nd := range r.nodes {
		if nd.readyAt < 0 {
			allReady = false
			out.NodesNeverReady++
			continue
		}
		ready = max(ready, nd.readyAt.Seconds())
	}
	if allReady {
		out.NodesReadyS = &ready
	}
	if r.cfg.trace == TraceBurstLaunch {
		out.NodeReadyAfterLaunchP50S, out.NodeReadyAfterLaunchMaxS = readyAfterLaunch(r.nodes)
		out.LaunchTemplate, out.Check = r.template, r.check
	}
	if len(r.phases) > 1 {
		for _, ph := range r.phases {
			pr := PhaseResult{StartS: ph.start.Seconds()}
			if ph.done >= 0 {
				v := (ph.done - ph.start).Seconds()
				pr.AllRunningS = &v
			}
			nw := 0
			for _, a := range r.adds {
				if a.phase == ph {
					pr.Adds++
					if a.noWait {
						nw++
					}
				}
			}
			if pr.Adds > 0 {
				pr.ServedWithoutWait = float64(nw) / float64(pr.Adds)
			}
			out.Phases = append(out.Phases, pr)
		}
	}
	lags := append([]float64(nil), r.lags...)
	sort.Float64s(lags)
	out.ClockLagP99S = percentile(lags, 0.99)
	if len(lags) > 0 {
		out.ClockLagMaxS = lags[len(lags)-1]
	}
	return out
}
