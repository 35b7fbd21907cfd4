package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipledger/ipledger/internal/version"
)

func TestRunExitCodes(t *testing.T) {
	root := t.TempDir()
	conflist, err := os.ReadFile("../../cni/10-ipledger.conflist")
	if err != nil {
		t.Fatal(err)
	}
	bin, conf := filepath.Join(root, "bin"), filepath.Join(root, "net.d")
	for _, d := range []string{bin, conf} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string][]byte{
		filepath.Join(root, "ipledger-cni"):         []byte("plugin"),
		filepath.Join(root, "10-ipledger.conflist"): conflist,
		filepath.Join(bin, "portmap"):               []byte("portmap"),
	}
	for p, b := range files {
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"--plugin-src=" + filepath.Join(root, "ipledger-cni"), "--conflist-src=" + filepath.Join(root, "10-ipledger.conflist"),
		"--bin-dir=" + bin, "--conf-dir=" + conf, "--log-format=json"}
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"help", []string{"-h"}, 0},
		{"unknown flag", []string{"--bogus"}, 2},
		{"positional argument", append(append([]string{}, args...), "extra"), 2},
		{"invalid setting", append(append([]string{}, args...), "--plugin-name=a/b"), 2},
		{"install fails", append(append([]string{}, args...), "--bin-dir="+filepath.Join(root, "missing")), 1},
		{"installs", args, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := run(tt.args, io.Discard); got != tt.want {
				t.Errorf("run(%q) = %d, want %d", tt.args, got, tt.want)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(bin, "ipledger")); err != nil || string(b) != "plugin" {
		t.Errorf("plugin not installed: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(conf, "10-ipledger.conflist")); err != nil {
		t.Errorf("conflist not installed: %v", err)
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if got := run([]string{"--version"}, &out); got != 0 {
		t.Fatalf("--version exited %d", got)
	}
	if want := version.String("ipledger-cni-install"); strings.TrimSpace(out.String()) != want {
		t.Errorf("--version printed %q, want %q", out.String(), want)
	}
}
