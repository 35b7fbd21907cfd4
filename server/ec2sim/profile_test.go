package ec2sim

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/jonboulle/clockwork"
)

// quantiles draws n samples and returns their median and 99th percentile.
func quantiles(n int, draw func() time.Duration) (p50, p99 time.Duration) {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = draw()
	}
	slices.Sort(s)
	return s[n/2], s[n*99/100]
}

func within(got, want time.Duration, tol float64) bool {
	return float64(got) >= float64(want)*(1-tol) && float64(got) <= float64(want)*(1+tol)
}

// The realistic profile's distributions have the medians and 99th percentiles of EC2.md's
// table, over many seeded draws of the sampling function itself.
func TestRealisticDistributions(t *testing.T) {
	p := RealisticProfile()
	ms := time.Millisecond
	table := map[string][2]time.Duration{
		"AssignPrivateIpAddresses":        {350 * ms, 1500 * ms},
		"UnassignPrivateIpAddresses":      {350 * ms, 1500 * ms},
		"ModifyNetworkInterfaceAttribute": {300 * ms, 1000 * ms},
		"CreateNetworkInterface":          {500 * ms, 2000 * ms},
		"AttachNetworkInterface":          {700 * ms, 2000 * ms},
		"DetachNetworkInterface":          {400 * ms, 1500 * ms},
		"DeleteNetworkInterface":          {300 * ms, 1500 * ms},
		"DescribeNetworkInterfaces":       {150 * ms, 400 * ms},
		"DescribeInstances":               {150 * ms, 400 * ms},
		"DescribeSubnets":                 {150 * ms, 400 * ms},
	}
	dists := map[string]Dist{
		"refused":         p.Refused,
		"detach complete": p.DetachComplete,
		// The attach tail is a mixture; its lognormal part is the table's 0.3 s / 3 s.
		"attach usable (lognormal part)": {P50: p.AttachUsable.P50, P99: p.AttachUsable.P99},
	}
	want := map[string][2]time.Duration{
		"refused":                        {5 * ms, 50 * ms},
		"detach complete":                {2 * time.Second, 30 * time.Second},
		"attach usable (lognormal part)": {300 * ms, 3 * time.Second},
	}
	for a, w := range table {
		dists[a] = p.Calls[a]
		want[a] = w
	}
	for name, d := range dists {
		for seed := uint64(1); seed <= 3; seed++ {
			r := streamSource(seed, name)
			p50, p99 := quantiles(50000, func() time.Duration { return d.Sample(r) })
			if w := want[name]; !within(p50, w[0], 0.05) || !within(p99, w[1], 0.10) {
				t.Errorf("%s (seed %d): p50 %v p99 %v, want %v / %v", name, seed, p50, p99, w[0], w[1])
			}
		}
	}

	// 1% of attaches take 10-150 s; the rest keep the 0.3 s median.
	r := streamSource(7, streamAttachUsable)
	n, slow := 50000, 0
	var all []time.Duration
	for range n {
		v := p.AttachUsable.Sample(r)
		if v >= 10*time.Second {
			slow++
		}
		if v > 150*time.Second {
			t.Fatalf("attach usable %v beyond the 150 s tail", v)
		}
		all = append(all, v)
	}
	slices.Sort(all)
	if share := float64(slow) / float64(n); share < 0.008 || share > 0.013 {
		t.Errorf("%.4f of attaches took 10 s or more, want about 0.01", share)
	}
	if m := all[n/2]; !within(m, 300*ms, 0.05) {
		t.Errorf("attach usable median %v, want about 300ms", m)
	}

	// Describe lag: 90% none, else exponential with mean 1 s, capped at 60 s.
	r = streamSource(7, streamDescribeLag)
	var lagged int
	var sum time.Duration
	for range n {
		v := p.DescribeLag.Sample(r)
		if v > time.Minute {
			t.Fatalf("lag %v beyond the cap", v)
		}
		if v > 0 {
			lagged++
			sum += v
		}
	}
	if share := float64(lagged) / float64(n); share < 0.095 || share > 0.105 {
		t.Errorf("%.4f of mutations lag, want 0.10", share)
	}
	if mean := sum / time.Duration(lagged); !within(mean, time.Second, 0.06) {
		t.Errorf("mean lag %v, want 1s", mean)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, a := range Actions() {
		if _, ok := p.Calls[a]; !ok {
			t.Errorf("the realistic profile gives %s no latency", a)
		}
	}
}

// Every delay comes from a seeded stream of its own: the same seed gives the same delays, and
// draws of one stream do not shift another's.
func TestSamplerDeterministic(t *testing.T) {
	p := RealisticProfile()
	seq := func(seed uint64, interleave bool) []time.Duration {
		s := newSampler(seed)
		var out []time.Duration
		for range 200 {
			if interleave {
				s.dist(streamCallPrefix+"DescribeSubnets", p.Calls["DescribeSubnets"])
				s.draw(streamDescribeLag, p.DescribeLag.Sample)
			}
			out = append(out, s.dist(streamCallPrefix+"AssignPrivateIpAddresses", p.Calls["AssignPrivateIpAddresses"]))
		}
		return out
	}
	a, b := seq(5, false), seq(5, true)
	if !slices.Equal(a, b) {
		t.Fatal("draws of other streams changed the Assign latencies")
	}
	if slices.Equal(a, seq(6, false)) {
		t.Fatal("seeds 5 and 6 gave the same latencies")
	}
	if !slices.Equal(a, seq(5, false)) {
		t.Fatal("the same seed gave different latencies")
	}
}

// fakeSim starts a simulator on a fake clock with the profile.
func fakeSim(t *testing.T, p Profile, mutate ...func(*Config)) (*Server, *clockwork.FakeClock) {
	t.Helper()
	fc := clockwork.NewFakeClockAt(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	srv := start(t, append([]func(*Config){func(c *Config) { c.Clock = fc; c.Profile = &p }}, mutate...)...)
	return srv, fc
}

// async runs call in a goroutine and returns a channel with its error.
func async(call func() error) <-chan error {
	done := make(chan error, 1)
	go func() { done <- call() }()
	return done
}

// advancing runs call to its end, moving the fake clock a minute on whenever the call waits
// on it (setup steps whose latency does not matter).
func advancing(t *testing.T, fc *clockwork.FakeClock, call func() error) error {
	t.Helper()
	done := async(call)
	deadline := time.After(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Millisecond)
		blocked := fc.BlockUntilContext(ctx, 1) == nil
		cancel()
		select {
		case err := <-done:
			return err
		case <-deadline:
			t.Fatal("call did not finish")
		default:
		}
		if blocked {
			fc.Advance(time.Minute)
		}
	}
}

// waitBlocked waits until the call waits on the fake clock.
func waitBlocked(t *testing.T, fc *clockwork.FakeClock, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := fc.BlockUntilContext(ctx, n); err != nil {
		t.Fatalf("no call waits on the clock: %v", err)
	}
}

// notDone asserts the call still waits on the fake clock (its timer has not fired: Advance
// fires due timers before it returns) and has not returned.
func notDone(t *testing.T, fc *clockwork.FakeClock, done <-chan error, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if err := fc.BlockUntilContext(ctx, 1); err != nil {
		t.Fatalf("%s no longer waits on the clock: its latency was shorter", what)
	}
	select {
	case err := <-done:
		t.Fatalf("%s returned early (%v)", what, err)
	default:
	}
}

func finished(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("call did not return")
		return nil
	}
}

// A call of the realistic profile takes at least its sampled latency, divided by the time
// scale, and its mutation takes effect when the latency has passed.
func TestCallTakesItsLatency(t *testing.T) {
	const seed, scale = 3, 4
	p := RealisticProfile()
	p.DescribeLag = Lag{}
	srv, fc := fakeSim(t, p, func(c *Config) { c.Seed = seed; c.TimeScale = scale })
	c := client(srv)
	var eni string
	noErr(t, advancing(t, fc, func() error { eni = newENI(t, srv); return nil }))

	want := time.Duration(float64(p.Calls["AssignPrivateIpAddresses"].Sample(streamSource(seed, streamCallPrefix+"AssignPrivateIpAddresses"))) / scale)
	if want <= 0 {
		t.Fatalf("sampled latency %v", want)
	}
	done := async(func() error {
		_, err := c.AssignPrivateIpAddresses(t.Context(), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eni), SecondaryPrivateIpAddressCount: aws.Int32(1)})
		return err
	})
	waitBlocked(t, fc, 1)
	fc.Advance(want - time.Nanosecond)
	notDone(t, fc, done, "Assign")
	if n := secondaries(t, srv, eni); n != 0 {
		t.Fatalf("the assign took effect before its latency passed: %d addresses", n)
	}
	fc.Advance(time.Nanosecond)
	noErr(t, finished(t, done))
	if n := secondaries(t, srv, eni); n != 1 {
		t.Fatalf("after the latency: %d addresses, want 1", n)
	}
}

// On the wall clock too, a call takes at least its latency over the time scale.
func TestCallLatencyWallClock(t *testing.T) {
	const seed, scale = 2, 10
	p := Profile{Name: "test", Calls: map[string]Dist{"DescribeSubnets": {P50: 600 * time.Millisecond, P99: 2 * time.Second}}}
	srv := start(t, func(c *Config) { c.Seed = seed; c.TimeScale = scale; c.Profile = &p })
	r := streamSource(seed, streamCallPrefix+"DescribeSubnets")
	for range 3 {
		want := time.Duration(float64(p.Calls["DescribeSubnets"].Sample(r)) / scale)
		t0 := time.Now()
		_, err := client(srv).DescribeSubnets(t.Context(), &ec2.DescribeSubnetsInput{})
		noErr(t, err)
		if d := time.Since(t0); d < want {
			t.Fatalf("DescribeSubnets took %v, less than its latency %v", d, want)
		}
	}
}

// constant is a distribution that always gives d.
func constant(d time.Duration) Dist { return Dist{P50: d, P99: d} }

// Faults keep working on top of the profile: their latency adds to the call's, and a refused
// call answers after the Refused latency.
func TestFaultsOnTopOfProfile(t *testing.T) {
	p := Profile{Name: "test", Refused: constant(5 * time.Millisecond), Calls: map[string]Dist{
		"AssignPrivateIpAddresses": constant(300 * time.Millisecond),
		"CreateNetworkInterface":   constant(time.Second),
	}}
	srv, fc := fakeSim(t, p)
	c := client(srv)
	var eni string
	noErr(t, advancing(t, fc, func() error { eni = newENI(t, srv); return nil }))
	assign := func() error {
		_, err := c.AssignPrivateIpAddresses(t.Context(), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eni), SecondaryPrivateIpAddressCount: aws.Int32(1)})
		return err
	}

	srv.Sim().SetFault("AssignPrivateIpAddresses", Fault{Latency: 200 * time.Millisecond})
	done := async(assign)
	waitBlocked(t, fc, 1)
	fc.Advance(499 * time.Millisecond)
	notDone(t, fc, done, "Assign with a fault's latency")
	fc.Advance(time.Millisecond)
	noErr(t, finished(t, done))

	// A failure before the action: the fault's latency, then the refusal's; no effect.
	srv.Sim().SetFault("AssignPrivateIpAddresses", Fault{Latency: 100 * time.Millisecond, Probability: 1})
	done = async(assign)
	waitBlocked(t, fc, 1)
	fc.Advance(100 * time.Millisecond)
	waitBlocked(t, fc, 1)
	fc.Advance(4 * time.Millisecond)
	notDone(t, fc, done, "the refused Assign")
	fc.Advance(time.Millisecond)
	wantCode(t, finished(t, done), "InternalError")
	if n := secondaries(t, srv, eni); n != 1 {
		t.Fatalf("%d addresses, want 1 (the refused call had an effect)", n)
	}
}

// imdsMACs lists the MACs the instance's IMDS shows under network/interfaces/macs/.
func imdsMACs(t *testing.T, srv *Server, instanceID string) []string {
	t.Helper()
	ep, err := srv.IMDSEndpoint(instanceID)
	noErr(t, err)
	body, err := metadata(t.Context(), t, imds.New(imds.Options{Endpoint: ep}), "network/interfaces/macs/")
	noErr(t, err)
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(body), "\n") {
		out = append(out, strings.TrimSuffix(l, "/"))
	}
	return out
}

func attachStatus(t *testing.T, srv *Server, eni string) string {
	t.Helper()
	e, ok := srv.Sim().Snapshot().ENI(eni)
	if !ok {
		t.Fatalf("ENI %s is gone", eni)
	}
	if e.Attachment == nil {
		return "none"
	}
	return e.Attachment.Status
}

// Attach answers after its latency; the ENI stays `attaching` and out of the instance's IMDS
// until the AttachUsable delay has passed too. Detach answers after its latency and stays
// `detaching` until DetachComplete; Delete meanwhile fails with InvalidParameterValue, then
// works.
func TestAttachVisibilityAndDetachDelete(t *testing.T) {
	ms := time.Millisecond
	p := Profile{Name: "test", Calls: map[string]Dist{
		"AttachNetworkInterface": constant(700 * ms),
		"DetachNetworkInterface": constant(400 * ms),
		"DeleteNetworkInterface": constant(300 * ms),
	}, AttachUsable: constant(2 * time.Second), DetachComplete: constant(10 * time.Second)}
	srv, fc := fakeSim(t, p)
	c := client(srv)
	subnet := subnetByCIDR(t, srv, "192.168.0.0/19")
	inst := instanceIn(t, srv, subnet)
	out, err := c.CreateNetworkInterface(t.Context(), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	eni, mac := aws.ToString(out.NetworkInterface.NetworkInterfaceId), aws.ToString(out.NetworkInterface.MacAddress)

	var attID *string
	done := async(func() error {
		r, err := c.AttachNetworkInterface(t.Context(), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(eni), InstanceId: aws.String(inst.ID), DeviceIndex: aws.Int32(1)})
		if err == nil {
			attID = r.AttachmentId
		}
		return err
	})
	waitBlocked(t, fc, 1)
	if s := attachStatus(t, srv, eni); s != "attaching" {
		t.Fatalf("during the attach call: %s", s)
	}
	fc.Advance(700*ms - time.Nanosecond)
	notDone(t, fc, done, "Attach")
	fc.Advance(time.Nanosecond)
	noErr(t, finished(t, done))
	if s := attachStatus(t, srv, eni); s != "attaching" {
		t.Fatalf("right after the attach call: %s, want attaching", s)
	}
	if slices.Contains(imdsMACs(t, srv, inst.ID), mac) {
		t.Fatal("IMDS lists the ENI before it is usable")
	}
	// The device index is taken while attaching.
	out2, err := c.CreateNetworkInterface(t.Context(), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	_, err = c.AttachNetworkInterface(t.Context(), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: out2.NetworkInterface.NetworkInterfaceId, InstanceId: aws.String(inst.ID), DeviceIndex: aws.Int32(1)})
	wantCode(t, err, "InvalidParameterValue")
	fc.Advance(2*time.Second - time.Nanosecond)
	if s := attachStatus(t, srv, eni); s != "attaching" || slices.Contains(imdsMACs(t, srv, inst.ID), mac) {
		t.Fatalf("just before usable: %s, IMDS %v", s, imdsMACs(t, srv, inst.ID))
	}
	fc.Advance(time.Nanosecond)
	if s := attachStatus(t, srv, eni); s != "attached" {
		t.Fatalf("after the usable delay: %s", s)
	}
	if macs := imdsMACs(t, srv, inst.ID); !slices.Contains(macs, mac) || !slices.Contains(macs, inst.MAC) {
		t.Fatalf("IMDS lists %v, want the primary %s and the new %s", macs, inst.MAC, mac)
	}

	// Detach: the call answers after 400 ms; the detach completes 10 s after it began.
	done = async(func() error {
		_, err := c.DetachNetworkInterface(t.Context(), &ec2.DetachNetworkInterfaceInput{AttachmentId: attID})
		return err
	})
	waitBlocked(t, fc, 1)
	fc.Advance(400 * ms)
	noErr(t, finished(t, done))
	if s := attachStatus(t, srv, eni); s != "detaching" {
		t.Fatalf("after the detach call: %s, want detaching", s)
	}
	del := func() error {
		_, err := c.DeleteNetworkInterface(t.Context(), &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(eni)})
		return err
	}
	done = async(del)
	waitBlocked(t, fc, 1)
	fc.Advance(300 * ms) // 700 ms into the detach
	err = finished(t, done)
	wantCode(t, err, "InvalidParameterValue")
	if !strings.Contains(err.Error(), "is currently in use") {
		t.Fatalf("delete while detaching: %v", err)
	}
	fc.Advance(10*time.Second - 700*ms - time.Nanosecond)
	if s := attachStatus(t, srv, eni); s != "detaching" {
		t.Fatalf("just before the detach completes: %s", s)
	}
	fc.Advance(time.Nanosecond)
	if s := attachStatus(t, srv, eni); s != "none" {
		t.Fatalf("after the detach completed: %s", s)
	}
	if e, _ := srv.Sim().Snapshot().ENI(eni); e.Status != "available" {
		t.Fatalf("ENI status %s after detach", e.Status)
	}
	done = async(del)
	waitBlocked(t, fc, 1)
	fc.Advance(300 * ms)
	noErr(t, finished(t, done))
	if _, ok := srv.Sim().Snapshot().ENI(eni); ok {
		t.Fatal("the ENI survived its delete")
	}
	checkConsistent(t, srv)
}

// describeENI returns the ENI as DescribeNetworkInterfaces shows it by id (nil: NotFound).
func describeENI(t *testing.T, c *ec2.Client, id string) *types.NetworkInterface {
	t.Helper()
	out, err := c.DescribeNetworkInterfaces(t.Context(), &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{id}})
	if code(err) == "InvalidNetworkInterfaceID.NotFound" {
		return nil
	}
	noErr(t, err)
	if len(out.NetworkInterfaces) != 1 {
		t.Fatalf("describe %s: %d interfaces", id, len(out.NetworkInterfaces))
	}
	return &out.NetworkInterfaces[0]
}

func instanceENIs(t *testing.T, c *ec2.Client, instanceID string) []string {
	t.Helper()
	out, err := c.DescribeInstances(t.Context(), &ec2.DescribeInstancesInput{InstanceIds: []string{instanceID}})
	noErr(t, err)
	var ids []string
	for _, ni := range out.Reservations[0].Instances[0].NetworkInterfaces {
		ids = append(ids, aws.ToString(ni.NetworkInterfaceId))
	}
	return ids
}

// After a mutation, Describe shows the ENI as it was until the lag has passed, then as it is;
// the other actions and the snapshot see the mutation at once.
func TestDescribeLag(t *testing.T) {
	const seed = 11
	lag := Lag{Share: 1, Mean: 2 * time.Second, Cap: time.Minute}
	srv, fc := fakeSim(t, Profile{Name: "test", DescribeLag: lag}, func(c *Config) { c.Seed = seed })
	c := client(srv)
	r := streamSource(seed, streamDescribeLag)
	next := func() time.Duration {
		d := lag.Sample(r)
		if d <= 0 {
			t.Fatal("a lag of zero with share 1")
		}
		return d
	}
	subnet := subnetByCIDR(t, srv, "192.168.0.0/19")
	inst := instanceIn(t, srv, subnet)

	// Create: not found until the lag passes, yet usable at once.
	out, err := c.CreateNetworkInterface(t.Context(), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	eni := aws.ToString(out.NetworkInterface.NetworkInterfaceId)
	l := next()
	if describeENI(t, c, eni) != nil {
		t.Fatal("a new ENI was described before its lag passed")
	}
	list, err := c.DescribeNetworkInterfaces(t.Context(), &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{{Name: aws.String("subnet-id"), Values: []string{subnet}}}})
	noErr(t, err)
	for _, ni := range list.NetworkInterfaces {
		if aws.ToString(ni.NetworkInterfaceId) == eni {
			t.Fatal("a filtered describe listed the new ENI before its lag passed")
		}
	}
	fc.Advance(l - time.Nanosecond)
	if describeENI(t, c, eni) != nil {
		t.Fatal("described just before the lag passed")
	}
	fc.Advance(time.Nanosecond)
	if e := describeENI(t, c, eni); e == nil || len(e.PrivateIpAddresses) != 1 {
		t.Fatalf("after the lag: %+v", e)
	}

	// Assign: the old addresses until the lag passes.
	as, err := c.AssignPrivateIpAddresses(t.Context(), &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eni), SecondaryPrivateIpAddressCount: aws.Int32(2)})
	noErr(t, err)
	l = next()
	if n := secondaries(t, srv, eni); n != 2 {
		t.Fatalf("snapshot: %d secondaries, want 2 at once", n)
	}
	if e := describeENI(t, c, eni); len(e.PrivateIpAddresses) != 1 {
		t.Fatalf("described with %d addresses during the lag, want the old 1", len(e.PrivateIpAddresses))
	}
	newIP := aws.ToString(as.AssignedPrivateIpAddresses[0].PrivateIpAddress)
	byIP := func() int {
		out, err := c.DescribeNetworkInterfaces(t.Context(), &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{{Name: aws.String("addresses.private-ip-address"), Values: []string{newIP}}}})
		noErr(t, err)
		return len(out.NetworkInterfaces)
	}
	if byIP() != 0 {
		t.Fatal("a filter found the new address during the lag")
	}
	fc.Advance(l)
	if e := describeENI(t, c, eni); len(e.PrivateIpAddresses) != 3 || byIP() != 1 {
		t.Fatalf("after the lag: %d addresses", len(e.PrivateIpAddresses))
	}

	// Attach: DescribeInstances shows the instance without the ENI until the lag passes.
	_, err = c.AttachNetworkInterface(t.Context(), &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(eni), InstanceId: aws.String(inst.ID), DeviceIndex: aws.Int32(1)})
	noErr(t, err)
	l = next()
	if ids := instanceENIs(t, c, inst.ID); slices.Contains(ids, eni) || describeENI(t, c, eni).Attachment != nil {
		t.Fatalf("during the lag the instance shows %v", ids)
	}
	fc.Advance(l)
	if ids := instanceENIs(t, c, inst.ID); !slices.Contains(ids, eni) || describeENI(t, c, eni).Attachment == nil {
		t.Fatalf("after the lag the instance shows %v", ids)
	}
}

// Describe shows the newest version whose lag has passed: a later mutation with a shorter lag
// brings the earlier one with it, and a deleted ENI shows its last state until its deletion
// is visible.
func TestDescribeLagVersions(t *testing.T) {
	srv, fc := fakeSim(t, InstantProfile())
	sim := srv.Sim()
	eni := newENI(t, srv)
	t0 := fc.Now()
	sim.mu.Lock()
	e := sim.enis[eni]
	v0 := e.view()
	e.description = "v1"
	v1 := e.view()
	e.description = "v2"
	sim.lags[eni] = &eniLag{pending: []lagEntry{
		{before: v0, existed: true, at: t0.Add(5 * time.Second)},
		{before: v1, existed: true, at: t0.Add(2 * time.Second)},
	}}
	sim.mu.Unlock()
	desc := func() string {
		sim.mu.RLock()
		defer sim.mu.RUnlock()
		v := sim.describedENI(eni, fc.Now())
		if v == nil {
			return "<none>"
		}
		return v.description
	}
	if d := desc(); d != "" {
		t.Fatalf("before any lag passed: %q, want the original", d)
	}
	fc.Advance(2 * time.Second)
	if d := desc(); d != "v2" {
		t.Fatalf("once the newest version's lag passed: %q, want v2", d)
	}
	// A deletion that lags.
	sim.mu.Lock()
	e = sim.enis[eni]
	before := e.view()
	sim.deleteENI(e)
	sim.lags[eni] = &eniLag{pending: []lagEntry{{before: before, existed: true, at: fc.Now().Add(time.Second)}}}
	sim.pushDue(dueItem{at: fc.Now().Add(time.Second), kind: dueLag, eniID: eni})
	sim.mu.Unlock()
	if d := desc(); d != "v2" {
		t.Fatalf("deleted, within the lag: %q", d)
	}
	fc.Advance(time.Second)
	sim.lock()
	_, kept := sim.lags[eni]
	sim.mu.Unlock()
	if d := desc(); d != "<none>" || kept {
		t.Fatalf("after the deletion's lag: %q (lag record kept: %v)", d, kept)
	}
}

// The instant profile keeps today's behaviour: no call waits on the clock, no describe lag,
// an attach is usable and a detach complete when the call returns.
func TestInstantProfileUnchanged(t *testing.T) {
	srv, _ := fakeSim(t, InstantProfile()) // the fake clock never moves: any wait would hang
	c := client(srv)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	subnet := subnetByCIDR(t, srv, "192.168.0.0/19")
	inst := instanceIn(t, srv, subnet)
	out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	eni, mac := aws.ToString(out.NetworkInterface.NetworkInterfaceId), aws.ToString(out.NetworkInterface.MacAddress)
	if describeENI(t, c, eni) == nil {
		t.Fatal("a new ENI is not described at once")
	}
	att, err := c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(eni), InstanceId: aws.String(inst.ID), DeviceIndex: aws.Int32(1)})
	noErr(t, err)
	if s := attachStatus(t, srv, eni); s != "attached" || !slices.Contains(imdsMACs(t, srv, inst.ID), mac) {
		t.Fatalf("after attach: %s, IMDS %v", s, imdsMACs(t, srv, inst.ID))
	}
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eni), SecondaryPrivateIpAddressCount: aws.Int32(3)})
	noErr(t, err)
	if e := describeENI(t, c, eni); len(e.PrivateIpAddresses) != 4 {
		t.Fatalf("described with %d addresses right after the assign, want 4", len(e.PrivateIpAddresses))
	}
	_, err = c.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: att.AttachmentId})
	noErr(t, err)
	_, err = c.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(eni)})
	noErr(t, err)
	if describeENI(t, c, eni) != nil {
		t.Fatal("a deleted ENI is still described")
	}
	if p := srv.Sim().Profile(); p.Name != ProfileInstant {
		t.Fatalf("default profile %q", p.Name)
	}
}

// The default configuration is the instant profile; a scenario or the control API can choose
// another, and bad profiles are refused.
func TestProfileSelection(t *testing.T) {
	sim, err := New(DefaultConfig())
	noErr(t, err)
	if sim.Profile().Name != ProfileInstant {
		t.Fatalf("default %q", sim.Profile().Name)
	}
	sc := DefaultScenario()
	sc.Profile = ProfileRealistic
	sim, err = New(Config{Scenario: sc, Seed: 1})
	noErr(t, err)
	if p := sim.Profile(); p.Name != ProfileRealistic || p.Calls["AssignPrivateIpAddresses"].P50 != 350*time.Millisecond {
		t.Fatalf("scenario profile %+v", p)
	}
	inst := InstantProfile()
	sim, err = New(Config{Scenario: sc, Seed: 1, Profile: &inst})
	noErr(t, err)
	if sim.Profile().Name != ProfileInstant {
		t.Fatal("Config.Profile does not take precedence over the scenario's")
	}
	sc.Profile = "sluggish"
	if _, err := New(Config{Scenario: sc}); err == nil || !strings.Contains(err.Error(), "ec2_profile") {
		t.Fatalf("unknown scenario profile: %v", err)
	}
	bad := RealisticProfile()
	bad.Calls["AssignPrivateIpAddresses"] = Dist{P50: time.Second, P99: time.Millisecond}
	if _, err := New(Config{Profile: &bad}); err == nil {
		t.Fatal("a p99 below its p50 was accepted")
	}
	if _, err := ProfileByName("sluggish"); err == nil {
		t.Fatal("unknown profile name accepted")
	}

	srv := start(t)
	var got Profile
	if c := ctl(t, srv, "GET", "/_sim/profile", nil, &got); c != 200 || got.Name != ProfileInstant {
		t.Fatalf("GET profile: %d %+v", c, got)
	}
	if c := ctl(t, srv, "POST", "/_sim/profile", map[string]string{"name": "realistic"}, &got); c != 200 || got.Name != ProfileRealistic {
		t.Fatalf("POST realistic: %d %+v", c, got)
	}
	real := RealisticProfile()
	if b1, _ := json.Marshal(got); string(b1) != string(must(json.Marshal(real))) {
		t.Fatalf("control API profile %s, want %s", b1, must(json.Marshal(real)))
	}
	custom := Profile{Name: "mine", Calls: map[string]Dist{"DescribeSubnets": constant(time.Millisecond)}, DescribeLag: Lag{Share: 0.5, Mean: time.Second}}
	if c := ctl(t, srv, "POST", "/_sim/profile", custom, &got); c != 200 || got.Name != "mine" || got.DescribeLag.Share != 0.5 || got.Calls["DescribeSubnets"].P50 != time.Millisecond {
		t.Fatalf("POST custom: %d %+v", c, got)
	}
	if c := ctl(t, srv, "POST", "/_sim/profile", map[string]string{"name": "sluggish"}, nil); c != http.StatusBadRequest {
		t.Fatalf("POST unknown name: %d", c)
	}
	if c := ctl(t, srv, "POST", "/_sim/profile", map[string]any{"name": "x", "describe_lag": map[string]any{"share": 2}}, nil); c != http.StatusBadRequest {
		t.Fatalf("POST share 2: %d", c)
	}
	if srv.Sim().Profile().Name != "mine" {
		t.Fatal("a refused profile replaced the profile")
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// A draw of the sampler reproduces from its seed and stream alone.
func TestStreamSourceStable(t *testing.T) {
	a, b := streamSource(9, "x"), streamSource(9, "x")
	for range 10 {
		if a.Uint64() != b.Uint64() {
			t.Fatal("two sources of one seed and stream differ")
		}
	}
	if streamSource(9, "x").Uint64() == streamSource(9, "y").Uint64() {
		t.Fatal("two streams start alike")
	}
}

// A describe waits the profile's DescribePerItem for every item it returns.
func TestDescribePerItem(t *testing.T) {
	srv, fc := fakeSim(t, Profile{Name: "test", DescribePerItem: 10 * time.Millisecond})
	c := client(srv)
	n := len(srv.Sim().Snapshot().Instances) // 5 in the default scenario
	done := async(func() error {
		_, err := c.DescribeInstances(t.Context(), &ec2.DescribeInstancesInput{})
		return err
	})
	waitBlocked(t, fc, 1)
	fc.Advance(time.Duration(n)*10*time.Millisecond - time.Nanosecond)
	notDone(t, fc, done, "an unfiltered DescribeInstances")
	fc.Advance(time.Nanosecond)
	noErr(t, finished(t, done))
}

// With the profile's latency, as with a fault's, a mutation outlives a client that gives up.
func TestProfileMutationOutlivesItsClient(t *testing.T) {
	p := Profile{Name: "test", Calls: map[string]Dist{"AssignPrivateIpAddresses": constant(400 * time.Millisecond)}}
	srv := start(t, func(c *Config) { c.Profile = &p })
	eni := newENI(t, srv)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	_, err := client(srv).AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eni), SecondaryPrivateIpAddressCount: aws.Int32(2)})
	cancel()
	if err == nil {
		t.Fatal("the client's deadline did not end the call")
	}
	eventually(t, 5*time.Second, "the abandoned assign to take effect", func() bool {
		return secondaries(t, srv, eni) == 2
	})
}
