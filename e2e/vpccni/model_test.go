package vpccni

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/ec2sim"
)

// clock is a manual clock: tests advance it and run the pool loop themselves.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// calls records the EC2 actions a node makes, in order.
type calls struct {
	mu   sync.Mutex
	list []string
}

func (c *calls) add(a string) { c.mu.Lock(); c.list = append(c.list, a); c.mu.Unlock() }
func (c *calls) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.list
	c.list = nil
	return out
}

type fixture struct {
	sim   *ec2sim.Server
	node  *Node
	clk   *clock
	calls *calls
	inst  ec2sim.InstanceInfo
}

func startSim(t *testing.T, sc *ec2sim.Scenario) *ec2sim.Server {
	t.Helper()
	cfg := ec2sim.DefaultConfig()
	cfg.Scenario = sc
	srv, err := ec2sim.Start(cfg, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func newFixture(t *testing.T, sc *ec2sim.Scenario, s Settings) *fixture {
	t.Helper()
	return newFixtureOn(t, startSim(t, sc), s)
}

// newFixtureOn runs a node on the simulator's first running instance, with ipamd's timers
// except short detach, retry and IMDS waits (they pass in wall time).
func newFixtureOn(t *testing.T, srv *ec2sim.Server, s Settings) *fixture {
	t.Helper()
	var inst ec2sim.InstanceInfo
	for _, in := range srv.Sim().Snapshot().Instances {
		if in.State == "running" && (inst.ID == "" || in.ID < inst.ID) {
			inst = in
		}
	}
	f := &fixture{sim: srv, clk: &clock{t: time.Unix(1_700_000_000, 0)}, calls: &calls{}, inst: inst}
	client, err := NewEC2Client(ClientConfig{Endpoint: srv.Endpoint(), OnCall: f.calls.add})
	if err != nil {
		t.Fatal(err)
	}
	tm := DefaultTimers()
	tm.DetachWait, tm.RetryMin, tm.IMDSWaitMin = 20*time.Millisecond, 20*time.Millisecond, 10*time.Millisecond
	f.node, err = New(Config{Settings: s, Timers: tm, EC2: client, InstanceID: inst.ID, IMDSEndpoint: inst.IMDSEndpoint, Now: f.clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// settle runs pool loops five simulated seconds apart until one changes nothing.
func (f *fixture) settle(t *testing.T) {
	t.Helper()
	for i := 0; i < 10; i++ {
		before := f.node.Counts()
		if err := f.node.Reconcile(t.Context()); err != nil {
			t.Fatalf("reconcile: %v", err)
		}
		f.clk.Advance(5 * time.Second)
		if f.node.Counts() == before && i > 0 {
			return
		}
	}
	t.Fatalf("pool did not settle: %+v", f.node.Counts())
}

// held is what the simulator says the node's ENIs hold (primaries included).
func (f *fixture) held() int {
	n := 0
	for _, e := range f.sim.Sim().Snapshot().ENIs {
		if e.Attachment != nil && e.Attachment.InstanceID == f.inst.ID {
			n += len(e.Addresses())
		}
	}
	return n
}

func (f *fixture) addPods(t *testing.T, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if _, err := f.node.Add(fmt.Sprintf("pod-%d", i)); err != nil {
			t.Fatalf("add pod-%d: %v", i, err)
		}
	}
}

// The seed documents: an m5.large at WARM_ENI_TARGET=1 holds 20 addresses with 0 to 9 pods and
// 30 with 10; with MINIMUM_IP_TARGET=5 and no pods it holds 6.
func TestSeedReproduction(t *testing.T) {
	cases := []struct {
		name     string
		settings Settings
		pods     int
		held     int
		enis     int
	}{
		{"default, no pods", Default(), 0, 20, 2},
		{"default, 9 pods", Default(), 9, 20, 2},
		{"default, 10 pods", Default(), 10, 30, 3},
		{"minimum 5, no pods", Min5(), 0, 6, 1},
		{"warm ip 2 + minimum 10, no pods", WarmIP(), 0, 12, 2},
		{"prefix, no pods", Prefix(), 0, 17, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, ec2sim.DefaultScenario(), tc.settings)
			f.settle(t)
			if tc.pods > 0 {
				f.addPods(t, 0, tc.pods)
				f.settle(t)
			}
			c := f.node.Counts()
			if got := f.held(); got != tc.held || c.Held != tc.held {
				t.Errorf("held: simulator %d, model %d; want %d (%+v)", got, c.Held, tc.held, c)
			}
			if c.ENIs != tc.enis {
				t.Errorf("ENIs = %d, want %d", c.ENIs, tc.enis)
			}
			if c.Assigned != tc.pods {
				t.Errorf("assigned = %d, want %d", c.Assigned, tc.pods)
			}
		})
	}
}

func TestAddFailsAtOnce(t *testing.T) {
	f := newFixture(t, ec2sim.DefaultScenario(), Default())
	if _, err := f.node.Add("early"); !errors.Is(err, ErrNotReady) {
		t.Fatalf("add before start: %v, want ErrNotReady", err)
	}
	if err := f.node.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.node.Add("p"); !errors.Is(err, ErrNoAvailableIP) {
		t.Fatalf("add with an empty pool: %v, want ErrNoAvailableIP", err)
	}
	// "At once" means without calling EC2: no call was made for the Add.
	if got := f.calls.take(); !slices.Equal(got, []string{"DescribeInstances"}) {
		t.Errorf("calls = %v, want only the start's DescribeInstances", got)
	}
	if _, err := f.node.Del("p"); !errors.Is(err, ErrUnknownPod) {
		t.Errorf("del of unknown pod: %v", err)
	}
}

func TestCooldown(t *testing.T) {
	f := newFixture(t, ec2sim.DefaultScenario(), Min5())
	f.settle(t)
	f.addPods(t, 0, 5)
	ip, err := f.node.Del("pod-0")
	if err != nil {
		t.Fatal(err)
	}
	if c := f.node.Counts(); c.Cooling != 1 || c.Free != 0 {
		t.Fatalf("after del: %+v, want 1 cooling and none free", c)
	}
	if _, err := f.node.Add("pod-5"); !errors.Is(err, ErrNoAvailableIP) {
		t.Fatalf("add while the only address cools: %v, want ErrNoAvailableIP", err)
	}
	f.clk.Advance(29 * time.Second)
	if _, err := f.node.Add("pod-5"); !errors.Is(err, ErrNoAvailableIP) {
		t.Fatalf("add after 29 s: %v, want ErrNoAvailableIP", err)
	}
	f.clk.Advance(time.Second)
	got, err := f.node.Add("pod-5")
	if err != nil || got != ip {
		t.Fatalf("add after 30 s: %v %v, want %v", got, err, ip)
	}
}

func TestENICreationCallOrder(t *testing.T) {
	f := newFixture(t, ec2sim.DefaultScenario(), Default())
	if err := f.node.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, want := f.calls.take(), []string{"DescribeInstances", "AssignPrivateIpAddresses"}; !slices.Equal(got, want) {
		t.Fatalf("first loop: %v, want %v", got, want)
	}
	f.clk.Advance(5 * time.Second)
	if err := f.node.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []string{"DescribeSubnets", "CreateNetworkInterface", "DescribeInstances", "AttachNetworkInterface",
		"ModifyNetworkInterfaceAttribute", "AssignPrivateIpAddresses"}
	if got := f.calls.take(); !slices.Equal(got, want) {
		t.Fatalf("second loop: %v, want %v", got, want)
	}
	// The Assign carries a count (EC2 picks the addresses): 9 on the new ENI.
	if c := f.node.Counts(); c.Total != 18 || c.ENIs != 2 {
		t.Fatalf("counts %+v, want 18 addresses on 2 ENIs", c)
	}
}

func TestPauseAfterSubnetErrors(t *testing.T) {
	// A /28 leaves 11 usable addresses; the instance takes one. The primary ENI gets 9, the
	// new ENI takes the last one, and its Assign fails with InsufficientFreeAddressesInSubnet.
	sc := &ec2sim.Scenario{
		VPC:       ec2sim.VPCSpec{CIDR: "10.9.0.0/16"},
		Subnets:   []ec2sim.SubnetSpec{{CIDR: "10.9.0.0/28", AvailabilityZone: "eu-west-1a"}},
		Instances: []ec2sim.InstanceGroup{{Type: "m5.large", Subnet: "10.9.0.0/28", Count: 1}},
	}
	f := newFixture(t, sc, Default())
	if err := f.node.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	f.clk.Advance(5 * time.Second)
	if err := f.node.Reconcile(t.Context()); err == nil {
		t.Fatal("second loop succeeded; want InsufficientFreeAddressesInSubnet")
	}
	if c := f.node.Counts(); c.SubnetErrors != 1 {
		t.Fatalf("subnet errors = %d, want 1", c.SubnetErrors)
	}
	f.calls.take()
	for _, step := range []time.Duration{5 * time.Second, 60 * time.Second, 54 * time.Second} {
		f.clk.Advance(step)
		if err := f.node.Reconcile(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got := f.calls.take(); len(got) != 0 {
			t.Fatalf("calls during the pause: %v", got)
		}
	}
	f.clk.Advance(time.Second) // 120 s after the error
	_ = f.node.Reconcile(t.Context())
	if got := f.calls.take(); !slices.Equal(got, []string{"AssignPrivateIpAddresses", "AssignPrivateIpAddresses"}) {
		t.Fatalf("calls after the pause: %v, want the fill's Assign and one more IP's", got)
	}
	if c := f.node.Counts(); c.SubnetErrors != 2 {
		t.Fatalf("subnet errors = %d, want 2 (the subnet is still full)", c.SubnetErrors)
	}
}

func TestPrefixModeOnFragmentedSubnet(t *testing.T) {
	f := newFixture(t, ec2sim.DefaultScenario(), Prefix())
	if _, err := f.sim.Sim().Fragment(t.Context(), f.inst.SubnetID); err != nil {
		t.Fatal(err)
	}
	if err := f.node.Reconcile(t.Context()); err == nil {
		t.Fatal("reconcile on a fragmented subnet succeeded; want InsufficientCidrBlocks")
	}
	if c := f.node.Counts(); c.SubnetErrors != 1 || c.Prefixes != 0 {
		t.Fatalf("counts %+v, want one subnet error and no prefix", c)
	}
	sub, _ := f.sim.Sim().Snapshot().Subnet(f.inst.SubnetID)
	if sub.Available < 1000 {
		t.Fatalf("subnet shows %d available; the point is that thousands are free", sub.Available)
	}
}

func TestReleaseWholeENIs(t *testing.T) {
	f := newFixture(t, ec2sim.DefaultScenario(), Default())
	f.settle(t)
	f.addPods(t, 0, 10)
	f.settle(t)
	if got := f.held(); got != 30 {
		t.Fatalf("held with 10 pods = %d, want 30", got)
	}
	for i := 0; i < 10; i++ {
		if _, err := f.node.Del(fmt.Sprintf("pod-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	f.calls.take()
	// Cooling addresses keep their ENI; nothing is released before the cooldown ends.
	f.clk.Advance(20 * time.Second)
	if err := f.node.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := f.calls.take(); len(got) != 0 {
		t.Fatalf("calls while addresses cool: %v", got)
	}
	f.clk.Advance(11 * time.Second)
	if err := f.node.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got, want := f.calls.take(), []string{"DetachNetworkInterface", "DeleteNetworkInterface"}; !slices.Equal(got, want) {
		t.Fatalf("release calls %v, want %v", got, want)
	}
	if got := f.held(); got != 20 {
		t.Fatalf("held after release = %d, want 20 (whole ENIs only)", got)
	}
	// The next release waits 30 s after this one, and the default never goes below 2 ENIs.
	f.clk.Advance(31 * time.Second)
	if err := f.node.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := f.calls.take(); len(got) != 0 || f.held() != 20 {
		t.Fatalf("calls %v held %d; want nothing below WARM_ENI_TARGET", got, f.held())
	}
}

func TestWarmIPReleasesAddresses(t *testing.T) {
	f := newFixture(t, ec2sim.DefaultScenario(), WarmIP())
	f.settle(t)
	f.addPods(t, 0, 10)
	if _, err := f.node.Add("pod-10"); !errors.Is(err, ErrNoAvailableIP) {
		t.Fatalf("pod 11 on a pool of 10: %v, want ErrNoAvailableIP", err)
	}
	f.settle(t)
	f.addPods(t, 10, 12)
	f.settle(t)
	if c := f.node.Counts(); c.Total != 14 || c.Free != 2 {
		t.Fatalf("with 12 pods: %+v, want 14 addresses, 2 free", c)
	}
	for i := 0; i < 8; i++ {
		if _, err := f.node.Del(fmt.Sprintf("pod-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	f.clk.Advance(31 * time.Second)
	f.calls.take()
	f.settle(t)
	c := f.node.Counts()
	if c.Total != 10 || c.Assigned != 4 {
		t.Fatalf("after 8 dels: %+v, want back to MINIMUM_IP_TARGET 10", c)
	}
	if got := f.calls.take(); !slices.Contains(got, "UnassignPrivateIpAddresses") {
		t.Fatalf("calls %v, want an Unassign", got)
	}
}

func TestSettings(t *testing.T) {
	for _, name := range Names() {
		s, err := SettingsByName(name)
		if err != nil || s.Name != name || s.Validate() != nil {
			t.Errorf("%s: %+v %v %v", name, s, err, s.Validate())
		}
	}
	if _, err := SettingsByName("vpc-cni-nope"); !errors.Is(err, ErrUnknownSettings) {
		t.Errorf("unknown name: %v", err)
	}
	bad := []Settings{
		{Name: "neg", WarmIPTarget: -1},
		{Name: "prefix-zero", PrefixMode: true},
		{Name: "eni-zero"},
	}
	for _, s := range bad {
		if s.Validate() == nil {
			t.Errorf("%s validated", s.Name)
		}
	}
	tm := DefaultTimers().Scaled(10)
	if tm.PoolLoop != 500*time.Millisecond || tm.SubnetErrorPause != 12*time.Second {
		t.Errorf("scaled timers %+v", tm)
	}
	if _, err := NewEC2Client(ClientConfig{Endpoint: "http://192.0.2.1:80"}); err == nil {
		t.Error("a non-loopback endpoint was accepted")
	}
}

// realisticSim is a simulator whose attached ENIs take a while to show in IMDS and whose
// detaches take a while to complete (constant delays, divided by the time scale 10).
func realisticSim(t *testing.T, attachUsable, detachComplete time.Duration) *ec2sim.Server {
	t.Helper()
	p := ec2sim.Profile{Name: "test",
		AttachUsable:   ec2sim.Dist{P50: attachUsable, P99: attachUsable},
		DetachComplete: ec2sim.Dist{P50: detachComplete, P99: detachComplete},
	}
	cfg := ec2sim.DefaultConfig()
	cfg.TimeScale, cfg.Profile = 10, &p
	srv, err := ec2sim.Start(cfg, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// Like ipamd, the model uses a new ENI's addresses only once IMDS lists the ENI: when its pool
// loop is done the ENI is attached, not attaching.
func TestWaitsForIMDSAfterAttach(t *testing.T) {
	f := newFixtureOn(t, realisticSim(t, 3*time.Second, 0), Default())
	for range 2 { // the primary ENI fills first, then an ENI is created
		if err := f.node.Reconcile(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.node.Counts().ENIs; got != 2 {
		t.Fatalf("%d ENIs after two pool loops, want 2", got)
	}
	st := f.sim.Sim().Snapshot()
	attached := 0
	for _, e := range st.ENIs {
		if e.Attachment != nil && e.Attachment.InstanceID == f.inst.ID && e.Attachment.DeviceIndex == 1 {
			if e.Attachment.Status != "attached" {
				t.Fatalf("the model took the ENI into its datastore while %s", e.Attachment.Status)
			}
			attached++
		}
	}
	if attached != 1 {
		t.Fatalf("%d secondary ENIs attached, want 1", attached)
	}
}

// Like ipamd, the model waits after a detach and retries the delete until EC2 has finished
// detaching (InvalidParameterValue meanwhile): no ENI is leaked.
func TestDeleteRetriesWhileDetaching(t *testing.T) {
	f := newFixtureOn(t, realisticSim(t, 0, 3*time.Second), Default())
	f.settle(t)
	f.addPods(t, 0, 10)
	f.settle(t)
	for i := 0; i < 10; i++ {
		if _, err := f.node.Del(fmt.Sprintf("pod-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	f.clk.Advance(31 * time.Second)
	f.calls.take()
	if err := f.node.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	got := f.calls.take()
	if len(got) < 2 || got[0] != "DetachNetworkInterface" || got[len(got)-1] != "DeleteNetworkInterface" {
		t.Fatalf("release calls %v, want a detach then deletes", got)
	}
	if n := f.sim.Sim().Stats().Calls["DeleteNetworkInterface"]; len(n.Errors) > 1 || n.Calls != n.Errors["InvalidParameterValue"]+1 {
		t.Fatalf("deletes %+v: want failures only while detaching, then one success", n)
	}
	if got := f.held(); got != 20 {
		t.Fatalf("held after release = %d, want 20", got)
	}
	for _, e := range f.sim.Sim().Snapshot().ENIs {
		if e.Attachment == nil && !e.Foreign {
			t.Fatalf("ENI %s left detached: leaked", e.ID)
		}
	}
}

// Custom networking: secondary ENIs in the ENIConfig's subnet with its security groups, no pod
// on the primary ENI, WARM_ENI_TARGET counting pod ENIs: an m5.large holds its primary plus 10
// with 0 to 9 pods, plus 20 once 9 pods use the first.
func TestCustomNetworking(t *testing.T) {
	sc := &ec2sim.Scenario{
		VPC: ec2sim.VPCSpec{CIDR: "192.168.0.0/16", SecondaryCIDRs: []string{"100.64.0.0/16"}},
		Subnets: []ec2sim.SubnetSpec{
			{ID: "subnet-00000000000000001", CIDR: "192.168.0.0/28", AvailabilityZone: "eu-west-1a"},
			{ID: "subnet-000000000000000a1", CIDR: "100.64.0.0/24", AvailabilityZone: "eu-west-1a"},
		},
		Instances: []ec2sim.InstanceGroup{{Type: "m5.large", Subnet: "subnet-00000000000000001", Count: 1}},
	}
	srv := startSim(t, sc)
	f := newFixtureOn(t, srv, Default()) // for its clock and instance
	client, err := NewEC2Client(ClientConfig{Endpoint: srv.Endpoint()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Settings: Custom(), EC2: client, InstanceID: f.inst.ID}); err == nil {
		t.Fatal("custom networking without an ENIConfig accepted")
	}
	eniConfig := &ENIConfig{Subnet: "subnet-000000000000000a1", SecurityGroups: []string{"sg-0000000000000000c"}}
	tm := DefaultTimers()
	tm.DetachWait, tm.RetryMin, tm.IMDSWaitMin = 20*time.Millisecond, 20*time.Millisecond, 10*time.Millisecond
	f.node, err = New(Config{Settings: Custom(), Timers: tm, EC2: client, InstanceID: f.inst.ID, IMDSEndpoint: f.inst.IMDSEndpoint, Now: f.clk.Now, ENIConfig: eniConfig})
	if err != nil {
		t.Fatal(err)
	}
	f.settle(t)
	if c := f.node.Counts(); c.ENIs != 2 || c.Total != 9 || f.held() != 11 {
		t.Fatalf("no pods: %+v, held %d; want 2 ENIs, 9 pod addresses, 11 held", c, f.held())
	}
	f.addPods(t, 0, 9)
	f.settle(t)
	if c := f.node.Counts(); c.ENIs != 3 || c.Total != 18 || f.held() != 21 {
		t.Fatalf("9 pods: %+v, held %d; want 3 ENIs, 18 pod addresses, 21 held", c, f.held())
	}
	f.addPods(t, 9, 18)
	for _, e := range srv.Sim().Snapshot().ENIs {
		if e.Attachment == nil || e.Attachment.InstanceID != f.inst.ID {
			continue
		}
		if e.Attachment.DeviceIndex == 0 {
			if len(e.SecondaryIPs) != 0 {
				t.Errorf("primary ENI holds %v", e.SecondaryIPs)
			}
			continue
		}
		if e.SubnetID != eniConfig.Subnet || !slices.Equal(e.Groups, eniConfig.SecurityGroups) {
			t.Errorf("ENI %s in %s with %v, want the ENIConfig's", e.ID, e.SubnetID, e.Groups)
		}
	}
	// 18 pod addresses on the 2 pod ENIs: the 19th pod has none (a fourth ENI is beyond the type).
	f.settle(t)
	if _, err := f.node.Add("pod-18"); !errors.Is(err, ErrNoAvailableIP) {
		t.Errorf("pod 19 on 2 pod ENIs: %v", err)
	}
}

// ipamd's "try to just get one more IP": when filling an ENI fails because the subnet has fewer
// free addresses than asked, the node takes them one per pool loop until the subnet is empty,
// then pauses. A /27 (27 usable) with the node's primary and 11 foreign addresses leaves 15:
// the primary ENI's 9, the second ENI's primary and its 5, one at a time.
func TestOneMoreIPWhenTheSubnetIsShort(t *testing.T) {
	sc := &ec2sim.Scenario{
		VPC:       ec2sim.VPCSpec{CIDR: "192.168.0.0/16"},
		Subnets:   []ec2sim.SubnetSpec{{ID: "subnet-00000000000000001", CIDR: "192.168.0.0/27", AvailabilityZone: "eu-west-1a"}},
		Instances: []ec2sim.InstanceGroup{{Type: "m5.large", Subnet: "subnet-00000000000000001", Count: 1}},
	}
	srv := startSim(t, sc)
	if _, err := srv.Sim().CreateForeignENI(t.Context(), "subnet-00000000000000001", 11); err != nil {
		t.Fatal(err)
	}
	f := newFixtureOn(t, srv, Default())
	var errs, assigns int
	for i := 0; i < 12; i++ {
		if err := f.node.Reconcile(t.Context()); err != nil {
			errs++
		}
		for _, a := range f.calls.take() {
			if a == "AssignPrivateIpAddresses" {
				assigns++
			}
		}
		f.clk.Advance(5 * time.Second)
	}
	if c := f.node.Counts(); c.ENIs != 2 || c.Total != 14 || f.held() != 16 {
		t.Errorf("%+v, held %d; want 2 ENIs, 14 pod addresses, 16 held", c, f.held())
	}
	if assigns < 1+2*5 {
		t.Errorf("%d AssignPrivateIpAddresses; want the fill, then per loop a failed fill and one more IP", assigns)
	}
	if c := f.node.Counts(); errs == 0 || c.SubnetErrors == 0 {
		t.Errorf("%d loop errors, %d subnet errors once the subnet was empty", errs, c.SubnetErrors)
	}
}
