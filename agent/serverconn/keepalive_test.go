package serverconn

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// syncServer is a minimal NodeService: registration answers a pool, Sync sends it and then
// reads until the stream ends.
type syncServer struct {
	ipledgerv1.UnimplementedNodeServiceServer
	syncs atomic.Int32
}

func (s *syncServer) pool() *ipledgerv1.NodePool {
	return &ipledgerv1.NodePool{NodeName: "node-a", InstanceId: "i-1", Generation: 1}
}

func (s *syncServer) RegisterNode(_ context.Context, _ *ipledgerv1.RegisterNodeRequest) (*ipledgerv1.RegisterNodeResponse, error) {
	return &ipledgerv1.RegisterNodeResponse{Pool: s.pool()}, nil
}

func (s *syncServer) Sync(stream ipledgerv1.NodeService_SyncServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	s.syncs.Add(1)
	if err := stream.Send(&ipledgerv1.SyncResponse{Msg: &ipledgerv1.SyncResponse_Pool{Pool: s.pool()}}); err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return nil
		}
	}
}

// blackhole forwards TCP connections to a backend until told to swallow everything: then the
// connections stay open but nothing passes either way, as with a peer that died without
// closing them (a half-open connection).
type blackhole struct {
	ln      net.Listener
	backend string
	dark    atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
}

func newBlackhole(t *testing.T, backend string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, backend: backend}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", backend)
			if err != nil {
				_ = c.Close()
				continue
			}
			b.mu.Lock()
			b.conns = append(b.conns, c, up)
			b.mu.Unlock()
			b.wg.Add(2)
			go func() { defer b.wg.Done(); b.pipe(up, c) }()
			go func() { defer b.wg.Done(); b.pipe(c, up) }()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		b.mu.Lock()
		for _, c := range b.conns {
			_ = c.Close()
		}
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *blackhole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !b.dark.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				_ = dst.Close()
			}
			return
		}
	}
}

// TestKeepaliveNoticesAHalfOpenStream: when the leader's connection goes silent without being
// closed, the keepalive ping times out, the stream fails and the agent moves to the next server
// instead of waiting on a dead stream forever.
func TestKeepaliveNoticesAHalfOpenStream(t *testing.T) {
	if testing.Short() {
		t.Skip("waits about 11 s for a keepalive ping (gRPC pings at most every 10 s) to time out")
	}
	srv := grpc.NewServer(grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}))
	fake := &syncServer{}
	ipledgerv1.RegisterNodeServiceServer(srv, fake)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-served })
	hole := newBlackhole(t, ln.Addr().String())

	cfg := testConfig(t, hole.ln.Addr().String(), ln.Addr().String())
	cfg.KeepaliveTime = time.Second // raised to gRPC's minimum of 10 s
	cfg.KeepaliveTimeout = time.Second
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	waitState(t, 10*time.Second, "the stream up through the proxy", c, func(st State) bool {
		return st.Connected && st.Target == hole.ln.Addr().String()
	})
	hole.dark.Store(true)
	start := time.Now()
	waitState(t, 25*time.Second, "the stream up on the next server", c, func(st State) bool {
		return st.Connected && st.Target == ln.Addr().String() && st.Connects >= 2
	})
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the dead stream was noticed after %v, want about 11 s (ping after 10 s, 1 s timeout)", took)
	}
	if got := fake.syncs.Load(); got < 2 {
		t.Errorf("the server saw %d Sync streams, want 2", got)
	}
}

func waitState(t *testing.T, d time.Duration, what string, c *Conn, cond func(State) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond(c.State()) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; state %+v", d, what, c.State())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
