package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Restart delays of the supervisor: the first restart of a replica comes after minRestartDelay,
// each quick failure after that doubles the delay up to maxRestartDelay (as a kubelet's
// back-off does, much shorter).
const (
	minRestartDelay = 200 * time.Millisecond
	maxRestartDelay = 2 * time.Second
	// stableRun resets the back-off: a run that lasted this long was not a crash loop.
	stableRun = 10 * time.Second
	// killWait bounds the wait for a killed process to be reaped.
	killWait = 10 * time.Second
)

// ServerProc is one ipledger-server process of a ProcCluster, kept running by a supervisor
// that starts it again whenever it exits, as Kubernetes restarts a replica's container: after
// the test kills it, and after the replica ends itself (a leader that loses its leadership
// exits so that it comes back as a standby). Its gRPC and HTTP addresses stay the same across
// restarts, so agents and clients keep their --server lists.
type ServerProc struct {
	// Index is the replica's position in the cluster (0, 1, 2).
	Index int
	// GRPC and HTTP are the replica's loopback listen addresses.
	GRPC, HTTP string
	// LogPath collects the output of every run of the process.
	LogPath string

	bin  string
	args []string
	env  []string

	mu      sync.Mutex
	cmd     *exec.Cmd     // the current run (nil between runs)
	exited  chan struct{} // closed when the current run ended
	runs    int
	exits   []string // how each run ended
	stopped bool
}

// Args are the process's command-line flags.
func (r *ServerProc) Args() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.args...)
}

// SetArgs replaces the flags of the process's next runs (as a changed Deployment would); the
// current run keeps its own.
func (r *ServerProc) SetArgs(args []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.args = append([]string(nil), args...)
}

// SetBinary replaces the executable of the process's next runs (as a new image in a rolling
// update would); the current run keeps its own.
func (r *ServerProc) SetBinary(path string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.bin = path
}

// supervise runs the process until stop is closed, restarting it with back-off whenever it
// exits; it kills the current run when stop closes.
func (r *ServerProc) supervise(stop <-chan struct{}) {
	bo := &backoff.ExponentialBackOff{InitialInterval: minRestartDelay, Multiplier: 2, MaxInterval: maxRestartDelay}
	for {
		began := time.Now()
		exited, err := r.start()
		if err != nil {
			r.note(fmt.Sprintf("start failed: %v", err))
		} else {
			select {
			case <-exited:
			case <-stop:
				r.killCurrent()
				return
			}
		}
		if time.Since(began) > stableRun {
			bo.Reset()
		}
		select {
		case <-stop:
			return
		case <-time.After(bo.NextBackOff()):
		}
	}
}

// start launches one run of the process and reaps it in a goroutine that closes the returned
// channel when it has exited.
func (r *ServerProc) start() (<-chan struct{}, error) {
	logFile, err := os.OpenFile(r.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		_ = logFile.Close()
		return nil, errors.New("stopped")
	}
	r.runs++
	run := r.runs
	args := append([]string(nil), r.args...)
	bin := r.bin
	r.mu.Unlock()
	fmt.Fprintf(logFile, "=== run %d at %s: ipledger-server %s\n", run, time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Env = r.env
	var out io.Writer = logFile
	if os.Getenv(LogEnv) != "" {
		out = io.MultiWriter(logFile, prefixLines(os.Stderr, fmt.Sprintf("[server %d] ", r.Index)))
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := Start(cmd); err != nil {
		_ = logFile.Close()
		return nil, err
	}
	exited := make(chan struct{})
	r.mu.Lock()
	r.cmd, r.exited = cmd, exited
	r.mu.Unlock()
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(logFile, "=== run %d ended at %s: %v\n", run, time.Now().Format(time.RFC3339Nano), exitText(err))
		_ = logFile.Close()
		r.mu.Lock()
		r.cmd = nil
		r.exits = append(r.exits, exitText(err))
		r.mu.Unlock()
		close(exited)
	}()
	return exited, nil
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func (r *ServerProc) note(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.exits = append(r.exits, s)
}

// killCurrent sends SIGKILL to the current run (if any) and waits until it has been reaped.
func (r *ServerProc) killCurrent() {
	r.mu.Lock()
	r.stopped = true
	cmd, exited := r.cmd, r.exited
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(killWait):
	}
}

// Kill sends SIGKILL to the running process (kill -9: nothing is cleaned up, the leader does not
// resign) and waits until it has exited. The supervisor starts it again after its back-off.
// It returns the pid it killed.
func (r *ServerProc) Kill() (int, error) { return r.stop(syscall.SIGKILL, "kill") }

// Terminate sends SIGTERM to the running process (what the kubelet sends a pod it deletes: a
// leader resigns) and waits until it has exited; after killWait it sends SIGKILL. The
// supervisor starts it again after its back-off. It returns the pid it stopped.
func (r *ServerProc) Terminate() (int, error) { return r.stop(syscall.SIGTERM, "terminate") }

// stop sends sig to the running process and waits killWait for it to exit; a process that
// outlives a SIGTERM is killed.
func (r *ServerProc) stop(sig syscall.Signal, verb string) (int, error) {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.mu.Unlock()
	if cmd == nil {
		return 0, fmt.Errorf("replica %d is not running", r.Index)
	}
	pid := cmd.Process.Pid
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return pid, fmt.Errorf("%s replica %d (pid %d): %w", verb, r.Index, pid, err)
	}
	select {
	case <-exited:
		return pid, nil
	case <-time.After(killWait):
		if sig == syscall.SIGKILL {
			return pid, fmt.Errorf("replica %d (pid %d) did not exit within %v of SIGKILL", r.Index, pid, killWait)
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-exited
		return pid, fmt.Errorf("replica %d (pid %d) did not exit within %v of SIGTERM (killed)", r.Index, pid, killWait)
	}
}

// PID is the pid of the current run (0 between runs).
func (r *ServerProc) PID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Runs is how many times the process was started.
func (r *ServerProc) Runs() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs
}

// Exits lists how each run ended, oldest first.
func (r *ServerProc) Exits() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.exits...)
}

// Ready asks the replica's /readyz: nil when it answers 200, else an error with the status and
// body (or the transport error).
func (r *ServerProc) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 4*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.HTTP+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return &NotReadyError{Status: resp.StatusCode, Body: strings.TrimSpace(string(body))}
	}
	return nil
}

// NotReadyError is a /readyz answer other than 200.
type NotReadyError struct {
	Status int
	Body   string
}

func (e *NotReadyError) Error() string { return fmt.Sprintf("/readyz: %d: %s", e.Status, e.Body) }

// prefixLines prefixes every line written to w (for $IPLEDGER_TEST_LOG).
func prefixLines(w io.Writer, prefix string) io.Writer {
	return &linePrefixer{w: w, prefix: prefix, atStart: true}
}

type linePrefixer struct {
	mu      sync.Mutex
	w       io.Writer
	prefix  string
	atStart bool
}

func (p *linePrefixer) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var sb strings.Builder
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line == "" {
			continue
		}
		if p.atStart {
			sb.WriteString(p.prefix)
		}
		sb.WriteString(line)
		p.atStart = strings.HasSuffix(line, "\n")
	}
	if _, err := io.WriteString(p.w, sb.String()); err != nil {
		return 0, err
	}
	return len(b), nil
}
