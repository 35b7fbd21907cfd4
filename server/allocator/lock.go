package allocator

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// mutex is the allocator's sync.Mutex. It reports to an observer, when one is set (only the
// package's tests set one), which goroutine holds which lock, so the fakes of EC2 and the store
// can fail a test that reaches them with a lock held. See the lock order in doc.go.
type mutex struct {
	mu   sync.Mutex
	name string
	obs  lockObserver
}

// lockObserver hears of every Lock and Unlock of the allocator's mutexes and of every commit
// slot taken and given back, on the goroutine that does it.
type lockObserver interface {
	locked(name string)
	unlocked(name string)
}

func (m *mutex) Lock() {
	m.mu.Lock()
	if m.obs != nil {
		m.obs.locked(m.name)
	}
}

func (m *mutex) Unlock() {
	if m.obs != nil {
		m.obs.unlocked(m.name)
	}
	m.mu.Unlock()
}

// slots are the commit slots of records: a change to a record (a node, a subnet, a policy, a
// pre-warm reservation, a registration's instance) is planned, committed and applied by one
// writer at a time, so the ledger applies a record's writes in the order etcd took them. A slot
// is not a mutex: a waiter waits with its context, and while one is held the holder commits to
// the store but never calls EC2 (the tests check both). Slots for several records are taken all
// at once or not at all, so no order among them can deadlock.
type slots struct {
	mu   mutex                    // guards busy; never held while waiting
	busy map[string]chan struct{} // record key -> closed when its slot is given back
}

func newSlots(obs lockObserver) *slots {
	return &slots{mu: mutex{name: "slots", obs: obs}, busy: map[string]chan struct{}{}}
}

// Record keys of commit slots.
func nodeKey(name string) string   { return "node/" + name }
func subnetKey(id string) string   { return "subnet/" + id }
func policyKey(name string) string { return "policy/" + name }
func prewarmKey(id string) string  { return "prewarm/" + id }
func instanceKey(id string) string { return "instance/" + id }

// acquire takes the slots of keys, waiting until none is held, and returns what gives them back.
func (s *slots) acquire(ctx context.Context, keys ...string) (release func(), err error) {
	keys = dedupe(keys)
	for {
		s.mu.Lock()
		var wait chan struct{}
		for _, k := range keys {
			if ch, ok := s.busy[k]; ok {
				wait = ch
				break
			}
		}
		if wait == nil {
			done := make(chan struct{})
			for _, k := range keys {
				s.busy[k] = done
			}
			s.mu.Unlock()
			if s.mu.obs != nil {
				s.mu.obs.locked("slot " + strings.Join(keys, ","))
			}
			var once sync.Once
			return func() {
				once.Do(func() {
					if s.mu.obs != nil {
						s.mu.obs.unlocked("slot " + strings.Join(keys, ","))
					}
					s.mu.Lock()
					for _, k := range keys {
						delete(s.busy, k)
					}
					s.mu.Unlock()
					close(done)
				})
			}, nil
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting to change %s: %w", ErrStoreUnavailable, strings.Join(keys, ", "), ctx.Err())
		case <-wait:
		}
	}
}

func dedupe(keys []string) []string {
	out := append([]string(nil), keys...)
	sort.Strings(out)
	n := 0
	for i, k := range out {
		if i == 0 || k != out[n-1] {
			out[n] = k
			n++
		}
	}
	return out[:n]
}
