package allocator

import (
	"context"
	"errors"
	"testing"
	"time"
)

// tryAcquire takes slots with a short deadline and reports whether it got them.
func tryAcquire(t *testing.T, s *slots, keys, shared []string) (func(), bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	release, err := s.acquireShared(ctx, keys, shared)
	if err != nil {
		if !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("acquire %v shared %v: %v", keys, shared, err)
		}
		return nil, false
	}
	return release, true
}

// Shared slots: many holders at once, none with an exclusive holder; a waiting exclusive
// taker goes before new shared takers; a key taken both ways is exclusive.
func TestSlotsShared(t *testing.T) {
	s := newSlots(nil)
	r1, ok1 := tryAcquire(t, s, []string{"node/a"}, []string{"subnet/s"})
	r2, ok2 := tryAcquire(t, s, []string{"node/b"}, []string{"subnet/s"})
	if !ok1 || !ok2 {
		t.Fatal("two shared takers of one slot must not wait for each other")
	}
	if _, ok := tryAcquire(t, s, []string{"subnet/s"}, nil); ok {
		t.Fatal("an exclusive taker got a slot held shared")
	}
	if _, ok := tryAcquire(t, s, []string{"node/a"}, nil); ok {
		t.Fatal("node/a was taken exclusively by the first holder")
	}
	// An exclusive taker waits for the shared holders; meanwhile a new shared taker waits
	// behind it.
	got := make(chan func(), 1)
	go func() {
		release, err := s.acquire(t.Context(), "subnet/s")
		if err != nil {
			t.Error(err)
			close(got)
			return
		}
		got <- release
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		_, waiting := s.want["subnet/s"]
		s.mu.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the exclusive taker never started waiting")
		}
		time.Sleep(time.Millisecond)
	}
	if _, ok := tryAcquire(t, s, nil, []string{"subnet/s"}); ok {
		t.Fatal("a new shared taker went before a waiting exclusive taker")
	}
	r1()
	select {
	case <-got:
		t.Fatal("the exclusive taker got the slot with one shared holder left")
	case <-time.After(20 * time.Millisecond):
	}
	r2()
	var rx func()
	select {
	case rx = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("the exclusive taker never got the slot")
	}
	if rx == nil {
		t.FailNow()
	}
	if _, ok := tryAcquire(t, s, nil, []string{"subnet/s"}); ok {
		t.Fatal("a shared taker got a slot held exclusively")
	}
	rx()
	r3, ok := tryAcquire(t, s, []string{"subnet/s"}, []string{"subnet/s"})
	if !ok {
		t.Fatal("the slot is free again")
	}
	if _, ok := tryAcquire(t, s, nil, []string{"subnet/s"}); ok {
		t.Fatal("a key named both exclusive and shared must be taken exclusively")
	}
	r3()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.busy)+len(s.shared)+len(s.want) != 0 {
		t.Fatalf("slots left behind: busy %v shared %v want %v", s.busy, s.shared, s.want)
	}
}
