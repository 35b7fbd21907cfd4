package harness

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A real container runtime on a simulated node: Debian's containerd (1.6) with runc, started in
// the node's network namespace and in a mount namespace of its own, where the node's CNI
// directories are the test's. `ctr run --cni` creates a container (runc, a busybox root file
// system) and makes the CNI calls itself, as the kubelet's runtime would, with the conflist
// found in /etc/cni/net.d and the plugins in /opt/cni/bin.
//
// The mount namespace holds: a tmpfs on /run (containerd's shim sockets and runc's state stay
// out of the machine's /run; /run/ipledger is the node's agent directory, so the shipped
// conflist's agentSocket works unchanged), sysfs mounted again for the node's network namespace
// with the machine's /sys/fs/cgroup kept (runc needs the cgroup mounts), and bind mounts of the
// test's directories over /etc/cni/net.d, /opt/cni/bin, /var/lib/cni and /var/log/ipledger (the
// mount points are created on the machine when missing and removed afterwards).

// ContainerdBinaries are the programs a Containerd needs, with the Debian package of each.
var ContainerdBinaries = map[string]string{
	"containerd": "containerd", "ctr": "containerd", "containerd-shim-runc-v2": "containerd", "runc": "runc",
	"nsenter": "util-linux", "unshare": "util-linux",
}

// Static busybox (the containers' whole root file system) and the reference plugins the
// conflist chains.
const (
	BusyboxStatic    = "/bin/busybox"
	ReferencePlugins = "/usr/lib/cni"
)

// RequireContainerd skips the test, saying what is missing, unless it runs as root with
// containerd, runc, a static busybox and the CNI reference plugins installed.
func RequireContainerd(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: containerd, runc and network namespaces")
	}
	var missing []string
	for bin, pkg := range ContainerdBinaries {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin+" (Debian package "+pkg+")")
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "busybox-static").Output(); err != nil || !strings.Contains(string(out), "ok installed") {
		missing = append(missing, BusyboxStatic+" (Debian package busybox-static)")
	}
	for _, p := range []string{"loopback", "portmap"} {
		if !isExecutable(filepath.Join(ReferencePlugins, p)) {
			missing = append(missing, filepath.Join(ReferencePlugins, p)+" (Debian package containernetworking-plugins)")
		}
	}
	if len(missing) > 0 {
		t.Skipf("a real container runtime needs %s: run .ci/install-deps", strings.Join(missing, ", "))
	}
}

// Containerd is one containerd daemon serving a node.
type Containerd struct {
	t testing.TB
	n *Node
	// Dir holds everything: root, state, socket, config, the CNI directories, root file systems.
	Dir string
	// ConfDir, BinDir, CacheDir and LogDir are /etc/cni/net.d, /opt/cni/bin, /var/lib/cni and
	// /var/log/ipledger inside the runtime's mount namespace.
	ConfDir, BinDir, CacheDir, LogDir string
	// Namespace is the containerd namespace of the test's containers; CNI_CONTAINERID is
	// "<Namespace>-<id>" under ctr.
	Namespace string
	socket    string
	cmd       *exec.Cmd
	log       *syncBuffer
	exited    chan struct{}
	created   []string // mount points created on the machine, deepest last
}

// mountPoints are the machine's directories the runtime's namespace replaces.
var mountPoints = []string{"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/var/log/ipledger"}

// StartContainerd starts containerd for the node with conflist (the file's bytes) installed as
// /etc/cni/net.d/10-ipledger.conflist, the plugin as /opt/cni/bin/ipledger beside the reference
// plugins. Everything is removed in t.Cleanup: containers, shims, runc's cgroups, mounts.
func (n *Node) StartContainerd(conflist []byte) *Containerd {
	t := n.T
	t.Helper()
	RequireContainerd(t)
	dir, err := os.MkdirTemp("", "ipl-ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	c := &Containerd{t: t, n: n, Dir: dir, Namespace: "ipl-e2e-" + hex.EncodeToString(suffix), socket: filepath.Join(dir, "containerd.sock"),
		ConfDir: filepath.Join(dir, "net.d"), BinDir: filepath.Join(dir, "cni-bin"), CacheDir: filepath.Join(dir, "cni-cache"), LogDir: filepath.Join(dir, "log"),
		log: &syncBuffer{}, exited: make(chan struct{})}
	t.Cleanup(c.cleanup)
	for _, d := range []string{c.ConfDir, c.BinDir, c.CacheDir, c.LogDir, filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "hold")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c.SetConflist(conflist)
	links := map[string]string{PluginName: filepath.Join(PluginDir(t), PluginName)}
	for _, p := range []string{"loopback", "portmap"} {
		links[p] = filepath.Join(ReferencePlugins, p)
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(c.BinDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, mp := range mountPoints {
		c.created = append(c.created, mkdirAllCreated(t, mp)...)
	}
	config := fmt.Sprintf("version = 2\nroot = %q\nstate = %q\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"+
		"[grpc]\n  address = %q\n[ttrpc]\n  address = %q\n[debug]\n  level = \"info\"\n",
		filepath.Join(dir, "root"), filepath.Join(dir, "state"), c.socket, c.socket+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// The init of the runtime's mount namespace; it ends by exec-ing containerd (same PID).
	q := strconv.Quote
	init := strings.Join([]string{
		"set -e",
		"mount --rbind /sys/fs/cgroup " + q(filepath.Join(dir, "hold")),
		"mount -t sysfs sysfs /sys",
		"mount --move " + q(filepath.Join(dir, "hold")) + " /sys/fs/cgroup",
		"mount -t tmpfs -o mode=0755 tmpfs /run",
		"mkdir -p /run/containerd /run/ipledger",
		"mount --bind " + q(n.Dir) + " /run/ipledger",
		"mount --bind " + q(c.ConfDir) + " /etc/cni/net.d",
		"mount --bind " + q(c.BinDir) + " /opt/cni/bin",
		"mount --bind " + q(c.CacheDir) + " /var/lib/cni",
		"mount --bind " + q(c.LogDir) + " /var/log/ipledger",
		"exec containerd --config " + q(filepath.Join(dir, "config.toml")),
	}, "\n")
	c.cmd = exec.Command("nsenter", "--net="+n.NS.Path(), "unshare", "-m", "--propagation", "private", "sh", "-c", init)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if r := c.Ctr("version"); r.Err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("containerd did not serve in 20 s: %v\n%s\nlog:\n%s", r.Err, r.Stderr, c.Log())
		}
		select {
		case <-c.exited:
			t.Fatalf("containerd exited at start:\n%s", c.Log())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return c
}

// mkdirAllCreated creates dir and its missing parents and returns those it created, outermost
// first.
func mkdirAllCreated(t testing.TB, dir string) []string {
	var missing []string
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append([]string{d}, missing...)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return missing
}

// SetConflist replaces the runtime's conflist (ctr reads it at every run).
func (c *Containerd) SetConflist(conflist []byte) {
	c.t.Helper()
	if err := os.WriteFile(filepath.Join(c.ConfDir, "10-ipledger.conflist"), conflist, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// Log is containerd's output so far.
func (c *Containerd) Log() string {
	return c.log.String()
}

// PluginLog is the plugin's log file (the conflist's logFile, /var/log/ipledger/plugin.log).
func (c *Containerd) PluginLog() string {
	b, _ := os.ReadFile(filepath.Join(c.LogDir, "plugin.log"))
	return string(b)
}

// ctrCmd is ctr in containerd's mount and network namespaces (ctr makes the CNI calls itself).
func (c *Containerd) ctrCmd(args ...string) *exec.Cmd {
	full := append([]string{"-t", strconv.Itoa(c.cmd.Process.Pid), "-m", "-n", "ctr", "--address", c.socket, "--namespace", c.Namespace}, args...)
	cmd := exec.Command("nsenter", full...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// Ctr runs a ctr command to its end.
func (c *Containerd) Ctr(args ...string) Result {
	cmd := c.ctrCmd(args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return Result{Stdout: stdout.Bytes(), Stderr: stderr.Bytes(), Err: err}
}

// Remove removes a container containerd left behind: its task (killed) and the container.
func (c *Containerd) Remove(id string) error {
	c.Ctr("tasks", "kill", "-s", "SIGKILL", id)
	if r := c.Ctr("tasks", "delete", "--force", id); r.Err != nil && !strings.Contains(string(r.Stderr), "not found") {
		return fmt.Errorf("ctr tasks delete %s: %w: %s", id, r.Err, r.Stderr)
	}
	if r := c.Ctr("containers", "delete", id); r.Err != nil {
		return fmt.Errorf("ctr containers delete %s: %w: %s", id, r.Err, r.Stderr)
	}
	return nil
}

// Container is a `ctr run --rm --cni` in the foreground: it runs until its command ends, and
// ctr calls the CNI DEL then.
type Container struct {
	ID string
	// Rootfs is the container's root file system on the machine (busybox).
	Rootfs string
	cmd    *exec.Cmd
	out    *syncBuffer
	done   chan struct{}
	err    error
}

// CNIContainerID is the CNI_CONTAINERID ctr passes: "<namespace>-<id>".
func (c *Containerd) CNIContainerID(id string) string { return c.Namespace + "-" + id }

// Run starts `ctr run --rm --cni --rootfs <busybox> id args...` and returns at once.
func (c *Containerd) Run(id string, args ...string) *Container {
	c.t.Helper()
	rootfs := filepath.Join(c.Dir, "rootfs-"+id)
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "run"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			c.t.Fatal(err)
		}
	}
	b, err := os.ReadFile(BusyboxStatic)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), b, 0o755); err != nil {
		c.t.Fatal(err)
	}
	for _, applet := range []string{"sh", "ip", "ping", "sleep", "cat", "test"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			c.t.Fatal(err)
		}
	}
	k := &Container{ID: id, Rootfs: rootfs, out: &syncBuffer{}, done: make(chan struct{})}
	k.cmd = c.ctrCmd(append([]string{"run", "--rm", "--cni", "--rootfs", rootfs, id}, args...)...)
	k.cmd.Stdout, k.cmd.Stderr = k.out, k.out
	if err := k.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { k.err = k.cmd.Wait(); close(k.done) }()
	return k
}

// Output is what the container and ctr printed so far.
func (k *Container) Output() string { return k.out.String() }

// Wait waits up to d for ctr to end; err is its error (nil: the command exited 0 and the
// network was removed).
func (k *Container) Wait(d time.Duration) (ended bool, err error) {
	select {
	case <-k.done:
		return true, k.err
	case <-time.After(d):
		return false, nil
	}
}

// cleanup removes the test's containers and tasks, stops containerd and the shims it started,
// removes runc's cgroups of the namespace, the mount points it created and the directory.
func (c *Containerd) cleanup() {
	if c.cmd != nil && c.cmd.Process != nil {
		select {
		case <-c.exited:
		default:
			for _, id := range c.listIDs("tasks", "ls", "-q") {
				c.Ctr("tasks", "kill", "-s", "SIGKILL", id)
			}
			deadline := time.Now().Add(10 * time.Second)
			for _, id := range c.listIDs("tasks", "ls", "-q") {
				for c.Ctr("tasks", "delete", "-f", id).Err != nil && time.Now().Before(deadline) {
					time.Sleep(100 * time.Millisecond)
				}
			}
			for _, id := range c.listIDs("containers", "ls", "-q") {
				c.Ctr("containers", "delete", id)
			}
			_ = c.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-c.exited:
			case <-time.After(10 * time.Second):
				_ = c.cmd.Process.Kill()
				<-c.exited
			}
		}
	}
	// Shims outlive containerd; each left its PID in the state directory.
	pids, _ := filepath.Glob(filepath.Join(c.Dir, "state", "io.containerd.runtime.v2.task", c.Namespace, "*", "shim.pid"))
	for _, p := range pids {
		if b, err := os.ReadFile(p); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	removeCgroups(c.Namespace)
	for i := len(c.created) - 1; i >= 0; i-- {
		_ = os.Remove(c.created[i])
	}
	_ = os.RemoveAll(c.Dir)
}

func (c *Containerd) listIDs(args ...string) []string {
	r := c.Ctr(args...)
	return strings.Fields(string(r.Stdout))
}

// removeCgroups removes the cgroups runc made for the namespace's containers (/<namespace>/<id>
// under every hierarchy), innermost first; runc deletes a container's own, not the namespace's.
func removeCgroups(namespace string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", namespace))
	if unified := filepath.Join("/sys/fs/cgroup", namespace); isDir(unified) {
		dirs = append(dirs, unified)
	}
	for _, d := range dirs {
		subs, _ := filepath.Glob(filepath.Join(d, "*"))
		for _, s := range subs {
			if isDir(s) {
				_ = os.Remove(s)
			}
		}
		_ = os.Remove(d)
	}
}

// CgroupsLeft lists the namespace's cgroup directories that still exist.
func (c *Containerd) CgroupsLeft() []string {
	var out []string
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", c.Namespace, "*"))
	for _, d := range dirs {
		if isDir(d) {
			out = append(out, d)
		}
	}
	return out
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// syncBuffer is a buffer safe for a process's output and the test reading it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
