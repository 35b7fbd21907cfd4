package ctl

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestDocsCoverEveryCommandAndField keeps docs/ipledgerctl.md in step with the code: every
// command has a section and every JSON field name of every output document is documented.
func TestDocsCoverEveryCommandAndField(t *testing.T) {
	b, err := os.ReadFile("../../docs/ipledgerctl.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	commands := leaves(testRoot())
	if len(commands) < 18 {
		t.Fatalf("only %d commands in the tree", len(commands))
	}
	for _, c := range commands {
		if !strings.Contains(doc, "### `"+cmdPath(c)) {
			t.Errorf("docs/ipledgerctl.md has no section for %q", cmdPath(c))
		}
	}
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type)
	walk = func(typ reflect.Type) {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct || seen[typ] || typ.PkgPath() != reflect.TypeFor[Subnet]().PkgPath() {
			return
		}
		seen[typ] = true
		for f := range typ.Fields() {
			if f.Anonymous {
				walk(f.Type)
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				t.Errorf("%s.%s has no JSON name", typ.Name(), f.Name)
				continue
			}
			if !strings.Contains(doc, "`"+name+"`") {
				t.Errorf("field %q of %s is not documented", name, typ.Name())
			}
			walk(f.Type)
		}
	}
	for _, v := range []any{Subnet{}, NodeSummary{}, NodeDetail{}, Limiter{}, Reservation{}, Fit{}, Policy{}, Report{}, Status{}, Deleted{}, VersionInfo{}, Identity{}, ContextsDoc{}, CurrentContextDoc{}, MaxPodsDoc{}, BackupDoc{}, LaunchHintDoc{}} {
		walk(reflect.TypeOf(v))
	}
}
