// Package atomicfile writes files so that a crash at any point leaves either the old or the new
// content under the name, never a mix, a torn file or an empty one: a temporary file in the
// same directory, written and fsynced, renamed over the name (google/renameio), then an fsync of
// the directory so the rename itself survives a power loss. Readers that opened the old file
// keep its inode (a running binary, a file being read).
//
// It owns only the writing of one file; it must never decide what goes in it, and never leave
// a temporary file behind on an error it returns.
package atomicfile

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/renameio/v2"
)

// Write replaces path with data, with exactly mode (the umask does not apply).
func Write(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := renameio.NewPendingFile(path, renameio.WithTempDir(dir), renameio.WithStaticPermissions(mode))
	if err != nil {
		return fmt.Errorf("atomicfile: create a temporary file for %s: %w", path, err)
	}
	defer func() { _ = f.Cleanup() }()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("atomicfile: write %s: %w", f.Name(), err)
	}
	if err := f.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("atomicfile: replace %s: %w", path, err)
	}
	return syncDir(dir)
}

// Pending is a file being written in pieces (a download, a snapshot): its content goes to a
// temporary file beside path, and only Commit puts it under path. Until then path keeps its
// old content (or stays absent), whatever happens to the process.
type Pending struct {
	f    *renameio.PendingFile
	path string
}

// Create starts writing path with exactly mode. The caller must Commit or Abort it.
func Create(path string, mode os.FileMode) (*Pending, error) {
	f, err := renameio.NewPendingFile(path, renameio.WithTempDir(filepath.Dir(path)), renameio.WithStaticPermissions(mode))
	if err != nil {
		return nil, fmt.Errorf("atomicfile: create a temporary file for %s: %w", path, err)
	}
	return &Pending{f: f, path: path}, nil
}

// Write appends to the content.
func (p *Pending) Write(b []byte) (int, error) {
	n, err := p.f.Write(b)
	if err != nil {
		return n, fmt.Errorf("atomicfile: write %s: %w", p.f.Name(), err)
	}
	return n, nil
}

// TempName is the temporary file holding what was written so far (to check it before Commit).
func (p *Pending) TempName() string { return p.f.Name() }

// Commit syncs the content and replaces path with it, durably.
func (p *Pending) Commit() error {
	if err := p.f.CloseAtomicallyReplace(); err != nil {
		_ = p.f.Cleanup()
		return fmt.Errorf("atomicfile: replace %s: %w", p.path, err)
	}
	return syncDir(filepath.Dir(p.path))
}

// Abort removes the temporary file; path is untouched. Safe after Commit (it does nothing).
func (p *Pending) Abort() { _ = p.f.Cleanup() }

// WriteIfChanged is Write unless path already is a regular file holding data with mode; it
// reports whether it wrote.
func WriteIfChanged(path string, data []byte, mode os.FileMode) (bool, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm() == mode.Perm() {
		if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, data) {
			return false, nil
		}
	}
	if err := Write(path, data, mode); err != nil {
		return false, err
	}
	return true, nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("atomicfile: sync %s: %w", dir, err)
	}
	defer func() { _ = d.Close() }()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("atomicfile: sync %s: %w", dir, err)
	}
	return nil
}

// Temps lists the temporary files Write may leave for path when the process dies between
// creating and renaming them (".<name><digits>" beside it); an error or a crash before the
// rename never changes path itself.
func Temps(path string) []string {
	prefix := "." + filepath.Base(path)
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), globEscape(prefix)+"*"))
	var out []string
	for _, m := range matches {
		if rest := strings.TrimPrefix(filepath.Base(m), prefix); rest != "" && strings.Trim(rest, "0123456789") == "" {
			out = append(out, m)
		}
	}
	return out
}

// RemoveTemps deletes what Temps lists.
func RemoveTemps(path string) {
	for _, m := range Temps(path) {
		_ = os.Remove(m)
	}
}

func globEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`)
	return r.Replace(s)
}
