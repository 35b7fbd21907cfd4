package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/ipledger/ipledger/internal/clock"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ec2sim"
	"golang.org/x/sync/errgroup"
)

// GatewayBurst is issue #3's measurement: concurrent requests through one ec2gw.Gateway against
// a simulator with EC2's bucket shapes, compared with the floor the buckets allow.
type GatewayBurst struct {
	TimeScale float64        `json:"time_scale"`
	Requests  int            `json:"requests"`
	PerAction map[string]int `json:"per_action"`
	// ElapsedS is from the first request to the last answer; FloorS the least time EC2's
	// buckets allow for the same calls (simulated seconds; real ones at time scale 1).
	ElapsedS        float64 `json:"elapsed_s"`
	FloorS          float64 `json:"floor_s"`
	ElapsedPerFloor float64 `json:"elapsed_per_floor"`
	Throttled       int     `json:"throttled"`
	Failed          int     `json:"failed"`
	FirstError      string  `json:"first_error,omitempty"`
}

// gatewayActions are the ENI/IP actions with a bucket each (100 / 5 per s).
var gatewayActions = []string{
	ec2gw.ActionCreateNetworkInterface, ec2gw.ActionDeleteNetworkInterface, ec2gw.ActionAssignPrivateIPAddresses,
	ec2gw.ActionUnassignPrivateIPAddresses, ec2gw.ActionModifyNetworkInterfaceAttribute,
}

// bucketFloor is the least time (in the bucket's seconds) for calls through a full bucket.
func bucketFloor(calls int, sh ec2sim.BucketShape) float64 {
	return max(float64(calls)-sh.Size, 0) / sh.Refill
}

// runGatewayBurst sends perAction requests of each ENI/IP action at once through a gateway.
func runGatewayBurst(ctx context.Context, perAction int, timeScale float64, profile string) (GatewayBurst, error) {
	out := GatewayBurst{TimeScale: timeScale, PerAction: map[string]int{}}
	prof, err := ec2sim.ProfileByName(profile)
	if err != nil {
		return out, fmt.Errorf("bench: %w", err)
	}
	sc := &ec2sim.Scenario{
		VPC:     ec2sim.VPCSpec{CIDR: vpcCIDR},
		Subnets: []ec2sim.SubnetSpec{{CIDR: "192.168.0.0/19", AvailabilityZone: "eu-west-1a"}},
	}
	cfg := ec2sim.DefaultConfig()
	cfg.Scenario, cfg.TimeScale, cfg.Profile = sc, timeScale, &prof
	sim, err := ec2sim.New(cfg)
	if err != nil {
		return out, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return out, err
	}
	hs := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 10 * time.Second}
	var serveWG sync.WaitGroup
	serveWG.Add(1)
	go func() { defer serveWG.Done(); _ = hs.Serve(lis) }()
	defer func() {
		_ = hs.Close()
		serveWG.Wait()
	}()

	// Targets, made through the simulator's own API (not throttled, not counted).
	subnet := sim.Snapshot().Subnets[0].ID
	insts, err := sim.RunInstances(ctx, ec2sim.InstanceSpec{InstanceType: "m5.large", SubnetID: subnet}, perAction)
	if err != nil {
		return out, err
	}
	var toDelete, toAssign, toUnassign []ec2sim.ENIInfo
	for i := 0; i < perAction; i++ {
		for _, list := range []*[]ec2sim.ENIInfo{&toDelete, &toAssign, &toUnassign} {
			n := 1
			if list == &toUnassign {
				n = 2
			}
			e, err := sim.CreateForeignENI(ctx, subnet, n)
			if err != nil {
				return out, err
			}
			*list = append(*list, e)
		}
	}
	st := sim.Snapshot()
	owned := map[string]bool{}
	for ip := range st.AddressOwners() {
		owned[ip] = true
	}
	prefix := netip.MustParsePrefix(st.Subnets[0].CIDR)
	var free []netip.Addr
	for ip := prefix.Addr().Next().Next().Next().Next(); prefix.Contains(ip) && len(free) < 2*perAction; ip = ip.Next() {
		if !owned[ip.String()] {
			free = append(free, ip)
		}
	}
	if len(free) < 2*perAction {
		return out, errors.New("bench: gateway burst: subnet too small")
	}
	attachment := map[string]string{}
	for _, e := range st.ENIs {
		if e.Attachment != nil {
			attachment[e.ID] = e.Attachment.ID
		}
	}

	gw, err := ec2gw.New(ctx, ec2gw.Config{
		Region: "eu-west-1", Endpoint: "http://" + lis.Addr().String(), Clock: clock.Scaled(clock.Real(), timeScale),
		Credentials: credentials.NewStaticCredentialsProvider("ipledger-bench", "ipledger-bench", ""),
	})
	if err != nil {
		return out, err
	}
	defer gw.Close()

	var reqs []func(context.Context) error
	prio := []ec2gw.Priority{ec2gw.PriorityPodWaiting, ec2gw.PriorityNodeStart, ec2gw.PriorityWarmRefill, ec2gw.PriorityRelease}
	for i := 0; i < perAction; i++ {
		p := prio[i%len(prio)]
		primary, extra := free[2*i], free[2*i+1]
		inst, del, as, un := insts[i], toDelete[i], toAssign[i], toUnassign[i]
		reqs = append(reqs,
			func(ctx context.Context) error {
				_, err := gw.CreateENI(ctx, p, ec2gw.CreateENIInput{SubnetID: subnet, PrimaryIP: primary, ClientToken: fmt.Sprintf("bench-burst-%d", i)})
				return err
			},
			func(ctx context.Context) error { return gw.DeleteENI(ctx, p, del.ID) },
			func(ctx context.Context) error { return gw.AssignAddresses(ctx, p, as.ID, []netip.Addr{extra}) },
			func(ctx context.Context) error {
				return gw.UnassignAddresses(ctx, p, un.ID, []netip.Addr{netip.MustParseAddr(un.SecondaryIPs[0])}, nil)
			},
			func(ctx context.Context) error {
				return gw.SetDeleteOnTermination(ctx, p, inst.PrimaryENI, attachment[inst.PrimaryENI], false)
			},
		)
	}
	before := sim.Stats()
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	start := time.Now()
	for _, req := range reqs {
		g.Go(func() error {
			if err := req(gctx); err != nil {
				mu.Lock()
				out.Failed++
				if out.FirstError == "" {
					out.FirstError = err.Error()
				}
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait()
	elapsed := time.Since(start)
	shapes := ec2sim.BucketShapes()
	for a, s := range statsDelta(sim.Stats(), before) {
		out.PerAction[a] = s.Calls - s.Throttled
		out.Throttled += s.Throttled
		out.Requests += s.Calls
	}
	for _, a := range gatewayActions {
		sh := shapes[ec2sim.BucketFor(a, true)]
		out.FloorS = max(out.FloorS, bucketFloor(perAction, sh))
	}
	out.ElapsedS = elapsed.Seconds() * timeScale
	if out.FloorS > 0 {
		out.ElapsedPerFloor = out.ElapsedS / out.FloorS
	}
	return out, nil
}
