package e2e

import (
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ipledger/ipledger/e2e/harness"
	"github.com/ipledger/ipledger/server/servertest"
)

// runServer runs ipledger-server with args to its end and returns its exit code and output.
func runServer(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(harness.Binary(t, "ipledger-server"), args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, string(out)
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out)
	}
	t.Fatalf("ipledger-server %v: %v", args, err)
	return -1, ""
}

// What a new user of ipledger-server sees first: settings that cannot work are refused at
// start (exit 2) naming the setting and what to do, before etcd starts; --help tells the truth
// about the region; --dev at --log-level warn prints its three lines and nothing of embedded
// etcd's.
func TestServerFirstContact(t *testing.T) {
	dataDir := t.TempDir()
	noEtcd := func(what string) {
		t.Helper()
		if _, err := os.Stat(filepath.Join(dataDir, "etcd")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s: embedded etcd was started (%s/etcd: %v)", what, dataDir, err)
		}
	}
	code, out := runServer(t, "--dev", "--data-dir", dataDir, "--etcd-endpoints", "http://127.0.0.1:2379")
	if code != 2 || !strings.Contains(out, "invalid setting etcd-endpoints: --dev runs embedded etcd") || !strings.Contains(out, "Leave out --etcd-endpoints for --dev") {
		t.Fatalf("--dev with --etcd-endpoints: exit %d\n%s", code, out)
	}
	noEtcd("--dev --etcd-endpoints")
	port := harness.FreePort(t)
	code, out = runServer(t, "--dev", "--data-dir", dataDir, "--grpc-listen", port, "--http-listen", port)
	if code != 2 || !strings.Contains(out, "invalid setting http-listen: \""+port+"\" uses the port of --grpc-listen") {
		t.Fatalf("one port for gRPC and HTTP: exit %d\n%s", code, out)
	}
	noEtcd("one port for gRPC and HTTP")
	code, out = runServer(t, "--help")
	if code != 0 || !strings.Contains(out, "-region") || !strings.Contains(out, "required (ipledger-server does not read AWS_REGION") ||
		strings.Contains(out, "from the AWS configuration chain") {
		t.Fatalf("--help about the region: exit %d\n%s", code, out)
	}

	grpcAddr, httpAddr := harness.FreePort(t), harness.FreePort(t)
	p := startProc(t, harness.Binary(t, "ipledger-server"), "--dev", "--data-dir", dataDir, "--grpc-listen", grpcAddr,
		"--http-listen", httpAddr, "--log-level", "warn")
	servertest.WaitFor(t, 30*time.Second, "the server to lead", func() bool {
		resp, err := http.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	p.stop(t)
	lines := strings.Split(strings.TrimSpace(p.output()), "\n")
	for _, l := range lines {
		if !strings.HasPrefix(l, "ipledger-server: ") {
			t.Errorf("--log-level warn printed %q", l)
		}
	}
	if len(lines) != 3 {
		t.Errorf("want the three lines of where things are, got %d:\n%s", len(lines), p.output())
	}
}
