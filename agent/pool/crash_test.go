package pool

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

var errCrashed = errors.New("injected crash")

// crashDisk plays the machine under a pool: told of every step of the checkpoint's writes
// (Config.faults) it kills the pool at the chosen one (that step and every later one fail, as
// if the process were gone), and it remembers what the steps made durable, so that crash can
// then take away from the files what a crash of the machine could lose.
type crashDisk struct {
	mu      sync.Mutex
	killAt  int // kill at this step (1-based; 0: never)
	n       int
	dead    bool
	killed  string            // the step killed at
	synced  map[string]int64  // journal file: its size at its last fsync
	created map[string]bool   // files created since their directory's last fsync
	renamed map[string][]byte // rename targets since the last directory fsync: old content (nil: none)
	removed map[string][]byte // files removed since the last directory fsync: their content
	steps   []string
}

func newCrashDisk(killAt int) *crashDisk {
	return &crashDisk{killAt: killAt, synced: map[string]int64{}, created: map[string]bool{},
		renamed: map[string][]byte{}, removed: map[string][]byte{}}
}

func (c *crashDisk) hook(step, path string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return errCrashed
	}
	c.n++
	c.steps = append(c.steps, step)
	if c.n == c.killAt {
		c.dead, c.killed = true, step
		return errCrashed
	}
	switch step {
	case stepJournalCreate:
		c.created[path] = true
		c.synced[path] = 0
	case stepJournalSync, stepOpenSync:
		// Only a journal's appends can be lost by size (a snapshot is renamed into place).
		if fi, err := os.Stat(path); err == nil && strings.Contains(path, ".journal-") {
			c.synced[path] = fi.Size()
		}
	case stepSnapshotRename:
		if _, seen := c.renamed[path]; !seen {
			old, err := os.ReadFile(path)
			if err != nil {
				old = nil
			}
			c.renamed[path] = old
		}
	case stepJournalRemove:
		if data, err := os.ReadFile(path); err == nil {
			c.removed[path] = data
		}
	case stepDirSync:
		clear(c.created)
		clear(c.renamed)
		clear(c.removed)
	}
	return nil
}

// after is the disk of the next run on the same files: what was not durable at the crash still
// is not.
func (c *crashDisk) after() *crashDisk {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := newCrashDisk(0)
	n.synced, n.created, n.renamed, n.removed = maps.Clone(c.synced), maps.Clone(c.created), maps.Clone(c.renamed), maps.Clone(c.removed)
	return n
}

// kill makes every later step fail (the process is gone).
func (c *crashDisk) kill() {
	c.mu.Lock()
	c.dead = true
	c.mu.Unlock()
}

// Crash modes: what the machine keeps of what was not made durable.
const (
	crashKeep = "keep" // the agent crashed, the machine did not: everything written is there
	crashLose = "lose" // the machine crashed: nothing that was not fsynced survives
	crashTorn = "torn" // the machine crashed in the middle: half of each unsynced tail survives
)

var crashModes = []string{crashKeep, crashLose, crashTorn}

// crash applies mode to the files.
func (c *crashDisk) crash(t *testing.T, mode string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if mode == crashKeep {
		return
	}
	defer func() { // what survived is on disk now
		for name := range c.synced {
			if fi, err := os.Stat(name); err == nil {
				c.synced[name] = fi.Size()
			}
		}
		clear(c.created)
		clear(c.renamed)
		clear(c.removed)
	}()
	for name, size := range c.synced {
		fi, err := os.Stat(name)
		if err != nil || fi.Size() <= size {
			continue
		}
		keep := size
		if mode == crashTorn {
			keep = size + (fi.Size()-size)/2
		}
		if err := os.Truncate(name, keep); err != nil {
			t.Fatal(err)
		}
	}
	if mode != crashLose {
		return
	}
	for name := range c.created {
		_ = os.Remove(name)
	}
	for name, old := range c.renamed {
		if old == nil {
			_ = os.Remove(name)
		} else if err := os.WriteFile(name, old, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range c.removed {
		if err := os.WriteFile(name, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// crashOp is one step of a workload; it reports whether the pool refused it.
type crashOp struct {
	name string
	do   func(p *Pool, clock *fakeClock) error
}

func assignOp(cid string) crashOp {
	return crashOp{"assign " + cid, func(p *Pool, _ *fakeClock) error {
		_, _, err := p.Assign(Key{ContainerID: cid, IfName: "eth0"}, PodInfo{Namespace: "ns", Name: cid, UID: "uid-" + cid})
		return err
	}}
}

func releaseOp(cid string) crashOp {
	return crashOp{"release " + cid, func(p *Pool, _ *fakeClock) error {
		_, found, err := p.Release(Key{ContainerID: cid, IfName: "eth0"})
		if err == nil && !found {
			return fmt.Errorf("release %s: not found", cid)
		}
		return err
	}}
}

func applyOp(np *ipledgerv1.NodePool) crashOp {
	return crashOp{fmt.Sprint("apply ", np.GetGeneration()), func(p *Pool, _ *fakeClock) error {
		_, err := p.Apply(np, false)
		return err
	}}
}

func advanceOp(d time.Duration) crashOp {
	return crashOp{"advance " + d.String(), func(_ *Pool, c *fakeClock) error {
		c.Advance(d)
		return nil
	}}
}

// crashWorkload exercises every kind of change the journal records.
func crashWorkload() []crashOp {
	gen1 := nodePool(1,
		eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14", "10.0.0.15", "10.0.0.16")),
		eni("eni-1", 1, "10.0.0.20", addrs("10.0.0.21", "10.0.0.22", "10.0.0.23", "10.0.0.24")))
	// .13 leaves the pool (held by c: kept, unleased), .24 leaves it (locked: unlocked), .25 comes.
	gen2 := nodePool(2,
		eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12", "10.0.0.14", "10.0.0.15", "10.0.0.16")),
		eni("eni-1", 1, "10.0.0.20", addrs("10.0.0.21", "10.0.0.22", "10.0.0.23", "10.0.0.25")))
	return []crashOp{
		applyOp(gen1),
		assignOp("a"), assignOp("b"), assignOp("c"), assignOp("d"),
		releaseOp("b"),
		advanceOp(10 * time.Second),
		{"recover", func(p *Pool, _ *fakeClock) error {
			_, err := p.Recover(ips("10.0.0.16", "10.0.0.99"))
			return err
		}},
		{"answer", func(p *Pool, _ *fakeClock) error {
			ack, err := p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "rp-1", Addresses: []string{"10.0.0.24", "10.0.0.11"}})
			if err == nil && !slices.Equal(ack.GetConfirmed(), []string{"10.0.0.24"}) {
				return fmt.Errorf("confirmed %v", ack.GetConfirmed())
			}
			return err
		}},
		assignOp("e"),
		applyOp(gen2),
		{"gc", func(p *Pool, _ *fakeClock) error {
			_, err := p.GC([]Key{{"a", "eth0"}, {"c", "eth0"}, {"e", "eth0"}})
			return err
		}},
		releaseOp("c"),
		{"release recovered", func(p *Pool, _ *fakeClock) error {
			_, err := p.ReleaseRecovered(ips("10.0.0.16"))
			return err
		}},
		{"restore", func(p *Pool, c *fakeClock) error {
			_, err := p.Restore([]*ipledgerv1.PodAddress{reported("x", "10.0.0.23", c.Now().Add(-time.Hour))})
			return err
		}},
		assignOp("f"), assignOp("g"),
		advanceOp(DefaultCooldown),
		assignOp("h"), assignOp("i"),
		releaseOp("a"), releaseOp("e"),
		assignOp("j"),
	}
}

// poolState is what a pool shows (its checkpoint path aside), for comparisons.
func poolState(t *testing.T, p *Pool) string {
	t.Helper()
	s := p.Snapshot()
	s.Checkpoint = ""
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func crashConfig(dir string, clock *fakeClock, d *crashDisk) Config {
	cfg := Config{CheckpointPath: filepath.Join(dir, "checkpoint.json"), NodeName: "node-a", InstanceID: "i-1",
		Now: clock.Now, NoFsync: true}
	if d != nil {
		cfg.faults = d.hook
	}
	return cfg
}

// openCrashPool opens a pool that compacts in the writer once its journal holds compactAt bytes.
func openCrashPool(cfg Config, compactAt int64) (*Pool, error) {
	p, err := Open(cfg)
	if err != nil {
		return nil, err
	}
	p.compactAt = compactAt
	p.inlineCompact = true
	return p, nil
}

// TestCrashAtEveryStep runs a workload, kills the pool at each step of its checkpoint writes in
// turn (journal appends, their fsyncs, new journal files, compactions: snapshot temp file,
// fsync, rename, directory fsync, removal of journal files), takes from the files what a crash
// could lose (nothing; everything not fsynced; half of each unsynced tail: a torn record) and
// opens the checkpoint again. The state must be the one after the last operation that returned
// success, or after the one the crash interrupted: nothing reported durable is lost, nothing is
// made up. Then the reopened pool must go on: an ADD on it, a crash that loses everything not
// fsynced, and the ADD is still there.
func TestCrashAtEveryStep(t *testing.T) {
	ops := crashWorkload()
	for _, compactAt := range []int64{1 << 30, 1500, 1} { // never, every few records, after every record
		t.Run(fmt.Sprint("compact-at-", compactAt), func(t *testing.T) {
			// The reference: the states after Open and after each operation, without faults.
			clock := newClock()
			ref, err := openCrashPool(crashConfig(t.TempDir(), clock, nil), compactAt)
			if err != nil {
				t.Fatal(err)
			}
			states := []string{poolState(t, ref)}
			for _, op := range ops {
				if err := op.do(ref, clock); err != nil {
					t.Fatalf("reference run: %s: %v", op.name, err)
				}
				states = append(states, poolState(t, ref))
			}
			// How many steps the workload takes.
			probe := newCrashDisk(0)
			clock = newClock()
			pp, err := openCrashPool(crashConfig(t.TempDir(), clock, probe), compactAt)
			if err != nil {
				t.Fatal(err)
			}
			for _, op := range ops {
				if err := op.do(pp, clock); err != nil {
					t.Fatalf("probe run: %s: %v", op.name, err)
				}
			}
			if got := poolState(t, pp); got != states[len(states)-1] {
				t.Fatalf("the probe run ended elsewhere:\n%s\n%s", got, states[len(states)-1])
			}
			kinds := map[string]bool{}
			for _, s := range probe.steps {
				kinds[s] = true
			}
			want := []string{stepJournalCreate, stepJournalWrite, stepJournalSync, stepDirSync}
			if compactAt < 1<<30 {
				want = append(want, stepSnapshotCreate, stepSnapshotWrite, stepSnapshotSync, stepSnapshotRename, stepJournalRemove)
			}
			for _, k := range want {
				if !kinds[k] {
					t.Fatalf("the workload never takes step %s (steps: %v)", k, slices.Sorted(maps.Keys(kinds)))
				}
			}
			t.Logf("%d steps, %d crash points x %d modes", probe.n, probe.n, len(crashModes))

			for k := 1; k <= probe.n; k++ {
				for _, mode := range crashModes {
					crashAt(t, ops, states, compactAt, k, mode)
				}
			}
		})
	}
}

func crashAt(t *testing.T, ops []crashOp, states []string, compactAt int64, k int, mode string) {
	t.Helper()
	dir := t.TempDir()
	clock := newClock()
	d := newCrashDisk(k)
	done := 0 // operations that returned success
	where := ""
	if p, err := openCrashPool(crashConfig(dir, clock, d), compactAt); err == nil {
		for _, op := range ops {
			if err := op.do(p, clock); err != nil {
				if !errors.Is(err, errCrashed) {
					t.Fatalf("crash at step %d (%s): %s failed for another reason: %v", k, d.killed, op.name, err)
				}
				where = op.name
				break
			}
			done++
		}
	}
	name := fmt.Sprintf("crash at step %d (%s, during %q after %d operations, %s)", k, d.killed, where, done, mode)
	d.crash(t, mode)

	// Reopen on the crashed files.
	d2 := d.after()
	q, err := openCrashPool(crashConfig(dir, clock, d2), compactAt)
	if err != nil {
		t.Fatalf("%s: reopen: %v", name, err)
	}
	got := poolState(t, q)
	ok := got == states[done] || (done+1 < len(states) && got == states[done+1])
	if !ok {
		t.Fatalf("%s: recovered a state the pool was never in after its last success:\ngot  %s\nwant %s", name, got, states[done])
	}
	// The pool goes on from there, and what it reports durable is, even if the machine crashes.
	if _, _, err := q.Assign(Key{ContainerID: "after-crash", IfName: "eth0"}, PodInfo{}); err != nil && !errors.Is(err, ErrNoFreeAddress) {
		t.Fatalf("%s: assign after reopen: %v", name, err)
	}
	want := poolState(t, q)
	d2.crash(t, crashLose)
	r, err := openCrashPool(crashConfig(dir, clock, nil), compactAt)
	if err != nil {
		t.Fatalf("%s: reopen after a second crash: %v", name, err)
	}
	if got := poolState(t, r); got != want {
		t.Fatalf("%s: second crash lost the ADD after the reopen:\ngot  %s\nwant %s", name, got, want)
	}
}

// TestCrashDuringMigration: an agent upgraded in place finds a format 1 checkpoint (no journal)
// and migrates it; a crash at any step of the migration leaves a checkpoint that loads to the
// same state.
func TestCrashDuringMigration(t *testing.T) {
	legacy, err := os.ReadFile("testdata/checkpoint-format1.json")
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 30, 0, time.UTC)}
	open := func(dir string, d *crashDisk) (*Pool, error) {
		cfg := crashConfig(dir, clock, d)
		cfg.NodeName, cfg.InstanceID = "", ""
		return Open(cfg)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "checkpoint.json"), legacy, 0o600); err != nil {
		t.Fatal(err)
	}
	probe := newCrashDisk(0)
	p, err := open(dir, probe)
	if err != nil {
		t.Fatal(err)
	}
	want := poolState(t, p)
	for k := 1; k <= probe.n; k++ {
		for _, mode := range crashModes {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "checkpoint.json"), legacy, 0o600); err != nil {
				t.Fatal(err)
			}
			d := newCrashDisk(k)
			if _, err := open(dir, d); err == nil {
				t.Fatalf("crash at step %d (%s): Open succeeded", k, d.killed)
			}
			d.crash(t, mode)
			q, err := open(dir, nil)
			if err != nil {
				t.Fatalf("crash at step %d (%s, %s): reopen: %v", k, d.killed, mode, err)
			}
			if got := poolState(t, q); got != want {
				t.Fatalf("crash at step %d (%s, %s): state\n%s\nwant\n%s", k, d.killed, mode, got, want)
			}
		}
	}
}

// TestBackgroundCompactionUnderLoad: concurrent ADDs and DELs while compactions run in the
// background (a small threshold: many of them); then the agent dies, mid-compaction or not. The
// reopened pool holds exactly the assignments the dead one held.
func TestBackgroundCompactionUnderLoad(t *testing.T) {
	var as []*ipledgerv1.PoolAddress
	for i := range 200 {
		as = append(as, &ipledgerv1.PoolAddress{Ip: fmt.Sprintf("10.0.%d.%d", 1+i/100, 1+i%100), State: active})
	}
	for _, mode := range []string{"idle", "dead"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			d := newCrashDisk(0)
			clock := newClock()
			cfg := crashConfig(dir, clock, d)
			cfg.NoFsync = false
			cfg.Cooldown = time.Nanosecond
			p, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			p.compactAt = 4 << 10
			if _, err := p.Apply(nodePool(1, eni("eni-0", 0, "10.0.0.10", as)), false); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					for i := range 60 {
						k := Key{ContainerID: fmt.Sprintf("g%d-%d", g, i), IfName: "eth0"}
						if _, _, err := p.Assign(k, PodInfo{Name: k.ContainerID}); err != nil {
							t.Error(err)
							return
						}
						if i%3 != 0 { // keep a third
							if _, _, err := p.Release(k); err != nil {
								t.Error(err)
								return
							}
						}
						clock.Advance(time.Millisecond)
					}
				})
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			compactions := 0
			for _, s := range d.steps {
				if s == stepSnapshotRename {
					compactions++
				}
			}
			if compactions < 3 {
				t.Fatalf("%d compactions, want several", compactions)
			}
			if mode == "dead" {
				d.kill() // a compaction still running fails at its next step
			}
			p.bg.Wait()
			want := p.Assignments()
			if len(want) != 8*20 {
				t.Fatalf("%d assignments, want %d", len(want), 8*20)
			}
			q, err := Open(crashConfig(dir, clock, nil))
			if err != nil {
				t.Fatal(err)
			}
			got := q.Assignments()
			if !slices.EqualFunc(got, want, func(a, b Assignment) bool { return a.Key == b.Key && a.IP == b.IP && a.Pod == b.Pod }) {
				t.Fatalf("reopened with %d assignments, want %d", len(got), len(want))
			}
		})
	}
}

// TestGroupCommit: ADDs that arrive while a record is being written share the next write and
// its fsync.
func TestGroupCommit(t *testing.T) {
	var as []*ipledgerv1.PoolAddress
	for i := range 40 {
		as = append(as, &ipledgerv1.PoolAddress{Ip: fmt.Sprintf("10.0.1.%d", 1+i), State: active})
	}
	dir := t.TempDir()
	clock := newClock()
	held := make(chan struct{})
	release := make(chan struct{})
	var mu sync.Mutex
	syncs, blocked := 0, false
	cfg := crashConfig(dir, clock, nil)
	cfg.faults = func(step, path string) error {
		if step != stepJournalSync {
			return nil
		}
		mu.Lock()
		syncs++
		first := syncs == 2 // the first is Apply's
		mu.Unlock()
		if first && !blocked {
			blocked = true
			close(held)
			<-release
		}
		return nil
	}
	p, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Apply(nodePool(1, eni("eni-0", 0, "10.0.0.10", as)), false); err != nil {
		t.Fatal(err)
	}
	const n = 30
	var wg sync.WaitGroup
	errs := make([]error, n)
	wg.Go(func() { _, _, errs[0] = p.Assign(Key{ContainerID: "c0", IfName: "eth0"}, PodInfo{}) })
	<-held // c0's record is being fsynced; the others arrive meanwhile
	for i := 1; i < n; i++ {
		wg.Go(func() { _, _, errs[i] = p.Assign(Key{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}, PodInfo{}) })
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.mu.Lock()
		waiting := len(p.byKey)
		p.mu.Unlock()
		if waiting == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d assignments in memory", waiting)
		}
		time.Sleep(time.Millisecond) // polling with a deadline
	}
	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("assign c%d: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if syncs != 3 {
		t.Fatalf("%d fsyncs for Apply and %d ADDs, want 3 (Apply, c0, the other %d together)", syncs, n, n-1)
	}
	q, err := Open(crashConfig(dir, clock, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := len(q.Assignments()); got != n {
		t.Fatalf("reopened with %d assignments, want %d", got, n)
	}
}

// TestCloseWritesSnapshot: Close leaves the whole state in the snapshot and no journal; a
// change after Close fails and is undone.
func TestCloseWritesSnapshot(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, nil)
	p.mustApply(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12"))))
	p.mustAssign(t, "a")
	if js, _ := listJournals(p.path); len(js) != 1 {
		t.Fatalf("journal files %v, want one", js)
	}
	want := poolState(t, p.Pool)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if js, _ := listJournals(p.path); len(js) != 0 {
		t.Fatalf("journal files %v after Close", js)
	}
	if _, _, err := p.Assign(Key{ContainerID: "b", IfName: "eth0"}, PodInfo{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Assign after Close: %v, want ErrClosed", err)
	}
	if got := poolState(t, p.Pool); got != want {
		t.Fatal("a failed Assign after Close changed the pool")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	raw, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	d, format, err := parseSnapshot(raw)
	if err != nil || format != checkpointFormat || len(d.Assignments) != 1 || d.JournalSeq != 2 {
		t.Fatalf("snapshot after Close: format %d, %d assignments, journal_seq %d, %v", format, len(d.Assignments), d.JournalSeq, err)
	}
	q := openPool(t, dir, nil)
	if got := poolState(t, q.Pool); got != want {
		t.Fatalf("reopened:\n%s\nwant\n%s", got, want)
	}
}

// journalRun writes a pool's journal: Apply, then ADDs; it returns the journal file and the
// states after each record.
func journalRun(t *testing.T, dir string, clock *fakeClock, adds int) (string, []string) {
	t.Helper()
	p, err := Open(crashConfig(dir, clock, nil))
	if err != nil {
		t.Fatal(err)
	}
	var as []*ipledgerv1.PoolAddress
	for i := range adds + 2 {
		as = append(as, &ipledgerv1.PoolAddress{Ip: fmt.Sprintf("10.0.1.%d", 1+i), State: active})
	}
	states := []string{poolState(t, p)}
	if _, err := p.Apply(nodePool(1, eni("eni-0", 0, "10.0.0.10", as)), false); err != nil {
		t.Fatal(err)
	}
	states = append(states, poolState(t, p))
	for i := range adds {
		if _, _, err := p.Assign(Key{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}, PodInfo{}); err != nil {
			t.Fatal(err)
		}
		states = append(states, poolState(t, p))
	}
	js, err := listJournals(filepath.Join(dir, "checkpoint.json"))
	if err != nil || len(js) != 1 {
		t.Fatalf("journal files %v %v", js, err)
	}
	return js[0], states
}

// TestJournalTornTail: a journal cut at any byte, or with any byte of its last record changed,
// loads to the state of its last whole record (a torn write is dropped, never guessed at).
func TestJournalTornTail(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	name, states := journalRun(t, dir, clock, 3)
	full, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	recs, valid, err := readJournal(full)
	if err != nil || valid != len(full) || len(recs) != 4 {
		t.Fatalf("journal: %d records, %d of %d bytes valid, %v", len(recs), valid, len(full), err)
	}
	// Where each record ends.
	ends := []int{len(journalMagic)}
	for off := len(journalMagic); off < len(full); {
		n := int(uint32(full[off]) | uint32(full[off+1])<<8 | uint32(full[off+2])<<16 | uint32(full[off+3])<<24)
		off += 8 + n
		ends = append(ends, off)
	}
	load := func(content []byte) string {
		t.Helper()
		d := t.TempDir()
		if err := os.WriteFile(filepath.Join(d, filepath.Base(name)), content, 0o600); err != nil {
			t.Fatal(err)
		}
		q, err := Open(crashConfig(d, clock, nil))
		if err != nil {
			t.Fatalf("open a journal of %d bytes: %v", len(content), err)
		}
		return poolState(t, q)
	}
	for cut := 0; cut <= len(full); cut++ {
		whole := sort.SearchInts(ends, cut+1) - 1 // records ending at or before cut
		if cut < len(journalMagic) {
			whole = 0
		}
		if got := load(full[:cut]); got != states[whole] {
			t.Fatalf("cut at %d: state of %d records, want it", cut, whole)
		}
	}
	last := ends[len(ends)-2]
	for i := last; i < len(full); i++ {
		garbled := slices.Clone(full)
		garbled[i] ^= 0x20
		if got := load(garbled); got != states[len(states)-2] {
			t.Fatalf("byte %d of the last record changed: not the state before it", i)
		}
	}
}

// TestJournalRefused: lost records, a journal of a newer format, or a record whose checksum is
// right but whose content is not a record, are refused, naming the journal file.
func TestJournalRefused(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	name, _ := journalRun(t, dir, clock, 3)
	full, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "checkpoint.json")
	recs, _, _ := readJournal(full)
	split := len(journalMagic)
	for range 2 { // after the first two records
		n := int(uint32(full[split]) | uint32(full[split+1])<<8 | uint32(full[split+2])<<16 | uint32(full[split+3])<<24)
		split += 8 + n
	}
	frame := func(payload string) []byte {
		b := append(make([]byte, 8, 8+len(payload)), payload...)
		putFrame(b)
		return b
	}
	tests := []struct {
		name  string
		files map[string][]byte
	}{
		{"a record lost between two files", map[string][]byte{
			name:                           full[:split],
			journalName(base, recs[3].Seq): append([]byte(journalMagic), full[split+(len(full)-split)/2:]...),
		}},
		{"newer format", map[string][]byte{name: append([]byte("ipledger-journal 2\n"), full[len(journalMagic):]...)}},
		{"checksummed garbage", map[string][]byte{name: append(slices.Clone(full), frame(`{"seq":5,"bogus":1}`)...)}},
		{"seq going back", map[string][]byte{name: append(slices.Clone(full), frame(`{"seq":2}`)...)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := t.TempDir()
			for n, content := range tc.files {
				if err := os.WriteFile(filepath.Join(d, filepath.Base(n)), content, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Open(crashConfig(d, clock, nil))
			if !errors.Is(err, ErrCorruptCheckpoint) {
				t.Fatalf("Open: %v, want ErrCorruptCheckpoint", err)
			}
			if !strings.Contains(err.Error(), filepath.Base(base)+".journal-") {
				t.Fatalf("error %q does not name the journal file", err)
			}
		})
	}
}

// TestMigrateFormat1: the checkpoint an agent before the journal wrote (testdata, written by
// that version) loads to the same pool, and Open rewrites it in the current format.
func TestMigrateFormat1(t *testing.T) {
	legacy, err := os.ReadFile("testdata/checkpoint-format1.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, format, err := parseSnapshot(legacy); err != nil || format != checkpointFormatLegacy {
		t.Fatalf("testdata: format %d, %v", format, err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "checkpoint.json")
	if err := os.WriteFile(path, legacy, 0o600); err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{t: time.Date(2025, 1, 2, 3, 4, 30, 0, time.UTC)}
	p, err := Open(Config{CheckpointPath: path, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Restored() {
		t.Fatal("not restored")
	}
	// What the old version had: see testdata/README.
	byKey := map[string]string{}
	for _, a := range p.Assignments() {
		byKey[a.ContainerID] = a.IP.String()
		if a.Recovered {
			byKey["recovered"] = a.IP.String()
		}
	}
	if !maps.Equal(byKey, map[string]string{"a": "10.0.0.11", "c": "10.0.0.13", "": "10.0.0.16", "recovered": "10.0.0.16"}) {
		t.Fatalf("assignments %v", byKey)
	}
	snap := p.Snapshot()
	if snap.Generation != 7 || len(snap.Locked) != 1 || snap.Locked[0].Item != "10.0.0.14" ||
		len(snap.Cooling) != 1 || snap.Cooling[0].IP != "10.0.0.12" || snap.AddsTotal != 3 {
		t.Fatalf("snapshot %+v", snap)
	}
	want := poolState(t, p)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, format, err := parseSnapshot(raw); err != nil || format != checkpointFormat {
		t.Fatalf("after Open: format %d, %v; want the checkpoint migrated", format, err)
	}
	// The migrated checkpoint and its journal carry on.
	if _, _, err := p.Assign(Key{ContainerID: "d", IfName: "eth0"}, PodInfo{}); err != nil {
		t.Fatal(err)
	}
	want2 := poolState(t, p)
	q, err := Open(Config{CheckpointPath: path, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if got := poolState(t, q); got != want2 || got == want {
		t.Fatalf("after migration and an ADD, reopened:\n%s\nwant\n%s", got, want2)
	}
}

// TestJournalWriteErrors: a write of the journal fails (the disk reports an error; the agent
// lives on): before anything is written, after a part of the record is written (torn), or at
// its fsync (the record may be on disk). The call fails (an ADD is undone, a DEL stays done in
// memory), the pool goes on, and every later record is readable: the checkpoint always loads to
// the state in memory.
func TestJournalWriteErrors(t *testing.T) {
	type fault struct {
		step string
		torn bool
	}
	faults := []fault{{stepJournalWrite, false}, {stepJournalWrite, true}, {stepJournalSync, false}}
	scenarios := []struct {
		name    string
		failing crashOp // the operation whose write fails
		then    []crashOp
	}{
		// The same attachment's address, given back and not journaled, then another one: the
		// journal must never show the attachment holding two.
		{"del then add again", releaseOp("a"), []crashOp{assignOp("a"), assignOp("b")}},
		// An ADD undone: its address goes to the next pod.
		{"add undone", assignOp("x"), []crashOp{assignOp("y"), releaseOp("a")}},
	}
	for _, sc := range scenarios {
		for _, f := range faults {
			t.Run(fmt.Sprintf("%s/%s/torn=%v", sc.name, f.step, f.torn), func(t *testing.T) {
				dir := t.TempDir()
				clock := newClock()
				failing := false
				cfg := crashConfig(dir, clock, nil)
				cfg.Cooldown = time.Nanosecond
				cfg.faults = func(step, path string) error {
					if !failing || step != f.step {
						return nil
					}
					failing = false
					if f.torn { // a part of a record: a length, a checksum and a few bytes
						jf, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
						if err != nil {
							return err
						}
						_, _ = jf.Write([]byte{200, 0, 0, 0, 1, 2, 3, 4, '{', '"', 's'})
						_ = jf.Close()
					}
					return errors.New("injected: input/output error")
				}
				p, err := Open(cfg)
				if err != nil {
					t.Fatal(err)
				}
				for _, op := range []crashOp{applyOp(nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12", "10.0.0.13")))), assignOp("a")} {
					if err := op.do(p, clock); err != nil {
						t.Fatal(err)
					}
				}
				failing = true
				if err := sc.failing.do(p, clock); err == nil {
					t.Fatalf("%s succeeded with a failing disk", sc.failing.name)
				}
				clock.Advance(time.Second)
				for _, op := range sc.then {
					if err := op.do(p, clock); err != nil {
						t.Fatalf("%s after the failure: %v", op.name, err)
					}
				}
				want := poolState(t, p)
				q, err := Open(crashConfig(dir, clock, nil))
				if err != nil {
					t.Fatalf("reopen: %v", err)
				}
				if got := poolState(t, q); got != want {
					t.Fatalf("reopened:\n%s\nwant\n%s", got, want)
				}
			})
		}
	}
}

// TestGroupCommitWriterFails: the record of the caller that writes fails while others wait for
// it: that caller's ADD fails and is undone, the waiting ones write the next record themselves
// (the whole state, in a new file) and succeed, and the checkpoint loads to the pool in memory.
func TestGroupCommitWriterFails(t *testing.T) {
	var as []*ipledgerv1.PoolAddress
	for i := range 20 {
		as = append(as, &ipledgerv1.PoolAddress{Ip: fmt.Sprintf("10.0.1.%d", 1+i), State: active})
	}
	dir := t.TempDir()
	clock := newClock()
	held := make(chan struct{})
	release := make(chan struct{})
	var mu sync.Mutex
	syncs := 0
	cfg := crashConfig(dir, clock, nil)
	cfg.faults = func(step, path string) error {
		if step != stepJournalSync {
			return nil
		}
		mu.Lock()
		syncs++
		n := syncs
		mu.Unlock()
		if n == 2 { // c0's record: the others queue, then its fsync fails
			close(held)
			<-release
			return errors.New("injected: input/output error")
		}
		return nil
	}
	p, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Apply(nodePool(1, eni("eni-0", 0, "10.0.0.10", as)), false); err != nil {
		t.Fatal(err)
	}
	const n = 10
	var wg sync.WaitGroup
	errs := make([]error, n)
	wg.Go(func() { _, _, errs[0] = p.Assign(Key{ContainerID: "c0", IfName: "eth0"}, PodInfo{}) })
	<-held
	for i := 1; i < n; i++ {
		wg.Go(func() { _, _, errs[i] = p.Assign(Key{ContainerID: fmt.Sprint("c", i), IfName: "eth0"}, PodInfo{}) })
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.commitMu.Lock()
		queued := len(p.waiters)
		p.commitMu.Unlock()
		if queued == n-1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d callers queued", queued)
		}
		time.Sleep(time.Millisecond) // polling with a deadline
	}
	close(release)
	wg.Wait()
	if errs[0] == nil {
		t.Fatal("c0's Assign succeeded though its record failed")
	}
	for i := 1; i < n; i++ {
		if errs[i] != nil {
			t.Fatalf("assign c%d: %v", i, errs[i])
		}
	}
	if _, ok := p.Lookup(Key{ContainerID: "c0", IfName: "eth0"}); ok {
		t.Fatal("c0's failed Assign left its assignment")
	}
	want := poolState(t, p)
	q, err := Open(crashConfig(dir, clock, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := poolState(t, q); got != want || len(q.Assignments()) != n-1 {
		t.Fatalf("reopened:\n%s\nwant\n%s", got, want)
	}
}
