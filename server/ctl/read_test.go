package ctl

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ipledger/ipledger/internal/version"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// decode parses a command's JSON output into v, failing the test on anything else.
func decode(t *testing.T, r result, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("output is not the documented JSON: %v\n%s", err, r.stdout)
	}
}

// decodeYAML parses YAML output into v.
func decodeYAML(t *testing.T, r result, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict([]byte(r.stdout), v); err != nil {
		t.Fatalf("output is not the documented YAML: %v\n%s", err, r.stdout)
	}
}

// tableRows returns the lines of a table's block that starts with the header's first cell,
// header excluded, up to the next blank line.
func tableRows(t *testing.T, out string, header ...string) [][]string {
	t.Helper()
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		f := strings.Fields(l)
		if len(f) < len(header) || !reflect.DeepEqual(f[:len(header)], header) {
			continue
		}
		var rows [][]string
		for _, l := range lines[i+1:] {
			if strings.TrimSpace(l) == "" {
				break
			}
			rows = append(rows, strings.Fields(l))
		}
		return rows
	}
	t.Fatalf("no table with header %v in:\n%s", header, out)
	return nil
}

func TestReadCommands(t *testing.T) {
	c := startCluster(t)
	ac := admin(t, c.addr)
	first := c.agents[0]

	// Completion asks the server for the names it offers (cobra's __complete, which the shell
	// scripts call).
	t.Run("completion of names", func(t *testing.T) {
		offered := func(args ...string) map[string]bool {
			t.Helper()
			r := mustCtl(t, 0, c.addr, append([]string{"__complete"}, args...)...)
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			if len(lines) == 0 || lines[len(lines)-1] != ":4" {
				t.Fatalf("__complete %v: want the no-file directive :4 last:\n%s", args, r.stdout)
			}
			out := map[string]bool{}
			for _, l := range lines[:len(lines)-1] {
				w, _, _ := strings.Cut(l, "\t")
				out[w] = true
			}
			return out
		}
		nodes, err := ac.ListNodes(t.Context(), &ipledgerv1.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		subnets, err := ac.ListSubnets(t.Context(), &ipledgerv1.ListSubnetsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"node", ""}, {"drain", ""}, {"-o", "json", "node", ""}, {"node", "forget-identity", ""}} {
			got := offered(args...)
			for _, n := range nodes.GetNodes() {
				if !got[n.GetNodeName()] {
					t.Errorf("%v does not offer node %s: %v", args, n.GetNodeName(), got)
				}
			}
			want := len(nodes.GetNodes())
			if slices.Contains(args, "node") && !slices.Contains(args, "forget-identity") {
				// node NODE also has the subcommand forget-identity.
				want++
				if !got["forget-identity"] {
					t.Errorf("%v does not offer the subcommand forget-identity: %v", args, got)
				}
			}
			if len(got) != want {
				t.Errorf("%v offers %d names for %d nodes: %v", args, len(got), len(nodes.GetNodes()), got)
			}
		}
		if got := offered("node", nodes.GetNodes()[0].GetNodeName(), ""); len(got) != 0 {
			t.Errorf("node takes one name; offered more: %v", got)
		}
		for _, args := range [][]string{{"subnet", "budget", ""}, {"prewarm", "create", "--subnet", ""}, {"canfit", "--subnet="}} {
			got := offered(args...)
			for _, sn := range subnets.GetSubnets() {
				if !got[sn.GetSubnetId()] && !got["--subnet="+sn.GetSubnetId()] {
					t.Errorf("%v does not offer subnet %s: %v", args, sn.GetSubnetId(), got)
				}
			}
		}
		if got := offered("canfit", "--az", ""); !got[first.Inst.AvailabilityZone] {
			t.Errorf("canfit --az does not offer %s: %v", first.Inst.AvailabilityZone, got)
		}
		if got := offered("policy", "delete", ""); !got["default"] {
			t.Errorf("policy delete does not offer the default policy: %v", got)
		}
		// Nothing listening: nothing offered, quickly, and no error for the shell to show.
		r := mustCtl(t, 0, closedAddr(t), "__complete", "drain", "")
		if strings.TrimSpace(r.stdout) != ":4" {
			t.Errorf("against a closed port: %s", r)
		}
	})

	t.Run("subnets", func(t *testing.T) {
		truth, err := ac.ListSubnets(t.Context(), &ipledgerv1.ListSubnetsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]*ipledgerv1.SubnetBudget{}
		for _, b := range truth.GetSubnets() {
			want[b.GetSubnetId()] = b
		}
		if len(want) != 6 {
			t.Fatalf("the default scenario has 6 subnets, the server lists %d", len(want))
		}

		// JSON: every documented field, values as the server says, invariants hold.
		r := mustCtl(t, 0, c.addr, "subnets", "-o", "json")
		var raw []map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
			t.Fatal(err)
		}
		for _, obj := range raw {
			for _, k := range []string{"subnet_id", "az", "cidr", "size", "reserved", "foreign", "held", "in_use", "free", "free_prefixes",
				"eni_primary", "idle", "prewarm_reserved", "max_held", "keep_free", "headroom", "forecast", "tags"} {
				if _, ok := obj[k]; !ok {
					t.Fatalf("subnet object lacks %q: %v", k, obj)
				}
			}
			fc := obj["forecast"].(map[string]any)
			for _, k := range []string{"held_per_hour", "exhaustion_in_seconds", "window_seconds", "status"} {
				if _, ok := fc[k]; !ok {
					t.Fatalf("forecast lacks %q: %v", k, fc)
				}
			}
		}
		var docs []Subnet
		decode(t, r, &docs)
		if len(docs) != len(want) {
			t.Fatalf("%d subnets in JSON, the server has %d", len(docs), len(want))
		}
		var heldTotal, inUseTotal uint32
		for i, d := range docs {
			b := want[d.SubnetID]
			if b == nil {
				t.Fatalf("JSON lists unknown subnet %s", d.SubnetID)
			}
			got := []uint32{d.Size, d.Reserved, d.Foreign, d.Held, d.ENIPrimary, d.InUse, d.Idle, d.PrewarmReserved, d.Free, d.FreePrefixes, d.MaxHeld, d.KeepFree, d.Headroom}
			exp := []uint32{b.Size, b.Reserved, b.Foreign, b.Held, b.EniPrimary, b.InUse, b.Idle, b.PrewarmReserved, b.Free, b.FreePrefixes, b.MaxHeld, b.KeepFree, b.Headroom}
			if !reflect.DeepEqual(got, exp) || d.AZ != b.AvailabilityZone || d.CIDR != b.Cidr || !reflect.DeepEqual(d.Tags, b.Tags) {
				t.Fatalf("subnet %s: JSON %+v, server %v", d.SubnetID, d, b)
			}
			if d.Size != d.Reserved+d.Foreign+d.Held+d.PrewarmReserved+d.Free || d.Held != d.ENIPrimary+d.InUse+d.Idle {
				t.Fatalf("subnet %s does not add up: %+v", d.SubnetID, d)
			}
			if d.Forecast.Status != "unknown" || d.Forecast.ExhaustionInSeconds != nil {
				t.Fatalf("a fresh server has no history, yet forecast is %+v", d.Forecast)
			}
			if i > 0 && docs[i-1].AZ > d.AZ {
				t.Fatalf("subnets not ordered by AZ: %s after %s", d.AZ, docs[i-1].AZ)
			}
			heldTotal += d.Held
			inUseTotal += d.InUse
		}
		// Against the ledger itself: 5 primaries + 5 warm + 2 more on the node with two pods.
		var ledgerHeld int
		for _, b := range c.s.Ledger().Budgets(time.Now()) {
			ledgerHeld += b.Held
		}
		if heldTotal != uint32(ledgerHeld) || heldTotal != 12 || inUseTotal != 2 {
			t.Fatalf("held %d (ledger %d, want 12), in use %d (want 2)", heldTotal, ledgerHeld, inUseTotal)
		}

		// YAML is the same document.
		var ydocs []Subnet
		decodeYAML(t, mustCtl(t, 0, c.addr, "subnets", "-o", "yaml"), &ydocs)
		if !reflect.DeepEqual(ydocs, docs) {
			t.Fatalf("YAML and JSON differ:\n%+v\n%+v", ydocs, docs)
		}

		// Table: a row per subnet in the same order, then the totals.
		r = mustCtl(t, 0, c.addr, "subnets")
		rows := tableRows(t, r.stdout, "SUBNET", "AZ", "CIDR", "SIZE", "RESERVED", "FOREIGN", "HELD", "IN-USE", "FREE", "FREE-/28", "PREWARM", "BUDGET", "HEADROOM", "FORECAST")
		if len(rows) != len(docs)+1 {
			t.Fatalf("want %d rows and a total, got:\n%s", len(docs), r.stdout)
		}
		for i, d := range docs {
			if rows[i][0] != d.SubnetID || rows[i][2] != d.CIDR || rows[i][6] != itoa(d.Held) || rows[i][11] != "-" || rows[i][13] != "n/a" {
				t.Fatalf("row %d %v does not show %+v", i, rows[i], d)
			}
		}
		total := rows[len(rows)-1]
		if total[0] != "TOTAL" || total[1] != "(6)" || total[2] != "49152" || total[5] != "12" || total[6] != "2" {
			t.Fatalf("totals line %v", total)
		}
	})

	t.Run("nodes", func(t *testing.T) {
		r := mustCtl(t, 0, c.addr, "nodes", "-o", "json")
		var docs []NodeSummary
		decode(t, r, &docs)
		if len(docs) != len(c.agents) {
			t.Fatalf("%d nodes in JSON, %d registered", len(docs), len(c.agents))
		}
		byName := map[string]NodeSummary{}
		for i, d := range docs {
			byName[d.NodeName] = d
			if i > 0 && docs[i-1].NodeName >= d.NodeName {
				t.Fatalf("nodes not ordered by name")
			}
		}
		for _, a := range c.agents {
			d, ok := byName[a.Name()]
			if !ok {
				t.Fatalf("node %s missing", a.Name())
			}
			if d.InstanceID != a.Inst.ID || d.InstanceType != "m5.large" || d.AZ != a.Inst.AvailabilityZone || d.SubnetID != a.Inst.SubnetID ||
				d.Mode != "secondary_ip" || d.Policy != "default" || d.ENIs != 1 || !d.Connected || d.Draining || d.Registered == nil {
				t.Fatalf("node %s: %+v", a.Name(), d)
			}
		}
		if d := byName[first.Name()]; d.Held != 3 || d.InUse != 2 || d.Idle != 1 || d.LastReport == nil {
			t.Fatalf("node with two pods: %+v", d)
		}
		r = mustCtl(t, 0, c.addr, "nodes")
		rows := tableRows(t, r.stdout, "NODE", "INSTANCE", "TYPE")
		if len(rows) != len(docs) {
			t.Fatalf("want a row per node:\n%s", r.stdout)
		}
		for i, d := range docs {
			if rows[i][0] != d.NodeName || rows[i][1] != d.InstanceID {
				t.Fatalf("row %v for %s", rows[i], d.NodeName)
			}
		}
		var ydocs []NodeSummary
		decodeYAML(t, mustCtl(t, 0, c.addr, "nodes", "-o", "yaml"), &ydocs)
		if len(ydocs) != len(docs) || ydocs[0].NodeName != docs[0].NodeName {
			t.Fatalf("YAML nodes %+v", ydocs)
		}
	})

	t.Run("node", func(t *testing.T) {
		truth, err := ac.GetNode(t.Context(), &ipledgerv1.GetNodeRequest{NodeName: first.Name()})
		if err != nil {
			t.Fatal(err)
		}
		r := mustCtl(t, 0, c.addr, "node", first.Name(), "-o", "json")
		var d NodeDetail
		decode(t, r, &d)
		if d.NodeName != first.Name() || len(d.Interfaces) != 1 || d.Policy != "default" || d.PolicyDetail == nil || d.PolicyDetail.Name != "default" ||
			d.Labels["ipledger.io/test"] != "ctl" || d.SupplyProblem != "" || d.Generation != truth.GetPool().GetGeneration() {
			t.Fatalf("node detail %+v", d)
		}
		eni := d.Interfaces[0]
		if eni.ENIID != first.Inst.PrimaryENI || eni.DeviceIndex != 0 || eni.PrimaryIP != first.Inst.PrivateIP || eni.SubnetID != first.Inst.SubnetID || eni.SubnetCIDR == "" {
			t.Fatalf("primary ENI %+v", eni)
		}
		var leased []string
		for _, a := range eni.Addresses {
			if a.State != "active" {
				t.Fatalf("lease state %q", a.State)
			}
			leased = append(leased, a.IP)
		}
		if !reflect.DeepEqual(leased, first.addresses()) {
			t.Fatalf("leased %v, the agent's pool has %v", leased, first.addresses())
		}
		if len(d.Pods) != 2 {
			t.Fatalf("pods %+v", d.Pods)
		}
		for _, p := range d.Pods {
			if p.Namespace != "default" || c.pods[p.IP] != p.Name || p.Ifname != "eth0" || p.ContainerID == "" {
				t.Fatalf("pod %+v, want %v", p, c.pods)
			}
		}
		var yd NodeDetail
		decodeYAML(t, mustCtl(t, 0, c.addr, "node", first.Name(), "-o", "yaml"), &yd)
		if !reflect.DeepEqual(yd.Interfaces, d.Interfaces) || !reflect.DeepEqual(yd.Pods, d.Pods) {
			t.Fatalf("YAML node differs from JSON")
		}

		r = mustCtl(t, 0, c.addr, "node", first.Name())
		rows := tableRows(t, r.stdout, "DEVICE", "ENI", "SUBNET")
		if len(rows) != 1 || rows[0][0] != "0" || rows[0][1] != eni.ENIID || rows[0][4] != eni.PrimaryIP {
			t.Fatalf("ENI table %v", rows)
		}
		if rows := tableRows(t, r.stdout, "ENI", "LEASED", "STATE"); len(rows) != len(leased) {
			t.Fatalf("address table %v, want %d leases", rows, len(leased))
		}
		pods := tableRows(t, r.stdout, "NAMESPACE", "POD", "IP")
		if len(pods) != 2 || pods[0][1] != "web-0" || pods[1][1] != "web-1" {
			t.Fatalf("pod table %v", pods)
		}
		if !strings.Contains(r.stdout, "Policy:") || !strings.Contains(r.stdout, "default: adaptive") {
			t.Fatalf("node table lacks the policy:\n%s", r.stdout)
		}

		// An unknown node: the server's code and reason, exit 1.
		r = mustCtl(t, 1, c.addr, "node", "no-such-node")
		if !strings.Contains(r.stderr, "NotFound") || !strings.Contains(r.stderr, "UNKNOWN_NODE") || r.stdout != "" {
			t.Fatalf("unknown node: %s", r)
		}
	})

	t.Run("limiter", func(t *testing.T) {
		r := mustCtl(t, 0, c.addr, "limiter", "-o", "json")
		var l Limiter
		decode(t, r, &l)
		truth, err := ac.GetLimiter(t.Context(), &ipledgerv1.GetLimiterRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Buckets) != len(truth.GetBuckets()) || len(l.Buckets) == 0 {
			t.Fatalf("%d buckets, server has %d", len(l.Buckets), len(truth.GetBuckets()))
		}
		for _, tb := range truth.GetBuckets() {
			found := false
			for _, b := range l.Buckets {
				if b.Name == tb.GetName() {
					found = b.Capacity == tb.GetCapacity() && b.RefillPerSecond == tb.GetRefillPerSecond() && reflect.DeepEqual(b.Actions, tb.GetActions())
				}
			}
			if !found {
				t.Fatalf("bucket %v not shown right in %+v", tb, l.Buckets)
			}
		}
		wantQueue := []string{"pod_waiting", "node_start", "warm_refill", "prewarm", "release", "reconcile"}
		var gotQueue []string
		for _, q := range l.Queue {
			gotQueue = append(gotQueue, q.Priority)
		}
		if !reflect.DeepEqual(gotQueue, wantQueue) {
			t.Fatalf("queue priorities %v", gotQueue)
		}
		assigns := uint64(0)
		for _, cc := range l.Calls {
			if cc.Action == "AssignPrivateIpAddresses" && cc.Outcome == "ok" {
				assigns = cc.Count
			}
		}
		if assigns < 6 {
			t.Fatalf("want at least 6 successful assigns (5 warm + pods), calls: %+v", l.Calls)
		}
		r = mustCtl(t, 0, c.addr, "limiter")
		if rows := tableRows(t, r.stdout, "BUCKET", "CAPACITY"); len(rows) != len(l.Buckets) {
			t.Fatalf("bucket table:\n%s", r.stdout)
		}
		if rows := tableRows(t, r.stdout, "PRIORITY", "WAITING"); len(rows) != 6 || rows[0][0] != "pod_waiting" {
			t.Fatalf("queue table:\n%s", r.stdout)
		}
		if rows := tableRows(t, r.stdout, "ACTION", "OUTCOME", "CALLS"); len(rows) == 0 {
			t.Fatalf("calls table:\n%s", r.stdout)
		}
	})

	t.Run("status", func(t *testing.T) {
		var st Status
		decode(t, mustCtl(t, 0, c.addr, "status", "-o", "json"), &st)
		if st.Server != c.addr || st.Replica != c.addr || !st.IsLeader || st.Leader != c.addr || !st.StoreHealthy ||
			st.ClusterName != "dev" || st.Nodes != 5 || st.Subnets != 6 || st.Revision <= 0 || st.ServerVersion == "" {
			t.Fatalf("status %+v", st)
		}
		r := mustCtl(t, 0, c.addr, "status")
		if !strings.Contains(r.stdout, "Answered by:") || !strings.Contains(r.stdout, c.addr+" (leader)") {
			t.Fatalf("status table:\n%s", r.stdout)
		}
	})

	t.Run("policies", func(t *testing.T) {
		var ps []Policy
		decode(t, mustCtl(t, 0, c.addr, "policies", "-o", "json"), &ps)
		if len(ps) != 1 || ps[0].Name != "default" || ps[0].Mode != "secondary_ip" || ps[0].AdaptiveFloor == nil || *ps[0].AdaptiveFloor != 1 {
			t.Fatalf("policies %+v", ps)
		}
		rows := tableRows(t, mustCtl(t, 0, c.addr, "policies").stdout, "NAME", "ORDER", "SELECTOR")
		if len(rows) != 1 || rows[0][0] != "default" {
			t.Fatalf("policy table %v", rows)
		}
	})

	t.Run("timeout", func(t *testing.T) {
		r := mustCtl(t, 1, c.addr, "subnets", "--timeout", "1ns")
		if !strings.Contains(r.stderr, "no answer from ipledger-server at "+c.addr+" within --timeout 1ns") {
			t.Fatalf("deadline: %s", r)
		}
	})

	t.Run("version", func(t *testing.T) {
		// The client's --version line, then the server's version and commit (both from
		// internal/version: in a test binary, what the Go toolchain recorded from git).
		want := version.Get()
		r := mustCtl(t, 0, c.addr, "version")
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 2 || lines[0] != want.String("ipledgerctl") ||
			lines[1] != "ipledger-server "+want.Version+" (commit "+shortCommit(want.Commit)+") at "+c.addr {
			t.Fatalf("version:\n%s", r.stdout)
		}
		var v VersionInfo
		decode(t, mustCtl(t, 0, c.addr, "version", "-o", "json"), &v)
		if v.Version != want.Version || v.Client != buildInfo(want) || v.Server == nil ||
			*v.Server != (ServerVersion{Address: c.addr, Replica: c.addr, Version: want.Version, Commit: want.Commit}) {
			t.Fatalf("version %+v", v)
		}
		var st Status
		decode(t, mustCtl(t, 0, c.addr, "status", "-o", "json"), &st)
		if st.ServerVersion != want.Version || st.ServerCommit != want.Commit {
			t.Fatalf("status says version %q commit %q, want %q %q", st.ServerVersion, st.ServerCommit, want.Version, want.Commit)
		}
		// --client asks nobody; without a server the client's line is printed and the exit is 1.
		closed := closedAddr(t)
		if r := mustCtl(t, 0, closed, "version", "--client"); r.stdout != want.String("ipledgerctl")+"\n" || r.stderr != "" {
			t.Fatalf("version --client: %s", r)
		}
		if r := mustCtl(t, 0, closed, "--version"); r.stdout != want.String("ipledgerctl")+"\n" {
			t.Fatalf("--version: %s", r)
		}
		r = mustCtl(t, ExitError, closed, "version")
		if r.stdout != want.String("ipledgerctl")+"\n" || !strings.Contains(r.stderr, "cannot reach ipledger-server at "+closed) {
			t.Fatalf("version without a server: %s", r)
		}
		decode(t, mustCtl(t, ExitError, closed, "version", "-o", "json"), &v)
		if v.Server != nil || v.Client.Commit != want.Commit {
			t.Fatalf("version -o json without a server: %+v", v)
		}
	})
}

func itoa(n uint32) string {
	b, _ := json.Marshal(n)
	return string(b)
}
