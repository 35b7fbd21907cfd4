package api

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Each node has its own bucket: one node spending its burst leaves the others theirs; tokens
// come back at the rate; idle buckets are forgotten.
func TestNodeLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := NewNodeLimiter(10, 5)
	l.now = func() time.Time { return now }
	for i := range 5 {
		if !l.Allow("a") {
			t.Fatalf("call %d of the burst refused", i)
		}
	}
	if l.Allow("a") {
		t.Fatal("a call over the burst passed")
	}
	if !l.Allow("b") {
		t.Fatal("another node was limited by the first one's calls")
	}
	now = now.Add(100 * time.Millisecond) // one token at 10/s
	if !l.Allow("a") || l.Allow("a") {
		t.Fatal("the refill is not one token per 100 ms")
	}
	// After the time to refill the burst (0.5 s) plus the sweep interval, idle entries go.
	now = now.Add(sweepEvery + time.Second)
	l.Allow("c")
	if got := l.Tracked(); got != 1 {
		t.Fatalf("%d buckets tracked after the sweep, want 1 (c)", got)
	}
	err := l.Refuse("a", "RequestAddresses")
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("refusal: %v", err)
	}
	if r, md := ReasonOf(err); r != ipledgerv1.Reason_RATE_LIMITED.String() || md["node"] != "a" {
		t.Fatalf("refusal reason %q %v", r, md)
	}
}

// The table is bounded: past maxLimiterEntries busy nodes, new names share one bucket.
func TestNodeLimiterTableIsBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	l := NewNodeLimiter(1, 1)
	l.now = func() time.Time { return now }
	for i := range maxLimiterEntries {
		l.Allow(fmt.Sprintf("n%d", i))
	}
	if l.Tracked() != maxLimiterEntries {
		t.Fatalf("%d tracked", l.Tracked())
	}
	if !l.Allow("overflow-1") || l.Allow("overflow-2") {
		t.Fatal("names past the table's bound do not share one bucket")
	}
	if l.Tracked() != maxLimiterEntries {
		t.Fatalf("the table grew past its bound: %d", l.Tracked())
	}
}
