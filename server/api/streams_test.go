package api

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// silentStream is a Sync stream whose client never sends anything.
type silentStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *silentStream) Context() context.Context { return s.ctx }
func (s *silentStream) Recv() (*ipledgerv1.SyncRequest, error) {
	<-s.ctx.Done()
	return nil, s.ctx.Err()
}
func (s *silentStream) Send(*ipledgerv1.SyncResponse) error { return nil }

func peerCtx(t *testing.T, addr string) (context.Context, context.CancelFunc) {
	ap, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return context.WithCancel(peer.NewContext(t.Context(), &peer.Peer{Addr: ap}))
}

// A stream that sends no hello is ended after HelloTimeout, and its place is free again.
func TestSyncWithoutHelloIsEnded(t *testing.T) {
	var refusals []string
	g := &StreamGuard{MaxPerCaller: 1, HelloTimeout: 50 * time.Millisecond, OnRefused: func(why string) { refusals = append(refusals, why) }}
	s := NewNodeServer(nil, NodeOptions{Streams: g})
	ctx, cancel := peerCtx(t, "127.0.0.1:40000")
	defer cancel()

	done := make(chan error, 1)
	go func() { done <- s.Sync(&silentStream{ctx: ctx}) }()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a stream without a hello was not ended")
	}
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("silent stream ended with %v, want DEADLINE_EXCEEDED", err)
	}
	if r, md := ReasonOf(err); r != ipledgerv1.Reason_INVALID_ARGUMENT.String() || md["field"] != "hello" {
		t.Fatalf("reason %q metadata %v, want INVALID_ARGUMENT on field hello", r, md)
	}
	if len(refusals) != 1 || refusals[0] != "no_hello" {
		t.Fatalf("refusals %v, want [no_hello]", refusals)
	}
	if n := g.Open(ctx); n != 0 {
		t.Fatalf("the ended stream still holds %d places", n)
	}
}

// Without mutual TLS nothing says who calls, so streams are bounded per connection: a second
// connection from the same address is another caller (many agents share loopback in tests and
// the benchmark), a second stream on the same connection is not.
func TestPlaintextStreamsAreBoundedPerConnection(t *testing.T) {
	g := &StreamGuard{MaxPerCaller: 1, HelloTimeout: time.Minute}
	c1, cancel1 := peerCtx(t, "127.0.0.1:40001")
	defer cancel1()
	c2, cancel2 := peerCtx(t, "127.0.0.1:40002")
	defer cancel2()
	rel1, err := g.acquire(c1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.acquire(c1); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second stream on one connection: %v, want RESOURCE_EXHAUSTED", err)
	}
	rel2, err := g.acquire(c2)
	if err != nil {
		t.Fatalf("a stream on another connection was refused: %v", err)
	}
	rel1()
	rel1() // releasing twice frees one place only
	if _, err := g.acquire(c1); err != nil {
		t.Fatalf("after release: %v", err)
	}
	rel2()
	if g.Open(c2) != 0 || g.Open(c1) != 1 {
		t.Fatalf("open c1 %d c2 %d, want 1 and 0", g.Open(c1), g.Open(c2))
	}
}
