package dashboard_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/dashboard"
	"github.com/ipledger/ipledger/server/servertest"
	"github.com/ipledger/ipledger/server/store"
)

// ec2Calls sums an action's calls over the document's samples.
func ec2Calls(doc *dashboard.Document, action string) uint64 {
	var n uint64
	for _, s := range doc.EC2.Samples {
		n += s.Calls[action]
	}
	return n
}

func TestDocumentOfADevServer(t *testing.T) {
	s := startDev(t)
	base, _, _ := serveDashboard(t, s, 50*time.Millisecond)
	conn := servertest.Dial(t, s.GRPCAddr())
	var agents []*agent
	for _, in := range servertest.Instances(s) {
		agents = append(agents, startAgent(t, conn, in))
	}
	for _, a := range agents {
		servertest.WaitFor(t, 15*time.Second, "a warm address on "+a.Name(), func() bool { return len(a.active()) >= 1 })
	}
	busy := agents[1]
	busy.runPods(3)

	url := base + "/api/dashboard.json"
	var doc *dashboard.Document
	var raw map[string]any
	servertest.WaitFor(t, 15*time.Second, "the document to show 3 pods and every node connected", func() bool {
		doc, raw = getDocument(t, url)
		if len(doc.Nodes) != len(agents) {
			return false
		}
		for _, n := range doc.Nodes {
			if !n.Connected || (n.NodeName == busy.Name() && (n.InUse != 3 || n.Idle < 1)) {
				return false
			}
		}
		return true
	})

	// Header: who answered and who leads.
	if c := doc.Cluster; c.Name != "dev" || !c.IsLeader || c.Replica != s.Advertise() || c.Leader != s.Advertise() || !c.StoreHealthy || c.Nodes != 5 || c.Revision == 0 {
		t.Fatalf("cluster %+v, want dev led by %s with 5 nodes", c, s.Advertise())
	}
	if len(doc.Errors) != 0 || doc.RefreshSeconds <= 0 || doc.GeneratedAt.IsZero() {
		t.Fatalf("errors %v refresh %v generated %v", doc.Errors, doc.RefreshSeconds, doc.GeneratedAt)
	}

	// Subnets: every subnet of the VPC, every address accounted for, matching EC2 and the ledger.
	simSubnets := map[string]string{} // id -> CIDR
	for _, sn := range s.Sim().Sim().Snapshot().Subnets {
		simSubnets[sn.ID] = sn.CIDR
	}
	nodesIn := map[string]int{}
	for _, a := range agents {
		nodesIn[a.Inst.SubnetID]++
	}
	if len(doc.Subnets) != len(simSubnets) || len(doc.Subnets) != 6 {
		t.Fatalf("%d subnets, want the scenario's 6: %+v", len(doc.Subnets), doc.Subnets)
	}
	for i, sb := range doc.Subnets {
		if i > 0 && doc.Subnets[i-1].SubnetID >= sb.SubnetID {
			t.Fatalf("subnets not sorted: %s before %s", doc.Subnets[i-1].SubnetID, sb.SubnetID)
		}
		if simSubnets[sb.SubnetID] != sb.CIDR {
			t.Fatalf("subnet %s has CIDR %s, EC2 says %q", sb.SubnetID, sb.CIDR, simSubnets[sb.SubnetID])
		}
		nodes := nodesIn[sb.SubnetID]
		if sb.Size != sb.Reserved+sb.Foreign+sb.Held+sb.PrewarmReserved+sb.Free || sb.Held != sb.ENIPrimary+sb.InUse+sb.Idle {
			t.Fatalf("budget of %s does not add up: %+v", sb.SubnetID, sb)
		}
		if sb.Size != 8192 || sb.Reserved != 5 || sb.TotalPrefixes != 512 || sb.FreePrefixes == 0 || sb.FreePrefixes > 512 ||
			sb.BudgetCap != sb.Size || sb.MaxHeld != 0 || sb.Headroom < 8000 || !strings.HasSuffix(sb.CIDR, "/19") ||
			!strings.HasPrefix(sb.AvailabilityZone, "eu-west-1") || sb.Name == "" {
			t.Fatalf("subnet %+v", sb)
		}
		if sb.ENIPrimary != uint32(nodes) {
			t.Fatalf("%s: %d ENI primaries, want one per node (%d)", sb.SubnetID, sb.ENIPrimary, nodes)
		}
		if sb.SubnetID == busy.Inst.SubnetID && sb.InUse != 3 {
			t.Fatalf("%s: in use %d, want the 3 pods", sb.SubnetID, sb.InUse)
		}
		led, err := s.Ledger().Budget(sb.SubnetID, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if uint32(led.Held) != sb.Held || uint32(led.Free) != sb.Free || uint32(led.FreePrefixes) != sb.FreePrefixes {
			t.Fatalf("%s: document %+v, ledger %+v", sb.SubnetID, sb, led)
		}
	}

	// Nodes: every agent, sorted, with its facts.
	for i, n := range doc.Nodes {
		a := agents[0]
		for _, x := range agents {
			if x.Name() == n.NodeName {
				a = x
			}
		}
		if a.Name() != n.NodeName || n.InstanceID != a.Inst.ID || n.InstanceType != "m5.large" || n.SubnetID != a.Inst.SubnetID ||
			n.AvailabilityZone != a.Inst.AvailabilityZone || n.ENIs != 1 || n.Held != n.InUse+n.Idle || n.TargetFree != 1 ||
			n.Mode != "secondary_ip" || n.Draining || n.RegisteredAt == nil {
			t.Fatalf("node %+v (agent %s)", n, a.Name())
		}
		if i > 0 && doc.Nodes[i-1].NodeName >= n.NodeName {
			t.Fatal("nodes not sorted")
		}
	}

	// EC2: this replica leads; the history holds every call the gateway counted.
	if doc.EC2.State != dashboard.StateLeader || doc.EC2.Leader != s.Advertise() || len(doc.EC2.Buckets) == 0 || len(doc.EC2.Queue) == 0 ||
		doc.EC2.SampleEverySeconds != 0.05 || doc.EC2.HistorySeconds != dashboard.MaxSamples*0.05 {
		t.Fatalf("ec2 %+v", doc.EC2)
	}
	admin := api.NewAdminServer(s)
	servertest.WaitFor(t, 10*time.Second, "the history to hold every AssignPrivateIpAddresses call", func() bool {
		lim, err := admin.GetLimiter(t.Context(), &ipledgerv1.GetLimiterRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var counted uint64
		for _, c := range lim.GetCalls() {
			if c.GetAction() == "AssignPrivateIpAddresses" {
				counted += c.GetCount()
			}
		}
		doc, raw = getDocument(t, url)
		return counted >= 5 && ec2Calls(doc, "AssignPrivateIpAddresses") == counted
	})
	var last time.Time
	for _, sm := range doc.EC2.Samples {
		if sm.State != dashboard.StateLeader || sm.Seconds <= 0 || sm.Seconds > 5 || !sm.Time.After(last) {
			t.Fatalf("sample %+v after %s", sm, last)
		}
		last = sm.Time
	}
	if !containsString(doc.EC2.Actions, "AssignPrivateIpAddresses") {
		t.Fatalf("actions %v", doc.EC2.Actions)
	}

	// The field names are the documented snake_case ones.
	for _, k := range []string{"generated_at", "refresh_seconds", "cluster", "subnets", "nodes", "prewarms", "ec2", "errors"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("document lacks %q", k)
		}
	}
	keys := func(v any, names ...string) {
		t.Helper()
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("%v is not an object", v)
		}
		for _, k := range names {
			if _, ok := m[k]; !ok {
				t.Errorf("object lacks %q: %v", k, m)
			}
		}
	}
	keys(raw["cluster"], "name", "replica", "is_leader", "leader", "store_healthy", "store_message", "revision", "version", "nodes", "subnets")
	keys(raw["subnets"].([]any)[0], "subnet_id", "name", "availability_zone", "cidr", "size", "reserved", "foreign", "held", "eni_primary",
		"in_use", "idle", "prewarm_reserved", "free", "free_prefixes", "total_prefixes", "max_held", "budget_cap", "keep_free", "headroom", "forecast", "pod_subnet_of")
	keys(raw["subnets"].([]any)[0].(map[string]any)["forecast"], "held_per_hour", "time_to_exhaustion_seconds", "window_seconds")
	keys(raw["nodes"].([]any)[0], "node_name", "instance_id", "instance_type", "availability_zone", "subnet_id", "mode", "policy", "enis",
		"held", "in_use", "idle", "target_free", "deficit", "connected", "draining", "last_report", "registered_at")
	keys(raw["ec2"], "state", "leader", "message", "sample_every_seconds", "history_seconds", "actions", "samples", "totals",
		"throttled_in_history", "throttled_total", "buckets", "queue", "recent_throttles")
	keys(raw["ec2"].(map[string]any)["samples"].([]any)[0], "time", "seconds", "state", "calls", "total", "throttled", "errors")
	keys(raw["ec2"].(map[string]any)["buckets"].([]any)[0], "name", "capacity", "tokens", "refill_per_second", "effective_refill_per_second", "actions")

	// The replica itself serves the dashboard next to its other endpoints.
	wired := "http://" + s.HTTPAddr()
	code, hdr, body := get(t, wired+"/")
	if code != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/html") || !strings.Contains(body, `src="static/dashboard.js"`) ||
		!strings.Contains(hdr.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Fatalf("GET /: %d %v\n%s", code, hdr, body)
	}
	if wdoc, _ := getDocument(t, wired+"/api/dashboard.json"); len(wdoc.Nodes) != 5 || len(wdoc.Subnets) != 6 || wdoc.EC2.SampleEverySeconds != 5 {
		t.Fatalf("the replica's own dashboard: %d nodes, %d subnets, sampling every %vs", len(wdoc.Nodes), len(wdoc.Subnets), wdoc.EC2.SampleEverySeconds)
	}
	for path, wantType := range map[string]string{"/static/dashboard.js": "text/javascript", "/static/dashboard.css": "text/css"} {
		if code, hdr, body := get(t, wired+path); code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), wantType) || len(body) < 500 {
			t.Fatalf("GET %s: %d %s (%d bytes)", path, code, hdr.Get("Content-Type"), len(body))
		}
	}
	for path, wantCode := range map[string]int{"/no-such-page": 404, "/static/nope.js": 404, "/healthz": 200, "/metrics": 200} {
		if code, _, _ := get(t, wired+path); code != wantCode {
			t.Fatalf("GET %s: %d, want %d", path, code, wantCode)
		}
	}
	resp, err := http.Post(wired+"/api/dashboard.json", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST to the document: %d, want 405 (the dashboard only reads)", resp.StatusCode)
	}
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestStandbyNamesTheLeader runs two replicas on one etcd and one EC2 simulator: the standby's
// dashboard says who makes the EC2 calls and records its intervals as standby.
func TestStandbyNamesTheLeader(t *testing.T) {
	etcd, err := store.StartEmbedded(t.Context(), store.EmbeddedConfig{Dir: t.TempDir(), Logger: servertest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { etcd.Close() })
	sim := startSim(t)
	shared := func() config.Config {
		cfg := servertest.DevConfig(t)
		cfg.EtcdEndpoints = etcd.Endpoints()
		cfg.EC2Endpoint = sim.Endpoint()
		return cfg
	}
	leader := servertest.Start(t, shared())
	servertest.WaitFor(t, 15*time.Second, "leadership", leader.IsLeader)
	standby := servertest.Start(t, shared())
	servertest.WaitFor(t, 15*time.Second, "the standby to know the leader", func() bool { return standby.LeaderAddress() == leader.Advertise() })
	if standby.IsLeader() {
		t.Fatal("two leaders")
	}
	conn := servertest.Dial(t, leader.GRPCAddr())
	a := startAgent(t, conn, servertest.Running(sim)[0])
	servertest.WaitFor(t, 15*time.Second, "a warm address", func() bool { return len(a.active()) >= 1 })

	base, _, _ := serveDashboard(t, standby, 20*time.Millisecond)
	var doc *dashboard.Document
	servertest.WaitFor(t, 15*time.Second, "the standby's document to show the node and a few standby samples", func() bool {
		doc, _ = getDocument(t, base+"/api/dashboard.json")
		return len(doc.Nodes) == 1 && len(doc.EC2.Samples) >= 3
	})
	e := doc.EC2
	if e.State != dashboard.StateStandby || e.Leader != leader.Advertise() || !strings.Contains(e.Message, "standby — EC2 calls are made by the leader at "+leader.Advertise()) ||
		len(e.Buckets) != 0 || len(e.Totals) != 0 || len(doc.Errors) != 0 {
		t.Fatalf("standby's EC2 section %+v (errors %v)", e, doc.Errors)
	}
	for _, sm := range e.Samples {
		if sm.State != dashboard.StateStandby || sm.Total != 0 {
			t.Fatalf("standby sample %+v", sm)
		}
	}
	if c := doc.Cluster; c.IsLeader || c.Replica != standby.Advertise() || c.Leader != leader.Advertise() {
		t.Fatalf("standby's cluster %+v", c)
	}
	var primaries uint32
	for _, sb := range doc.Subnets {
		if sb.SubnetID == a.Inst.SubnetID {
			primaries = sb.ENIPrimary
		}
	}
	if doc.Nodes[0].NodeName != a.Name() || primaries != 1 {
		t.Fatalf("standby's copy of the state: nodes %+v subnets %+v", doc.Nodes, doc.Subnets)
	}

	// The page says so too (when a browser is at hand; TestPageInHeadlessChromium skips without).
	bin := findChromium()
	if bin == "" {
		t.Log("chromium is not installed: the standby page is not rendered")
		return
	}
	d := parseDOM(t, runChromium(t, bin, base+"/", "--dump-dom"))
	line := all(d.root, withAttr("p", "id", "ec2-state"))
	if len(line) != 1 || strings.TrimSpace(text(line[0])) != "standby — EC2 calls are made by the leader at "+leader.Advertise() {
		t.Fatalf("standby page's EC2 line: %q", text(line[0]))
	}
	if bands := all(d.root, withAttr("rect", "data-state", dashboard.StateStandby)); len(bands) < 3 {
		t.Fatalf("%d standby bands in the chart, want one per sample", len(bands))
	}
}
