package ctl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/servertest"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestWriteCommands(t *testing.T) {
	c := startCluster(t)
	ac := admin(t, c.addr)
	first := c.agents[0]
	subnet := first.Inst.SubnetID

	budgetOf := func(t *testing.T) *ipledgerv1.SubnetBudget {
		t.Helper()
		resp, err := ac.ListSubnets(t.Context(), &ipledgerv1.ListSubnetsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range resp.GetSubnets() {
			if b.GetSubnetId() == subnet {
				return b
			}
		}
		t.Fatalf("subnet %s not listed", subnet)
		return nil
	}

	t.Run("subnet budget", func(t *testing.T) {
		var doc Subnet
		decode(t, mustCtl(t, 0, c.addr, "subnet", "budget", subnet, "--max-held", "100", "--keep-free", "20", "-o", "json"), &doc)
		b := budgetOf(t)
		if b.GetMaxHeld() != 100 || b.GetKeepFree() != 20 || doc.MaxHeld != 100 || doc.KeepFree != 20 || doc.SubnetID != subnet || doc.Headroom != b.GetHeadroom() {
			t.Fatalf("budget: printed %+v, server has %v", doc, b)
		}
		// A flag left out keeps its value.
		r := mustCtl(t, 0, c.addr, "subnet", "budget", subnet, "--keep-free", "7")
		if b := budgetOf(t); b.GetMaxHeld() != 100 || b.GetKeepFree() != 7 {
			t.Fatalf("--keep-free alone changed max_held: %v", b)
		}
		rows := tableRows(t, r.stdout, "SUBNET", "AZ", "CIDR")
		if len(rows) != 1 || rows[0][0] != subnet || rows[0][11] != "max=100" || rows[0][12] != "keep=7" {
			t.Fatalf("budget table %v", rows)
		}
		subnets := mustCtl(t, 0, c.addr, "subnets").stdout
		if !strings.Contains(subnets, "max=100 keep=7") {
			t.Fatalf("subnets does not show the budget:\n%s", subnets)
		}
		// The server refuses what it must refuse, and says why.
		r = mustCtl(t, 1, c.addr, "subnet", "budget", subnet, "--max-held", "100000")
		if !strings.Contains(r.stderr, "InvalidArgument") || !strings.Contains(r.stderr, "INVALID_ARGUMENT") || !strings.Contains(r.stderr, "field=") {
			t.Fatalf("too large a budget: %s", r)
		}
		r = mustCtl(t, 1, c.addr, "subnet", "budget", "subnet-0123456789abcdef0", "--max-held", "10", "--keep-free", "0")
		if !strings.Contains(r.stderr, "NotFound") {
			t.Fatalf("unknown subnet: %s", r)
		}
		mustCtl(t, 0, c.addr, "subnet", "budget", subnet, "--max-held", "0", "--keep-free", "0")
		if b := budgetOf(t); b.GetMaxHeld() != 0 || b.GetKeepFree() != 0 {
			t.Fatalf("budget not removed: %v", b)
		}
	})

	t.Run("drain", func(t *testing.T) {
		node := c.agents[1]
		var d NodeDetail
		decode(t, mustCtl(t, 0, c.addr, "drain", node.Name(), "-o", "json"), &d)
		if !d.Draining || d.NodeName != node.Name() {
			t.Fatalf("drain printed %+v", d)
		}
		rec, ok := c.s.Ledger().Node(node.Name())
		if !ok || !rec.Draining {
			t.Fatalf("the ledger does not have %s draining", node.Name())
		}
		// Its unused warm address goes back.
		servertest.WaitFor(t, 15*time.Second, "the drained node's warm address released", func() bool {
			n, ok := c.s.Ledger().NodeCounts(node.Name())
			return ok && n.Leased == 0
		})
		var nd []NodeSummary
		decode(t, mustCtl(t, 0, c.addr, "nodes", "-o", "json"), &nd)
		for _, n := range nd {
			if n.Draining != (n.NodeName == node.Name()) {
				t.Fatalf("nodes shows draining=%v for %s", n.Draining, n.NodeName)
			}
		}
		r := mustCtl(t, 0, c.addr, "drain", node.Name(), "--undo")
		if !strings.Contains(r.stdout, "no longer draining") {
			t.Fatalf("undo: %s", r)
		}
		if rec, _ := c.s.Ledger().Node(node.Name()); rec.Draining {
			t.Fatal("undo left the node draining")
		}
		node.waitAddresses(1)
		r = mustCtl(t, 1, c.addr, "drain", "ghost")
		if !strings.Contains(r.stderr, "UNKNOWN_NODE") {
			t.Fatalf("drain of an unknown node: %s", r)
		}
	})

	t.Run("policy set and delete", func(t *testing.T) {
		file := writeFile(t, "batch.yaml", `
name: batch
order: 5
selector:
  labels: {ipledger.io/test: ctl}
  instance_types: [m5.large]
mode: secondary_ip
warm_ip_target: 2
minimum_ip_target: 4
`)
		var p Policy
		decode(t, mustCtl(t, 0, c.addr, "policy", "set", "-f", file, "-o", "json"), &p)
		if p.Name != "batch" || p.Order != 5 || p.WarmIPTarget == nil || *p.WarmIPTarget != 2 || p.MinimumIPTarget == nil || *p.MinimumIPTarget != 4 {
			t.Fatalf("set printed %+v", p)
		}
		resp, err := ac.ListPolicies(t.Context(), &ipledgerv1.ListPoliciesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var stored *ipledgerv1.NodePolicy
		for _, sp := range resp.GetPolicies() {
			if sp.GetName() == "batch" {
				stored = sp
			}
		}
		if stored == nil || stored.GetWarmIpTarget() != 2 || stored.GetMinimumIpTarget() != 4 || stored.GetSelector().GetLabels()["ipledger.io/test"] != "ctl" ||
			stored.GetSelector().GetInstanceTypes()[0] != "m5.large" || stored.GetMode() != ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP {
			t.Fatalf("server stored %v", stored)
		}
		// Every node matches it now and grows to the minimum.
		first.waitAddresses(4)
		var nd NodeDetail
		decode(t, mustCtl(t, 0, c.addr, "node", first.Name(), "-o", "json"), &nd)
		if nd.Policy != "batch" || nd.PolicyDetail == nil || nd.PolicyDetail.Name != "batch" {
			t.Fatalf("node policy %q %+v", nd.Policy, nd.PolicyDetail)
		}

		// What policies -o yaml prints can be set again as it is (JSON too, camelCase too).
		var ps []Policy
		decodeYAML(t, mustCtl(t, 0, c.addr, "policies", "-o", "yaml"), &ps)
		if len(ps) != 2 || ps[0].Name != "batch" || ps[1].Name != "default" {
			t.Fatalf("policies %+v", ps)
		}
		var listed []map[string]any
		decodeYAML(t, mustCtl(t, 0, c.addr, "policies", "-o", "yaml"), &listed)
		listed[0]["order"] = 6
		one, err := yaml.Marshal(listed[0])
		if err != nil {
			t.Fatal(err)
		}
		var again Policy
		decode(t, mustCtl(t, 0, c.addr, "policy", "set", "-f", writeFile(t, "again.yaml", string(one)), "-o", "json"), &again)
		if again.Order != 6 || again.Name != "batch" || *again.WarmIPTarget != 2 || again.Selector.InstanceTypes[0] != "m5.large" {
			t.Fatalf("policy set from policies -o yaml: %+v", again)
		}
		mustCtl(t, 0, c.addr, "policy", "set", "-f", writeFile(t, "camel.json", `{"name":"camel","order":7,"warmIpTarget":3,"mode":"ADDRESS_MODE_SECONDARY_IP"}`))

		// Invalid for the server: exit 1 with its INVALID_ARGUMENT message; nothing changes.
		r := mustCtl(t, 1, c.addr, "policy", "set", "-f", writeFile(t, "bad.yaml", "name: bad\nwarm_prefix_target: 1\n"))
		if !strings.Contains(r.stderr, "InvalidArgument") || !strings.Contains(r.stderr, "INVALID_ARGUMENT") || !strings.Contains(r.stderr, "field=policy") {
			t.Fatalf("invalid policy: %s", r)
		}
		// Malformed files: exit 2 before anything is sent.
		for name, content := range map[string]string{
			"syntax.yaml":  "name: [unclosed\n",
			"unknown.yaml": "name: x\nwarm_ip_targett: 3\n",
			"type.yaml":    "name: x\nwarm_ip_target: lots\n",
			"list.yaml":    "- name: x\n",
			"empty.yaml":   "\n",
		} {
			r := mustCtl(t, 2, c.addr, "policy", "set", "-f", writeFile(t, name, content))
			if !strings.Contains(r.stderr, name) || !strings.Contains(r.stderr, "help policy set") {
				t.Fatalf("%s: %s", name, r)
			}
		}
		if resp, _ := ac.ListPolicies(t.Context(), &ipledgerv1.ListPoliciesRequest{}); len(resp.GetPolicies()) != 3 {
			t.Fatalf("bad files changed the policies: %v", resp.GetPolicies())
		}

		mustCtl(t, 0, c.addr, "policy", "delete", "camel")
		var del Deleted
		decode(t, mustCtl(t, 0, c.addr, "policy", "delete", "batch", "-o", "json"), &del)
		if del.Deleted != "batch" {
			t.Fatalf("delete printed %+v", del)
		}
		resp, err = ac.ListPolicies(t.Context(), &ipledgerv1.ListPoliciesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetPolicies()) != 1 || resp.GetPolicies()[0].GetName() != "default" {
			t.Fatalf("after delete: %v", resp.GetPolicies())
		}
		r = mustCtl(t, 1, c.addr, "policy", "delete", "batch")
		if !strings.Contains(r.stderr, "NotFound") {
			t.Fatalf("second delete: %s", r)
		}
	})
}
