package ec2gw

import (
	"context"
	"math"
	"net/netip"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/instancetypes"
)

// burstTimeScale speeds EC2's refill rates up for the burst (both the simulator and the gateway).
const burstTimeScale = 20.0

// TestGatewayBurst1000 sends 1,000 concurrent gateway requests (explicit assigns across the ENIs
// of the scenario's instances, tags, describes) against the simulator with EC2's bucket shapes,
// time-scaled: EC2 must never answer RequestLimitExceeded and every request must be served. It
// logs the elapsed time against the floor EC2's buckets allow for the calls that were made.
func TestGatewayBurst1000(t *testing.T) { runBurst(t, burstTimeScale, nil) }

func runBurst(t *testing.T, burstTimeScale float64, mutate func(*Config)) {
	const (
		nAssign   = 240
		nTags     = 450
		nDescribe = 310
	)
	srv := startSim(t, burstTimeScale, nil)
	g, _ := newSimGateway(t, srv, burstTimeScale, mutate)
	ctx := t.Context()
	sim := srv.Sim()

	// Four m5.24xlarge (49 secondaries on the primary ENI) next to the five m5.large (9 each).
	private := sim.Snapshot().Subnets[3].ID
	if _, err := sim.RunInstances(ctx, ec2sim.InstanceSpec{InstanceType: "m5.24xlarge", SubnetID: private}, 4); err != nil {
		t.Fatalf("RunInstances: %v", err)
	}
	st := sim.Snapshot()
	pick := newAddrPicker(t, st)
	type assign struct {
		eni string
		ip  netip.Addr
	}
	var assigns []assign
	var resources, instIDs, eniIDs []string
	for _, in := range st.Instances {
		it, ok := instancetypes.Lookup(in.InstanceType)
		if !ok {
			t.Fatalf("unknown type %s", in.InstanceType)
		}
		for _, ip := range pick.addrs(in.SubnetID, it.IPv4PerENI-1) {
			assigns = append(assigns, assign{in.PrimaryENI, ip})
		}
		resources = append(resources, in.ID, in.PrimaryENI)
		instIDs = append(instIDs, in.ID)
		eniIDs = append(eniIDs, in.PrimaryENI)
	}
	if len(assigns) < nAssign {
		t.Fatalf("only %d addresses fit on the primary ENIs, want %d", len(assigns), nAssign)
	}
	assigns = assigns[:nAssign]

	var reqs []func(context.Context) error
	for i, a := range assigns {
		p := []Priority{PriorityPodWaiting, PriorityNodeStart, PriorityWarmRefill}[i%3]
		reqs = append(reqs, func(ctx context.Context) error {
			return g.AssignAddresses(ctx, p, a.eni, []netip.Addr{a.ip})
		})
	}
	for i := range nTags {
		p := []Priority{PriorityWarmRefill, PriorityPrewarm, PriorityRelease}[i%3]
		res := resources[i%len(resources)]
		reqs = append(reqs, func(ctx context.Context) error {
			return g.CreateTags(ctx, p, []string{res}, map[string]string{"ipledger.io/burst": "x"})
		})
	}
	for i := range nDescribe {
		p := []Priority{PriorityNodeStart, PriorityRelease, PriorityReconcile}[i%3]
		switch i % 4 {
		case 0:
			reqs = append(reqs, func(ctx context.Context) error { _, err := g.DescribeSubnets(ctx, p, nil, ""); return err })
		case 1:
			id := eniIDs[i%len(eniIDs)]
			reqs = append(reqs, func(ctx context.Context) error {
				_, err := g.DescribeNetworkInterfaces(ctx, p, ENIFilter{IDs: []string{id}})
				return err
			})
		case 2:
			id := instIDs[i%len(instIDs)]
			reqs = append(reqs, func(ctx context.Context) error { _, err := g.DescribeInstances(ctx, p, []string{id}); return err })
		case 3:
			reqs = append(reqs, func(ctx context.Context) error {
				_, err := g.DescribeInstanceTypes(ctx, p, []string{"m5.large"})
				return err
			})
		}
	}
	if len(reqs) != 1000 {
		t.Fatalf("%d requests, want 1000", len(reqs))
	}

	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var failed atomic.Int64
	var eg errgroup.Group
	start := time.Now()
	for _, r := range reqs {
		eg.Go(func() error {
			if err := r(ctx); err != nil {
				failed.Add(1)
				return err
			}
			return nil
		})
	}
	err := eg.Wait()
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("%d of 1000 requests failed; first: %v", failed.Load(), err)
	}

	stats := sim.Stats()
	total := stats.Total()
	if total.Throttled != 0 {
		t.Fatalf("EC2 answered RequestLimitExceeded %d times: %+v", total.Throttled, stats.Calls)
	}
	if len(total.Errors) != 0 {
		t.Fatalf("EC2 errors during the burst: %v", total.Errors)
	}
	final := sim.Snapshot()
	for _, a := range assigns {
		e, _ := final.ENI(a.eni)
		found := false
		for _, s := range e.SecondaryIPs {
			if s == a.ip.String() {
				found = true
				break
			}
		}
		if !found {
			t.Fatalf("address %s is not on %s after the burst", a.ip, a.eni)
		}
	}
	if dups := final.DuplicateAddresses(); len(dups) != 0 {
		t.Fatalf("addresses held twice: %v", dups)
	}

	// The floor: every bucket serves its capacity at once, then its refill rate.
	perBucket := map[string]int{}
	lim := newLimiter(realClock(), DefaultBuckets())
	for action, s := range stats.Calls {
		perBucket[lim.bucketFor(action).name] += s.Calls
	}
	var floor time.Duration
	var names []string
	for name := range perBucket {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		var bc BucketConfig
		for _, b := range DefaultBuckets() {
			if b.Name == name {
				bc = b
			}
		}
		calls := perBucket[name]
		f := time.Duration(math.Max(0, float64(calls-bc.Capacity)) / (bc.RefillPerSecond * burstTimeScale) * float64(time.Second))
		floor = max(floor, f)
		t.Logf("bucket %-24s %4d EC2 calls (capacity %d, refill %.0f/s x %g): floor %v",
			name, calls, bc.Capacity, bc.RefillPerSecond, burstTimeScale, f.Round(time.Millisecond))
	}
	t.Logf("1000 requests -> %d EC2 calls (%d AssignPrivateIpAddresses for %d assigns), 0 throttled",
		total.Calls, stats.Calls[ActionAssignPrivateIPAddresses].Calls, nAssign)
	t.Logf("burst elapsed %v, floor %v, elapsed/floor = %.3f (time scale %g; at real scale the floor is %v)",
		elapsed.Round(time.Millisecond), floor.Round(time.Millisecond), elapsed.Seconds()/floor.Seconds(),
		burstTimeScale, time.Duration(float64(floor)*burstTimeScale).Round(time.Second))
}
