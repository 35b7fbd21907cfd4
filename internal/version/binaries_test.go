package version

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// stampedBinaries are the binaries of make build that answer --version so far, with the
// arguments and environment that make them print it. (ipledger-server, ipledger-agent and
// ipledgerctl join when they use this package.)
var stampedBinaries = []struct {
	name  string
	args  []string
	env   []string
	shows string // the name in the line ("": name)
}{
	{name: "ipledger-ec2sim", args: []string{"--version"}},
	{name: "ipledger-cni-install", args: []string{"--version"}},
	{name: "ipledger-bench", args: []string{"--version"}},
	{name: "ipledger-demo", args: []string{"--version"}},
	// A CNI plugin run without CNI_COMMAND prints its "about" line and the CNI versions.
	{name: "ipledger-cni", env: []string{"CNI_COMMAND="}, shows: "ipledger"},
}

// TestMakeBuildStampsEveryBinary checks the binaries make build put in $IPLEDGER_BIN_DIR (make
// test sets it): each reports the version and commit of the checkout it was built from.
func TestMakeBuildStampsEveryBinary(t *testing.T) {
	dir := os.Getenv("IPLEDGER_BIN_DIR")
	if dir == "" {
		t.Skip("IPLEDGER_BIN_DIR is not set (make test sets it after make build)")
	}
	git := func(args ...string) string {
		out, err := exec.CommandContext(t.Context(), "git", args...).Output()
		if err != nil {
			t.Skipf("git %v: %v (not a git checkout)", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	// make test passes what make build stamped; the checkout may have moved on since.
	commit, describe := os.Getenv("IPLEDGER_COMMIT"), strings.TrimSuffix(os.Getenv("IPLEDGER_VERSION"), "-dirty")
	if commit == "" {
		commit, describe = git("rev-parse", "HEAD"), git("describe", "--tags", "--always")
	}
	if got := git("describe", "--tags", "--always", commit); got != describe {
		t.Errorf("make build stamps version %s for commit %s; git describe says %s", describe, commit, got)
	}
	for _, b := range stampedBinaries {
		t.Run(b.name, func(t *testing.T) {
			path := filepath.Join(dir, b.name)
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("make build did not build %s: %v", b.name, err)
			}
			cmd := exec.CommandContext(t.Context(), path, b.args...)
			cmd.Env = append(os.Environ(), b.env...)
			out, _ := cmd.CombinedOutput()
			line := strings.SplitN(string(out), "\n", 2)[0]
			shows := b.shows
			if shows == "" {
				shows = b.name
			}
			// "ipledger-ec2sim <describe>[-dirty] (commit <12 hex>, <date>, go... os/arch)"
			if !strings.Contains(line, shows+" "+describe) || !strings.Contains(line, "(commit "+commit[:12]+", ") {
				t.Errorf("%s prints %q; want the version %s and commit %s of this checkout (rebuild with make build)", b.name, line, describe, commit[:12])
			}
			if strings.Contains(line, "unknown") || strings.Contains(line, " dev ") {
				t.Errorf("%s prints %q: not stamped", b.name, line)
			}
		})
	}
}
