package harness

import (
	"os"
	"path/filepath"
	"testing"
)

// CheckpointCopy is a copy of an agent's checkpoint: its snapshot and its journal files
// (agent/pool), by base name.
type CheckpointCopy map[string][]byte

// CopyCheckpoint copies the checkpoint at path as a backup of the node's disk would: the journal
// files first, then the snapshot (a compaction in between leaves a newer snapshot beside older
// journal records, which the agent skips; the other order could lose records).
func CopyCheckpoint(t *testing.T, path string) CheckpointCopy {
	t.Helper()
	c := CheckpointCopy{}
	journals, err := filepath.Glob(path + ".journal-*")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range append(journals, path) {
		data, err := os.ReadFile(name)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			t.Fatalf("copy checkpoint: %v", err)
		}
		c[filepath.Base(name)] = data
	}
	if len(c) == 0 {
		t.Fatalf("copy checkpoint: no checkpoint at %s", path)
	}
	return c
}

// Put replaces the checkpoint at path (snapshot and journal files) with the copy.
func (c CheckpointCopy) Put(t *testing.T, path string) {
	t.Helper()
	journals, err := filepath.Glob(path + ".journal-*")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range append(journals, path) {
		if err := os.Remove(name); err != nil && !os.IsNotExist(err) {
			t.Fatalf("restore checkpoint: %v", err)
		}
	}
	for name, data := range c {
		if err := os.WriteFile(filepath.Join(filepath.Dir(path), name), data, 0o600); err != nil {
			t.Fatalf("restore checkpoint: %v", err)
		}
	}
}
