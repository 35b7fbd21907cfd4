package conf

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

type settings struct {
	Name    string
	Wait    time.Duration
	On      bool
	List    []string
	Labels  map[string]string
	Count   int64
	Buckets []struct {
		Name string `json:"name"`
		Rate int    `json:"rate"`
	}
}

func flags(s *settings) *flag.FlagSet {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&s.Name, "name", "default", "")
	fs.DurationVar(&s.Wait, "wait", time.Second, "")
	fs.BoolVar(&s.On, "enabled", true, "")
	fs.Var(ListValue{&s.List}, "list", "")
	fs.Var(LabelsValue{&s.Labels}, "labels", "")
	fs.Int64Var(&s.Count, "count", 0, "")
	return fs
}

func lookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func opts(env map[string]string) Options {
	return Options{
		ConfigFlag: "config", ConfigEnv: "T_CONFIG",
		EnvName:    func(f string) string { return EnvName("T_", f) },
		EnvAliases: map[string]string{"ALIAS_NAME": "name"},
		Lookup:     lookup(env),
		FileKey:    func(k string) string { return strings.ReplaceAll(k, "_", "-") },
		FileOnly:   []string{"buckets"},
	}
}

func write(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPrecedenceDefaultsFileEnvFlags(t *testing.T) {
	file := write(t, "c.yaml", `
name: from-file
wait: 5s
enabled: false
list: [a, b]
labels: {node.kubernetes.io/pool: blue, zone: a}
count: 9007199254740993
buckets: [{name: x, rate: 2}]
`)
	for _, tc := range []struct {
		name   string
		args   []string
		env    map[string]string
		want   settings
		origin map[string]Origin
	}{
		{"defaults", nil, nil, settings{Name: "default", Wait: time.Second, On: true},
			map[string]Origin{"name": FromDefault, "wait": FromDefault}},
		{"file", []string{"--config", file}, nil,
			settings{Name: "from-file", Wait: 5 * time.Second, List: []string{"a", "b"}, Labels: map[string]string{"node.kubernetes.io/pool": "blue", "zone": "a"}, Count: 9007199254740993},
			map[string]Origin{"name": FromFile, "wait": FromFile, "enabled": FromFile}},
		{"file from its variable, env over file, alias under the variable", nil,
			map[string]string{"T_CONFIG": file, "T_WAIT": "7s", "ALIAS_NAME": "alias", "T_LIST": "c"},
			settings{Name: "alias", Wait: 7 * time.Second, List: []string{"c"}, Labels: map[string]string{"node.kubernetes.io/pool": "blue", "zone": "a"}, Count: 9007199254740993},
			map[string]Origin{"name": FromEnv, "wait": FromEnv, "list": FromEnv, "count": FromFile}},
		{"flags over env, both spellings", []string{"--config=" + file, "--wait", "9s", "-name=flag", "--enabled"},
			map[string]string{"T_WAIT": "7s", "T_NAME": "env", "ALIAS_NAME": "alias", "T_LABELS": ""},
			settings{Name: "flag", Wait: 9 * time.Second, On: true, List: []string{"a", "b"}, Labels: map[string]string{}, Count: 9007199254740993},
			map[string]Origin{"name": FromFlag, "wait": FromFlag, "enabled": FromFlag, "labels": FromEnv}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s settings
			l, err := Load(flags(&s), tc.args, opts(tc.env))
			if err != nil {
				t.Fatal(err)
			}
			got := s
			got.Buckets = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
			for name, want := range tc.origin {
				if l.Origin(name) != want {
					t.Errorf("origin of %s: %v, want %v", name, l.Origin(name), want)
				}
			}
			if err := l.Decode("buckets", &s.Buckets); err != nil {
				t.Fatal(err)
			}
			if (l.File != "") != (len(s.Buckets) == 1 && s.Buckets[0].Name == "x" && s.Buckets[0].Rate == 2) {
				t.Fatalf("file-only key: file %q buckets %+v", l.File, s.Buckets)
			}
		})
	}
}

func TestEmptyVariables(t *testing.T) {
	env := map[string]string{"T_NAME": "", "ALIAS_NAME": ""}
	var s settings
	if _, err := Load(flags(&s), nil, opts(env)); err != nil || s.Name != "" {
		t.Fatalf("an empty variable sets the flag to empty: %q %v", s.Name, err)
	}
	o := opts(env)
	o.IgnoreEmptyEnv = true
	var s2 settings
	if _, err := Load(flags(&s2), nil, o); err != nil || s2.Name != "default" {
		t.Fatalf("IgnoreEmptyEnv: an empty variable is unset: %q %v", s2.Name, err)
	}
}

func TestErrorsNameTheSetting(t *testing.T) {
	unknown := write(t, "u.yaml", "name: a\nno_such: 1\n")
	dashed := write(t, "d.json", `{"wait": "soon"}`)
	notObject := write(t, "l.yaml", "- a\n- b\n")
	broken := write(t, "b.yaml", "name: [a\n")
	strictBuckets := write(t, "s.yaml", "buckets: [{name: x, rate: 1, extra: 2}]\n")
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown file key", []string{"--config", unknown}, nil, `unknown setting "no_such"`},
		{"bad file value", []string{"--config", dashed}, nil, `d.json: wait: "soon"`},
		{"file not an object", []string{"--config", notObject}, nil, "want an object of settings"},
		{"file not YAML", []string{"--config", broken}, nil, "b.yaml"},
		{"missing file", []string{"--config", "/nonexistent/c.yaml"}, nil, "/nonexistent/c.yaml"},
		{"config key in the file", []string{"--config", write(t, "c.yaml", "config: x\n")}, nil, `unknown setting "config"`},
		{"bad variable", nil, map[string]string{"T_WAIT": "long"}, `T_WAIT="long"`},
		{"bad alias", nil, map[string]string{"T_COUNT": "x"}, "T_COUNT"},
		{"bad flag", []string{"--wait", "long"}, nil, "-wait"},
		{"unknown flag", []string{"--nope"}, nil, "nope"},
		{"stray argument", []string{"extra"}, nil, `unexpected arguments: ["extra"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s settings
			_, err := Load(flags(&s), tc.args, opts(tc.env))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
	var s settings
	l, err := Load(flags(&s), []string{"--config", strictBuckets}, opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Decode("buckets", &s.Buckets); err == nil || !strings.Contains(err.Error(), "extra") {
		t.Fatalf("a file-only key is decoded strictly: %v", err)
	}
	if _, err := Load(flags(&s), []string{"-h"}, opts(nil)); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
}

func TestLevelsAndFormats(t *testing.T) {
	for _, ok := range []string{"debug", "info", "warn", "error", "INFO", "debug-4"} {
		if _, err := ParseLevel(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "loud", "verbose"} {
		if _, err := ParseLevel(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if CheckFormat("json") != nil || CheckFormat("text") != nil || CheckFormat("xml") == nil {
		t.Error("formats: text and json only")
	}
	var b strings.Builder
	NewLogger(&b, "warn", "json").Info("hidden")
	NewLogger(&b, "warn", "json").Warn("shown")
	if strings.Contains(b.String(), "hidden") || !strings.Contains(b.String(), `"msg":"shown"`) {
		t.Fatalf("logger: %s", b.String())
	}
}

// --version answers before the file and the environment are read (a broken file does not stop
// it), and is neither a key of the file nor a variable.
func TestVersionFlag(t *testing.T) {
	o := opts(map[string]string{"T_VERSION": "v1.2.3", "T_CONFIG": "/nonexistent/config.yaml"})
	o.VersionFlag = "version"
	var s settings
	if _, err := Load(flags(&s), []string{"--version"}, o); !errors.Is(err, ErrVersion) {
		t.Fatalf("--version: %v, want ErrVersion", err)
	}
	// Without the flag, T_VERSION (make test exports IPLEDGER_VERSION) is no request and no
	// setting, and a file key "version" is unknown.
	o.Lookup = lookup(map[string]string{"T_VERSION": "v1.2.3"})
	if _, err := Load(flags(&s), nil, o); err != nil {
		t.Fatalf("a variable named like the version flag: %v", err)
	}
	f := write(t, "c.yaml", "version: true\n")
	if _, err := Load(flags(&s), []string{"--config", f}, o); err == nil || !strings.Contains(err.Error(), `unknown setting "version"`) {
		t.Fatalf("version in the file: %v", err)
	}
}
