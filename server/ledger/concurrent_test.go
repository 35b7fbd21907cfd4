package ledger

import (
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestConcurrentUse drives the ledger from several goroutines at once (run with -race): each
// worker owns a node and reserves, commits, releases and reports usage while a reader takes
// budgets and conflicts. Every read must see totals that add up.
func TestConcurrentUse(t *testing.T) {
	l := New(Options{ReleaseCooldown: time.Second})
	mustPutSubnet(t, l, subnetRec("s1", "10.0.0.0/22"))
	const workers, rounds = 4, 150
	for w := range workers {
		mustPutNode(t, l, nodeRec(fmt.Sprintf("n%d", w), "s1", fmt.Sprintf("10.0.%d.200", w)))
	}
	var stop atomic.Bool
	var readerErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		for !stop.Load() {
			for _, b := range l.Budgets(t0) {
				if err := checkBudget(b); err != nil {
					readerErr = err
					return
				}
			}
			if cs := l.Conflicts(); len(cs) != 0 {
				readerErr = fmt.Errorf("conflicts: %+v", cs)
				return
			}
			l.Nodes()
		}
	})
	errs := make([]error, workers)
	var workersWG sync.WaitGroup
	for w := range workers {
		workersWG.Go(func() {
			name := fmt.Sprintf("n%d", w)
			now := t0
			for i := range rounds {
				now = now.Add(300 * time.Millisecond)
				got, err := l.ReserveAddresses("s1", 1+i%3, Owner{Node: name}, now)
				if err != nil {
					errs[w] = err
					return
				}
				rec, _ := l.Node(name)
				for _, a := range got {
					rec.ENIs[0].Addresses = append(rec.ENIs[0].Addresses, LeasedAddress{IP: a, State: LeaseActive})
				}
				// Release the oldest beyond six; usage is always the newest three, so nothing
				// released is ever reported in use.
				for len(rec.ENIs[0].Addresses) > 6 {
					gone := rec.ENIs[0].Addresses[0].IP
					rec.ENIs[0].Addresses = rec.ENIs[0].Addresses[1:]
					l.Released("s1", []netip.Addr{gone}, nil, now)
				}
				if err := l.PutNode(rec); err != nil {
					errs[w] = err
					return
				}
				var used []netip.Addr
				for _, a := range rec.ENIs[0].Addresses[max(0, len(rec.ENIs[0].Addresses)-3):] {
					used = append(used, a.IP)
				}
				l.SetUsage(name, used)
			}
		})
	}
	workersWG.Wait()
	stop.Store(true)
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Fatalf("worker %d: %v", w, err)
		}
	}
	if readerErr != nil {
		t.Fatal(readerErr)
	}
	assertInvariants(t, l)
	b := mustBudget(t, l, "s1", t0)
	if b.Held != workers*(1+6) || b.InUse != workers*3 {
		t.Fatalf("budget after the run = %+v", b)
	}
}
