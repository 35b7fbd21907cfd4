package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"golang.org/x/time/rate"

	"github.com/ipledger/ipledger/e2e/vpccni"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/instancetypes"
)

// LaunchBatch is how many instances one RunInstances of the burst-launch trace asks for, as an
// Auto Scaling group or an EC2 fleet request launches a large scale-up in batches.
const LaunchBatch = 50

// RunInstances' buckets (EC2.md): requests 5 / 2 per s, instances 1000 / 2 per s. The launcher
// paces itself a little below them, as an Auto Scaling group backs off, so launch throttling is
// modelled without being what the trace measures.
const (
	runRequestsBurst   = 5
	runRequestsPerS    = 1.8
	runInstancesBurst  = 1000
	runInstancesPerSec = 1.8
)

// LaunchTemplate is the primary interface the burst-launch trace launches its nodes with: the
// launch hint of the node group's policy (what `ipledgerctl launch-hint -o launch-template`
// prints), the same for every system.
type LaunchTemplate struct {
	Policy                         string `json:"policy"`
	SecondaryPrivateIPAddressCount int    `json:"secondary_private_ip_address_count"`
	IPv4PrefixCount                int    `json:"ipv4_prefix_count"`
	// Source says where the hint came from: "server" (ipledger's AdminService.LaunchHint) or
	// "computed" (the same policy.ComputeLaunchHint, for a system without ipledger's server).
	Source string `json:"source"`
}

// benchDefaultPolicy is the default policy the bench's ipledger runs with (policies()).
func benchDefaultPolicy(floor int) policy.Policy {
	p := policy.Default()
	if floor > 0 {
		p.AdaptiveFloor, p.AdaptiveCap = policy.U32(uint32(floor)), policy.U32(uint32(max(16, floor)))
	}
	return p
}

// computedTemplate is the launch hint of the bench's default policy for new nodes that start
// pods pods in their first minute, from the same code the server answers LaunchHint with.
func computedTemplate(p TraceParams, sim *ec2sim.Server) (LaunchTemplate, error) {
	typ, ok := instancetypes.Lookup(p.InstanceType)
	if !ok {
		return LaunchTemplate{}, fmt.Errorf("bench: unknown instance type %q", p.InstanceType)
	}
	in := policy.LaunchInputs{Policy: benchDefaultPolicy(p.IPLedgerFloor), Type: typ, FirstMinute: p.Pods, Expected: true}
	for _, s := range sim.Sim().Snapshot().Subnets {
		in.Subnets = append(in.Subnets, policy.LaunchSubnet{ID: s.ID, Free: s.Available, FreeBlocks: s.FreeBlocks})
	}
	h := policy.ComputeLaunchHint(in)
	return LaunchTemplate{Policy: h.Policy, SecondaryPrivateIPAddressCount: h.SecondaryAddresses, IPv4PrefixCount: h.Prefixes, Source: "computed"}, nil
}

// launchHinter is a system that answers launch hints (ipledger).
type launchHinter interface {
	LaunchTemplate(ctx context.Context, policyName, instanceType string, expectedPods int) (LaunchTemplate, error)
}

// checker is a system that can compare its records with EC2 (ipledger: AdminService.Check).
type checker interface {
	Check(ctx context.Context) (CheckResult, error)
}

// CheckResult is AdminService.Check's answer after a trace.
type CheckResult struct {
	OK       bool     `json:"ok"`
	Findings []string `json:"findings"`
	// Foreign is the subnets' foreign addresses as ipledger counts them (addresses EC2 has
	// that no node, reservation or AWS holds).
	Foreign int `json:"foreign"`
	// Leased is every address the nodes' leases hold (a prefix's 16 included); LeasedTwice
	// counts those two leases hold.
	Leased      int `json:"leased"`
	LeasedTwice int `json:"leased_twice"`
}

// launcher launches the trace's instances through RunInstances over the SDK, paced under
// RunInstances' buckets on the simulator's (scaled) clock.
type launcher struct {
	c         *ec2.Client
	requests  *rate.Limiter
	instances *rate.Limiter
}

func newLauncher(r *runner) (*launcher, error) {
	c, err := vpccni.NewEC2Client(vpccni.ClientConfig{Endpoint: r.sim.Endpoint(), TimeScale: r.cfg.timeScale})
	if err != nil {
		return nil, err
	}
	f := r.cfg.timeScale
	return &launcher{
		c:         c,
		requests:  rate.NewLimiter(rate.Limit(runRequestsPerS*f), runRequestsBurst),
		instances: rate.NewLimiter(rate.Limit(runInstancesPerSec*f), runInstancesBurst),
	}, nil
}

// run launches n instances of typ in subnet in one RunInstances with the template on the
// primary interface. Throttled answers are retried by the SDK's retryer (and counted).
func (l *launcher) run(ctx context.Context, typ, subnet string, n int, t LaunchTemplate) ([]string, error) {
	if err := l.requests.Wait(ctx); err != nil {
		return nil, err
	}
	if err := l.instances.WaitN(ctx, n); err != nil {
		return nil, err
	}
	ni := ec2types.InstanceNetworkInterfaceSpecification{DeviceIndex: aws.Int32(0), SubnetId: aws.String(subnet), DeleteOnTermination: aws.Bool(true)}
	if t.IPv4PrefixCount > 0 {
		ni.Ipv4PrefixCount = aws.Int32(int32(t.IPv4PrefixCount))
	} else if t.SecondaryPrivateIPAddressCount > 0 {
		ni.SecondaryPrivateIpAddressCount = aws.Int32(int32(t.SecondaryPrivateIPAddressCount))
	}
	out, err := l.c.RunInstances(ctx, &ec2.RunInstancesInput{
		InstanceType: ec2types.InstanceType(typ), MinCount: aws.Int32(int32(n)), MaxCount: aws.Int32(int32(n)),
		NetworkInterfaces: []ec2types.InstanceNetworkInterfaceSpecification{ni},
	})
	if err != nil {
		return nil, fmt.Errorf("bench: RunInstances %d x %s in %s: %w", n, typ, subnet, err)
	}
	ids := make([]string, 0, len(out.Instances))
	for _, in := range out.Instances {
		ids = append(ids, aws.ToString(in.InstanceId))
	}
	return ids, nil
}

// driveBurstLaunch: the burst's nodes, launched through RunInstances in batches from a template
// carrying the node group's launch hint; each node's software starts as its RunInstances
// returns and gets its pods as soon as it is ready. The trace's clock starts as the first
// RunInstances is sent; a node's own clock when its instance exists (RunInstances returned).
func driveBurstLaunch(ctx context.Context, r *runner, p TraceParams) error {
	tmpl, err := computedTemplate(p, r.sim)
	if err != nil {
		return err
	}
	if h, ok := r.sys.(launchHinter); ok {
		got, err := h.LaunchTemplate(ctx, policy.DefaultName, p.InstanceType, p.Pods)
		if err != nil {
			return fmt.Errorf("bench: launch hint: %w", err)
		}
		if got.SecondaryPrivateIPAddressCount != tmpl.SecondaryPrivateIPAddressCount || got.IPv4PrefixCount != tmpl.IPv4PrefixCount {
			r.cfg.progress("  the server's launch hint (%+v) differs from the computed one (%+v); launching with the server's", got, tmpl)
		}
		tmpl = got
	}
	r.mu.Lock()
	r.template = &tmpl
	r.mu.Unlock()
	r.cfg.progress("  launching from a template with %d secondary address(es), %d prefix(es) on the primary interface (%s)",
		tmpl.SecondaryPrivateIPAddressCount, tmpl.IPv4PrefixCount, tmpl.Source)

	l, err := newLauncher(r)
	if err != nil {
		return err
	}
	ph := r.newPhase()
	r.expect(ph, p.Nodes*p.Pods)
	onReady := func(n *nodeRec) {
		for k := 0; k < p.Pods; k++ {
			r.startPod(n, ph, false)
		}
	}
	subnets := r.sim.Sim().Snapshot().Subnets
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	for i, count := range nodesPerSubnet(r.cfg.scenario, p.Nodes) {
		for left := count; left > 0; left -= LaunchBatch {
			n := min(left, LaunchBatch)
			subnet := subnets[i].ID
			wg.Add(1)
			go func() {
				defer wg.Done()
				ids, err := l.run(ctx, p.InstanceType, subnet, n, tmpl)
				if err == nil {
					_, err = r.startNodes(ctx, instancesByID(r.sim, ids), roleDefault, onReady)
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
			// The next batch's request waits for its token here, so batches leave in order.
			if err := ctx.Err(); err != nil {
				break
			}
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if r.waitPhase(ph, p.Duration) {
		r.clk.Sleep(r.ctx, min(30*time.Second, max(p.Duration-r.clk.Now(), 0)))
	}
	if c, ok := r.sys.(checker); ok {
		res, err := c.Check(context.WithoutCancel(ctx))
		if err != nil {
			return fmt.Errorf("bench: check after the burst: %w", err)
		}
		r.mu.Lock()
		r.check = &res
		r.mu.Unlock()
	}
	return nil
}

// instancesByID looks the launched instances up in the simulator (they are running: the
// simulator's instances run as RunInstances returns).
func instancesByID(sim *ec2sim.Server, ids []string) []ec2sim.InstanceInfo {
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	var out []ec2sim.InstanceInfo
	for _, in := range sim.Sim().Snapshot().Instances {
		if want[in.ID] {
			out = append(out, in)
		}
	}
	return out
}

// readyAfterLaunch is each node's time from its instance's launch (its software started) until
// it could start a pod: p50 and max, simulated seconds.
func readyAfterLaunch(nodes []*nodeRec) (p50, maxS *float64) {
	var d []float64
	for _, n := range nodes {
		if n.readyAt < 0 {
			return nil, nil
		}
		d = append(d, (n.readyAt - n.started).Seconds())
	}
	if len(d) == 0 {
		return nil, nil
	}
	sort.Float64s(d)
	a, b := percentile(d, 0.5), d[len(d)-1]
	a, b = math.Round(a*100)/100, math.Round(b*100)/100
	return &a, &b
}
