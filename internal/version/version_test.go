package version

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestResolve(t *testing.T) {
	vcs := func(rev, when, modified string) *debug.BuildInfo {
		bi := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/ipledger/ipledger", Version: "(devel)"}}
		for k, v := range map[string]string{"vcs.revision": rev, "vcs.time": when, "vcs.modified": modified} {
			if v != "" {
				bi.Settings = append(bi.Settings, debug.BuildSetting{Key: k, Value: v})
			}
		}
		return bi
	}
	const rev = "117a7bd2c4e1f00dfeedbeef0000111122223333"
	tests := []struct {
		name                  string
		version, commit, date string
		bi                    *debug.BuildInfo
		want                  Info
	}{
		{"stamped wins", "v0.1.0", rev, "2026-12-07T10:00:00Z", vcs("ffff", "2020-01-01T00:00:00Z", "true"),
			Info{Version: "v0.1.0", Commit: rev, Date: "2026-12-07T10:00:00Z"}},
		{"from git, clean", "", "", "", vcs(rev, "2026-12-07T10:00:00Z", "false"),
			Info{Version: "117a7bd2c4e1", Commit: rev, Date: "2026-12-07T10:00:00Z"}},
		{"from git, modified", "", "", "", vcs(rev, "2026-12-07T10:00:00Z", "true"),
			Info{Version: "117a7bd2c4e1-dirty", Commit: rev, Date: "2026-12-07T10:00:00Z"}},
		{"module version from tags", "", "", "", func() *debug.BuildInfo {
			bi := vcs(rev, "2026-12-07T10:00:00Z", "false")
			bi.Main.Version = "v0.1.0"
			return bi
		}(), Info{Version: "v0.1.0", Commit: rev, Date: "2026-12-07T10:00:00Z"}},
		{"nothing known", "", "", "", vcs("", "", ""), Info{Version: "dev", Commit: "unknown", Date: "unknown"}},
		{"no build info", "", "", "", nil, Info{Version: "dev", Commit: "unknown", Date: "unknown"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := resolve(tt.version, tt.commit, tt.date, tt.bi)
			got.GoVersion, got.Platform = "", ""
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestStringFormat(t *testing.T) {
	i := Info{Version: "v0.1.0", Commit: "117a7bd2c4e1f00dfeedbeef", Date: "2026-12-07T10:00:00Z", GoVersion: "go1.26.8", Platform: "linux/amd64"}
	if got, want := i.String("ipledger-x"), "ipledger-x v0.1.0 (commit 117a7bd2c4e1, 2026-12-07T10:00:00Z, go1.26.8 linux/amd64)"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestLinkerStamps builds a program with the -X flags make build passes and checks that they
// reach the output: a misspelt symbol would be silently ignored by the linker.
func TestLinkerStamps(t *testing.T) {
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	out := filepath.Join(t.TempDir(), "stamped")
	const pkg = "github.com/ipledger/ipledger/internal/version"
	ldflags := "-X " + pkg + ".Version=v9.8.7-test -X " + pkg + ".Commit=0123456789abcdef0123 -X " + pkg + ".Date=2026-12-07T10:00:00Z"
	build := exec.CommandContext(t.Context(), goBin, "build", "-ldflags", ldflags, "-o", out, "./testdata/stamped")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	b, err := exec.CommandContext(t.Context(), out).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := "stamped v9.8.7-test (commit 0123456789ab, 2026-12-07T10:00:00Z, " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + ")"
	if got := strings.TrimSpace(string(b)); got != want {
		t.Errorf("stamped binary prints %q, want %q", got, want)
	}
}
