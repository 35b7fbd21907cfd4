package config

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every metric the code registers is documented in docs/metrics.md, and the document names no
// metric the code does not have.
func TestEveryMetricIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	name := regexp.MustCompile(`"(ipledger_[a-z0-9_]+)"`)
	inCode := map[string]bool{}
	for _, dir := range []string{"../../server", "../../agent"} {
		filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			b, _ := os.ReadFile(path)
			for _, m := range name.FindAllStringSubmatch(string(b), -1) {
				inCode[m[1]] = true
			}
			return nil
		})
	}
	if len(inCode) < 20 {
		t.Fatalf("found only %d metrics in the code; the scan is broken", len(inCode))
	}
	for m := range inCode {
		if !strings.Contains(string(doc), "`"+m+"`") {
			t.Errorf("%s is registered but not documented in docs/metrics.md", m)
		}
	}
	for _, m := range regexp.MustCompile("`(ipledger_[a-z0-9_]+)`").FindAllStringSubmatch(string(doc), -1) {
		if !inCode[m[1]] {
			t.Errorf("docs/metrics.md documents %s, which the code does not register", m[1])
		}
	}
}
