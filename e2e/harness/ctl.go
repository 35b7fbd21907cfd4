package harness

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

func init() {
	packages["ipledgerctl"] = "github.com/ipledger/ipledger/server/cmd/ipledgerctl"
}

// CtlResult is one run of ipledgerctl.
type CtlResult struct {
	Args           []string
	Stdout, Stderr string
	// Exit is the exit code (-1 when the process could not run or was killed).
	Exit int
	Err  error
}

func (r CtlResult) String() string {
	return "ipledgerctl " + strings.Join(r.Args, " ") + ": exit " + strconv.Itoa(r.Exit) + "\nstdout: " + r.Stdout + "\nstderr: " + r.Stderr
}

// Ctl runs the real ipledgerctl binary against the replica at server with args (global flags
// may follow the command, as ipledgerctl allows). It may run on any goroutine: it never fails
// the test, the result says how it went.
func Ctl(t testing.TB, server string, args ...string) CtlResult {
	t.Helper()
	all := append([]string{"--server", server, "--timeout", "10s"}, args...)
	cmd := exec.Command(Binary(t, "ipledgerctl"), all...)
	// No ipledgerctl context: only the flags given here count (a context file left in the
	// temporary HOME would otherwise add certificates).
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.TempDir(), "IPLEDGERCTL_CONFIG=/dev/null"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := Run(cmd)
	res := CtlResult{Args: all, Stdout: stdout.String(), Stderr: stderr.String(), Exit: 0, Err: err}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.Exit = ee.ExitCode()
	default:
		res.Exit = -1
	}
	return res
}
