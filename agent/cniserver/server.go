package cniserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/ipledger/ipledger/agent/pool"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Defaults.
const (
	DefaultSocketPath = "/run/ipledger/agent.sock"
	DefaultAddWait    = 10 * time.Second
	// DefaultSupplyRetry is the pause after a failed request for addresses before the next.
	DefaultSupplyRetry = time.Second
	// SocketMode is the mode of the socket file.
	SocketMode = 0o660
	// maxSocketPath is the longest path a unix socket address holds (sun_path minus the NUL).
	maxSocketPath = 107
	// privPrefix names the private directories the socket is bound in before it moves.
	privPrefix = ".ipledger-sock-"
)

// Errors.
var (
	// ErrSocketInUse: another process (an agent) answers on the socket path.
	ErrSocketInUse = errors.New("cniserver: another agent is listening on the socket")
	// ErrNotSocket: the socket path exists and is not a socket (it is left alone).
	ErrNotSocket = errors.New("cniserver: socket path exists and is not a socket")
	// ErrUnsafeDir: the socket's directory lets anyone replace the socket.
	ErrUnsafeDir = errors.New("cniserver: unsafe socket directory")
)

// Supplier is the allocator as the CNI service needs it: the urgent request for addresses and
// whether the allocator can be reached.
type Supplier interface {
	// RequestAddresses asks for count more free addresses and returns once the pool holds them
	// (applied) or fails with a status carrying an ipledger ErrorInfo reason.
	RequestAddresses(ctx context.Context, count uint32) error
	// ServerState says whether the sync stream to the allocator is up and why not.
	ServerState() (connected bool, lastError string)
}

// Config configures a Server.
type Config struct {
	// SocketPath of the unix socket (default DefaultSocketPath). Its directory is created 0755.
	SocketPath string
	// SocketGroup owns the socket file (a group name or a numeric gid; "" leaves the process's).
	SocketGroup string
	// Pool is the node's pool (required).
	Pool *pool.Pool
	// Supplier is the allocator (nil: none; an empty pool fails after the wait as unreachable).
	Supplier Supplier
	// AddWait is how long Add waits for an address when the request does not say (default 10 s).
	AddWait time.Duration
	// SupplyRetry is the pause after a failed request for addresses (default 1 s).
	SupplyRetry time.Duration
	// Metrics (nil: none).
	Metrics *Metrics
	// OnWaitingChange is called when the number of waiting Adds changes. It must not block.
	OnWaitingChange func()
	// OnUnknownDel is called after a Del of an attachment the pool does not know (the plugin
	// has removed the pod's rules by then: the agent looks whether a recovered address is now
	// free). It must not block.
	OnUnknownDel func()
	Logger       *slog.Logger
}

// Server serves CNIService.
type Server struct {
	ipledgerv1.UnimplementedCNIServiceServer

	cfg   Config
	log   *slog.Logger
	ready chan struct{}

	mu        sync.Mutex
	runCtx    context.Context
	waiting   int
	inflight  bool
	done      chan struct{} // closed when the request in flight ends
	lastErr   error         // outcome of the last request (nil after a success)
	retryAt   time.Time     // no new request before this, after a failure
	requests  sync.WaitGroup
	listening bool
}

var _ ipledgerv1.CNIServiceServer = (*Server)(nil)

// New checks cfg and returns a server; Run serves it.
func New(cfg Config) (*Server, error) {
	if cfg.Pool == nil {
		return nil, errors.New("cniserver: no pool")
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = DefaultSocketPath
	}
	if err := ValidateSocketPath(cfg.SocketPath); err != nil {
		return nil, err
	}
	if cfg.SocketGroup != "" {
		if _, err := LookupGroup(cfg.SocketGroup); err != nil {
			return nil, err
		}
	}
	if cfg.AddWait <= 0 {
		cfg.AddWait = DefaultAddWait
	}
	if cfg.SupplyRetry <= 0 {
		cfg.SupplyRetry = DefaultSupplyRetry
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg, log: cfg.Logger, ready: make(chan struct{}), done: make(chan struct{})}, nil
}

// ValidateSocketPath checks that path can name a unix socket.
func ValidateSocketPath(path string) error {
	switch {
	case !filepath.IsAbs(path):
		return fmt.Errorf("cniserver: socket path %q is not absolute", path)
	case len(path) > maxSocketPath:
		return fmt.Errorf("cniserver: socket path %q is longer than %d bytes", path, maxSocketPath)
	}
	return nil
}

// LookupGroup resolves a group name or numeric gid.
func LookupGroup(group string) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil {
		if gid < 0 {
			return 0, fmt.Errorf("cniserver: socket group %q: negative gid", group)
		}
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("cniserver: socket group %q: %w", group, err)
	}
	return strconv.Atoi(g.Gid)
}

// Ready is closed once the socket accepts connections.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// SocketPath is the socket the server listens on.
func (s *Server) SocketPath() string { return s.cfg.SocketPath }

// Waiting is the number of Adds waiting for an address.
func (s *Server) Waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.waiting
}

// Run listens on the socket and serves until ctx ends, then stops (Adds still waiting fail),
// waits for its requests to the allocator and removes the socket.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.listening {
		s.mu.Unlock()
		return errors.New("cniserver: already running")
	}
	s.listening = true
	s.runCtx = ctx
	s.mu.Unlock()

	ln, err := listen(s.cfg.SocketPath, s.cfg.SocketGroup)
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	ipledgerv1.RegisterCNIServiceServer(gs, s)
	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(ln) }()
	close(s.ready)
	s.log.Info("CNI service listening", "socket", s.cfg.SocketPath)

	var err2 error
	select {
	case <-ctx.Done():
	case err2 = <-serveErr:
		err2 = fmt.Errorf("cniserver: serve %s: %w", s.cfg.SocketPath, err2)
	}
	// Waiting Adds see ctx end and fail; give answers in flight a moment, then cut.
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		gs.Stop()
		<-stopped
	}
	s.requests.Wait()
	// The listener does not unlink the socket it moved into place: remove it.
	if err := os.Remove(s.cfg.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("removing the socket failed", "socket", s.cfg.SocketPath, "err", err)
	}
	return err2
}

// checkSocketDir refuses a socket directory that anyone but the agent's user (or root) may
// write to: its owner, or a member of a group or anyone else with write permission (sticky bit
// or not: a sticky directory still lets them create a socket of their own at the path), could
// put their own socket where the plugin dials the agent.
func checkSocketDir(dir string) error {
	di, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("cniserver: socket directory: %w", err)
	}
	if perm := di.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("%w: %s is %v: others could replace the socket; use a directory only its owner can write (0755)", ErrUnsafeDir, dir, perm)
	}
	st, ok := di.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("%w: %s: cannot read its owner", ErrUnsafeDir, dir)
	}
	if uid := uint32(os.Geteuid()); st.Uid != uid && st.Uid != 0 {
		return fmt.Errorf("%w: %s is owned by uid %d, not by root or the agent (uid %d): its owner could replace the socket", ErrUnsafeDir, dir, st.Uid, uid)
	}
	return nil
}

// listen opens the unix socket: directory 0755 (created if missing; refused when anyone may
// replace files in it), stale socket removed, socket 0660 with group. The socket is bound in a
// private directory (0700) and renamed into place only once its mode and group are set, so no
// process outside root and the group can connect at any moment, whatever the umask.
func listen(path, group string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cniserver: create socket directory: %w", err)
	}
	if err := checkSocketDir(dir); err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%w: %s (%s); remove it by hand", ErrNotSocket, path, fi.Mode().Type())
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("%w: %s", ErrSocketInUse, path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("cniserver: remove stale socket %s: %w", path, err)
		}
	}
	// Private directories a crash left behind (between bind and rename) go first.
	if old, _ := filepath.Glob(filepath.Join(dir, privPrefix+"*")); len(old) > 0 {
		for _, o := range old {
			if fi, err := os.Lstat(o); err == nil && fi.IsDir() {
				_ = os.RemoveAll(o)
			}
		}
	}
	priv, err := os.MkdirTemp(dir, privPrefix)
	if err != nil {
		return nil, fmt.Errorf("cniserver: private directory for the socket: %w", err)
	}
	defer func() { _ = os.RemoveAll(priv) }()
	bind := filepath.Join(priv, "s")
	if len(bind) > maxSocketPath {
		// The private path does not fit sun_path; bind in place (the umask then decides the
		// mode until the chmod below).
		bind = path
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: bind, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("cniserver: listen on %s: %w", path, err)
	}
	// The socket file moves; Run removes it from its final path.
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (net.Listener, error) {
		_ = ln.Close()
		_ = os.Remove(bind)
		return nil, err
	}
	if err := os.Chmod(bind, SocketMode); err != nil {
		return fail(fmt.Errorf("cniserver: chmod %s: %w", path, err))
	}
	if group != "" {
		gid, err := LookupGroup(group)
		if err != nil {
			return fail(err)
		}
		if err := os.Chown(bind, -1, gid); err != nil {
			return fail(fmt.Errorf("cniserver: chown %s to group %s: %w", path, group, err))
		}
	}
	if bind != path {
		if err := os.Rename(bind, path); err != nil {
			return fail(fmt.Errorf("cniserver: move the socket to %s: %w", path, err))
		}
	}
	return ln, nil
}
