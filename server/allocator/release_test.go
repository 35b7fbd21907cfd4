package allocator

import (
	"errors"
	"slices"
	"sort"
	"strings"
	"testing"
)

// An agent answers exactly what it was asked: every item it names is in the proposal, once.
func TestCheckAckItems(t *testing.T) {
	proposed := []string{"10.0.0.5", "10.0.0.6", "10.0.1.0/28"}
	for _, tc := range []struct {
		name                string
		confirmed, refused  []string
		wantField, wantText string
	}{
		{"all confirmed", proposed, nil, "", ""},
		{"split", []string{"10.0.0.5"}, []string{"10.0.0.6", "10.0.1.0/28"}, "", ""},
		{"partial answer", []string{"10.0.0.5"}, nil, "", ""},
		{"item not proposed", []string{"10.0.0.7"}, nil, "release_ack.confirmed[0]", "not in proposal"},
		{"refused item not proposed", nil, []string{"10.0.0.5", "192.168.0.1"}, "release_ack.refused[1]", "not in proposal"},
		{"item twice", []string{"10.0.0.5"}, []string{"10.0.0.5"}, "release_ack.refused[0]", "answered twice"},
		{"more items than proposed", proposed, []string{"10.0.0.5"}, "release_ack", "answer a proposal of 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkAckItems(proposed, ReleaseAck{ProposalID: "rp-1", Confirmed: tc.confirmed, Refused: tc.refused})
			if tc.wantField == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var ia *InvalidArgumentError
			if !errors.As(err, &ia) || !errors.Is(err, ErrInvalidArgument) || ia.Field != tc.wantField || !strings.Contains(err.Error(), tc.wantText) {
				t.Fatalf("got %v, want field %s and %q", err, tc.wantField, tc.wantText)
			}
		})
	}
}

// drainQueue empties the work queue and returns what was queued, sorted.
func drainQueue(q *workQueue) []string {
	var out []string
	for {
		k, ok := q.take()
		if !ok {
			break
		}
		q.finish(k)
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// A dry subnet's reclaim queues only the subnet's other nodes, makes their surplus due at once,
// and runs at most once a tick per subnet when asked for by waiting nodes (an operator's
// budget change is not limited); a removed node leaves the subnet's index.
func TestReclaimPerSubnetAndLimited(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Subnets = []string{subnetA, subnetB} })
	n1, n2, n3 := e.register("m5.large", subnetA), e.register("m5.large", subnetA), e.register("m5.large", subnetA)
	other := e.register("m5.large", subnetB)
	drainQueue(e.a.work)
	want := []string{n2, n3}
	sort.Strings(want)
	e.a.reclaimForWaiting(subnetA, n1)
	if got := drainQueue(e.a.work); !slices.Equal(got, want) {
		t.Fatalf("reclaim queued %v, want %v (the subnet's nodes but the asker)", got, want)
	}
	s1, s2, s3, so := e.ns(n1), e.ns(n2), e.ns(n3), e.ns(other)
	e.a.mu.Lock()
	due := !s2.surplusSince.IsZero() && !s3.surplusSince.IsZero() && s1.surplusSince.IsZero() && so.surplusSince.IsZero()
	e.a.mu.Unlock()
	if !due {
		t.Fatal("reclaim did not make exactly the subnet's other nodes' surplus due")
	}
	e.a.reclaimForWaiting(subnetA, n2)
	if got := drainQueue(e.a.work); len(got) != 0 {
		t.Fatalf("a second reclaim within the tick queued %v", got)
	}
	e.a.reclaimForWaiting(subnetB, "")
	if got := drainQueue(e.a.work); !slices.Equal(got, []string{other}) {
		t.Fatalf("reclaim of the other subnet queued %v, want only %s", got, other)
	}
	e.a.reclaimInSubnet(subnetA, "")
	if got := drainQueue(e.a.work); len(got) != 3 {
		t.Fatalf("an unlimited reclaim queued %v, want the subnet's 3 nodes", got)
	}
	e.clk.Advance(e.a.cfg.Tick)
	if err := e.a.removeNode(e.ctx, n3, "test"); err != nil {
		t.Fatal(err)
	}
	drainQueue(e.a.work)
	e.a.reclaimForWaiting(subnetA, n1)
	if got := drainQueue(e.a.work); !slices.Equal(got, []string{n2}) {
		t.Fatalf("reclaim a tick later, after %s left, queued %v, want [%s]", n3, got, n2)
	}
}
