package cniinstall

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// sampleConflist is the repository's sample (deploy/cni), the file the agent image installs.
func sampleConflist(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile("../cni/10-ipledger.conflist")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type fixture struct {
	root   string
	cfg    Config
	plugin []byte
}

// newFixture lays out an image (plugin binary, conflist) and a node (bin dir with portmap, empty
// config dir) under a temporary root.
func newFixture(t *testing.T, conflist []byte) *fixture {
	t.Helper()
	root := t.TempDir()
	mk := func(rel string) string {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	img, bin, conf := mk("image"), mk("host/opt/cni/bin"), mk("host/etc/cni/net.d")
	plugin := []byte("\x7fELF plugin v1")
	write(t, filepath.Join(img, "ipledger-cni"), plugin, 0o755)
	write(t, filepath.Join(img, "10-ipledger.conflist"), conflist, 0o644)
	write(t, filepath.Join(bin, "portmap"), []byte("portmap"), 0o755)
	cfg := DefaultConfig()
	cfg.PluginSource = filepath.Join(img, "ipledger-cni")
	cfg.ConflistSource = filepath.Join(img, "10-ipledger.conflist")
	cfg.BinDir, cfg.ConfDir = bin, conf
	return &fixture{root: root, cfg: cfg, plugin: plugin}
}

func write(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// snapshot maps every file under dir to its content and mode.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		out[strings.TrimPrefix(p, dir)] = fi.Mode().String() + " " + string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestInstallFreshNode(t *testing.T) {
	conflist := sampleConflist(t)
	f := newFixture(t, conflist)
	res, err := Install(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !res.PluginChanged || !res.ConflistChanged {
		t.Errorf("fresh install reported no change: %+v", res)
	}
	if res.PluginPath != filepath.Join(f.cfg.BinDir, "ipledger") {
		t.Errorf("plugin installed as %s, want <bin-dir>/ipledger", res.PluginPath)
	}
	got, err := os.ReadFile(res.PluginPath)
	if err != nil || !bytes.Equal(got, f.plugin) {
		t.Fatalf("installed plugin = %q, %v; want the image's binary", got, err)
	}
	if fi, _ := os.Stat(res.PluginPath); fi.Mode().Perm() != 0o755 {
		t.Errorf("plugin mode %v, want 0755 (the runtime executes it)", fi.Mode().Perm())
	}
	gotConf, err := os.ReadFile(filepath.Join(f.cfg.ConfDir, "10-ipledger.conflist"))
	if err != nil || !bytes.Equal(gotConf, conflist) {
		t.Fatalf("installed conflist differs from the source: %v", err)
	}
	if fi, _ := os.Stat(res.ConflistPath); fi.Mode().Perm() != 0o644 {
		t.Errorf("conflist mode %v, want 0644", fi.Mode().Perm())
	}
	if res.AgentSocket != "/run/ipledger/agent.sock" {
		t.Errorf("agent socket %q, want the sample's /run/ipledger/agent.sock", res.AgentSocket)
	}
	if len(res.Chained) != 1 || res.Chained[0] != "portmap" || len(res.MissingChained) != 0 {
		t.Errorf("chained %v missing %v, want [portmap] and none missing", res.Chained, res.MissingChained)
	}
	// No temporary files are left behind in the host directories.
	for _, dir := range []string{f.cfg.BinDir, f.cfg.ConfDir} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".") {
				t.Errorf("left %s in %s", e.Name(), dir)
			}
		}
	}
}

func TestInstallIsIdempotentAndReplaces(t *testing.T) {
	f := newFixture(t, sampleConflist(t))
	if _, err := Install(f.cfg); err != nil {
		t.Fatal(err)
	}
	res, err := Install(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res.PluginChanged || res.ConflistChanged {
		t.Errorf("second install of the same files rewrote them: %+v", res)
	}
	// A new image: the binary is replaced by rename, so a process running the old one keeps it.
	old, err := os.Open(res.PluginPath)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	write(t, f.cfg.PluginSource, []byte("\x7fELF plugin v2"), 0o755)
	// A node whose file lost its mode is repaired too.
	if err := os.Chmod(res.ConflistPath, 0o600); err != nil {
		t.Fatal(err)
	}
	res, err = Install(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !res.PluginChanged || !res.ConflistChanged {
		t.Errorf("changed binary / mode not rewritten: %+v", res)
	}
	if got, _ := os.ReadFile(res.PluginPath); string(got) != "\x7fELF plugin v2" {
		t.Errorf("plugin not replaced: %q", got)
	}
	if got, _ := io.ReadAll(old); string(got) != "\x7fELF plugin v1" {
		t.Errorf("the old binary's open handle sees %q: the file was rewritten in place, not renamed over", got)
	}
	if fi, _ := os.Stat(res.ConflistPath); fi.Mode().Perm() != 0o644 {
		t.Errorf("conflist mode %v after repair, want 0644", fi.Mode().Perm())
	}
}

func TestInstallReportsShadowingConfigs(t *testing.T) {
	f := newFixture(t, sampleConflist(t))
	// The VPC CNI's config sorts before ours; a later one and a non-config file do not count.
	write(t, filepath.Join(f.cfg.ConfDir, "10-aws.conflist"), []byte(`{"name":"aws-cni","plugins":[{"type":"aws-cni"}]}`), 0o644)
	write(t, filepath.Join(f.cfg.ConfDir, "05-other.conf"), []byte(`{"name":"x","type":"bridge"}`), 0o644)
	write(t, filepath.Join(f.cfg.ConfDir, "99-later.conflist"), []byte(`{}`), 0o644)
	write(t, filepath.Join(f.cfg.ConfDir, "00-readme.txt"), []byte(`notes`), 0o644)
	before := snapshot(t, f.cfg.ConfDir)
	res, err := Install(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"05-other.conf", "10-aws.conflist"}; strings.Join(res.Shadowing, ",") != strings.Join(want, ",") {
		t.Errorf("shadowing = %v, want %v", res.Shadowing, want)
	}
	after := snapshot(t, f.cfg.ConfDir)
	for name, v := range before {
		if after[name] != v {
			t.Errorf("install touched another network's file %s", name)
		}
	}
}

func TestInstallRefusesAndChangesNothing(t *testing.T) {
	good := sampleConflist(t)
	tests := []struct {
		name     string
		conflist string
		mutate   func(f *fixture)
		want     error
		wantText string
	}{
		{name: "not JSON", conflist: `{`, want: ErrInvalidConflist},
		{name: "no plugins", conflist: `{"cniVersion":"1.1.0","name":"ipledger","plugins":[]}`, want: ErrInvalidConflist},
		{name: "ipledger not first", conflist: `{"cniVersion":"1.1.0","name":"ipledger","plugins":[{"type":"portmap","capabilities":{"portMappings":true}},{"type":"ipledger"}]}`,
			want: ErrInvalidConflist, wantText: "first plugin"},
		{name: "plugin rejects its settings", conflist: `{"cniVersion":"1.1.0","name":"ipledger","plugins":[{"type":"ipledger","agentSocket":"relative.sock"}]}`,
			want: ErrInvalidConflist, wantText: "agentSocket"},
		{name: "unknown plugin key", conflist: `{"cniVersion":"1.1.0","name":"ipledger","plugins":[{"type":"ipledger","agentSockett":"/run/x.sock"}]}`,
			want: ErrInvalidConflist, wantText: "agentSockett"},
		{name: "chained plugin missing", conflist: string(good),
			mutate: func(f *fixture) { _ = os.Remove(filepath.Join(f.cfg.BinDir, "portmap")) }, want: ErrMissingPlugin, wantText: "portmap"},
		{name: "relative bin dir", conflist: string(good), mutate: func(f *fixture) { f.cfg.BinDir = "opt/cni/bin" }, want: ErrInvalidConfig, wantText: "bin-dir"},
		{name: "plugin name with slash", conflist: string(good), mutate: func(f *fixture) { f.cfg.PluginName = "../ipledger" }, want: ErrInvalidConfig, wantText: "plugin-name"},
		{name: "conflist name the runtime ignores", conflist: string(good), mutate: func(f *fixture) { f.cfg.ConflistName = "10-ipledger.yaml" }, want: ErrInvalidConfig, wantText: "conflist-name"},
		{name: "bad log format", conflist: string(good), mutate: func(f *fixture) { f.cfg.LogFormat = "xml" }, want: ErrInvalidConfig, wantText: "log-format"},
		{name: "missing config dir", conflist: string(good), mutate: func(f *fixture) { f.cfg.ConfDir = filepath.Join(f.cfg.ConfDir, "nope") }, wantText: "no such file"},
		{name: "missing plugin source", conflist: string(good), mutate: func(f *fixture) { f.cfg.PluginSource += ".gone" }, wantText: "read plugin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, []byte(tt.conflist))
			if tt.mutate != nil {
				tt.mutate(f)
			}
			before := snapshot(t, f.root)
			_, err := Install(f.cfg)
			if err == nil {
				t.Fatal("Install succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("error %v is not %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("error %q does not mention %q", err, tt.wantText)
			}
			after := snapshot(t, f.root)
			if len(after) != len(before) {
				t.Errorf("refused install changed the host: %d files -> %d", len(before), len(after))
			}
			for name, v := range before {
				if after[name] != v {
					t.Errorf("refused install changed %s", name)
				}
			}
		})
	}
}

func TestInstallWithoutRequireChainedInstallsAnyway(t *testing.T) {
	f := newFixture(t, sampleConflist(t))
	_ = os.Remove(filepath.Join(f.cfg.BinDir, "portmap"))
	f.cfg.RequireChained = false
	res, err := Install(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.MissingChained) != 1 || res.MissingChained[0] != "portmap" {
		t.Errorf("missing chained = %v, want [portmap]", res.MissingChained)
	}
	if _, err := os.Stat(res.ConflistPath); err != nil {
		t.Errorf("conflist not installed: %v", err)
	}
}

func TestFlagsSetEverySetting(t *testing.T) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	err := fs.Parse([]string{"--plugin-src=/a/p", "--plugin-name=q", "--bin-dir=/b", "--conflist-src=/c/x.conflist",
		"--conf-dir=/d", "--conflist-name=20-q.conflist", "--require-chained=false", "--binary-only", "--log-format=json"})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{PluginSource: "/a/p", PluginName: "q", BinDir: "/b", ConflistSource: "/c/x.conflist", ConfDir: "/d",
		ConflistName: "20-q.conflist", RequireChained: false, BinaryOnly: true, LogFormat: "json"}
	if cfg != want {
		t.Errorf("flags gave %+v, want %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("valid settings refused: %v", err)
	}
}

// containerd 1.6 and 1.7 (what most EKS AMIs run) read results up to CNI 1.0.0: with a 1.1.0
// conflist the ADD succeeds, then containerd fails with "unsupported CNI result version" and
// leaves the container behind. The shipped list must stay at 1.0.0.
func TestShippedConflistIsCNI100(t *testing.T) {
	var list struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(sampleConflist(t), &list); err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != "1.0.0" {
		t.Fatalf("deploy/cni/10-ipledger.conflist has cniVersion %q, want 1.0.0 (containerd 1.6/1.7 refuse 1.1.0 results)", list.CNIVersion)
	}
}

func TestInstallWithCNIVersion(t *testing.T) {
	f := newFixture(t, sampleConflist(t))
	f.cfg.CNIVersion = "1.1.0"
	res, err := Install(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(res.ConflistPath)
	if err != nil {
		t.Fatal(err)
	}
	var got, want map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("installed conflist does not parse: %v\n%s", err, b)
	}
	if err := json.Unmarshal(sampleConflist(t), &want); err != nil {
		t.Fatal(err)
	}
	if got["cniVersion"] != "1.1.0" {
		t.Errorf("installed cniVersion %v, want 1.1.0", got["cniVersion"])
	}
	want["cniVersion"] = "1.1.0"
	if !reflect.DeepEqual(got, want) {
		t.Errorf("--cni-version changed more than cniVersion:\n got %v\nwant %v", got, want)
	}

	for _, bad := range []string{"0.3.1", "2.0.0", "1.1"} {
		f := newFixture(t, sampleConflist(t))
		f.cfg.CNIVersion = bad
		before := snapshot(t, f.root)
		_, err := Install(f.cfg)
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), "--cni-version") {
			t.Errorf("--cni-version %q: err %v, want ErrInvalidConfig naming --cni-version", bad, err)
		}
		if after := snapshot(t, f.root); !reflect.DeepEqual(before, after) {
			t.Errorf("--cni-version %q: a refused install changed files", bad)
		}
	}
}
