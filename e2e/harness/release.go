package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Release is an earlier release's binaries, built from the repository's own history.
type Release struct {
	// Commit is the full commit hash they were built from; Version the version they report.
	Commit, Version string
	// Server and Agent are the ipledger-server and ipledger-agent binaries.
	Server, Agent string
	// PluginDir holds the release's CNI plugin as "ipledger" (a CNI_PATH directory).
	PluginDir string
	// Built says whether this call built them (false: found from an earlier run in
	// $IPLEDGER_BIN_DIR); Took is how long finding or building them took.
	Built bool
	Took  time.Duration
}

// releaseCmds are the packages of an earlier release the upgrade test runs, and the names the
// harness gives their binaries.
var releaseCmds = []struct{ pkg, out, name string }{
	{"./server/cmd/ipledger-server", "ipledger-server", "ipledger-server"},
	{"./agent/cmd/ipledger-agent", "ipledger-agent", "ipledger-agent"},
	{"./cni/cmd/ipledger-cni", "ipledger-cni", PluginName},
}

// PreviousRelease builds ipledger-server, ipledger-agent and the plugin of commit (a commit of
// the repository this test runs in, found with git from the working directory): it extracts the
// commit with `git archive` into a temporary directory and runs `go build -trimpath` there
// (-trimpath keeps the compiled packages independent of the directory, so the Go build cache
// makes a warm build a matter of linking). linkFlags are -X flags for the release's own version
// variable (its binaries then report version). With $IPLEDGER_BIN_DIR set (make test), the
// binaries are kept in $IPLEDGER_BIN_DIR/release-<commit>/ and reused by later runs.
//
// It fails the test, saying why and what to do, when there is no git history (an archive
// without .git) or the commit is not in it (a shallow clone): the upgrade test must never pass
// by skipping its upgrade.
func PreviousRelease(t testing.TB, commit, version string, linkFlags ...string) Release {
	t.Helper()
	began := time.Now()
	git := func(args ...string) (string, error) {
		out, err := exec.Command("git", args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return strings.TrimSpace(string(out)), nil
	}
	root, err := git("rev-parse", "--show-toplevel")
	if err != nil {
		t.Fatalf("harness: the upgrade test builds the previous release (commit %s) from the repository's git history, and there is none here (%v): run it in a git clone, not in an archive without .git", commit, err)
	}
	full, err := git("-C", root, "rev-parse", "--verify", "--quiet", commit+"^{commit}")
	if err != nil {
		t.Fatalf("harness: the previous release's commit %s is not in the history of %s (%v): a shallow clone? run git fetch --unshallow", commit, root, err)
	}
	rel := Release{Commit: full, Version: version}
	dir := ""
	if bin := os.Getenv(BinDirEnv); bin != "" {
		dir = filepath.Join(bin, "release-"+full)
	} else {
		dir = filepath.Join(t.TempDir(), "release-"+full)
	}
	rel.Server, rel.Agent, rel.PluginDir = filepath.Join(dir, "ipledger-server"), filepath.Join(dir, "ipledger-agent"), dir
	have := true
	for _, c := range releaseCmds {
		have = have && isExecutable(filepath.Join(dir, c.name))
	}
	if have {
		rel.Took = time.Since(began)
		return rel
	}
	src := t.TempDir()
	archive := exec.Command("git", "-C", root, "archive", "--format=tar", full)
	extract := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	extract.Stdin = pipe
	var archiveErr, extractErr strings.Builder
	archive.Stderr, extract.Stderr = &archiveErr, &extractErr
	if err := extract.Start(); err != nil {
		t.Fatalf("harness: tar: %v", err)
	}
	if err := archive.Run(); err != nil {
		_ = extract.Wait()
		t.Fatalf("harness: git archive %s: %v: %s", full, err, archiveErr.String())
	}
	if err := extract.Wait(); err != nil {
		t.Fatalf("harness: extract git archive %s: %v: %s", full, err, extractErr.String())
	}
	out := filepath.Join(src, "bin")
	args := []string{"build", "-trimpath"}
	if len(linkFlags) > 0 {
		args = append(args, "-ldflags", strings.Join(linkFlags, " "))
	}
	args = append(args, "-o", out+string(filepath.Separator))
	for _, c := range releaseCmds {
		args = append(args, c.pkg)
	}
	build := exec.Command(goTool(), args...)
	build.Dir = src
	// The release's own go.mod and go.sum decide its modules; nothing from the test's
	// environment changes the build (no -race, no workspace).
	build.Env = append(os.Environ(), "GOFLAGS=", "GOWORK=off")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("harness: build the previous release %s (go %s in %s): %v\n%s", full, strings.Join(args, " "), src, err, b)
	}
	// Into place: a directory of its own first, renamed whole, so that a run killed half way
	// never leaves a partial set to be reused.
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".release-")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range releaseCmds {
		if err := os.Rename(filepath.Join(out, c.out), filepath.Join(tmp, c.name)); err != nil {
			t.Fatal(err)
		}
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatal(err)
	}
	rel.Built, rel.Took = true, time.Since(began)
	return rel
}
