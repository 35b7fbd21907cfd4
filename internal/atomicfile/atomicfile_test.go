package atomicfile

import (
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

func TestWriteReplacesWithModeAndLeavesNoTemp(t *testing.T) {
	old := syscall.Umask(0o077)
	t.Cleanup(func() { syscall.Umask(old) })
	dir := t.TempDir()
	p := filepath.Join(dir, "f.json")
	if err := Write(p, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A reader holding the old file keeps its content (a new inode replaces it).
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := Write(p, []byte("two"), 0o640); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	fi, _ := os.Stat(p)
	if string(b) != "two" || fi.Mode().Perm() != 0o640 {
		t.Fatalf("content %q mode %v: want two, 0640 (the umask does not apply)", b, fi.Mode().Perm())
	}
	old1 := make([]byte, 3)
	if _, err := r.Read(old1); err != nil || string(old1) != "one" {
		t.Fatalf("the old file's reader sees %q, %v", old1, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
}

func TestWriteFailsWithoutTouchingTheFile(t *testing.T) {
	dir := t.TempDir()
	if err := Write(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
	// The name is a directory: the rename fails, the directory stays, no temp is left.
	p := filepath.Join(dir, "d")
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "inside"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Write(p, []byte("x"), 0o600); err == nil {
		t.Fatal("replacing a non-empty directory succeeded")
	}
	if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
		t.Fatalf("the directory changed: %v %v", fi, err)
	}
	if got := Temps(p); len(got) != 0 {
		t.Fatalf("temporary files left: %v", got)
	}
}

func TestWriteIfChanged(t *testing.T) {
	p := filepath.Join(t.TempDir(), "conf")
	for i, tc := range []struct {
		data  string
		mode  os.FileMode
		wrote bool
	}{
		{"a", 0o644, true}, {"a", 0o644, false}, {"a", 0o600, true}, {"b", 0o600, true}, {"b", 0o600, false},
	} {
		before, _ := os.Stat(p)
		wrote, err := WriteIfChanged(p, []byte(tc.data), tc.mode)
		if err != nil || wrote != tc.wrote {
			t.Fatalf("step %d: wrote %v err %v, want %v", i, wrote, err, tc.wrote)
		}
		after, _ := os.Stat(p)
		if !tc.wrote && !os.SameFile(before, after) {
			t.Fatalf("step %d: identical content was rewritten", i)
		}
		if b, _ := os.ReadFile(p); string(b) != tc.data || after.Mode().Perm() != tc.mode {
			t.Fatalf("step %d: %q %v", i, b, after.Mode().Perm())
		}
	}
}

func TestTemps(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "cp[1].json")
	for _, n := range []string{".cp[1].json123", ".cp[1].json", ".cp[1].jsonx1", "cp[1].json.bak", ".cp[1].json98765"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got := Temps(p)
	want := []string{filepath.Join(dir, ".cp[1].json123"), filepath.Join(dir, ".cp[1].json98765")}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("Temps %v, want %v", got, want)
	}
	RemoveTemps(p)
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Fatalf("RemoveTemps removed more or less than the temps: %v", entries)
	}
}

// A file written in pieces appears only at Commit, whole; Abort leaves the old content and no
// temporary file.
func TestPending(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "snap.db")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := Create(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	for _, piece := range []string{"new ", "content"} {
		if _, err := p.Write([]byte(piece)); err != nil {
			t.Fatal(err)
		}
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Fatalf("before Commit the file holds %q", b)
	}
	if b, _ := os.ReadFile(p.TempName()); string(b) != "new content" {
		t.Fatalf("the temporary file holds %q", b)
	}
	if err := p.Commit(); err != nil {
		t.Fatal(err)
	}
	p.Abort() // after Commit: nothing
	if b, _ := os.ReadFile(path); string(b) != "new content" {
		t.Fatalf("after Commit the file holds %q", b)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
	q, err := Create(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = q.Write([]byte("half"))
	q.Abort()
	if b, _ := os.ReadFile(path); string(b) != "new content" {
		t.Fatalf("after Abort the file holds %q", b)
	}
	if tmps := Temps(path); len(tmps) != 0 {
		t.Fatalf("temporary files left: %v", tmps)
	}
}
