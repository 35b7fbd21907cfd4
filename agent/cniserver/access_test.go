package cniserver

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// helperSocketEnv makes the test binary a client that calls Status on the socket it names
// (TestHelperCNIClient), so the tests can run it under another uid and gid.
const helperSocketEnv = "IPLEDGER_CNISERVER_HELPER_SOCKET"

// TestHelperCNIClient is not a test: run with helperSocketEnv set, it calls CNIService.Status on
// that socket and exits 0 when the call succeeds, 13 when the socket refused the connection
// (EACCES), 1 otherwise.
func TestHelperCNIClient(t *testing.T) {
	socket := os.Getenv(helperSocketEnv)
	if socket == "" {
		t.Skip("helper process for TestSocketReachableOnlyByRootAndItsGroup")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := dial(t, socket).Status(ctx, &ipledgerv1.CNIStatusRequest{})
	switch {
	case err == nil:
		os.Exit(0)
	case strings.Contains(err.Error(), "permission denied"):
		io.WriteString(os.Stderr, err.Error())
		os.Exit(13)
	}
	io.WriteString(os.Stderr, err.Error())
	os.Exit(1)
}

// The CNI socket is reachable only by root and its group: a process of another user outside the
// group is refused at connect; one in the group (primary or supplementary) gets answers.
func TestSocketReachableOnlyByRootAndItsGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs clients under other uids and chowns the socket")
	}
	const nobody, group = 65534, 4242
	// The test binary and the socket must be reachable by the other uid: copy the binary to a
	// directory it may enter (go test's build directory is 0700).
	binDir, err := os.MkdirTemp("", "cnibin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(binDir) })
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(binDir, "cniserver.test")
	if err := copyFile(self, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	e := start(t, nodePool(1, []string{"10.0.0.11"}, nil), func(c *Config) { c.SocketGroup = "4242" })
	// shortDir is 0700; the socket's own directory is 0755 (listen).
	if err := os.Chmod(filepath.Dir(filepath.Dir(e.socket)), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(cred *syscall.Credential) (int, string) {
		cmd := exec.Command(bin, "-test.run=^TestHelperCNIClient$", "-test.count=1")
		cmd.Env = []string{helperSocketEnv + "=" + e.socket, "PATH=/usr/bin:/bin"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		return 0, string(out)
	}
	for _, tc := range []struct {
		name string
		cred *syscall.Credential
		want int
	}{
		{"root", nil, 0},
		{"nobody outside the group", &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}, 13},
		{"nobody with the group as primary group", &syscall.Credential{Uid: nobody, Gid: group, Groups: []uint32{}}, 0},
		{"nobody with the group as supplementary group", &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{group}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if code, out := run(tc.cred); code != tc.want {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.want, out)
			}
		})
	}
}

// A socket directory that anyone but the agent's user or root may write to is refused: its
// owner, its group or anyone else could put their own socket in the agent's place.
func TestUnsafeSocketDirIsRefused(t *testing.T) {
	e := start(t, nil, nil) // for its pool
	for _, tc := range []struct {
		name  string
		mode  os.FileMode
		owner int // -1: as created
	}{
		{"world-writable", 0o777, -1},
		{"world-writable and sticky", 0o777 | os.ModeSticky, -1},
		{"group-writable", 0o775, -1},
		{"owned by another user", 0o755, 65534},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(shortDir(t), "open")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, tc.mode); err != nil {
				t.Fatal(err)
			}
			if tc.owner >= 0 {
				if os.Geteuid() != 0 {
					t.Skip("needs root to give the directory to another user")
				}
				if err := os.Chown(dir, tc.owner, -1); err != nil {
					t.Fatal(err)
				}
			}
			s, err := New(Config{SocketPath: filepath.Join(dir, "agent.sock"), Pool: e.pool})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Run(t.Context()); !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), dir) {
				t.Fatalf("Run: %v, want ErrUnsafeDir naming %s", err, dir)
			}
			if _, err := os.Stat(filepath.Join(dir, "agent.sock")); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("a socket was created in the unsafe directory")
			}
		})
	}
}

// A private bind directory a crash left behind is removed at the next start.
func TestLeftoverBindDirectoryIsRemoved(t *testing.T) {
	dir := shortDir(t)
	left := filepath.Join(dir, privPrefix+"123")
	if err := os.MkdirAll(left, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(left, "s"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	e := start(t, nil, func(c *Config) { c.SocketPath = filepath.Join(dir, "agent.sock") })
	if _, err := e.client.Status(t.Context(), &ipledgerv1.CNIStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		if strings.HasPrefix(en.Name(), privPrefix) {
			t.Fatalf("%s left in the socket directory", en.Name())
		}
	}
}

func copyFile(from, to string, mode os.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
