package etcdcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// ErrNoBinary: the etcd binary is not installed (tests skip on it).
var ErrNoBinary = errors.New("etcdcluster: etcd binary not found")

// DefaultBinary is used when "etcd" is not on PATH.
const DefaultBinary = "/usr/bin/etcd"

const (
	startTimeout  = 30 * time.Second // Start waits this long for a healthy cluster
	listenTimeout = 10 * time.Second // Restart waits this long for the client port
	killTimeout   = 10 * time.Second // a killed member must be reaped by then
	startAttempts = 3                // fresh ports when a port was taken meanwhile
)

// Config describes the cluster to start.
type Config struct {
	// Members is the number of members (default 3).
	Members int
	// Binary is the etcd executable (default: "etcd" from PATH, else /usr/bin/etcd).
	Binary string
	// Dir holds the members' data directories and logs (required; t.TempDir() in tests).
	Dir string
	// Logger reports member starts, kills and restarts (default: discarded).
	Logger *slog.Logger
	// Stdout, if set, also receives the members' output (always written to Dir/<member>.log).
	Stdout io.Writer
}

// Cluster is a running etcd cluster. Its methods are safe for concurrent use.
type Cluster struct {
	cfg     Config
	bin     string
	token   string
	log     *slog.Logger
	mu      sync.Mutex
	members []*member
	stopped bool
}

type member struct {
	name      string
	dataDir   string
	logPath   string
	clientURL string
	peerURL   string
	client    *clientv3.Client // single-endpoint client for health checks
	proc      *process         // nil while not running
}

// process is one run of a member, reaped by the goroutine that started it.
type process struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed once the process has exited and been waited for
	err  error         // from Wait, valid after done
}

// FindBinary resolves the etcd executable: path if given, else "etcd" on PATH, else
// /usr/bin/etcd. It returns ErrNoBinary when none exists.
func FindBinary(path string) (string, error) {
	if path == "" {
		if p, err := exec.LookPath("etcd"); err == nil {
			return p, nil
		}
		path = DefaultBinary
	}
	st, err := os.Stat(path)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%w: %s (Debian: apt-get install etcd-server)", ErrNoBinary, path)
	}
	return path, nil
}

// Start starts cfg.Members etcd processes on 127.0.0.1 with free client and peer ports and a
// static initial cluster, and waits until every member answers a linearizable read (at most
// 30 s, or until ctx ends). On failure nothing is left running.
func Start(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Members == 0 {
		cfg.Members = 3
	}
	if cfg.Members < 1 {
		return nil, fmt.Errorf("etcdcluster: %d members", cfg.Members)
	}
	if cfg.Dir == "" {
		return nil, errors.New("etcdcluster: no directory for the members' data")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	bin, err := FindBinary(cfg.Binary)
	if err != nil {
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		c, err := start(ctx, cfg, bin, attempt)
		if err == nil {
			return c, nil
		}
		if attempt == startAttempts || !errors.Is(err, errPortTaken) || ctx.Err() != nil {
			return nil, err
		}
		cfg.Logger.Warn("etcd port taken meanwhile; starting again on fresh ports", "attempt", attempt, "err", err)
	}
}

var errPortTaken = errors.New("etcdcluster: port taken")

func start(ctx context.Context, cfg Config, bin string, attempt int) (_ *Cluster, err error) {
	ports, err := freePorts(2 * cfg.Members)
	if err != nil {
		return nil, err
	}
	c := &Cluster{
		cfg:   cfg,
		bin:   bin,
		token: fmt.Sprintf("ipledger-e2e-%d-%d-%d", os.Getpid(), time.Now().UnixNano(), attempt),
		log:   cfg.Logger,
	}
	var initial []string
	for i := range cfg.Members {
		name := fmt.Sprintf("m%d", i)
		m := &member{
			name:      name,
			dataDir:   filepath.Join(cfg.Dir, fmt.Sprintf("%s-%d.etcd", name, attempt)),
			logPath:   filepath.Join(cfg.Dir, name+".log"),
			clientURL: "http://127.0.0.1:" + strconv.Itoa(ports[2*i]),
			peerURL:   "http://127.0.0.1:" + strconv.Itoa(ports[2*i+1]),
		}
		c.members = append(c.members, m)
		initial = append(initial, name+"="+m.peerURL)
	}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	for _, m := range c.members {
		m.client, err = clientv3.New(clientv3.Config{
			Endpoints:   []string{m.clientURL},
			DialTimeout: 2 * time.Second,
			Logger:      zap.NewNop(),
		})
		if err != nil {
			return nil, fmt.Errorf("etcdcluster: client for %s: %w", m.name, err)
		}
	}
	for _, m := range c.members {
		if err := c.launch(m, "new", strings.Join(initial, ",")); err != nil {
			return nil, err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := c.WaitHealthy(wctx); err != nil {
		err = fmt.Errorf("etcdcluster: cluster not healthy: %w", err)
		for _, m := range c.members {
			tail := logTail(m.logPath)
			if strings.Contains(tail, "address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			err = fmt.Errorf("%w\n--- %s log ---\n%s", err, m.name, tail)
		}
		return nil, err
	}
	c.log.Info("etcd cluster started", "members", len(c.members), "endpoints", c.Endpoints())
	return c, nil
}

// freePorts returns n distinct free TCP ports on 127.0.0.1 (free when it returns: another
// process could take one before etcd binds it, which Start detects and retries).
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("etcdcluster: find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// launch starts member m's process. The caller holds no lock or holds c.mu.
func (c *Cluster) launch(m *member, state, initial string) error {
	args := []string{
		"--name", m.name,
		"--data-dir", m.dataDir,
		"--listen-client-urls", m.clientURL,
		"--advertise-client-urls", m.clientURL,
		"--listen-peer-urls", m.peerURL,
		"--initial-advertise-peer-urls", m.peerURL,
		"--initial-cluster", initial,
		"--initial-cluster-token", c.token,
		"--initial-cluster-state", state,
		"--logger", "zap",
		"--log-outputs", "stderr",
		"--log-level", "warn",
	}
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("etcdcluster: %s log: %w", m.name, err)
	}
	fmt.Fprintf(logf, "=== %s: %s %s\n", time.Now().Format(time.RFC3339Nano), c.bin, strings.Join(args, " "))
	var out io.Writer = logf
	if c.cfg.Stdout != nil {
		out = io.MultiWriter(logf, prefixWriter(c.cfg.Stdout, "["+m.name+"] "))
	}
	p, err := spawn(c.bin, args, memberEnv(), out)
	if err != nil {
		_ = logf.Close()
		return fmt.Errorf("etcdcluster: start %s: %w", m.name, err)
	}
	p.log = logf
	m.proc = p
	c.log.Info("etcd member started", "member", m.name, "pid", p.cmd.Process.Pid, "client", m.clientURL, "state", state)
	return nil
}

// spawn starts a process from a goroutine locked to its OS thread, which stays alive until the
// process has exited: Pdeathsig fires when the forking *thread* ends, so this ties the child's
// life to the test process and not to whichever thread happened to fork it.
func spawn(bin string, args, env []string, out io.Writer) (*process, error) {
	p := &process{done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		cmd.Stdout, cmd.Stderr = out, out
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			close(p.done)
			started <- err
			return
		}
		p.cmd = cmd
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return p, nil
}

// memberEnv is the test's environment without ETCD_* variables (etcd reads its flags from them).
func memberEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ETCD_") {
			env = append(env, kv)
		}
	}
	if runtime.GOARCH != "amd64" {
		env = append(env, "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	}
	return env
}

// Endpoints are the members' client URLs (killed members included: they come back on the same
// address).
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL
	}
	return eps
}

// Size is the number of members.
func (c *Cluster) Size() int { return len(c.members) }

// PID is member i's process id, 0 when it is not running.
func (c *Cluster) PID(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= len(c.members) || c.members[i].proc == nil {
		return 0
	}
	return c.members[i].proc.cmd.Process.Pid
}

func (c *Cluster) member(i int) (*member, error) {
	if c.stopped {
		return nil, errors.New("etcdcluster: cluster stopped")
	}
	if i < 0 || i >= len(c.members) {
		return nil, fmt.Errorf("etcdcluster: no member %d (cluster of %d)", i, len(c.members))
	}
	return c.members[i], nil
}

// Kill sends SIGKILL to member i and waits until it has exited.
func (c *Cluster) Kill(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.member(i)
	if err != nil {
		return err
	}
	if m.proc == nil {
		return fmt.Errorf("etcdcluster: member %s is not running", m.name)
	}
	return c.kill(m)
}

// kill kills m's process (ours: m.proc was started by spawn) and reaps it. c.mu is held.
func (c *Cluster) kill(m *member) error {
	p := m.proc
	select {
	case <-p.done: // already exited on its own
	default:
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("etcdcluster: kill %s (pid %d): %w", m.name, p.cmd.Process.Pid, err)
		}
	}
	select {
	case <-p.done:
	case <-time.After(killTimeout):
		return fmt.Errorf("etcdcluster: %s (pid %d) did not exit within %s of SIGKILL", m.name, p.cmd.Process.Pid, killTimeout)
	}
	_ = p.log.Close()
	m.proc = nil
	c.log.Info("etcd member killed", "member", m.name, "pid", p.cmd.Process.Pid)
	return nil
}

// Restart starts member i again with its data directory (--initial-cluster-state existing) and
// waits until it listens on its client port. It does not wait for the member to be healthy (it
// cannot be without quorum); use WaitHealthy.
func (c *Cluster) Restart(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, err := c.member(i)
	if err != nil {
		return err
	}
	if m.proc != nil {
		return fmt.Errorf("etcdcluster: member %s is still running", m.name)
	}
	var initial []string
	for _, o := range c.members {
		initial = append(initial, o.name+"="+o.peerURL)
	}
	if err := c.launch(m, "existing", strings.Join(initial, ",")); err != nil {
		return err
	}
	deadline := time.Now().Add(listenTimeout)
	addr := strings.TrimPrefix(m.clientURL, "http://")
	for {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = conn.Close()
			return nil
		}
		select {
		case <-m.proc.done:
			p := m.proc
			_ = p.log.Close()
			m.proc = nil
			return fmt.Errorf("etcdcluster: restarted %s exited: %v\n%s", m.name, p.err, logTail(m.logPath))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("etcdcluster: restarted %s does not listen on %s after %s\n%s", m.name, addr, listenTimeout, logTail(m.logPath))
		}
	}
}

// Stop kills every member, waits for them and closes the health-check clients. It leaves no
// process running; calling it again does nothing.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		return nil
	}
	var errs []error
	for _, m := range c.members {
		if m.proc != nil {
			if err := c.kill(m); err != nil {
				errs = append(errs, err)
			}
		}
		if m.client != nil {
			_ = m.client.Close()
			m.client = nil
		}
	}
	c.stopped = true
	return errors.Join(errs...)
}

// Healthy checks that every running member answers a linearizable read before ctx ends (so the
// cluster has quorum and no running member is partitioned). Killed members are not checked.
func (c *Cluster) Healthy(ctx context.Context) error {
	c.mu.Lock()
	if c.stopped {
		c.mu.Unlock()
		return errors.New("etcdcluster: cluster stopped")
	}
	type target struct {
		name   string
		client *clientv3.Client
	}
	var targets []target
	for _, m := range c.members {
		if m.proc != nil {
			targets = append(targets, target{m.name, m.client})
		}
	}
	c.mu.Unlock()
	if len(targets) == 0 {
		return errors.New("etcdcluster: no member is running")
	}
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, tg := range targets {
		wg.Go(func() {
			if _, err := tg.client.Get(ctx, "health"); err != nil {
				errs[i] = fmt.Errorf("member %s: %w", tg.name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// WaitHealthy polls Healthy (1 s per attempt) until it passes or ctx ends, returning the last
// failure then.
func (c *Cluster) WaitHealthy(ctx context.Context) error {
	for {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		err := c.Healthy(actx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last check: %w)", ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// logTail is the end of a member's log, for error messages.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const max = 4000
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// prefixWriter prefixes every line written to w.
func prefixWriter(w io.Writer, prefix string) io.Writer {
	return &linePrefixer{w: w, prefix: []byte(prefix), atStart: true}
}

type linePrefixer struct {
	mu      sync.Mutex
	w       io.Writer
	prefix  []byte
	atStart bool
}

func (p *linePrefixer) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var buf bytes.Buffer
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if p.atStart {
			buf.Write(p.prefix)
		}
		buf.Write(line)
		p.atStart = line[len(line)-1] == '\n'
	}
	if _, err := p.w.Write(buf.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Restore replaces every member's data with an etcd snapshot (`etcdctl snapshot save`, or
// `ipledgerctl backup`) as etcd's disaster-recovery procedure does: it kills every member, runs
// `etcdctl snapshot restore` for each into a new data directory with a new cluster token (so
// the restored cluster has a new cluster id, as a real restore does), starts them on the same
// addresses and waits until every member answers (or ctx ends).
func (c *Cluster) Restore(ctx context.Context, snapshot string) error {
	etcdctl, err := exec.LookPath("etcdctl")
	if err != nil {
		return fmt.Errorf("etcdcluster: restore needs etcdctl (Debian: etcd-client): %w", err)
	}
	c.mu.Lock()
	for _, m := range c.members {
		if m.proc != nil {
			if err := c.kill(m); err != nil {
				c.mu.Unlock()
				return err
			}
		}
	}
	c.token = fmt.Sprintf("%s-restored-%d", c.token, time.Now().UnixNano())
	var initial []string
	for _, m := range c.members {
		initial = append(initial, m.name+"="+m.peerURL)
	}
	for _, m := range c.members {
		dir := fmt.Sprintf("%s-restored-%d", strings.TrimSuffix(m.dataDir, ".etcd"), time.Now().UnixNano())
		cmd := exec.CommandContext(ctx, etcdctl, "snapshot", "restore", snapshot, "--name", m.name, "--data-dir", dir,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", c.token,
			"--initial-advertise-peer-urls", m.peerURL)
		cmd.Env = append(memberEnv(), "ETCDCTL_API=3")
		if out, err := cmd.CombinedOutput(); err != nil {
			c.mu.Unlock()
			return fmt.Errorf("etcdcluster: restore %s: %w\n%s", m.name, err, out)
		}
		m.dataDir = dir
	}
	for _, m := range c.members {
		if err := c.launch(m, "new", strings.Join(initial, ",")); err != nil {
			c.mu.Unlock()
			return err
		}
	}
	c.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if err := c.WaitHealthy(wctx); err != nil {
		return fmt.Errorf("etcdcluster: restored cluster not healthy: %w", err)
	}
	c.log.Info("etcd cluster restored from a snapshot", "snapshot", snapshot, "members", len(c.members))
	return nil
}
