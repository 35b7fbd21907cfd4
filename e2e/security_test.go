package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ipledger/ipledger/e2e/harness"
	"github.com/ipledger/ipledger/server/servertest"
)

// proc is a process of the test, stopped (SIGTERM, then SIGKILL) at cleanup.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func startProc(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(),
		"AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null"}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := harness.Start(p.cmd); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s %s:\n%s", filepath.Base(bin), strings.Join(args, " "), tailLines(p.output(), 40))
		}
	})
	return p
}

func (p *proc) stop(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not stop on SIGTERM:\n%s", filepath.Base(p.cmd.Path), p.output())
	}
}

// simEndpoint waits for the server's "EC2 simulator on URL" line.
func simEndpoint(t *testing.T, server *proc) string {
	t.Helper()
	re := regexp.MustCompile(`EC2 simulator on (http://\S+),`)
	var url string
	servertest.WaitFor(t, 30*time.Second, "the --dev server to start its simulator", func() bool {
		m := re.FindStringSubmatch(server.output())
		if m != nil {
			url = m[1]
		}
		return url != ""
	})
	return url
}

// simInstance is what the test needs of the simulator's /_sim/state.
type simInstance struct {
	ID             string `json:"id"`
	State          string `json:"state"`
	PrivateDNSName string `json:"private_dns_name"`
	IMDSEndpoint   string `json:"imds_endpoint"`
}

func firstInstance(t *testing.T, sim string) simInstance {
	t.Helper()
	resp, err := http.Get(sim + "/_sim/state")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Instances []simInstance `json:"instances"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	for _, in := range st.Instances {
		if in.State == "running" && in.IMDSEndpoint != "" {
			return in
		}
	}
	t.Fatalf("no running instance with IMDS in %s", sim)
	return simInstance{}
}

// The binaries as shipped: ipledger-server --dev creates a CA and certificates in its data
// directory and serves mutual TLS with them; ipledger-agent with only the CA attests with its
// instance identity document, gets its node certificate and registers; ipledgerctl works with --dev-certs and not without; a restart reuses every
// certificate; a server asked for plaintext on a non-loopback address refuses to start.
func TestDevBinariesSpeakMutualTLS(t *testing.T) {
	serverBin := harness.Binary(t, "ipledger-server")
	agentBin := harness.Binary(t, "ipledger-agent")
	dataDir, grpcAddr, httpAddr := t.TempDir(), harness.FreePort(t), harness.FreePort(t)
	serverArgs := []string{"--dev", "--data-dir", dataDir, "--grpc-listen", grpcAddr, "--http-listen", httpAddr,
		"--sim-throttle=false", "--log-level", "info"}
	server := startProc(t, serverBin, serverArgs...)
	sim := simEndpoint(t, server)
	certs := filepath.Join(dataDir, "certs")
	in := firstInstance(t, sim)
	ctl := func(args ...string) harness.CtlResult { return harness.Ctl(t, grpcAddr, append(args, "-o", "json")...) }
	servertest.WaitFor(t, 30*time.Second, "the server to lead", func() bool {
		r := ctl("--dev-certs", certs, "status")
		return r.Exit == 0 && strings.Contains(r.Stdout, `"is_leader": true`)
	})

	agentDir := shortTempDir(t)
	node := filepath.Join(agentDir, "identity", "node")
	startProc(t, agentBin, "--server", grpcAddr, "--imds-endpoint", in.IMDSEndpoint,
		"--socket", filepath.Join(agentDir, "agent.sock"), "--checkpoint", filepath.Join(agentDir, "cp.json"),
		"--metrics-listen", "", "--manage-networking=false",
		"--identity-dir", filepath.Join(agentDir, "identity"), "--tls-ca-file", filepath.Join(certs, "ca.crt"))
	connected := func() bool {
		r := ctl("--dev-certs", certs, "nodes")
		return r.Exit == 0 && strings.Contains(r.Stdout, in.PrivateDNSName) && strings.Contains(r.Stdout, `"connected": true`)
	}
	servertest.WaitFor(t, 30*time.Second, "the agent to attest, register and sync over mutual TLS", connected)
	if _, err := os.Stat(node + ".crt"); err != nil {
		t.Fatalf("the attested certificate: %v", err)
	}

	// Without certificates ipledgerctl gets nothing, and says what to add.
	if r := ctl("nodes"); r.Exit != 1 || !strings.Contains(r.Stderr, "--dev-certs") {
		t.Fatalf("plaintext ipledgerctl: %s", r)
	}
	// A node's certificate is not an admin's.
	if r := ctl("--dev-certs", certs, "--tls-cert", node+".crt", "--tls-key", node+".key", "nodes"); r.Exit != 1 || !strings.Contains(r.Stderr, "ADMIN_REQUIRED") {
		t.Fatalf("ipledgerctl with a node certificate: %s", r)
	}

	// A restart reuses the CA and every certificate: the agent and ipledgerctl keep working.
	before := readDir(t, certs)
	server.stop(t)
	startProc(t, serverBin, serverArgs...)
	servertest.WaitFor(t, 60*time.Second, "the agent to reconnect to the restarted server", connected)
	after := readDir(t, certs)
	for name, b := range before {
		if !bytes.Equal(after[name], b) {
			t.Errorf("%s changed across a restart", name)
		}
	}
	if len(before) < 5 {
		t.Fatalf("certificates made: %v", keys(before))
	}

	// Plaintext on a non-loopback address is refused before anything starts.
	cmd := exec.Command(serverBin, "--cluster-name", "c", "--region", "eu-west-1", "--etcd-endpoints", "http://127.0.0.1:1",
		"--grpc-listen", "0.0.0.0:0", "--http-listen", "127.0.0.1:0")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "--tls-cert-file") || !strings.Contains(string(out), "--insecure") {
		t.Fatalf("plaintext on 0.0.0.0: %v\n%s", err, out)
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// shortTempDir is a temporary directory with a short path (unix socket paths are limited).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sec")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// readDir returns every file under dir by its relative path.
func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out[rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
