package pool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func TestCheckpointReloadKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	p := openPool(t, dir, clock)
	p.mustApply(t, nodePool(7,
		eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14", "10.0.0.15")),
		eni("eni-1", 1, "10.0.0.20", addrs("10.0.0.21"))))
	if _, _, err := p.Assign(Key{ContainerID: "a", IfName: "eth0"}, PodInfo{Namespace: "ns", Name: "pa", UID: "ua"}); err != nil {
		t.Fatal(err)
	}
	p.mustAssign(t, "b") // .12
	p.mustAssign(t, "c") // .13
	p.mustRelease(t, "b")
	if _, err := p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "r1", Addresses: []string{"10.0.0.14"}}); err != nil {
		t.Fatal(err)
	}
	// c's address leaves the pool: it stays c's, unleased.
	p.mustApply(t, nodePool(8,
		eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12", "10.0.0.14", releasng, "10.0.0.15")),
		eni("eni-1", 1, "10.0.0.20", addrs("10.0.0.21"))))
	before := p.Snapshot()

	// "Restart": a second pool on the same checkpoint, the old one simply abandoned.
	q := openPool(t, dir, clock)
	after := q.Snapshot()
	bj, _ := json.Marshal(before)
	aj, _ := json.Marshal(after)
	if !bytes.Equal(bj, aj) {
		t.Fatalf("state changed across reload:\nbefore %s\nafter  %s", bj, aj)
	}
	a, ok := q.Lookup(Key{ContainerID: "a", IfName: "eth0"})
	if !ok || a.IP != ip("10.0.0.11") || a.Pod.UID != "ua" || a.ENI.ID != "eni-0" || !a.Leased {
		t.Fatalf("a after reload %+v %v", a, ok)
	}
	c, ok := q.Lookup(Key{ContainerID: "c", IfName: "eth0"})
	if !ok || c.IP != ip("10.0.0.13") || c.Leased || c.ENI.ID != "eni-0" {
		t.Fatalf("c after reload %+v %v", c, ok)
	}
	if q.AddsTotal() != 3 || q.Generation() != 8 {
		t.Fatalf("adds %d generation %d", q.AddsTotal(), q.Generation())
	}
	// .12 still cools, .14 locked (and RELEASING): only .15 and .21 are free.
	got := []string{q.mustAssign(t, "d").String(), q.mustAssign(t, "e").String()}
	slices.Sort(got)
	if !slices.Equal(got, []string{"10.0.0.15", "10.0.0.21"}) {
		t.Fatalf("after reload handed out %v", got)
	}
	wantNoFree(t, q.assignErr("f"))
	clock.Advance(DefaultCooldown)
	if got := q.mustAssign(t, "f"); got != ip("10.0.0.12") {
		t.Fatalf("f got %s", got)
	}
	// c's unleased address, once given back, is gone for good.
	q.mustRelease(t, "c")
	clock.Advance(time.Hour)
	wantNoFree(t, q.assignErr("g"))
}

func TestCheckpointColdStartAndTempLeftovers(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, nil)
	if p.Generation() != 0 || len(p.Assignments()) != 0 || p.NodePool() != nil || p.Restored() {
		t.Fatal("cold start not empty")
	}
	if _, err := os.Stat(p.path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cold start wrote a checkpoint before any change: %v", err)
	}
	p.mustApply(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12"))))
	p.mustAssign(t, "a")
	p.mustCompact(t)
	good, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	// A crash between writing the temp file and the rename: the temp file holds a newer (here:
	// torn) state, the checkpoint the old one. Temp files are named as atomicfile names them,
	// or as agents before it did.
	tmp := p.path + ".tmp-123456"
	if err := os.WriteFile(tmp, good[:len(good)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	tmp2 := filepath.Join(filepath.Dir(p.path), "."+filepath.Base(p.path)+"654321")
	if err := os.WriteFile(tmp2, good[:len(good)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	q := openPool(t, dir, nil)
	if !q.Restored() {
		t.Fatal("Restored false after loading a checkpoint")
	}
	if as := q.Assignments(); len(as) != 1 || as[0].ContainerID != "a" {
		t.Fatalf("assignments after crash %+v", as)
	}
	for _, tmp := range []string{tmp, tmp2} {
		if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("temp leftover %s not removed: %v", tmp, err)
		}
	}
	if fi, err := os.Stat(q.path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("checkpoint mode: %v %v", fi, err)
	}
}

func TestCheckpointCorruptRefused(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, nil)
	p.mustApply(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12"))))
	p.mustAssign(t, "a")
	p.mustCompact(t) // the snapshot holds everything, no journal is left
	good, err := os.ReadFile(p.path)
	if err != nil {
		t.Fatal(err)
	}
	format := fmt.Sprintf(`"format":%d`, checkpointFormat)
	tests := []struct {
		name    string
		content []byte
		want    error
	}{
		{"empty", nil, ErrCorruptCheckpoint},
		{"truncated", good[:len(good)-10], ErrCorruptCheckpoint},
		{"garbage", []byte("\x00\x01not json"), ErrCorruptCheckpoint},
		{"edited", bytes.Replace(good, []byte(`10.0.0.11`), []byte(`10.0.0.12`), 1), ErrCorruptCheckpoint},
		{"wrong format", bytes.Replace(good, []byte(format), []byte(`"format":9`), 1), ErrCorruptCheckpoint},
		{"other instance", func() []byte { return resign(t, good, "i-1", "i-9") }(), ErrWrongIdentity},
		{"address assigned twice", func() []byte {
			return resignData(t, good, func(d *cpData) {
				d.Assignments = append(d.Assignments, d.Assignments[0])
				d.Assignments[1].ContainerID = "b"
			})
		}(), ErrCorruptCheckpoint},
		{"recovered assignment naming an attachment", func() []byte {
			return resignData(t, good, func(d *cpData) { d.Assignments[0].Recovered = true })
		}(), ErrCorruptCheckpoint},
		{"address recovered and assigned", func() []byte {
			return resignData(t, good, func(d *cpData) {
				d.Assignments = append(d.Assignments, cpAssignment{IP: d.Assignments[0].IP, Recovered: true})
			})
		}(), ErrCorruptCheckpoint},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(p.path, tc.content, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(Config{CheckpointPath: p.path, NodeName: "node-a", InstanceID: "i-1"})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), p.path) {
				t.Fatalf("error %q does not name the file", err)
			}
			// The file is left for a human to look at.
			if got, _ := os.ReadFile(p.path); !bytes.Equal(got, tc.content) {
				t.Fatal("corrupt checkpoint was modified")
			}
		})
	}
	// A re-signed but unchanged file is accepted (the checks above fail for their reason).
	if err := os.WriteFile(p.path, resignData(t, good, func(*cpData) {}), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{CheckpointPath: p.path, NodeName: "node-a", InstanceID: "i-1"}); err != nil {
		t.Fatalf("re-signed checkpoint refused: %v", err)
	}
}

// resign replaces old with new in the checkpoint's data and fixes the checksum.
func resign(t *testing.T, file []byte, old, new string) []byte {
	return resignData(t, file, func(d *cpData) {
		d.InstanceID = strings.ReplaceAll(d.InstanceID, old, new)
	})
}

func resignData(t *testing.T, file []byte, edit func(*cpData)) []byte {
	t.Helper()
	var env envelope
	if err := json.Unmarshal(file, &env); err != nil {
		t.Fatal(err)
	}
	var d cpData
	if err := json.Unmarshal(env.Data, &d); err != nil {
		t.Fatal(err)
	}
	edit(&d)
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return seal(data)
}

func TestCheckpointWriteFailureUndoesAssign(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, nil)
	p.mustApply(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11"))))
	// Make the journal's writes fail (a disk error).
	failing := true
	p.disk.hook = func(step, path string) error {
		if failing && (step == stepJournalWrite || step == stepJournalCreate) {
			return errors.New("injected: input/output error")
		}
		return nil
	}
	if _, _, err := p.Assign(Key{ContainerID: "a", IfName: "eth0"}, PodInfo{}); err == nil {
		t.Fatal("Assign succeeded without a checkpoint")
	}
	if len(p.Assignments()) != 0 {
		t.Fatal("failed Assign left an assignment")
	}
	if c := p.Counts(); c.Free != 1 {
		t.Fatalf("address not free again: %+v", c)
	}
	leftovers, _ := filepath.Glob(p.path + ".tmp-*")
	if len(leftovers) != 0 {
		t.Fatalf("temp files left: %v", leftovers)
	}
	// Once the disk is fine again, the same Add works and is durable.
	failing = false
	p.mustAssign(t, "a")
	q := openPool(t, dir, nil)
	if len(q.Assignments()) != 1 {
		t.Fatal("assignment not durable")
	}
}

// TestCheckpointSnapshotFailureKeepsAdding: when the snapshot cannot be written (here its path
// is a non-empty directory, so the rename fails), compaction fails and is tried again later,
// while ADDs keep being journaled; once it can be written, the journal is compacted.
func TestCheckpointSnapshotFailureKeepsAdding(t *testing.T) {
	dir := t.TempDir()
	p := openPool(t, dir, nil)
	p.compactAt = 1 // compact after every record
	p.inlineCompact = true
	if err := os.MkdirAll(filepath.Join(p.path, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	p.mustApply(t, nodePool(1, eni("eni-0", 0, "10.0.0.10", addrs("10.0.0.11", "10.0.0.12", "10.0.0.13"))))
	p.mustAssign(t, "a")
	p.mustAssign(t, "b")
	if js, _ := listJournals(p.path); len(js) != 3 {
		t.Fatalf("journal files %v, want one per record (each compaction failed and started a new one)", js)
	}
	if leftovers, _ := filepath.Glob(p.path + ".tmp-*"); len(leftovers) != 0 {
		t.Fatalf("temp files left: %v", leftovers)
	}
	if err := os.RemoveAll(p.path); err != nil {
		t.Fatal(err)
	}
	p.mustAssign(t, "c")
	if js, _ := listJournals(p.path); len(js) != 0 {
		t.Fatalf("journal files %v left after a compaction", js)
	}
	q := openPool(t, dir, nil)
	if got := assignedIPs(q.Assignments()); !slices.Equal(got, ips("10.0.0.11", "10.0.0.12", "10.0.0.13")) {
		t.Fatalf("after reload %v", got)
	}
}
