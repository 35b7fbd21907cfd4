package allocator

import (
	"bytes"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// lockWatch is the tests' lockObserver: it knows which goroutine holds which of the
// allocator's mutexes and commit slots, and fails the test when a fake I/O interface is called
// with one held: EC2 under any mutex or commit slot, the store under any mutex (a commit slot
// is what a commit is made under).
type lockWatch struct {
	t    testing.TB
	mu   sync.Mutex
	held map[uint64][]string // goroutine -> names, in lock order
	bad  []string
}

func newLockWatch(t testing.TB) *lockWatch {
	w := &lockWatch{t: t, held: map[uint64][]string{}}
	t.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if len(w.bad) > 0 {
			t.Errorf("I/O under an allocator lock:\n  %s", strings.Join(w.bad, "\n  "))
		}
	})
	return w
}

// goid is the calling goroutine's id (tests only: parsed from its stack's first line).
func goid() uint64 {
	var buf [64]byte
	n := runtime.Stack(buf[:], false)
	f := bytes.Fields(buf[:n])
	if len(f) < 2 {
		return 0
	}
	id, _ := strconv.ParseUint(string(f[1]), 10, 64)
	return id
}

func (w *lockWatch) locked(name string) {
	id := goid()
	w.mu.Lock()
	w.held[id] = append(w.held[id], name)
	w.mu.Unlock()
}

func (w *lockWatch) unlocked(name string) {
	id := goid()
	w.mu.Lock()
	defer w.mu.Unlock()
	h := w.held[id]
	for i := len(h) - 1; i >= 0; i-- {
		if h[i] == name {
			w.held[id] = slices.Delete(h, i, i+1)
			if len(w.held[id]) == 0 {
				delete(w.held, id)
			}
			return
		}
	}
	w.bad = append(w.bad, fmt.Sprintf("%s unlocked by a goroutine that does not hold it", name))
}

func (w *lockWatch) heldHere() []string {
	id := goid()
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.held[id])
}

// ec2 runs before every call of the fake EC2.
func (w *lockWatch) ec2(action string) {
	if h := w.heldHere(); len(h) > 0 {
		w.fail(fmt.Sprintf("EC2 %s called holding %v", action, h))
	}
}

// store runs before every commit of the fake store.
func (w *lockWatch) store() {
	for _, name := range w.heldHere() {
		if !strings.HasPrefix(name, "slot ") {
			w.fail(fmt.Sprintf("store commit made holding %q", name))
		}
	}
}

func (w *lockWatch) fail(msg string) {
	buf := make([]byte, 4096)
	n := runtime.Stack(buf, false)
	w.mu.Lock()
	w.bad = append(w.bad, msg+"\n"+string(buf[:n]))
	w.mu.Unlock()
}

// watchLocks makes the fakes of an allocator's configuration check its locks.
func watchLocks(t testing.TB, cfg *Config, ec2 *fakeEC2, st *fakeStore) *lockWatch {
	w := newLockWatch(t)
	cfg.observer = w
	ec2.before = w.ec2
	st.before = w.store
	return w
}

// The lock watch itself: it catches a call under a mutex and a commit slot, and lets a commit
// under a slot pass.
func TestLockWatchCatchesIOUnderALock(t *testing.T) {
	w := &lockWatch{t: t, held: map[uint64][]string{}}
	m := mutex{name: "m", obs: w}
	m.Lock()
	w.ec2("AssignPrivateIpAddresses")
	w.store()
	m.Unlock()
	s := newSlots(w)
	release, err := s.acquire(t.Context(), "node/a")
	if err != nil {
		t.Fatal(err)
	}
	w.store() // allowed
	w.ec2("DescribeInstances")
	release()
	w.ec2("DescribeInstances") // nothing held any more
	if len(w.bad) != 3 {
		t.Fatalf("want 3 findings (EC2 and store under a mutex, EC2 under a slot), got %d: %v", len(w.bad), w.bad)
	}
	for i, want := range []string{`EC2 AssignPrivateIpAddresses called holding [m]`, `store commit made holding "m"`, `EC2 DescribeInstances called holding [slot node/a]`} {
		if !strings.HasPrefix(w.bad[i], want) {
			t.Fatalf("finding %d = %q, want %q", i, strings.SplitN(w.bad[i], "\n", 2)[0], want)
		}
	}
}
