package ctl

import (
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/ipledger/ipledger/server/instancetypes"
)

// max-pods gives what instancetypes.MaxPods computes, for each mode, in every format, with
// where to set it; it asks no server.
func TestMaxPods(t *testing.T) {
	nobody := closedAddr(t)
	for _, tc := range []struct {
		args []string
		typ  string
		o    instancetypes.MaxPodsOptions
	}{
		{[]string{"--instance-type", "m5.large"}, "m5.large", instancetypes.MaxPodsOptions{}},
		{[]string{"--instance-type", "m5.large", "--prefix"}, "m5.large", instancetypes.MaxPodsOptions{Prefix: true}},
		{[]string{"--instance-type", "m5.large", "--custom-networking"}, "m5.large", instancetypes.MaxPodsOptions{CustomNetworking: true}},
		{[]string{"--instance-type", "c6in.32xlarge", "--prefix", "--custom-networking"}, "c6in.32xlarge", instancetypes.MaxPodsOptions{Prefix: true, CustomNetworking: true}},
		{[]string{"--instance-type", "m5.4xlarge", "--vcpus", "31"}, "m5.4xlarge", instancetypes.MaxPodsOptions{VCPUs: 31}},
	} {
		typ, _ := instancetypes.Lookup(tc.typ)
		want, err := typ.MaxPods(tc.o)
		if err != nil {
			t.Fatal(err)
		}
		var d MaxPodsDoc
		decode(t, mustCtl(t, 0, nobody, append([]string{"max-pods", "-o", "json"}, tc.args...)...), &d)
		mode := "secondary_ip"
		if tc.o.Prefix {
			mode = "prefix"
		}
		if d.InstanceType != tc.typ || d.Mode != mode || d.CustomNetworking != tc.o.CustomNetworking || d.ENIs != want.ENIs || d.IPv4PerENI != typ.IPv4PerENI ||
			d.PodAddresses != want.PodAddresses || d.MaxAllowed != want.MaxAllowed || d.VCPUs != want.VCPUs || d.VCPUsEstimated != want.VCPUsEstimated ||
			d.Ceiling != want.Ceiling || d.Recommended != want.Recommended || len(d.WhereToSet) != 5 {
			t.Fatalf("%v: %+v, want %+v", tc.args, d, want)
		}
		n := strconv.Itoa(want.Recommended)
		for _, s := range d.WhereToSet {
			if s.Target != "eks_managed_node_group" && !strings.Contains(s.Setting, n) {
				t.Errorf("%v: %s says %q, not %s", tc.args, s.Target, s.Setting, n)
			}
		}
		var y MaxPodsDoc
		decodeYAML(t, mustCtl(t, 0, nobody, append([]string{"max-pods", "-o", "yaml"}, tc.args...)...), &y)
		if !reflect.DeepEqual(y, d) {
			t.Fatalf("YAML %+v differs from JSON %+v", y, d)
		}
		table := mustCtl(t, 0, nobody, append([]string{"max-pods"}, tc.args...)...).stdout
		for _, want := range []string{"Recommended:    " + n, "Max allowed:    " + strconv.Itoa(want.MaxAllowed), "maxPods: " + n, "--max-pods=" + n, "settings.kubernetes.max-pods = " + n, "Karpenter"} {
			if !strings.Contains(table, want) {
				t.Errorf("%v: the table lacks %q:\n%s", tc.args, want, table)
			}
		}
	}
	// Mistakes are exit 2, naming the flag; an unknown type gets the nearest names.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"max-pods"}, "--instance-type is required"},
		{[]string{"max-pods", "--instance-type", "m5.larg"}, `--instance-type "m5.larg" is not an EC2 instance type ipledger knows (did you mean m5.large,`},
		{[]string{"max-pods", "--instance-type", "m5.huge"}, `(did you mean m5.`},
		{[]string{"max-pods", "--instance-type", "m4.large", "--prefix"}, "--prefix: instancetypes: the instance type does not support prefix delegation: m4.large is xen-based"},
		{[]string{"max-pods", "--instance-type", "m5.large", "--vcpus", "-2"}, "--vcpus -2"},
		{[]string{"max-pods", "--instance-type", "m5.large", "--vcpus", "two"}, "(want a whole number)"},
	} {
		r := ctl(t, nobody, tc.args...)
		if r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("%v: want exit 2 saying %q, got %s", tc.args, tc.want, r)
		}
	}
}

// docs/max-pods.md's table (generated from instancetypes) is what max-pods answers.
func TestMaxPodsAgreesWithTheDocsTable(t *testing.T) {
	b, err := os.ReadFile("../../docs/max-pods.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	doc = doc[strings.Index(doc, "<!-- BEGIN max-pods table"):strings.Index(doc, "<!-- END max-pods table")]
	cellRE := regexp.MustCompile(`^(\d+)(?: \((\d+)\))?$`)
	rows := 0
	nobody := closedAddr(t)
	for _, line := range strings.Split(doc, "\n") {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if len(cells) != 7 || !strings.Contains(cells[0], ".") {
			continue
		}
		rows++
		for i, flags := range [][]string{nil, {"--prefix"}, {"--custom-networking"}, {"--custom-networking", "--prefix"}} {
			cell := cells[3+i]
			args := append([]string{"max-pods", "-o", "json", "--instance-type", cells[0]}, flags...)
			if strings.HasPrefix(cell, "no prefixes") {
				if r := ctl(t, nobody, args...); r.code != ExitUsage || !strings.Contains(r.stderr, "does not support prefix delegation") {
					t.Errorf("%v: the docs say %q, ipledgerctl: %s", args, cell, r)
				}
				continue
			}
			m := cellRE.FindStringSubmatch(cell)
			if m == nil {
				t.Fatalf("docs cell %q", cell)
			}
			allowed := m[1]
			if m[2] != "" {
				allowed = m[2]
			}
			var d MaxPodsDoc
			decode(t, mustCtl(t, 0, nobody, args...), &d)
			if strconv.Itoa(d.Recommended) != m[1] || strconv.Itoa(d.MaxAllowed) != allowed {
				t.Errorf("%v: recommended %d, max allowed %d; the docs say %q", args, d.Recommended, d.MaxAllowed, cell)
			}
		}
	}
	if rows < 40 {
		t.Fatalf("only %d rows read from the docs table", rows)
	}
}
