package version

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// stampedBinaries are the binaries of make build, with the arguments and environment that
// make them print their version line.
var stampedBinaries = []struct {
	name  string
	args  []string
	env   []string
	shows string // the name in the line ("": name)
}{
	{name: "ipledger-server", args: []string{"--version"}},
	// A broken configuration does not stop --version (it answers before reading any).
	{name: "ipledger-server", args: []string{"--version"}, env: []string{"IPLEDGER_CONFIG=/nonexistent/config.yaml", "IPLEDGER_GRPC_LISTEN=bogus"}},
	{name: "ipledger-agent", args: []string{"--version"}, env: []string{"IPLEDGER_AGENT_ADD_WAIT=bogus"}},
	{name: "ipledgerctl", args: []string{"--version"}},
	{name: "ipledgerctl", args: []string{"version", "--client"}},
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
		t.Run(b.name+" "+strings.Join(b.args, " "), func(t *testing.T) {
			path := filepath.Join(dir, b.name)
			if _, err := os.Stat(path); err != nil {
				t.Fatalf("make build did not build %s: %v", b.name, err)
			}
			cmd := exec.CommandContext(t.Context(), path, b.args...)
			cmd.Env = append(os.Environ(), b.env...)
			out, err := cmd.CombinedOutput()
			if err != nil && b.shows == "" {
				t.Errorf("%s %v: %v (want exit 0)\n%s", b.name, b.args, err, out)
			}
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

// ipledgerctl version against a running ipledger-server, both as make build stamped them:
// the server's line carries the same version and commit.
func TestVersionOfARunningServer(t *testing.T) {
	dir := os.Getenv("IPLEDGER_BIN_DIR")
	if dir == "" {
		t.Skip("IPLEDGER_BIN_DIR is not set (make test sets it after make build)")
	}
	commit, describe := os.Getenv("IPLEDGER_COMMIT"), os.Getenv("IPLEDGER_VERSION")
	if commit == "" || describe == "" {
		t.Skip("IPLEDGER_COMMIT and IPLEDGER_VERSION are not set (make test sets them)")
	}
	srv := exec.Command(filepath.Join(dir, "ipledger-server"), "--dev", "--insecure", "--data-dir", t.TempDir(),
		"--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--log-level", "warn")
	stderr, err := srv.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Process.Signal(os.Interrupt)
		_ = srv.Wait()
	})
	// "ipledger-server: gRPC on 127.0.0.1:PORT (plaintext), HTTP on ..."
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ipledger-server: gRPC on "); ok {
				addr <- strings.Fields(a)[0]
			}
		}
		close(addr)
	}()
	var grpcAddr string
	select {
	case grpcAddr = <-addr:
	case <-time.After(30 * time.Second):
		t.Fatal("ipledger-server did not say where it listens within 30 s")
	}
	if grpcAddr == "" {
		t.Fatal("ipledger-server exited before listening")
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.CommandContext(t.Context(), filepath.Join(dir, "ipledgerctl"), "--server", grpcAddr, "version").CombinedOutput()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err == nil && len(lines) == 2 {
			want := "ipledger-server " + describe + " (commit " + commit[:12] + ") at " + grpcAddr
			if lines[1] != want || !strings.HasPrefix(lines[0], "ipledgerctl "+describe+" (commit "+commit[:12]+", ") {
				t.Fatalf("ipledgerctl version:\n%s\nwant the client's and then %q", out, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ipledgerctl version: %v\n%s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
