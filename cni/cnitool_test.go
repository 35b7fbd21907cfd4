package cni_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// cnitoolCacheDir is where libcni (and so cnitool, which cannot be told otherwise) caches results.
const cnitoolCacheDir = "/var/lib/cni"

// runtime drives the plugin through cnitool, the reference CNI runtime, in the node namespace.
type runtime struct {
	n       *node
	network string
	confDir string
}

func newRuntime(t *testing.T, n *node, version string) *runtime {
	t.Helper()
	pluginPath(t)
	if cnitoolErr != nil {
		t.Fatal(cnitoolErr)
	}
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	r := &runtime{n: n, network: "ipl-test-" + hex.EncodeToString(suffix), confDir: t.TempDir()}
	conflist := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":"ipledger","agentSocket":%q,"addTimeout":"5s"}]}`,
		version, r.network, n.agent.socket)
	if err := os.WriteFile(filepath.Join(r.confDir, "10-"+r.network+".conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	_, statErr := os.Stat(cnitoolCacheDir)
	t.Cleanup(func() {
		// Remove our cached results; the cache directory too when it did not exist before.
		matches, _ := filepath.Glob(filepath.Join(cnitoolCacheDir, "results", r.network+"-*"))
		for _, m := range matches {
			_ = os.Remove(m)
		}
		if os.IsNotExist(statErr) {
			_ = os.Remove(filepath.Join(cnitoolCacheDir, "results"))
			_ = os.Remove(cnitoolCacheDir)
		}
	})
	return r
}

// cnitool runs `cnitool <cmd> <network> <netns>` inside the node namespace.
func (r *runtime) cnitool(cmd string, p *pod) outcome {
	r.n.t.Helper()
	netnsPath := "/var/run/netns/unused"
	if p != nil {
		netnsPath = p.ns.Path()
	}
	c := exec.Command("ip", "netns", "exec", nameOf(r.n), cnitoolBin, cmd, r.network, netnsPath)
	c.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"NETCONFPATH=" + r.confDir,
		"CNI_PATH=" + binDir,
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=cnitool-pod",
	}
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	err := c.Run()
	return outcome{stdout: stdout.Bytes(), stderr: stderr.Bytes(), err: err}
}

// cnitoolPod is a pod with the container id cnitool derives from its netns path.
func cnitoolPod(n *node) *pod {
	p := n.newPod("")
	sum := sha512.Sum512([]byte(p.ns.Path()))
	p.containerID = fmt.Sprintf("cnitool-%x", sum[:10])
	return p
}

func TestThroughCNITool(t *testing.T) {
	for _, version := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(version, func(t *testing.T) {
			n := newNode(t, "192.168.16.90", "192.168.32.91")
			n.agent.set(func(a *fakeAgent) { a.tables["192.168.32.91"] = 2 })
			rt := newRuntime(t, n, version)
			a, b := cnitoolPod(n), cnitoolPod(n)

			var ips []netip.Addr
			for _, p := range []*pod{a, b} {
				out := rt.cnitool("add", p)
				out.mustSucceed(t, "cnitool add")
				// cnitool prints the result converted to the network's version.
				ips = append(ips, resultIP(t, parseResult(t, out.stdout, version, p)))
			}
			n.assertAttached(a, ips[0], netconf.MainTable)
			n.assertAttached(b, ips[1], 2)
			if err := nstest.Ping(a.ns, ips[1]); err != nil {
				t.Errorf("pod A -> pod B: %v", err)
			}

			for _, p := range []*pod{a, b} {
				rt.cnitool("check", p).mustSucceed(t, "cnitool check")
			}
			rt.cnitool("status", a).mustSucceed(t, "cnitool status")
			wantStatus := 0
			if version == "1.1.0" {
				wantStatus = 1
			}
			if got := n.agent.CallsOf("Status"); got != wantStatus {
				t.Errorf("agent saw %d Status calls for a %s network, want %d", got, version, wantStatus)
			}

			for range 2 { // idempotent
				rt.cnitool("del", a).mustSucceed(t, "cnitool del")
			}
			if _, err := n.h.LinkByName(a.hostVeth()); err == nil {
				t.Errorf("host veth of pod A survived cnitool del")
			}
			// cnitool gc passes no valid attachments: libcni DELs every cached attachment
			// (pod B) and, from 1.1.0, the plugin's GC hands the agent an empty valid list.
			rt.cnitool("gc", a).mustSucceed(t, "cnitool gc")
			wantGC := 0
			if version == "1.1.0" {
				wantGC = 1
			}
			if got := n.agent.CallsOf("GC"); got != wantGC {
				t.Errorf("agent saw %d GC calls for a %s network, want %d", got, version, wantGC)
			}
			n.assertClean()
			if got := n.agent.Assigned(); len(got) != 0 {
				t.Errorf("agent still holds %v", got)
			}
		})
	}
}

func TestCNIToolErrors(t *testing.T) {
	n := newNode(t) // an agent with no address
	rt := newRuntime(t, n, "1.1.0")
	p := cnitoolPod(n)
	out := rt.cnitool("add", p)
	if out.err == nil || !strings.Contains(string(out.stderr), "subnet exhausted") {
		t.Errorf("cnitool add with an exhausted subnet: err %v, stderr %q; want the reason", out.err, out.stderr)
	}
	n.assertClean()

	n.agent.set(func(a *fakeAgent) {
		a.status = &ipledgerv1.CNIStatusResponse{Reason: ipledgerv1.Reason_SUBNET_EXHAUSTED, Message: "subnet-0abc: 0 of 4091 free"}
	})
	out = rt.cnitool("status", p)
	if out.err == nil || !strings.Contains(string(out.stderr), "subnet-0abc: 0 of 4091 free") {
		t.Errorf("cnitool status of an agent that cannot serve: err %v, stderr %q; want the agent's reason", out.err, out.stderr)
	}
}

func nameOf(n *node) string { return filepath.Base(n.ns.Path()) }
