// Package conf loads the configuration of an ipledger program the one way every binary does:
// the defaults (the values its flags are bound to), then an optional YAML or JSON file (--config),
// then environment variables, then the command line. Every setting is a flag of a standard
// library flag.FlagSet, and every source reaches it through that flag's Set, so a value means
// the same whether it comes from the file, the environment or the command line. The program
// validates the result itself (its Config.Validate names the bad setting).
//
// The file and the environment are read with koanf (its file and env providers; the file is
// parsed as YAML, of which JSON is a subset, by sigs.k8s.io/yaml, as everywhere in ipledger).
// Lists and labels are the comma-separated strings their flags take ("a,b", "k=v,k2=v2"); in
// the file they may also be YAML lists and maps.
//
// It owns nothing but loading: it must never start anything, and never read the process
// environment or files other than the one --config names on its own.
package conf

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"
	"sigs.k8s.io/yaml"
)

// Options say where a program's settings come from.
type Options struct {
	// ConfigFlag is the flag that names the file ("config"); Load registers it. "" means no file.
	ConfigFlag  string
	ConfigUsage string
	// ConfigEnv is the variable that names the file when the flag is not given ("" for none).
	ConfigEnv string
	// EnvName is the variable of a flag ("add-wait" -> "IPLEDGER_AGENT_ADD_WAIT").
	EnvName func(flagName string) string
	// EnvAliases are other variables that set a flag (NODE_NAME -> node-name), applied before
	// EnvName's variables and only when not empty.
	EnvAliases map[string]string
	// IgnoreEmptyEnv treats a variable set to "" as unset (else it sets the flag to "").
	IgnoreEmptyEnv bool
	// Lookup reads the environment (nil: no environment).
	Lookup func(string) (string, bool)
	// FileKey turns a key of the file into its flag's name (nil: keys are flag names).
	FileKey func(key string) string
	// FileOnly are keys of the file that are no flag; Loaded.Decode reads them.
	FileOnly []string
	// VersionFlag is a boolean flag that Load registers ("version"; "" for none): given on the
	// command line, Load returns ErrVersion before it reads the file or the environment, so
	// that a binary answers --version whatever its configuration. It is a flag only, never a
	// key of the file or a variable (IPLEDGER_VERSION is make test's, not a request).
	VersionFlag string
}

// ErrVersion is Load's answer to the version flag: print the version and exit 0.
var ErrVersion = errors.New("conf: version requested")

// VersionUsage is the help of the version flag.
const VersionUsage = "print the version, commit and build date, and exit"

// Origin is where a setting's value came from.
type Origin int

// Origins, lowest precedence first.
const (
	FromDefault Origin = iota
	FromFile
	FromEnv
	FromFlag
)

// Loaded is the result of Load: the flags hold the values; Loaded says where they came from and
// keeps the file's other keys.
type Loaded struct {
	// File is the configuration file that was read ("" for none).
	File   string
	origin map[string]Origin
	file   *koanf.Koanf
}

// Origin says where the flag's value came from.
func (l *Loaded) Origin(flagName string) Origin { return l.origin[flagName] }

// Decode decodes the file's key (one of Options.FileOnly) into out, refusing unknown fields;
// a key the file does not have leaves out alone.
func (l *Loaded) Decode(key string, out any) error {
	if l.file == nil || !l.file.Exists(key) {
		return nil
	}
	b, err := json.Marshal(l.file.Get(key))
	if err != nil {
		return fmt.Errorf("config file %s: %s: %w", l.File, key, err)
	}
	if err := yaml.UnmarshalStrict(b, out); err != nil {
		return fmt.Errorf("config file %s: %s: %w", l.File, key, err)
	}
	return nil
}

// delim separates nested keys in koanf; it never occurs in a key (label keys have dots).
const delim = "\x00"

// Load parses args into fs (flag.ErrHelp when -h was asked; a bad flag is the flag package's
// error), then sets every flag from the file, then from the environment, then again from the
// command line, so that the later source wins. fs must be bound to the configuration being
// loaded, its values being the defaults.
func Load(fs *flag.FlagSet, args []string, o Options) (*Loaded, error) {
	var path *string
	if o.ConfigFlag != "" {
		def := ""
		if o.ConfigEnv != "" && o.Lookup != nil {
			def, _ = o.Lookup(o.ConfigEnv)
		}
		path = fs.String(o.ConfigFlag, def, o.ConfigUsage)
	}
	var version *bool
	if o.VersionFlag != "" {
		version = fs.Bool(o.VersionFlag, false, VersionUsage)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if version != nil && *version {
		return nil, ErrVersion
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	explicit := map[string]string{}
	fs.Visit(func(f *flag.Flag) {
		if f.Name != o.ConfigFlag && f.Name != o.VersionFlag {
			explicit[f.Name] = f.Value.String()
		}
	})
	l := &Loaded{origin: map[string]Origin{}}
	if path != nil && *path != "" {
		if err := l.loadFile(fs, *path, o); err != nil {
			return nil, err
		}
	}
	if err := l.loadEnv(fs, o); err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(explicit)) {
		if err := fs.Set(name, explicit[name]); err != nil {
			return nil, fmt.Errorf("--%s: %w", name, err)
		}
		l.origin[name] = FromFlag
	}
	return l, nil
}

func (l *Loaded) loadFile(fs *flag.FlagSet, path string, o Options) error {
	k := koanf.New(delim)
	if err := k.Load(file.Provider(path), yamlParser{}); err != nil {
		var ce configFileError
		if errors.As(err, &ce) {
			return fmt.Errorf("config file %s: %w", path, ce.err)
		}
		return fmt.Errorf("config file: %w", err)
	}
	l.File, l.file = path, k
	raw := k.Raw()
	for _, key := range slices.Sorted(maps.Keys(raw)) {
		if slices.Contains(o.FileOnly, key) {
			continue
		}
		name := key
		if o.FileKey != nil {
			name = o.FileKey(key)
		}
		if name == o.ConfigFlag || (o.VersionFlag != "" && name == o.VersionFlag) || fs.Lookup(name) == nil {
			return fmt.Errorf("config file %s: unknown setting %q", path, key)
		}
		v, err := settingString(raw[key])
		if err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, key, err)
		}
		if err := fs.Set(name, v); err != nil {
			return fmt.Errorf("config file %s: %s: %q: %w", path, key, v, err)
		}
		l.origin[name] = FromFile
	}
	return nil
}

func (l *Loaded) loadEnv(fs *flag.FlagSet, o Options) error {
	if o.Lookup == nil || o.EnvName == nil {
		return nil
	}
	for _, name := range slices.Sorted(maps.Keys(o.EnvAliases)) {
		if v, ok := o.Lookup(name); ok && v != "" {
			if err := fs.Set(o.EnvAliases[name], v); err != nil {
				return fmt.Errorf("%s=%q: %w", name, v, err)
			}
			l.origin[o.EnvAliases[name]] = FromEnv
		}
	}
	// The variables of the flags, as the environment koanf reads; each maps back to its flag.
	flagOf := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != o.ConfigFlag && f.Name != o.VersionFlag {
			flagOf[o.EnvName(f.Name)] = f.Name
		}
	})
	environ := func() []string {
		var out []string
		for _, v := range slices.Sorted(maps.Keys(flagOf)) {
			if val, ok := o.Lookup(v); ok && (val != "" || !o.IgnoreEmptyEnv) {
				out = append(out, v+"="+val)
			}
		}
		return out
	}
	k := koanf.New(delim)
	err := k.Load(env.Provider(delim, env.Opt{
		EnvironFunc:   environ,
		TransformFunc: func(k, v string) (string, any) { return k, v },
	}), nil)
	if err != nil {
		return fmt.Errorf("environment: %w", err)
	}
	for _, v := range k.Keys() {
		val := k.String(v)
		if err := fs.Set(flagOf[v], val); err != nil {
			return fmt.Errorf("%s=%q: %w", v, val, err)
		}
		l.origin[flagOf[v]] = FromEnv
	}
	return nil
}

// yamlParser is a koanf parser for YAML and JSON with sigs.k8s.io/yaml, whose YAML is the
// rest of ipledger's (numbers keep their digits: json.Number).
type yamlParser struct{}

// configFileError marks an error in the file's content (as opposed to reading it).
type configFileError struct{ err error }

func (e configFileError) Error() string { return e.err.Error() }

func (yamlParser) Unmarshal(b []byte) (map[string]any, error) {
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, configFileError{err}
	}
	out := map[string]any{}
	if strings.TrimSpace(string(js)) == "null" {
		return out, nil
	}
	dec := json.NewDecoder(strings.NewReader(string(js)))
	dec.UseNumber()
	if err := dec.Decode(&out); err != nil {
		return nil, configFileError{fmt.Errorf("want an object of settings: %w", err)}
	}
	return out, nil
}

func (yamlParser) Marshal(m map[string]any) ([]byte, error) { return yaml.Marshal(m) }

// settingString writes a file value as its flag takes it: lists comma-separated, maps as
// k=v,k=v (sorted), null as "".
func settingString(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case json.Number:
		return x.String(), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	case int:
		return strconv.Itoa(x), nil
	case []any:
		parts := make([]string, 0, len(x))
		for _, e := range x {
			s, err := settingString(e)
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, ","), nil
	case map[string]any:
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(x)) {
			s, err := settingString(x[k])
			if err != nil {
				return "", err
			}
			parts = append(parts, k+"="+s)
		}
		return strings.Join(parts, ","), nil
	default:
		return "", fmt.Errorf("unsupported value %v", v)
	}
}

// ListValue is a comma-separated list flag bound to a []string; Set replaces the list and drops
// empty items.
type ListValue struct{ P *[]string }

func (v ListValue) String() string {
	if v.P == nil {
		return ""
	}
	return strings.Join(*v.P, ",")
}

// Set replaces the list.
func (v ListValue) Set(s string) error {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	*v.P = out
	return nil
}

// LabelsValue is a k=v,k=v flag bound to a map; Set replaces the map.
type LabelsValue struct{ P *map[string]string }

func (v LabelsValue) String() string {
	if v.P == nil || len(*v.P) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(*v.P)) {
		parts = append(parts, k+"="+(*v.P)[k])
	}
	return strings.Join(parts, ",")
}

// Set replaces the map.
func (v LabelsValue) Set(s string) error {
	out := map[string]string{}
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		k, val, ok := strings.Cut(part, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return fmt.Errorf("%q is not key=value", part)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(val)
	}
	*v.P = out
	return nil
}

// EnvName is the variable of a flag under prefix: upper case, dashes as underscores
// ("IPLEDGER_", "etcd-endpoints" -> "IPLEDGER_ETCD_ENDPOINTS").
func EnvName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// ParseLevel reads a log level the way log/slog does: debug, info, warn or error (any case,
// with an optional offset such as "debug-4").
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
	}
	return l, nil
}

// CheckFormat checks a log format setting: text or json.
func CheckFormat(s string) error {
	if s != "text" && s != "json" {
		return fmt.Errorf("%q is not text or json", s)
	}
	return nil
}

// NewLogger returns the logger a level and a format describe, writing to w (an invalid level
// is info: Validate has refused it before).
func NewLogger(w io.Writer, level, format string) *slog.Logger {
	l, err := ParseLevel(level)
	if err != nil {
		l = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: l}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func (o Origin) String() string {
	return [...]string{"default", "file", "environment", "flag"}[o]
}
