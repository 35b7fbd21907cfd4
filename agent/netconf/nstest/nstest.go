// Package nstest creates network namespaces for tests that need real networking (the node
// namespace of a simulated node, pod namespaces inside it) and removes them when the test ends,
// even when it fails. Tests that cannot create namespaces (not root) are skipped with a clear
// reason.
//
// It must never be imported by non-test code, and never changes the namespace the test runs in.
package nstest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to create network namespaces (run `go test` as root)")
	}
}

// RequireIPNetns skips the test unless `ip netns exec` can be used (iproute2 installed).
func RequireIPNetns(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("skipped: `ip` (iproute2) is not installed; `ip netns exec` is needed")
	}
}

// New creates a persistent network namespace under /var/run/netns (so `ip netns exec <Name>`
// works) with its loopback up, and removes it in t.Cleanup.
func New(t testing.TB) ns.NetNS {
	t.Helper()
	RequireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		if errors.Is(err, unix.EPERM) || strings.Contains(err.Error(), "operation not permitted") {
			t.Skipf("skipped: cannot create a network namespace here: %v", err)
		}
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() { remove(t, n) })
	err = n.Do(func(ns.NetNS) error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		t.Fatalf("bring up lo in %s: %v", n.Path(), err)
	}
	return n
}

// Remove deletes a namespace made by New before the test ends (a pod sandbox the runtime tore
// down); the cleanup New registered then has nothing left to do.
func Remove(t testing.TB, n ns.NetNS) {
	t.Helper()
	remove(t, n)
}

func remove(t testing.TB, n ns.NetNS) {
	t.Helper()
	_ = n.Close()
	if _, err := os.Stat(n.Path()); errors.Is(err, os.ErrNotExist) {
		return
	}
	if err := testutils.UnmountNS(n); err != nil {
		t.Errorf("remove network namespace %s: %v", n.Path(), err)
	}
}

// Name is the namespace's name for `ip netns exec`.
func Name(n ns.NetNS) string { return filepath.Base(n.Path()) }

// Handle returns a netlink handle bound to the namespace, closed in t.Cleanup.
func Handle(t testing.TB, n ns.NetNS) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(int(n.Fd()))) // the NetNS keeps the fd open
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", n.Path(), err)
	}
	t.Cleanup(h.Close)
	return h
}

// GuardRootNS records, in the namespace the test runs in (the machine's), IPv4 forwarding, the
// policy rules at the pod priorities 512 and 1536 and the links whose names start with one of prefixes, and fails
// the test in t.Cleanup if they changed: tests must only change namespaces they created.
func GuardRootNS(t testing.TB, prefixes ...string) {
	t.Helper()
	before, err := rootState(prefixes)
	if err != nil {
		t.Fatalf("snapshot of the test's own namespace: %v", err)
	}
	t.Cleanup(func() {
		after, err := rootState(prefixes)
		if err != nil {
			t.Errorf("snapshot of the test's own namespace: %v", err)
			return
		}
		if strings.Join(before, "\n") != strings.Join(after, "\n") {
			t.Errorf("the test changed its own (root) namespace:\nbefore: %q\nafter:  %q", before, after)
		}
	})
}

func rootState(prefixes []string) ([]string, error) {
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return nil, err
	}
	out := []string{"ip_forward=" + strings.TrimSpace(string(fwd))}
	rules, err := netlink.RuleList(netlink.FAMILY_V4)
	if err != nil {
		return nil, err
	}
	for _, r := range rules {
		if r.Priority == 512 || r.Priority == 1536 {
			out = append(out, r.String())
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		for _, p := range prefixes {
			if strings.HasPrefix(l.Attrs().Name, p) {
				out = append(out, "link "+l.Attrs().Name)
			}
		}
	}
	return out, nil
}

// Ping sends up to five ICMP echo requests from inside namespace n to dst, one second apart at
// most, and returns nil at the first reply.
func Ping(n ns.NetNS, dst netip.Addr) error {
	return n.Do(func(ns.NetNS) error {
		c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		id := (os.Getpid() + int(time.Now().UnixNano())) & 0xffff
		buf := make([]byte, 1500)
		for seq := 1; seq <= 5; seq++ {
			msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("ipledger")}}
			b, err := msg.Marshal(nil)
			if err != nil {
				return err
			}
			if _, err := c.WriteTo(b, &net.IPAddr{IP: net.IP(dst.AsSlice())}); err != nil {
				return fmt.Errorf("send echo to %s: %w", dst, err)
			}
			deadline := time.Now().Add(time.Second)
			_ = c.SetReadDeadline(deadline)
			for time.Now().Before(deadline) {
				n, from, err := c.ReadFrom(buf)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						break
					}
					return err
				}
				reply, err := icmp.ParseMessage(1, buf[:n])
				if err != nil || reply.Type != ipv4.ICMPTypeEchoReply {
					continue
				}
				if echo, ok := reply.Body.(*icmp.Echo); ok && echo.ID == id && echo.Seq == seq && from.String() == dst.String() {
					return nil
				}
			}
		}
		return fmt.Errorf("no echo reply from %s", dst)
	})
}
