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
//
// A slot may also be taken shared (acquireShared): by many holders at once, none of which
// writes the record, all of which exclude an exclusive holder. Registrations take their
// subnet's slot shared: they do not write the subnet's record but must not interleave with a
// scan that rewrites its foreign set, and they must not wait for each other. A waiting
// exclusive taker stops new shared takers, so a stream of registrations cannot starve a scan.
type slots struct {
	mu     mutex                    // guards busy, shared and want; never held while waiting
	busy   map[string]chan struct{} // record key -> closed when its exclusive slot is given back
	shared map[string]*sharedSlot   // record key -> its shared holders
	want   map[string]*sharedSlot   // record key -> exclusive takers waiting for it
}

// sharedSlot is a slot held shared by n holders; done is closed when the last gives it back.
type sharedSlot struct {
	n    int
	done chan struct{}
}

func newSlots(obs lockObserver) *slots {
	return &slots{mu: mutex{name: "slots", obs: obs}, busy: map[string]chan struct{}{},
		shared: map[string]*sharedSlot{}, want: map[string]*sharedSlot{}}
}

// Record keys of commit slots.
func nodeKey(name string) string   { return "node/" + name }
func subnetKey(id string) string   { return "subnet/" + id }
func policyKey(name string) string { return "policy/" + name }
func prewarmKey(id string) string  { return "prewarm/" + id }
func instanceKey(id string) string { return "instance/" + id }

// acquire takes the slots of keys, waiting until none is held, and returns what gives them back.
func (s *slots) acquire(ctx context.Context, keys ...string) (release func(), err error) {
	return s.acquireShared(ctx, keys, nil)
}

// acquireShared takes the slots of keys exclusively and those of shared shared (a key in both
// is taken exclusively), all at once, and returns what gives them back.
func (s *slots) acquireShared(ctx context.Context, keys, shared []string) (release func(), err error) {
	keys = dedupe(keys)
	shared = dedupe(shared)
	{
		ex := map[string]bool{}
		for _, k := range keys {
			ex[k] = true
		}
		n := 0
		for _, k := range shared {
			if !ex[k] {
				shared[n] = k
				n++
			}
		}
		shared = shared[:n]
	}
	name := "slot " + strings.Join(keys, ",")
	if len(shared) > 0 {
		name += " shared " + strings.Join(shared, ",")
	}
	wanting := false
	for {
		s.mu.Lock()
		var wait chan struct{}
		for _, k := range keys {
			if ch, ok := s.busy[k]; ok {
				wait = ch
				break
			}
			if sh, ok := s.shared[k]; ok {
				wait = sh.done
				break
			}
		}
		for _, k := range shared {
			if wait != nil {
				break
			}
			if ch, ok := s.busy[k]; ok {
				wait = ch
			}
		}
		for _, k := range shared {
			// Exclusive takers waiting go first: wait until they have taken the slot (or
			// given up), then for the slot itself.
			if wait != nil {
				break
			}
			if w, ok := s.want[k]; ok {
				wait = w.done
			}
		}
		if wait == nil {
			if wanting {
				s.unwantLocked(keys)
			}
			done := make(chan struct{})
			for _, k := range keys {
				s.busy[k] = done
			}
			for _, k := range shared {
				sh, ok := s.shared[k]
				if !ok {
					sh = &sharedSlot{done: make(chan struct{})}
					s.shared[k] = sh
				}
				sh.n++
			}
			s.mu.Unlock()
			if s.mu.obs != nil {
				s.mu.obs.locked(name)
			}
			var once sync.Once
			return func() {
				once.Do(func() {
					if s.mu.obs != nil {
						s.mu.obs.unlocked(name)
					}
					s.mu.Lock()
					for _, k := range keys {
						delete(s.busy, k)
					}
					for _, k := range shared {
						sh := s.shared[k]
						if sh.n--; sh.n == 0 {
							delete(s.shared, k)
							close(sh.done)
						}
					}
					s.mu.Unlock()
					close(done)
				})
			}, nil
		}
		if !wanting {
			wanting = true
			for _, k := range keys {
				w, ok := s.want[k]
				if !ok {
					w = &sharedSlot{done: make(chan struct{})}
					s.want[k] = w
				}
				w.n++
			}
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.unwantLocked(keys)
			s.mu.Unlock()
			return nil, fmt.Errorf("%w: waiting to change %s: %w", ErrStoreUnavailable, strings.Join(append(keys, shared...), ", "), ctx.Err())
		case <-wait:
		}
	}
}

// unwantLocked ends the wait of an exclusive taker of keys (it took them or gave up).
func (s *slots) unwantLocked(keys []string) {
	for _, k := range keys {
		w := s.want[k]
		if w.n--; w.n == 0 {
			delete(s.want, k)
			close(w.done)
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
