package config

import (
	"flag"
	"os"
	"strings"
	"testing"
)

// Every flag of ipledger-server is documented in docs/configuration.md.
func TestEveryFlagIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	FlagSet("ipledger-server").VisitAll(func(f *flag.Flag) {
		if !strings.Contains(string(doc), "`--"+f.Name+"`") {
			t.Errorf("--%s is not documented in docs/configuration.md", f.Name)
		}
	})
}
