package cniinstall

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"

	"github.com/ipledger/ipledger/cni"
	"github.com/ipledger/ipledger/internal/atomicfile"
)

// Sentinel errors; Install wraps them with the detail.
var (
	// ErrInvalidConfig: a setting of Config is unusable.
	ErrInvalidConfig = errors.New("cniinstall: invalid configuration")
	// ErrInvalidConflist: the network config list does not parse or does not run our plugin first.
	ErrInvalidConflist = errors.New("cniinstall: invalid network config list")
	// ErrMissingPlugin: the conflist chains a plugin that the CNI bin directory does not have.
	ErrMissingPlugin = errors.New("cniinstall: chained plugin missing")
)

// Defaults match the layout of the agent image (deploy/docker/ipledger-agent.Dockerfile) and the
// host mounts of the agent DaemonSet.
const (
	DefaultPluginSource   = "/opt/ipledger/bin/ipledger-cni"
	DefaultPluginName     = "ipledger"
	DefaultBinDir         = "/host/opt/cni/bin"
	DefaultConflistSource = "/opt/ipledger/cni/10-ipledger.conflist"
	DefaultConfDir        = "/host/etc/cni/net.d"
)

// configExtensions are the files a container runtime reads from its CNI config directory
// (libcni.ConfFiles with the extensions containerd and CRI-O use); it takes the first by name.
var configExtensions = []string{".conf", ".conflist", ".json"}

// Config says what to install where.
type Config struct {
	// PluginSource is the plugin binary to install (in the image).
	PluginSource string
	// PluginName is its file name in BinDir and the "type" of the conflist's first plugin.
	PluginName string
	// BinDir is the node's CNI bin directory (mounted from the host).
	BinDir string
	// ConflistSource is the network config list to install (in the image).
	ConflistSource string
	// ConfDir is the node's CNI config directory (mounted from the host).
	ConfDir string
	// ConflistName is the file name in ConfDir ("" = the base name of ConflistSource).
	ConflistName string
	// CNIVersion replaces the conflist's "cniVersion" when set ("" keeps the shipped 1.0.0, what
	// containerd 1.6 and 1.7 speak; "1.1.0" adds GC and STATUS for runtimes that speak it).
	CNIVersion string
	// RequireChained refuses to install when a chained plugin of the conflist (portmap, ...) is
	// not in BinDir; without it a missing plugin is only logged.
	RequireChained bool
	// BinaryOnly installs the plugin binary and not the conflist (--binary-only): the agent
	// installs the conflist itself once it can serve pods (InstallConflist), so that the node
	// is Ready only then.
	BinaryOnly bool
	// LogFormat of NewLogger: text or json.
	LogFormat string
	// Logger receives what was installed and the warnings (nil: discard).
	Logger *slog.Logger
}

// DefaultConfig returns the settings the agent DaemonSet uses.
func DefaultConfig() Config {
	return Config{
		PluginSource:   DefaultPluginSource,
		PluginName:     DefaultPluginName,
		BinDir:         DefaultBinDir,
		ConflistSource: DefaultConflistSource,
		ConfDir:        DefaultConfDir,
		RequireChained: true,
		LogFormat:      "text",
	}
}

// NewLogger returns the logger LogFormat asks for, writing to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// RegisterFlags binds the flags to c's fields.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.PluginSource, "plugin-src", c.PluginSource, "plugin binary to install")
	fs.StringVar(&c.PluginName, "plugin-name", c.PluginName, "file name of the plugin in --bin-dir (the conflist's first plugin type)")
	fs.StringVar(&c.BinDir, "bin-dir", c.BinDir, "the node's CNI bin directory")
	fs.StringVar(&c.ConflistSource, "conflist-src", c.ConflistSource, "network config list to install")
	fs.StringVar(&c.ConfDir, "conf-dir", c.ConfDir, "the node's CNI config directory")
	fs.StringVar(&c.ConflistName, "conflist-name", c.ConflistName, "file name in --conf-dir (\"\" = the base name of --conflist-src)")
	fs.StringVar(&c.CNIVersion, "cni-version", c.CNIVersion, "cniVersion to install the conflist with (\"\" = as shipped, 1.0.0; 1.1.0 only for runtimes that speak it, e.g. containerd 2.x)")
	fs.BoolVar(&c.RequireChained, "require-chained", c.RequireChained, "refuse to install when a chained plugin is missing from --bin-dir")
	fs.BoolVar(&c.BinaryOnly, "binary-only", c.BinaryOnly, "install the plugin binary only; the agent installs the conflist once it can serve pods")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json")
}

// Validate checks the settings and names the bad one.
func (c Config) Validate() error {
	var errs []error
	bad := func(flag, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: --%s: %s", ErrInvalidConfig, flag, fmt.Sprintf(format, args...)))
	}
	for _, p := range []struct{ flag, path string }{
		{"plugin-src", c.PluginSource}, {"bin-dir", c.BinDir}, {"conflist-src", c.ConflistSource}, {"conf-dir", c.ConfDir},
	} {
		if !filepath.IsAbs(p.path) {
			bad(p.flag, "%q is not an absolute path", p.path)
		}
	}
	if !validFileName(c.PluginName) {
		bad("plugin-name", "%q is not a plain file name", c.PluginName)
	}
	name := c.conflistName()
	if !validFileName(name) {
		bad("conflist-name", "%q is not a plain file name", name)
	} else if !slices.Contains(configExtensions, filepath.Ext(name)) {
		bad("conflist-name", "%q must end in .conflist (or .conf/.json) for the runtime to read it", name)
	}
	if c.CNIVersion != "" && !slices.Contains(cni.SupportedVersions().SupportedVersions(), c.CNIVersion) {
		bad("cni-version", "%q is not one the plugin speaks (%s)", c.CNIVersion, strings.Join(cni.SupportedVersions().SupportedVersions(), ", "))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("log-format", "%q is neither text nor json", c.LogFormat)
	}
	return errors.Join(errs...)
}

func (c Config) conflistName() string {
	if c.ConflistName != "" {
		return c.ConflistName
	}
	return filepath.Base(c.ConflistSource)
}

func validFileName(s string) bool {
	return s != "" && s != "." && s != ".." && !strings.ContainsAny(s, "/\x00") && !strings.HasPrefix(s, ".")
}

// Result says what Install did.
type Result struct {
	// PluginPath and ConflistPath are the installed files; the Changed flags say whether their
	// content or mode was (re)written or was already right.
	PluginPath      string
	PluginChanged   bool
	ConflistPath    string
	ConflistChanged bool
	// AgentSocket is the socket the installed config sends the plugin to.
	AgentSocket string
	// Chained are the other plugin types of the chain; MissingChained those BinDir lacks.
	Chained        []string
	MissingChained []string
	// Shadowing are config files in ConfDir that sort before ours: a runtime that takes the first
	// config (containerd, CRI-O) uses them instead of ipledger.
	Shadowing []string
}

// Install validates the conflist, installs the plugin binary, then the conflist. It changes
// nothing when validation fails or a required chained plugin is missing.
func Install(cfg Config) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var res Result
	for _, dir := range []string{cfg.BinDir, cfg.ConfDir} {
		if fi, err := os.Stat(dir); err != nil {
			return res, fmt.Errorf("cniinstall: target directory: %w", err)
		} else if !fi.IsDir() {
			return res, fmt.Errorf("cniinstall: target %s is not a directory", dir)
		}
	}
	conflist, err := os.ReadFile(cfg.ConflistSource)
	if err != nil {
		return res, fmt.Errorf("cniinstall: read conflist: %w", err)
	}
	plugin, err := os.ReadFile(cfg.PluginSource)
	if err != nil {
		return res, fmt.Errorf("cniinstall: read plugin: %w", err)
	}
	if len(plugin) == 0 {
		return res, fmt.Errorf("cniinstall: plugin %s is empty", cfg.PluginSource)
	}
	if cfg.CNIVersion != "" {
		if conflist, err = withCNIVersion(conflist, cfg.CNIVersion); err != nil {
			return res, fmt.Errorf("%s: %w", cfg.ConflistSource, err)
		}
	}
	if res.AgentSocket, res.Chained, err = checkConflist(conflist, cfg.PluginName); err != nil {
		return res, fmt.Errorf("%s: %w", cfg.ConflistSource, err)
	}
	for _, t := range res.Chained {
		fi, err := os.Stat(filepath.Join(cfg.BinDir, t))
		if err != nil || !fi.Mode().IsRegular() {
			res.MissingChained = append(res.MissingChained, t)
		}
	}
	if len(res.MissingChained) > 0 {
		if cfg.RequireChained {
			return res, fmt.Errorf("%w: the config chains %s but %s has no such plugin; install the CNI reference plugins there (EKS AMIs ship them)",
				ErrMissingPlugin, strings.Join(res.MissingChained, ", "), cfg.BinDir)
		}
		log.Warn("chained plugins missing; pods will fail to start until they are installed", "missing", res.MissingChained, "bin_dir", cfg.BinDir)
	}

	res.PluginPath = filepath.Join(cfg.BinDir, cfg.PluginName)
	if res.PluginChanged, err = writeAtomic(res.PluginPath, plugin, 0o755); err != nil {
		return res, err
	}
	if cfg.BinaryOnly {
		log.Info("CNI plugin binary installed; the agent installs the conflist when it can serve pods", "plugin", res.PluginPath, "plugin_changed", res.PluginChanged)
		return res, nil
	}
	name := cfg.conflistName()
	res.ConflistPath = filepath.Join(cfg.ConfDir, name)
	if res.ConflistChanged, err = writeAtomic(res.ConflistPath, conflist, 0o644); err != nil {
		return res, err
	}
	if res.Shadowing, err = shadowing(cfg.ConfDir, name); err != nil {
		return res, err
	}
	log.Info("CNI plugin installed", "plugin", res.PluginPath, "plugin_changed", res.PluginChanged,
		"conflist", res.ConflistPath, "conflist_changed", res.ConflistChanged, "agent_socket", res.AgentSocket)
	for _, f := range res.Shadowing {
		log.Warn("another CNI config sorts before ours; the runtime uses it instead of ipledger until it is removed",
			"file", filepath.Join(cfg.ConfDir, f), "ours", name)
	}
	return res, nil
}

// withCNIVersion returns the list with its top-level "cniVersion" set to v (the runtime hands
// every plugin of the chain that version, and expects results in it).
func withCNIVersion(b []byte, v string) ([]byte, error) {
	var list map[string]json.RawMessage
	if err := json.Unmarshal(b, &list); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConflist, err)
	}
	list["cniVersion"], _ = json.Marshal(v)
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConflist, err)
	}
	return append(out, '\n'), nil
}

// checkConflist parses the list as the runtime does (libcni), requires our plugin first (it
// creates the interface; chained plugins only act on its result) and validates its entry with
// the plugin's own parser. It returns the agent socket and the other plugin types.
func checkConflist(b []byte, pluginName string) (socket string, chained []string, err error) {
	list, err := libcni.NetworkConfFromBytes(b)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrInvalidConflist, err)
	}
	if len(list.Plugins) == 0 || list.Plugins[0].Network == nil || list.Plugins[0].Network.Type != pluginName {
		return "", nil, fmt.Errorf("%w: the first plugin must be of type %q", ErrInvalidConflist, pluginName)
	}
	// The runtime hands each plugin its entry with the list's name and cniVersion added.
	var entry map[string]any
	if err := json.Unmarshal(list.Plugins[0].Bytes, &entry); err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrInvalidConflist, err)
	}
	entry["name"], entry["cniVersion"] = list.Name, list.CNIVersion
	stdin, err := json.Marshal(entry)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrInvalidConflist, err)
	}
	conf, err := cni.ParseConfig(stdin)
	if err != nil {
		return "", nil, fmt.Errorf("%w: %v", ErrInvalidConflist, err)
	}
	for _, p := range list.Plugins[1:] {
		t := p.Network.Type
		if t == pluginName {
			return "", nil, fmt.Errorf("%w: plugin %q appears twice", ErrInvalidConflist, pluginName)
		}
		if !validFileName(t) {
			return "", nil, fmt.Errorf("%w: plugin type %q is not a file name", ErrInvalidConflist, t)
		}
		if !slices.Contains(chained, t) {
			chained = append(chained, t)
		}
	}
	return conf.AgentSocket, chained, nil
}

// writeAtomic makes path hold data with mode. It returns false without writing when it already
// does, and otherwise replaces it by renaming a synced temporary file of the same directory over it
// (a running binary keeps its old inode; readers see the old or the new file, never a mix).
func writeAtomic(path string, data []byte, mode os.FileMode) (bool, error) {
	wrote, err := atomicfile.WriteIfChanged(path, data, mode)
	if err != nil {
		return false, fmt.Errorf("cniinstall: install %s: %w", path, err)
	}
	return wrote, nil
}

// shadowing lists the config files of dir that a runtime reads before name.
func shadowing(dir, name string) ([]string, error) {
	files, err := libcni.ConfFiles(dir, configExtensions)
	if err != nil {
		return nil, fmt.Errorf("cniinstall: list %s: %w", dir, err)
	}
	var out []string
	for _, f := range files {
		if b := filepath.Base(f); b < name {
			out = append(out, b)
		}
	}
	slices.Sort(out)
	return out, nil
}
