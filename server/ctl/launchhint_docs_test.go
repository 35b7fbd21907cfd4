package ctl

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

// launchHintExamples are the hints docs/operations.md shows, computed by the code the server
// serves them with (policy.ComputeLaunchHint, api.LaunchHintToProto) and printed by the code
// launch-hint prints them with.
func launchHintExamples(t *testing.T) map[string]LaunchHintDoc {
	t.Helper()
	typ, ok := instancetypes.Lookup("m5.xlarge")
	if !ok {
		t.Fatal("m5.xlarge unknown")
	}
	web := policy.Policy{Name: "web", Order: 10, Mode: ledger.ModeSecondaryIP, Selector: policy.Selector{Labels: map[string]string{"node.kubernetes.io/pool": "web"}}}
	roomy := []policy.LaunchSubnet{{ID: "subnet-0a1b2c3d4e5f60718", Free: 3900, FreeBlocks: 230}}
	shared := []policy.LaunchSubnet{{ID: "subnet-0a1b2c3d4e5f60718", Free: 3900, FreeBlocks: 230, PrefixNodes: 12}}
	doc := func(in policy.LaunchInputs) LaunchHintDoc {
		return launchHintDoc(api.LaunchHintToProto(policy.ComputeLaunchHint(in)))
	}
	return map[string]LaunchHintDoc{
		"web":        doc(policy.LaunchInputs{Policy: web, Type: typ, FirstMinute: 6, Observed: 14, Subnets: roomy}),
		"web-shared": doc(policy.LaunchInputs{Policy: web, Type: typ, FirstMinute: 6, Observed: 14, Subnets: shared}),
	}
}

func renderExample(t *testing.T, d LaunchHintDoc, format string) string {
	t.Helper()
	if format == "table" {
		var b strings.Builder
		tw := newTable(&b)
		launchHintTable(tw, d)
		if err := tw.Flush(); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	s, err := RenderSnippet(d, format, SnippetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var exampleRE = regexp.MustCompile("(?s)<!-- launch-hint example=([a-z-]+) format=([a-z-]+) -->\n```([a-z]*)\n(.*?)```\n")

// TestDocsLaunchHintSnippets: every snippet of docs/operations.md is what launch-hint prints for
// its example; with IPLEDGER_UPDATE_DOCS=1 the test writes them instead.
func TestDocsLaunchHintSnippets(t *testing.T) {
	const path = "../../docs/operations.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	examples := launchHintExamples(t)
	seen := map[string]bool{}
	var failed bool
	out := exampleRE.ReplaceAllStringFunc(string(b), func(block string) string {
		m := exampleRE.FindStringSubmatch(block)
		name, format, lang, got := m[1], m[2], m[3], m[4]
		d, ok := examples[name]
		if !ok {
			t.Errorf("docs: unknown launch-hint example %q", name)
			return block
		}
		seen[format] = true
		want := renderExample(t, d, format)
		if got != want {
			failed = true
			t.Errorf("docs/operations.md: example %s, -o %s differs from what launch-hint prints:\n--- docs\n%s--- launch-hint\n%s", name, format, got, want)
		}
		return fmt.Sprintf("<!-- launch-hint example=%s format=%s -->\n```%s\n%s```\n", name, format, lang, want)
	})
	for _, f := range append([]string{"table"}, SnippetFormats...) {
		if !seen[f] {
			t.Errorf("docs/operations.md shows no launch-hint -o %s", f)
		}
	}
	if failed && os.Getenv("IPLEDGER_UPDATE_DOCS") == "1" {
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("docs/operations.md rewritten")
	}
	// The Karpenter note is in the docs as launch-hint prints it.
	if !strings.Contains(strings.Join(strings.Fields(strings.ReplaceAll(string(b), "\n> ", "\n")), " "), KarpenterNote) {
		t.Errorf("docs/operations.md does not quote the Karpenter note as launch-hint prints it:\n%s", KarpenterNote)
	}
}

// TestLaunchHintSnippetsCarryTheSelectorTags: policies match the instance's EC2 tags, so every
// snippet for a policy that selects by tags launches its instances with them, and one for a
// policy without a selector adds no tags.
func TestLaunchHintSnippetsCarryTheSelectorTags(t *testing.T) {
	web := launchHintExamples(t)["web"]
	lt, err := RenderSnippet(web, FormatLaunchTemplate, SnippetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var data struct {
		NetworkInterfaces []map[string]any
		TagSpecifications []struct {
			ResourceType string
			Tags         []struct{ Key, Value string }
		}
	}
	if err := json.Unmarshal([]byte(lt), &data); err != nil {
		t.Fatalf("%v\n%s", err, lt)
	}
	if len(data.TagSpecifications) != 1 || data.TagSpecifications[0].ResourceType != "instance" ||
		len(data.TagSpecifications[0].Tags) != 1 || data.TagSpecifications[0].Tags[0].Key != "node.kubernetes.io/pool" || data.TagSpecifications[0].Tags[0].Value != "web" {
		t.Fatalf("launch template without the policy's instance tags:\n%s", lt)
	}
	for format, want := range map[string]string{
		FormatCLI:       "TagSpecifications=[{ResourceType=instance,Tags=[{Key=node.kubernetes.io/pool,Value=web}]}]'",
		FormatEksctl:    "EC2 tags node.kubernetes.io/pool=web",
		FormatTerraform: "\"node.kubernetes.io/pool\" = \"web\"",
	} {
		s, err := RenderSnippet(web, format, SnippetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(s, want) {
			t.Errorf("-o %s lacks %q:\n%s", format, want, s)
		}
	}
	bare := web
	bare.NodeLabels = nil
	for _, f := range SnippetFormats {
		s, err := RenderSnippet(bare, f, SnippetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.ToLower(s), "tag") {
			t.Errorf("-o %s for a policy without a selector mentions tags:\n%s", f, s)
		}
	}
}
