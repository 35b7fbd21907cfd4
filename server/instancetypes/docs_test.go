package instancetypes

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the generated table in docs/max-pods.md")

const (
	maxPodsDoc   = "../../docs/max-pods.md"
	tableBegin   = "<!-- BEGIN max-pods table (generated) -->\n"
	tableEnd     = "<!-- END max-pods table -->\n"
	tableHeading = "| instance type | ENIs (card 0) × IPv4 | vCPUs (estimated) | secondary IP | prefix | custom networking | custom networking + prefix |\n|---|---|---|---|---|---|---|\n"
)

// docTypes are the types the table shows: common EKS node types, a Xen type and a type with
// two network cards.
var docTypes = []string{
	"t3.medium", "t3.large", "t3.xlarge", "t3.2xlarge",
	"m5.large", "m5.xlarge", "m5.2xlarge", "m5.4xlarge", "m5.8xlarge", "m5.12xlarge", "m5.24xlarge",
	"m6i.large", "m6i.xlarge", "m6i.2xlarge", "m6i.4xlarge", "m6i.8xlarge", "m6i.16xlarge", "m6i.32xlarge",
	"m7i.large", "m7i.xlarge", "m7i.2xlarge", "m7i.4xlarge", "m7i.8xlarge", "m7i.48xlarge",
	"m7g.medium", "m7g.large", "m7g.xlarge", "m7g.2xlarge", "m7g.4xlarge", "m7g.16xlarge",
	"c6i.large", "c6i.xlarge", "c6i.2xlarge", "c6i.4xlarge", "c6i.8xlarge",
	"c7g.large", "c7g.xlarge", "c7g.2xlarge", "c7g.4xlarge",
	"r6i.large", "r6i.xlarge", "r6i.2xlarge", "r6i.4xlarge", "r6i.8xlarge",
	"m4.large", "m4.xlarge", "c6in.32xlarge",
}

// maxPodsTable renders the docs table from MaxPods.
func maxPodsTable(names []string) (string, error) {
	var b strings.Builder
	b.WriteString(tableHeading)
	for _, name := range names {
		typ, ok := Lookup(name)
		if !ok {
			return "", fmt.Errorf("%s is not a known type", name)
		}
		cell := func(o MaxPodsOptions) (string, error) {
			m, err := typ.MaxPods(o)
			switch {
			case errors.Is(err, ErrNoPrefixes):
				return "no prefixes (Xen)", nil
			case errors.Is(err, ErrNoPodENIs):
				return "no pod ENI", nil
			case err != nil:
				return "", err
			case m.Recommended < m.MaxAllowed:
				return fmt.Sprintf("%d (%d)", m.Recommended, m.MaxAllowed), nil
			}
			return fmt.Sprint(m.Recommended), nil
		}
		cells := []string{name, fmt.Sprintf("%d × %d", typ.MaxENIsPerCard(), typ.IPv4PerENI), fmt.Sprint(EstimateVCPUs(name))}
		if typ.NetworkCards > 1 {
			cells[1] = fmt.Sprintf("%d of %d × %d", typ.MaxENIsPerCard(), typ.MaxENIs, typ.IPv4PerENI)
		}
		for _, o := range []MaxPodsOptions{{}, {Prefix: true}, {CustomNetworking: true}, {CustomNetworking: true, Prefix: true}} {
			c, err := cell(o)
			if err != nil {
				return "", fmt.Errorf("%s: %w", name, err)
			}
			cells = append(cells, c)
		}
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	return b.String(), nil
}

func TestDocsTable(t *testing.T) {
	want, err := maxPodsTable(docTypes)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(maxPodsDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	i, j := strings.Index(doc, tableBegin), strings.Index(doc, tableEnd)
	if i < 0 || j < i {
		t.Fatalf("%s has no generated table between %q and %q", maxPodsDoc, tableBegin, tableEnd)
	}
	got := doc[i+len(tableBegin) : j]
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile(maxPodsDoc, []byte(doc[:i+len(tableBegin)]+want+doc[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote the table in %s", maxPodsDoc)
		return
	}
	t.Errorf("the table in %s differs from instancetypes.MaxPods; run go test ./server/instancetypes -run TestDocsTable -update\nwant:\n%s", maxPodsDoc, want)
}
