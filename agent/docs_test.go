package agent

import (
	"flag"
	"os"
	"strings"
	"testing"
)

// Every flag of ipledger-agent is documented in docs/configuration.md.
func TestEveryFlagIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("ipledger-agent", flag.ContinueOnError)
	cfg := DefaultConfig()
	cfg.RegisterFlags(fs)
	n := 0
	fs.VisitAll(func(f *flag.Flag) {
		n++
		if !strings.Contains(string(doc), "`--"+f.Name+"`") {
			t.Errorf("--%s is not documented in docs/configuration.md", f.Name)
		}
	})
	if n < 20 {
		t.Fatalf("only %d flags registered; the test is not looking at the agent's flags", n)
	}
}
