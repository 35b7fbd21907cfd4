package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"image/png"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/e2e/vpccni"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// serverBin finds or builds ipledger-server once for the package's tests.
func serverBin(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("IPLEDGER_BIN_DIR"); d != "" {
		if _, err := os.Stat(d + "/ipledger-server"); err == nil {
			return d + "/ipledger-server"
		}
	}
	bin, err := ResolveServerBin(t.Context(), "", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// The seed trace end to end, at a high time scale: JSON with every required field and sane
// values, the VPC CNI model holding the seed's 20 addresses per node, ipledger far fewer.
func TestSeedTraceEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and agents")
	}
	env := Env{ServerBin: serverBin(t), WorkDir: t.TempDir()}
	rep, err := Run(t.Context(), TraceParams{Trace: TraceSeed, TimeScale: 40, Duration: 60 * time.Second,
		Systems: []string{SystemIPLedger, vpccni.NameDefault}}, env)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteJSON(&buf, []Report{rep}); err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["trace"] != TraceSeed || doc["time_scale"] != 40.0 {
		t.Errorf("trace %v time_scale %v", doc["trace"], doc["time_scale"])
	}
	systems, _ := doc["systems"].([]any)
	if len(systems) != 2 {
		t.Fatalf("%d systems in the JSON, want 2", len(systems))
	}
	required := []string{"name", "nodes", "held_mean", "held_peak", "in_use_mean", "held_per_in_use", "idle_per_node",
		"ec2_calls", "mutating_calls_per_node_start", "throttled", "add_wait_p50_ms", "add_wait_p99_ms",
		"served_without_wait", "time_to_all_running_s", "server_cpu_s", "server_peak_rss_mb", "etcd_db_bytes", "series"}
	for _, s := range systems {
		m := s.(map[string]any)
		for _, k := range required {
			if _, ok := m[k]; !ok {
				t.Errorf("%v: field %s missing", m["name"], k)
			}
		}
	}
	byName := map[string]SystemResult{}
	for _, s := range rep.Systems {
		byName[s.Name] = s
		if s.Nodes != 5 || s.PodStarts != 5 {
			t.Errorf("%s: %d nodes, %d pod starts; want 5 and 5", s.Name, s.Nodes, s.PodStarts)
		}
		if s.HeldMean < s.InUseMean || s.HeldPeak < s.InUsePeak || s.InUseEnd != 5 {
			t.Errorf("%s: held mean %.1f peak %d, in use mean %.1f peak %d end %d", s.Name, s.HeldMean, s.HeldPeak, s.InUseMean, s.InUsePeak, s.InUseEnd)
		}
		if s.Throttled != s.EC2Errors["RequestLimitExceeded"] {
			t.Errorf("%s: throttled %d but %d RequestLimitExceeded errors", s.Name, s.Throttled, s.EC2Errors["RequestLimitExceeded"])
		}
		if s.TimeToAllRunningS == nil || len(s.Series) < 3 || s.EC2Calls["AssignPrivateIpAddresses"] == 0 {
			t.Errorf("%s: all running %v, %d samples, calls %v", s.Name, s.TimeToAllRunningS, len(s.Series), s.EC2Calls)
		}
	}
	// The model reproduces the seed: 5 m5.large with a pod each hold 20 addresses apiece.
	if got := byName[vpccni.NameDefault].HeldEnd; got != 100 {
		t.Errorf("vpc-cni-default holds %d addresses at the end, want 100 (20 per node)", got)
	}
	ip := byName[SystemIPLedger]
	if ip.HeldEnd >= 50 || ip.ServerCPUSeconds == nil || ip.ServerPeakRSSMB == nil || ip.EtcdDBBytes == nil {
		t.Errorf("ipledger: held %d, cpu %v, rss %v, etcd %v", ip.HeldEnd, ip.ServerCPUSeconds, ip.ServerPeakRSSMB, ip.EtcdDBBytes)
	}
	var md bytes.Buffer
	if err := WriteMarkdown(&md, []Report{rep}); err != nil || !strings.Contains(md.String(), "| ipledger |") {
		t.Errorf("markdown: %v\n%s", err, md.String())
	}
}

func TestChartIsADecodablePNG(t *testing.T) {
	rep := Report{Trace: TraceSteady, Systems: []SystemResult{
		{Name: SystemIPLedger, Series: []Sample{{T: 0, Held: 10, InUse: 0}, {T: 5, Held: 120, InUse: 100}, {T: 10, Held: 118, InUse: 100}}},
		{Name: vpccni.NameDefault, Series: []Sample{{T: 0, Held: 10, InUse: 0}, {T: 5, Held: 300, InUse: 100}}},
	}}
	var buf bytes.Buffer
	if err := WriteChart(&buf, rep); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if b := img.Bounds(); b.Dx() != chartW || b.Dy() != chartH {
		t.Fatalf("size %v", b)
	}
	// The first system's colour appears (its lines and legend are drawn).
	want := palette[0]
	found := false
	for y := 0; y < chartH && !found; y++ {
		for x := 0; x < chartW; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			if uint8(r>>8) == want.R && uint8(g>>8) == want.G && uint8(b>>8) == want.B {
				found = true
				break
			}
		}
	}
	if !found {
		t.Error("the first system's colour is not in the chart")
	}
	if err := WriteChart(&buf, Report{Trace: "x"}); err == nil {
		t.Error("a chart without systems was drawn")
	}
}

func TestMarkdownFormatting(t *testing.T) {
	ready, floor := 190.0, 1.05
	etcd := int64(3 << 20)
	reps := []Report{
		{Trace: TraceBurst, TimeScale: 10, Params: Params{Nodes: 1000, PodsPerNode: 1, InstanceType: "m5.large"},
			BurstFloor: burstFloor(1000),
			Systems: []SystemResult{{Name: SystemIPLedger, HeldMean: 2000, HeldPerInUse: 2, ServedWithoutWait: 0.9995,
				NodesReadyS: &ready, NodesReadyPerFloor: &floor, EtcdDBBytes: &etcd, PodsNotRunning: 3,
				EC2Calls:       map[string]int{"DescribeInstances": 1000, "AssignPrivateIpAddresses": 1000},
				ServerRestarts: 1, ServerExits: []string{"exit status 1: boom"}}}},
		{Trace: TraceGatewayBurst, Gateway: &GatewayBurst{TimeScale: 1, Requests: 1000, PerAction: map[string]int{"CreateNetworkInterface": 200}, ElapsedS: 21.5, FloorS: 20, ElapsedPerFloor: 1.075}},
	}
	var b bytes.Buffer
	if err := WriteMarkdown(&b, reps); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"### burst", "**180 s**", "| ipledger | 2000 |", "99.95%", "190 (1.05x floor)", "| 3.0 |",
		"never (3 pods stuck)", "n/a", "AssignPrivateIpAddresses 1000, DescribeInstances 1000",
		"exited 1 time(s)", "### gateway-burst", "| 1000 | 21.5 | 20.0 | 1.075 | 0 | 0 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("markdown lacks %q:\n%s", want, out)
		}
	}
	var j bytes.Buffer
	if err := WriteJSON(&j, reps); err != nil || !strings.HasPrefix(strings.TrimSpace(j.String()), "[") {
		t.Errorf("two reports are a JSON list: %v %q", err, j.String()[:20])
	}
}

func TestDefaultsAndValidation(t *testing.T) {
	for _, name := range Traces() {
		p, err := Defaults(TraceParams{Trace: name})
		if err != nil || p.TimeScale < 1 || len(p.Systems) == 0 {
			t.Errorf("%s: %+v %v", name, p, err)
		}
	}
	bad := []TraceParams{
		{Trace: "nope"},
		{Trace: TraceSteady, TimeScale: 500},
		{Trace: TraceSteady, Nodes: 5000},
		{Trace: TracePrefix, Systems: []string{vpccni.NameDefault}},
		{Trace: TraceGatewayBurst, GatewayPerAction: 5000},
		{Trace: TraceSteady, EC2Profile: "sluggish"},
		{Trace: TraceCustom, Systems: []string{vpccni.NameDefault}},
		{Trace: TraceSteady, Systems: []string{vpccni.NameCustom}},
	}
	for _, p := range bad {
		if _, err := Defaults(p); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
	if _, err := Defaults(TraceParams{Trace: "nope"}); !errors.Is(err, ErrUnknownTrace) {
		t.Errorf("unknown trace: %v", err)
	}
	if got, err := ParseSystems("ipledger, vpc-cni-min5"); err != nil || len(got) != 2 {
		t.Errorf("ParseSystems: %v %v", got, err)
	}
	for _, s := range []string{"", "ipledger,calico"} {
		if _, err := ParseSystems(s); !errors.Is(err, ErrUnknownSystem) {
			t.Errorf("ParseSystems(%q): %v", s, err)
		}
	}
}

func TestGenerateScenario(t *testing.T) {
	cases := []struct {
		nodes  int
		typ    string
		plen   string
		places int
	}{
		{1000, "m5.large", "/18", 3},
		{50, "m5.4xlarge", "/19", 3},
		{2, "m5.large", "/24", 2},
	}
	for _, tc := range cases {
		sc, err := generateScenario(clusterShape{Nodes: tc.nodes, InstanceType: tc.typ, Running: true})
		if err != nil {
			t.Fatalf("%d %s: %v", tc.nodes, tc.typ, err)
		}
		if len(sc.Subnets) != tc.places || !strings.HasSuffix(sc.Subnets[0].CIDR, tc.plen) {
			t.Errorf("%d %s: subnets %+v, want %d of %s", tc.nodes, tc.typ, sc.Subnets, tc.places, tc.plen)
		}
		total := 0
		for _, g := range sc.Instances {
			total += g.Count
		}
		if total != tc.nodes {
			t.Errorf("%d %s: %d instances", tc.nodes, tc.typ, total)
		}
		if got := nodesPerSubnet(sc, tc.nodes); len(got) != len(sc.Subnets) {
			t.Errorf("nodesPerSubnet %v", got)
		}
	}
	if _, err := generateScenario(clusterShape{Nodes: 2000, InstanceType: "m5.24xlarge"}); err == nil {
		t.Error("a cluster that cannot fit the VPC was generated")
	}
	if _, err := generateScenario(clusterShape{Nodes: 1, InstanceType: "m9.nope"}); err == nil {
		t.Error("an unknown instance type was accepted")
	}
}

func TestBurstFloor(t *testing.T) {
	// 1,000 node starts through the ENI/IP bucket (100 / 5 per s): (1000 - 100) / 5 = 180 s;
	// DescribeInstances through the describe bucket (100 / 20): 45 s.
	if f := burstFloor(1000); f.FloorS != 180 {
		t.Errorf("floor %v, want 180 s", f.FloorS)
	}
	if f := burstFloor(50); f.FloorS != 0 {
		t.Errorf("floor of 50 starts %v, want 0 (the buckets hold them)", f.FloorS)
	}
	if got := bucketFloor(200, ec2sim.BucketShape{Size: 100, Refill: 5}); got != 20 {
		t.Errorf("bucket floor %v, want 20", got)
	}
}

func TestProcParsing(t *testing.T) {
	stat := "4242 (ipledger-server) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 12 0 100 0 0"
	if cpu, err := parseProcStatCPU(stat); err != nil || cpu != 3.25 {
		t.Errorf("cpu %v %v, want 3.25", cpu, err)
	}
	if _, err := parseProcStatCPU("garbage"); err == nil {
		t.Error("garbage parsed")
	}
	if mb, err := parseVmHWM("Name:\tx\nVmPeak:\t 9 kB\nVmHWM:\t   51200 kB\n"); err != nil || mb != 50 {
		t.Errorf("VmHWM %v %v, want 50", mb, err)
	}
	if _, err := parseVmHWM("Name:\tx\n"); err == nil {
		t.Error("no VmHWM parsed")
	}
}

func TestGatewayBurstSmall(t *testing.T) {
	for _, profile := range ec2sim.ProfileNames() {
		g, err := runGatewayBurst(t.Context(), 110, 20, profile)
		if err != nil {
			t.Fatal(err)
		}
		if g.Failed != 0 || g.Requests-g.Throttled != 550 {
			t.Fatalf("%s: %+v: want 550 successful requests", profile, g)
		}
		for _, a := range gatewayActions {
			if g.PerAction[a] != 110 {
				t.Errorf("%s: %s: %d calls, want 110", profile, a, g.PerAction[a])
			}
		}
		if g.FloorS != 2 || g.ElapsedS <= 0 || g.ElapsedPerFloor <= 0 {
			t.Errorf("%s: floor %v elapsed %v ratio %v", profile, g.FloorS, g.ElapsedS, g.ElapsedPerFloor)
		}
	}
	if _, err := runGatewayBurst(t.Context(), 10, 20, "sluggish"); !errors.Is(err, ec2sim.ErrUnknownProfile) {
		t.Errorf("unknown profile: %v", err)
	}
}

// The trace's EC2 profile reaches the simulator both systems talk to; realistic is the default.
func TestProfileReachesSimulator(t *testing.T) {
	p, err := Defaults(TraceParams{Trace: TraceSteady})
	if err != nil || p.EC2Profile != ec2sim.ProfileRealistic {
		t.Fatalf("default profile %q (%v), want realistic", p.EC2Profile, err)
	}
	for _, profile := range ec2sim.ProfileNames() {
		r := newRunner(runConfig{trace: TraceSeed, system: vpccni.NameDefault, timeScale: 20, seed: 1,
			scenario: ec2sim.DefaultScenario(), profile: profile, progress: func(string, ...any) {}})
		if err := r.start(t.Context(), nil); err != nil {
			t.Fatal(err)
		}
		got := r.sim.Sim().Profile().Name
		r.stop(t.Context())
		if got != profile {
			t.Errorf("runner with profile %s: the simulator runs %s", profile, got)
		}
	}
}

// The custom-networking trace, small: the node subnets are full, so every running pod lives in
// a pod subnet of the secondary CIDR. ipledger runs every pod from both pod subnets of a zone
// and holds fewer addresses than the VPC CNI model with one ENIConfig per zone, which fills its
// ENIs (20 addresses per node in the zone's one pod subnet).
func TestCustomNetworkingTrace(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and agents")
	}
	env := Env{ServerBin: serverBin(t), WorkDir: t.TempDir()}
	rep, err := Run(t.Context(), TraceParams{Trace: TraceCustom, TimeScale: 30, Duration: 120 * time.Second}, env)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]SystemResult{}
	for _, s := range rep.Systems {
		byName[s.Name] = s
	}
	ip, vc := byName[SystemIPLedger], byName[vpccni.NameCustom]
	if ip.Nodes != 9 || vc.Nodes != 9 {
		t.Fatalf("nodes: ipledger %d, %s %d; want 9", ip.Nodes, vpccni.NameCustom, vc.Nodes)
	}
	if ip.InUseEnd != 108 || ip.PodsNotRunning != 0 {
		t.Errorf("ipledger: %d pods running at the end, %d never ran; want 108 and 0", ip.InUseEnd, ip.PodsNotRunning)
	}
	// The node subnets are full: every pod address and every secondary ENI is in a pod subnet.
	// Each of the 9 nodes holds only its own address outside them.
	for _, s := range []SystemResult{ip, vc} {
		if s.HeldEnd-s.PodSubnetHeldEnd != 9 || s.PodSubnetHeldEnd < s.InUseEnd {
			t.Errorf("%s: held %d, %d of them in pod subnets, %d pods running", s.Name, s.HeldEnd, s.PodSubnetHeldEnd, s.InUseEnd)
		}
	}
	if vc.PodSubnetsUsedEnd != 3 {
		t.Errorf("%s uses %d pod subnets, want 3 (its ENIConfigs')", vpccni.NameCustom, vc.PodSubnetsUsedEnd)
	}
	if ip.HeldEnd >= vc.HeldEnd {
		t.Errorf("held at the end: ipledger %d, %s %d", ip.HeldEnd, vpccni.NameCustom, vc.HeldEnd)
	}
	var md bytes.Buffer
	if err := WriteMarkdown(&md, []Report{rep}); err != nil || !strings.Contains(md.String(), "| held in pod subnets at the end |") {
		t.Errorf("markdown: %v\n%s", err, md.String())
	}
}
