package cniinstall

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestBinaryOnlyThenTheAgentInstallsAndRemovesTheConflist(t *testing.T) {
	f := newFixture(t, sampleConflist(t))
	conflist := filepath.Join(f.cfg.ConfDir, "10-ipledger.conflist")

	// The agent before the init container: nothing to name, nothing written.
	if _, err := InstallConflist(f.cfg); !errors.Is(err, ErrMissingPlugin) {
		t.Fatalf("conflist before the plugin binary: %v", err)
	}
	if _, err := os.Stat(conflist); !os.IsNotExist(err) {
		t.Fatalf("a conflist was written: %v", err)
	}
	// The init container with --binary-only: the binary, no conflist (the node stays NotReady).
	f.cfg.BinaryOnly = true
	res, err := Install(f.cfg)
	if err != nil || !res.PluginChanged || res.ConflistPath != "" {
		t.Fatalf("binary only: %+v %v", res, err)
	}
	if _, err := os.Stat(conflist); !os.IsNotExist(err) {
		t.Fatalf("--binary-only wrote the conflist: %v", err)
	}
	// The agent, once it serves: the conflist, once.
	f.cfg.BinaryOnly = false
	f.cfg.PluginSource = ""
	res, err = InstallConflist(f.cfg)
	if err != nil || !res.ConflistChanged || res.AgentSocket != "/run/ipledger/agent.sock" {
		t.Fatalf("install conflist: %+v %v", res, err)
	}
	if res, err = InstallConflist(f.cfg); err != nil || res.ConflistChanged {
		t.Fatalf("second install rewrote: %+v %v", res, err)
	}
	// Removal takes only our own file.
	if removed, err := RemoveConflist(f.cfg); err != nil || !removed {
		t.Fatalf("remove: %v %v", removed, err)
	}
	if _, err := os.Stat(conflist); !os.IsNotExist(err) {
		t.Fatal("still there")
	}
	if removed, err := RemoveConflist(f.cfg); err != nil || removed {
		t.Fatalf("remove a missing file: %v %v", removed, err)
	}
	write(t, conflist, []byte(`{"someone":"else"}`), 0o644)
	if removed, err := RemoveConflist(f.cfg); err != nil || removed {
		t.Fatalf("removed a file it did not write: %v %v", removed, err)
	}
	// A chained plugin missing: refused, nothing written.
	_ = os.Remove(conflist)
	_ = os.Remove(filepath.Join(f.cfg.BinDir, "portmap"))
	if _, err := InstallConflist(f.cfg); !errors.Is(err, ErrMissingPlugin) {
		t.Fatalf("without portmap: %v", err)
	}
	if _, err := os.Stat(conflist); !os.IsNotExist(err) {
		t.Fatal("written without portmap")
	}
}
