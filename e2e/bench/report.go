package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/ipledger/ipledger/server/ec2sim"
)

// WriteJSON writes reports as JSON: one object for one report, a list for several.
func WriteJSON(w io.Writer, reps []Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if len(reps) == 1 {
		return enc.Encode(reps[0])
	}
	return enc.Encode(reps)
}

func fnum(v float64, prec int) string { return fmt.Sprintf("%.*f", prec, v) }

func fptr(v *float64, prec int) string {
	if v == nil {
		return "n/a"
	}
	return fnum(*v, prec)
}

func pct(v float64) string {
	switch {
	case v >= 0.9995 && v < 1:
		return fmt.Sprintf("%.2f%%", 100*v)
	default:
		return fmt.Sprintf("%.1f%%", 100*v)
	}
}

// WriteMarkdown writes each report as a Markdown section with one table row per system.
func WriteMarkdown(w io.Writer, reps []Report) error {
	var b strings.Builder
	for i, rep := range reps {
		if i > 0 {
			b.WriteString("\n")
		}
		writeReportMarkdown(&b, rep)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeReportMarkdown(b *strings.Builder, rep Report) {
	fmt.Fprintf(b, "### %s\n\n", rep.Trace)
	if g := rep.Gateway; g != nil {
		fmt.Fprintf(b, "%d concurrent requests through one ec2gw.Gateway (%s), EC2's bucket shapes at time scale %g, %s.\n\n",
			g.Requests-g.Throttled, actionsList(g.PerAction), g.TimeScale, profileText(rep.Params.EC2Profile))
		b.WriteString("| requests | elapsed s | floor s | elapsed / floor | throttled | failed |\n|---:|---:|---:|---:|---:|---:|\n")
		fmt.Fprintf(b, "| %d | %s | %s | %s | %d | %d |\n", g.Requests, fnum(g.ElapsedS, 1), fnum(g.FloorS, 1), fnum(g.ElapsedPerFloor, 3), g.Throttled, g.Failed)
		return
	}
	p := rep.Params
	tuning := ""
	if p.IPLedgerFloor > 0 {
		tuning = fmt.Sprintf(" ipledger's default policy has adaptive_floor %d.", p.IPLedgerFloor)
	}
	if p.EC2LatencyMs > 0 {
		tuning += fmt.Sprintf(" Every EC2 call takes %.0f ms more.", p.EC2LatencyMs)
	}
	fmt.Fprintf(b, "%s; %s.%s Time scale %g; %s. Wall time %.0f s.\n\n", describeParams(rep.Trace, p), profileText(p.EC2Profile), tuning, rep.TimeScale, Units, rep.WallSeconds)
	if f := rep.BurstFloor; f != nil {
		fmt.Fprintf(b, "Burst floor: %d node starts x (%s) through EC2's buckets = **%.0f s** until every node can hold an address.\n\n",
			f.Nodes, actionsList(f.CallsPerNodeStart), f.FloorS)
	}
	b.WriteString("| system | held mean | held peak | in use mean | held / in use | idle / node | idle / idle node | mutating calls / node start | / 1000 pod starts | throttled | add wait p50 / p99 / max ms | served without wait | all running s | nodes ready s | server CPU s | server peak MiB | etcd MiB |\n")
	b.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range rep.Systems {
		ready := fptr(s.NodesReadyS, 0)
		if s.NodesReadyPerFloor != nil {
			ready += fmt.Sprintf(" (%.2fx floor)", *s.NodesReadyPerFloor)
		}
		etcd := "n/a"
		if s.EtcdDBBytes != nil {
			etcd = fnum(float64(*s.EtcdDBBytes)/(1<<20), 1)
		}
		allRunning := fptr(s.TimeToAllRunningS, 0)
		if s.TimeToAllRunningS == nil {
			allRunning = "never"
		}
		if s.PodsNotRunning > 0 {
			allRunning += fmt.Sprintf(" (%d pods stuck)", s.PodsNotRunning)
		}
		fmt.Fprintf(b, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %d | %s / %s / %s | %s | %s | %s | %s | %s | %s |\n",
			s.Name, fnum(s.HeldMean, 0), s.HeldPeak, fnum(s.InUseMean, 0), fnum(s.HeldPerInUse, 2), fnum(s.IdlePerNode, 1),
			fptr(s.IdlePerIdleNode, 1), fnum(s.MutatingCallsPerNodeStart, 2), fnum(s.MutatingCallsPer1000PodStarts, 0),
			s.Throttled, fnum(s.AddWaitP50Ms, 0), fnum(s.AddWaitP99Ms, 0), fnum(s.AddWaitMaxMs, 0), pct(s.ServedWithoutWait),
			allRunning, ready, fptr(s.ServerCPUSeconds, 1), fptr(s.ServerPeakRSSMB, 0), etcd)
	}
	for _, s := range rep.Systems {
		if s.ServerRestarts > 0 {
			fmt.Fprintf(b, "\n**%s: the server exited %d time(s) during the trace and was restarted** (first: %s).\n", s.Name, s.ServerRestarts, s.ServerExits[0])
		}
	}
	if rep.Trace == TraceBatch {
		b.WriteString("\nServed without waiting on EC2, by wave:\n\n")
		for _, s := range rep.Systems {
			var parts []string
			for i, ph := range s.Phases {
				parts = append(parts, fmt.Sprintf("wave %d %s (all running in %s s)", i+1, pct(ph.ServedWithoutWait), fptr(ph.AllRunningS, 0)))
			}
			fmt.Fprintf(b, "- %s: %s\n", s.Name, strings.Join(parts, ", "))
		}
	}
	if rep.Trace == TraceBurstLaunch {
		b.WriteString("\n| system | launch template | node ready after launch p50 / max s | mutating calls by the system | throttled (system) | RunInstances calls / throttled | check | foreign | leased / leased twice |\n|---|---|---:|---:|---:|---:|---|---:|---:|\n")
		for _, s := range rep.Systems {
			tmpl := "n/a"
			if t := s.LaunchTemplate; t != nil {
				tmpl = fmt.Sprintf("%d addresses", t.SecondaryPrivateIPAddressCount)
				if t.IPv4PrefixCount > 0 {
					tmpl = fmt.Sprintf("%d prefixes", t.IPv4PrefixCount)
				}
				tmpl += " (" + t.Source + ")"
			}
			check, foreign, leased := "n/a", "n/a", "n/a"
			if c := s.Check; c != nil {
				check = "clean"
				if !c.OK || len(c.Findings) > 0 {
					check = fmt.Sprintf("%d finding(s)", len(c.Findings))
				}
				foreign, leased = fmt.Sprint(c.Foreign), fmt.Sprintf("%d / %d", c.Leased, c.LeasedTwice)
			}
			fmt.Fprintf(b, "| %s | %s | %s / %s | %d | %d | %d / %d | %s | %s | %s |\n", s.Name, tmpl,
				fptr(s.NodeReadyAfterLaunchP50S, 1), fptr(s.NodeReadyAfterLaunchMaxS, 1), s.MutatingCalls, s.Throttled,
				s.LaunchCalls, s.LaunchThrottled, check, foreign, leased)
		}
	}
	if rep.Trace == TracePrefix {
		b.WriteString("\n| system | InsufficientCidrBlocks | whole /28 blocks left at the end | pods not running |\n|---|---:|---:|---:|\n")
		for _, s := range rep.Systems {
			fmt.Fprintf(b, "| %s | %d | %d | %d |\n", s.Name, s.InsufficientCidrBlocks, s.FreeBlocksEnd, s.PodsNotRunning)
		}
	}
	if rep.Trace == TraceCustom {
		b.WriteString("\n| system | held in pod subnets at the end | pod subnets used | InsufficientFreeAddressesInSubnet | pods not running |\n|---|---:|---:|---:|---:|\n")
		for _, s := range rep.Systems {
			fmt.Fprintf(b, "| %s | %d | %d | %d | %d |\n", s.Name, s.PodSubnetHeldEnd, s.PodSubnetsUsedEnd, s.SubnetFull, s.PodsNotRunning)
		}
	}
	b.WriteString("\nEC2 calls by action (successful + throttled answers):\n\n")
	for _, s := range rep.Systems {
		fmt.Fprintf(b, "- %s: %s\n", s.Name, actionsList(s.EC2Calls))
	}
}

// profileText names the simulator's clock of EC2 in a report.
func profileText(name string) string {
	switch name {
	case ec2sim.ProfileRealistic:
		return "realistic EC2 (published latencies, attach and detach phases, describe lag)"
	case ec2sim.ProfileInstant, "":
		return "instant EC2 (every call answered at once)"
	}
	return name + " EC2"
}

func describeParams(trace string, p Params) string {
	switch trace {
	case TraceSeed:
		return fmt.Sprintf("The seed's cluster: 5 %s nodes in six /19 subnets, 15 pods of which 10 host network, %.0f s", p.InstanceType, p.DurationS)
	case TraceSteady:
		return fmt.Sprintf("%d %s nodes (%.0f%% of them idle), %d pods on each busy node, %.0f%% of pods replaced per minute for %.0f s after placement",
			p.Nodes, p.InstanceType, 100*p.IdleNodes, p.PodsPerNode, 100*p.Churn, p.DurationS)
	case TraceBurst:
		return fmt.Sprintf("%d %s nodes launched at once, %d pod(s) on each as soon as it is ready", p.Nodes, p.InstanceType, p.PodsPerNode)
	case TraceBurstLaunch:
		return fmt.Sprintf("%d %s nodes launched through RunInstances in batches of %d (paced under its buckets, as an Auto Scaling group launches) from a launch template carrying the node group's launch hint, %d pod(s) on each as soon as it is ready; the clock starts as the first RunInstances is sent, a node's own clock as its RunInstances returns (its software starts then: the ~30 s from launch to a running kubelet is not modelled, for either system)",
			p.Nodes, p.InstanceType, LaunchBatch, p.PodsPerNode)
	case TraceBatch:
		return fmt.Sprintf("%d %s nodes; %d waves, every 120 s, of %d job pods per node that run 60 s", p.Nodes, p.InstanceType, p.Waves, p.PodsPerNode)
	case TraceCustom:
		return fmt.Sprintf("Custom networking: per zone a full /27 node subnet and two /26 pod subnets of 100.64.0.0/16 (the VPC CNI's ENIConfig names the first, ipledger's policy both); %d %s nodes with %d pods each, no pods on primary ENIs, %.0f s",
			p.Nodes, p.InstanceType, p.PodsPerNode, p.DurationS)
	case TracePrefix:
		return fmt.Sprintf("One /22 with %d free /28 blocks and one foreign address in every other block; %d %s nodes in secondary-IP mode with %d pods each, then %d prefix-mode nodes with %d pods each, %.0f s",
			p.WholeBlocks, p.Nodes, p.InstanceType, p.PodsPerNode, p.PrefixNodes, p.PrefixPods, p.DurationS)
	}
	return trace
}

func actionsList(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
