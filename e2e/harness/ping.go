package harness

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// Ping sends up to five ICMP echo requests from inside the pod's namespace to dst and returns
// nil at the first reply.
func Ping(p *Pod, dst netip.Addr) error {
	return p.NS.Do(func(ns.NetNS) error {
		c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		defer func() { _ = c.Close() }()
		id := (os.Getpid() + int(time.Now().UnixNano())) & 0xffff
		buf := make([]byte, 1500)
		for seq := 1; seq <= 5; seq++ {
			msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("ipledger-e2e")}}
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

func netnsHandle(n ns.NetNS) netns.NsHandle { return netns.NsHandle(int(n.Fd())) }
