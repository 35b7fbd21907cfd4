package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ipledger/ipledger/agent"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/servertest"
)

// AgentStartTimeout bounds the wait for an agent to serve its socket.
const AgentStartTimeout = 30 * time.Second

// FreePort returns a loopback address with a port nobody listens on right now.
func FreePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// AgentArgs are the command-line flags of the node's agent: its instance's IMDS, its servers,
// socket, checkpoint and HTTP address, node networking in the node namespace with simulated ENI
// links, and short intervals for tests (1 s cooldown, 1 s usage interval, 50 ms debounce).
func (n *Node) AgentArgs() []string {
	var extra []string
	if n.ServerCA != "" {
		extra = append(extra, "--tls-ca-file", n.ServerCA, "--identity-dir", n.IdentityDir, "--attest-retry", "1s")
	}
	if n.CNIConfDir != "" {
		extra = append(extra, "--cni-conf-dir", n.CNIConfDir, "--cni-conflist-src", n.ConflistSrc, "--cni-bin-dir", n.PluginBinDir())
	}
	return append([]string{
		"--server", strings.Join(n.Servers, ","),
		"--imds-endpoint", n.IMDS,
		"--discovery-timeout", "30s",
		"--socket", n.Socket,
		"--checkpoint", n.Checkpoint,
		"--metrics-listen", n.MetricsAddr,
		"--manage-networking", "--netns", n.NS.Path(), "--simulate-eni-links",
		"--cooldown", "1s",
		"--usage-interval", "1s",
		"--usage-debounce", "50ms",
		"--log-level", "debug",
	}, extra...)
}

// AgentConfig is the in-process equivalent of AgentArgs.
func (n *Node) AgentConfig() agent.Config {
	cfg := agent.DefaultConfig()
	cfg.Servers = n.Servers
	cfg.IMDSEndpoint = n.IMDS
	cfg.DiscoveryTimeout = 30 * time.Second
	cfg.SocketPath = n.Socket
	cfg.CheckpointPath = n.Checkpoint
	cfg.MetricsListen = n.MetricsAddr
	cfg.ManageNetworking, cfg.NetNS, cfg.SimulateENILinks = true, n.NS.Path(), true
	cfg.Cooldown = time.Second
	cfg.UsageInterval = time.Second
	cfg.UsageDebounce = 50 * time.Millisecond
	cfg.Logger = Logger("agent").With("node", n.Name())
	if n.ServerCA != "" {
		cfg.TLSCAFile, cfg.IdentityDir, cfg.AttestRetry = n.ServerCA, n.IdentityDir, time.Second
	}
	if n.CNIConfDir != "" {
		cfg.CNIConfDir, cfg.CNIConflistSource, cfg.CNIBinDir = n.CNIConfDir, n.ConflistSrc, n.PluginBinDir()
	}
	return cfg
}

// Agent is a node's running agent: an ipledger-agent process or an agent.Agent in this process.
type Agent struct {
	n *Node

	// process
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	logPath string

	// in-process
	inproc *agent.Agent
	cancel context.CancelFunc
	runErr chan error

	stopOnce sync.Once
}

// StartAgent starts ipledger-agent for the node with AgentArgs plus extra flags (later flags
// win), waits until it serves its socket, and kills it in t.Cleanup. Its log goes to
// <Dir>/agent-<n>.log and is printed when the test fails.
func (n *Node) StartAgent(extra ...string) *Agent {
	n.T.Helper()
	bin := n.agentBinary()
	logs, _ := filepath.Glob(filepath.Join(n.Dir, "agent-*.log"))
	logPath := filepath.Join(n.Dir, fmt.Sprintf("agent-%d.log", len(logs)+1))
	logFile, err := os.Create(logPath)
	if err != nil {
		n.T.Fatal(err)
	}
	a := &Agent{n: n, done: make(chan struct{}), logPath: logPath}
	a.cmd = exec.Command(bin, append(n.AgentArgs(), extra...)...)
	a.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	a.cmd.Stdout, a.cmd.Stderr = logFile, logFile
	if os.Getenv(LogEnv) != "" {
		w := io.MultiWriter(logFile, os.Stderr)
		a.cmd.Stdout, a.cmd.Stderr = w, w
	}
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := Start(a.cmd); err != nil {
		_ = logFile.Close()
		n.T.Fatalf("start ipledger-agent: %v", err)
	}
	go func() {
		a.waitErr = a.cmd.Wait()
		_ = logFile.Close()
		close(a.done)
	}()
	n.T.Cleanup(func() {
		a.Kill()
		if n.T.Failed() {
			n.T.Logf("log of %s (%s):\n%s", filepath.Base(logPath), n.Name(), tail(logPath, 80))
		}
	})
	a.waitReady()
	return a
}

// StartAgentInProcess runs agent.New(cfg).Run in this process with the node's AgentConfig
// (changed by mod when not nil), waits until it serves its socket, and stops it in t.Cleanup.
func (n *Node) StartAgentInProcess(mod func(*agent.Config)) *Agent {
	n.T.Helper()
	cfg := n.AgentConfig()
	if mod != nil {
		mod(&cfg)
	}
	ag, err := agent.New(cfg)
	if err != nil {
		n.T.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(n.T.Context()))
	a := &Agent{n: n, inproc: ag, cancel: cancel, runErr: make(chan error, 1), done: make(chan struct{})}
	go func() {
		err := ag.Run(ctx)
		a.runErr <- err
		close(a.done)
	}()
	n.T.Cleanup(func() {
		if err := a.Stop(); err != nil {
			n.T.Errorf("agent of %s: %v", n.Name(), err)
		}
	})
	a.waitReady()
	return a
}

// InProcess is the in-process agent (nil for a process).
func (a *Agent) InProcess() *agent.Agent { return a.inproc }

// PID of the agent process (0 in-process).
func (a *Agent) PID() int {
	if a.cmd == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// Exited reports whether the agent has stopped.
func (a *Agent) Exited() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

func (a *Agent) waitReady() {
	t := a.n.T
	t.Helper()
	deadline := time.Now().Add(AgentStartTimeout)
	for {
		if a.Exited() {
			t.Fatalf("agent of %s exited while starting: %v\n%s", a.n.Name(), a.exitErr(), a.Log())
		}
		if a.healthy() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent of %s did not serve its socket within %v\n%s", a.n.Name(), AgentStartTimeout, a.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (a *Agent) exitErr() error {
	if a.inproc != nil {
		select {
		case err := <-a.runErr:
			a.runErr <- err
			return err
		default:
			return nil
		}
	}
	return a.waitErr
}

func (a *Agent) healthy() bool {
	ctx, cancel := context.WithTimeout(a.n.T.Context(), time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.n.MetricsAddr+"/healthz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Kill sends SIGKILL to the agent process and waits for it (a crash: nothing is cleaned up).
// For an in-process agent it is Stop.
func (a *Agent) Kill() {
	if a.inproc != nil {
		_ = a.Stop()
		return
	}
	if !a.Exited() {
		_ = a.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-a.done
}

// Stop stops the agent cleanly (SIGTERM, or the context of an in-process agent) and waits;
// the error is the agent's when it did not stop cleanly.
func (a *Agent) Stop() error {
	var err error
	a.stopOnce.Do(func() {
		if a.inproc != nil {
			a.cancel()
			select {
			case err = <-a.runErr:
				a.runErr <- err
			case <-time.After(15 * time.Second):
				err = errors.New("the agent did not stop within 15 s")
			}
			return
		}
		if !a.Exited() {
			_ = a.cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-a.done:
			err = a.waitErr
		case <-time.After(15 * time.Second):
			_ = a.cmd.Process.Signal(syscall.SIGKILL)
			<-a.done
			err = errors.New("the agent did not stop within 15 s of SIGTERM")
		}
	})
	return err
}

// Log returns the end of the agent process's log ("" in-process).
func (a *Agent) Log() string {
	if a.logPath == "" {
		return ""
	}
	return tail(a.logPath, 80)
}

func tail(path string, lines int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// View reads the agent's /v1/pool introspection.
func (a *Agent) View() (agent.PoolView, error) {
	ctx, cancel := context.WithTimeout(a.n.T.Context(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.n.MetricsAddr+"/v1/pool", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return agent.PoolView{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return agent.PoolView{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return agent.PoolView{}, fmt.Errorf("/v1/pool: %s: %s", resp.Status, bytes.TrimSpace(body))
	}
	var v agent.PoolView
	if err := json.Unmarshal(body, &v); err != nil {
		return agent.PoolView{}, fmt.Errorf("/v1/pool: %w", err)
	}
	return v, nil
}

// MustView is View that fails the test on an error.
func (a *Agent) MustView() agent.PoolView {
	a.n.T.Helper()
	v, err := a.View()
	if err != nil {
		a.n.T.Fatal(err)
	}
	return v
}

// WaitView polls the agent's view until cond holds.
func (a *Agent) WaitView(d time.Duration, what string, cond func(agent.PoolView) bool) agent.PoolView {
	a.n.T.Helper()
	var v agent.PoolView
	var lastErr error
	servertest.WaitFor(a.n.T, d, what+" (agent of "+a.n.Name()+")", func() bool {
		v, lastErr = a.View()
		return lastErr == nil && cond(v)
	})
	return v
}

// WaitConnected waits until the agent is registered, its sync stream is up and its pool has at
// least free free addresses.
func (a *Agent) WaitConnected(d time.Duration, free int) agent.PoolView {
	a.n.T.Helper()
	return a.WaitView(d, fmt.Sprintf("connected with %d free", free), func(v agent.PoolView) bool {
		return v.Server.Registered && v.Server.Connected && v.Counts.Free >= free
	})
}

// CNIClient is a CNIService client on the agent's socket (as the plugin talks to it), closed in
// t.Cleanup.
func (n *Node) CNIClient() ipledgerv1.CNIServiceClient {
	n.T.Helper()
	conn, err := grpc.NewClient("unix://"+n.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		n.T.Fatal(err)
	}
	n.T.Cleanup(func() { _ = conn.Close() })
	return ipledgerv1.NewCNIServiceClient(conn)
}
