package agent

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"
	"sigs.k8s.io/yaml"

	"github.com/ipledger/ipledger/agent/cniserver"
	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/pool"
	"github.com/ipledger/ipledger/agent/serverconn"
)

// Defaults that are not another package's.
const (
	DefaultCheckpointPath   = "/var/lib/ipledger/agent-checkpoint.json"
	DefaultMetricsListen    = "127.0.0.1:61680"
	DefaultDiscoveryTimeout = 2 * time.Minute
	// DefaultRestoreWait bounds how long new pods wait, after the agent starts, for the first
	// registration to say which addresses running pods hold (see Config.RestoreWait).
	DefaultRestoreWait = 5 * time.Second
	// MaxRestoreWait is the longest --restore-wait.
	MaxRestoreWait = 5 * time.Minute
	// EnvPrefix prefixes the environment variable of every flag: --add-wait is
	// IPLEDGER_AGENT_ADD_WAIT.
	EnvPrefix = "IPLEDGER_AGENT_"
	// NodeNameEnv is the downward-API variable the DaemonSet sets; --node-name and
	// IPLEDGER_AGENT_NODE_NAME take precedence.
	NodeNameEnv = "NODE_NAME"
)

// Config is the agent's configuration. Fields with a flag are listed with it; the others are
// for programs that embed agents (the benchmark, the demo, tests).
type Config struct {
	// NodeName is the Kubernetes node name (--node-name; default: IMDS local-hostname).
	NodeName string
	// Servers are the allocator replicas' gRPC addresses (--server, comma-separated).
	Servers []string
	// IMDSEndpoint is the instance metadata endpoint (--imds-endpoint; "" = the real IMDS).
	IMDSEndpoint string
	// DiscoveryTimeout bounds the time spent retrying IMDS at start (--discovery-timeout).
	DiscoveryTimeout time.Duration
	// SocketPath of the CNI service (--socket) and the group owning it (--socket-group).
	SocketPath  string
	SocketGroup string
	// CheckpointPath is the pool's checkpoint file (--checkpoint).
	CheckpointPath string
	// MetricsListen is the HTTP address for /metrics, /healthz and /v1/pool (--metrics-listen;
	// "" turns the HTTP endpoint off).
	MetricsListen string
	// AddWait is how long a CNI Add waits for an address when the pool is empty (--add-wait).
	AddWait time.Duration
	// Cooldown before an address given back is handed out again (--cooldown).
	Cooldown time.Duration
	// RestoreWait: after the agent starts, new pods get no address until the first
	// registration has restored the pods the server knows and the checkpoint lacks, or this
	// long has passed (--restore-wait; 0: they do not wait).
	RestoreWait time.Duration
	// UsageInterval and UsageDebounce pace usage reports (--usage-interval, --usage-debounce).
	UsageInterval time.Duration
	UsageDebounce time.Duration
	// ManageNetworking: configure secondary ENIs and pod rules (--manage-networking).
	ManageNetworking bool
	// NetNS is the network namespace to configure (--netns; "" = the agent's own).
	NetNS string
	// SimulateENILinks creates stand-in links for simulated ENIs (--simulate-eni-links; needs
	// --netns, never the root namespace).
	SimulateENILinks bool
	// ENIMTU is the MTU of secondary ENIs (--eni-mtu; 0 = 9001).
	ENIMTU int
	// Labels are the node's labels, used by the server to pick its policy (--node-labels k=v,...).
	Labels map[string]string
	// LogLevel (debug, info, warn, error) and LogFormat (text, json) of NewLogger (--log-level,
	// --log-format).
	LogLevel  string
	LogFormat string
	// AgentVersion is reported at registration.
	AgentVersion string

	// TLSCertFile, TLSKeyFile and TLSCAFile turn on mutual TLS to the allocator
	// (--tls-cert-file, --tls-key-file, --tls-ca-file): this node's certificate (URI SAN
	// ipledger://node/<node-name>), its key, and the CA of the server's certificate. All three
	// or none; they are read again when they change on disk.
	TLSCertFile string
	TLSKeyFile  string
	TLSCAFile   string

	// Attestation and the conflist (config_attest.go).
	AttestConfig

	// Credentials for the allocator connection (nil: mutual TLS from the TLS files, plaintext
	// without them). Programs that embed agents may set them directly.
	Credentials credentials.TransportCredentials
	// Logger (nil: discard).
	Logger *slog.Logger
	// Now is the pool's clock (nil: time.Now).
	Now func() time.Time
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		DiscoveryTimeout: DefaultDiscoveryTimeout,
		SocketPath:       cniserver.DefaultSocketPath,
		CheckpointPath:   DefaultCheckpointPath,
		MetricsListen:    DefaultMetricsListen,
		AddWait:          cniserver.DefaultAddWait,
		Cooldown:         pool.DefaultCooldown,
		RestoreWait:      DefaultRestoreWait,
		UsageInterval:    serverconn.DefaultUsageInterval,
		UsageDebounce:    serverconn.DefaultUsageDebounce,
		ManageNetworking: true,
		LogLevel:         "info",
		LogFormat:        "text",
		AgentVersion:     "dev",
		AttestConfig:     DefaultAttestConfig(),
	}
}

// dns1123Subdomain is a Kubernetes node name.
var dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// ValidNodeName reports whether name can be a Kubernetes node name.
func ValidNodeName(name string) error {
	if len(name) == 0 || len(name) > 253 || !dns1123Subdomain.MatchString(name) {
		return fmt.Errorf("%q is not a DNS-1123 subdomain (lower case letters, digits, '-' and '.', at most 253)", name)
	}
	return nil
}

// Validate checks every setting and names the bad one.
func (c Config) Validate() error {
	var errs []error
	bad := func(flag string, format string, args ...any) {
		errs = append(errs, fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, args...)))
	}
	if c.NodeName != "" {
		if err := ValidNodeName(c.NodeName); err != nil {
			bad("node-name", "%v", err)
		}
	}
	if len(c.Servers) == 0 {
		bad("server", "at least one allocator address is needed")
	}
	for _, s := range c.Servers {
		if err := validHostPort(s); err != nil {
			bad("server", "%q: %v", s, err)
		}
	}
	if c.DiscoveryTimeout <= 0 {
		bad("discovery-timeout", "must be positive, not %v", c.DiscoveryTimeout)
	}
	if err := cniserver.ValidateSocketPath(c.SocketPath); err != nil {
		bad("socket", "%v", err)
	}
	if c.SocketGroup != "" {
		if _, err := cniserver.LookupGroup(c.SocketGroup); err != nil {
			bad("socket-group", "%v", err)
		}
	}
	for _, f := range []string{c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile} {
		if f != "" && !filepath.IsAbs(f) {
			bad("tls-cert-file", "%q: TLS files need absolute paths", f)
		}
	}
	switch {
	case (c.TLSCertFile == "") != (c.TLSKeyFile == ""):
		bad("tls-cert-file", "--tls-cert-file and --tls-key-file go together (with --tls-ca-file); with --tls-ca-file alone the agent attests")
	case c.TLSCertFile != "" && c.TLSCAFile == "":
		bad("tls-ca-file", "mutual TLS needs --tls-ca-file to verify the server")
	}
	c.validateAttest(bad)
	if c.CheckpointPath == "" || !filepath.IsAbs(c.CheckpointPath) || strings.HasSuffix(c.CheckpointPath, "/") {
		bad("checkpoint", "%q is not an absolute file path", c.CheckpointPath)
	}
	if c.MetricsListen != "" {
		if err := validHostPort(c.MetricsListen); err != nil {
			bad("metrics-listen", "%q: %v", c.MetricsListen, err)
		}
	}
	if c.AddWait <= 0 || c.AddWait > cniserver.MaxWait {
		bad("add-wait", "%v is outside (0, %v]", c.AddWait, cniserver.MaxWait)
	}
	if c.Cooldown <= 0 {
		bad("cooldown", "must be positive, not %v", c.Cooldown)
	}
	if c.RestoreWait < 0 || c.RestoreWait > MaxRestoreWait {
		bad("restore-wait", "%v is outside [0, %v]", c.RestoreWait, MaxRestoreWait)
	}
	if c.UsageInterval <= 0 {
		bad("usage-interval", "must be positive, not %v", c.UsageInterval)
	}
	if c.UsageDebounce <= 0 || c.UsageDebounce >= c.UsageInterval {
		bad("usage-debounce", "%v must be positive and shorter than --usage-interval %v", c.UsageDebounce, c.UsageInterval)
	}
	if c.NetNS != "" && !filepath.IsAbs(c.NetNS) {
		bad("netns", "%q is not an absolute path", c.NetNS)
	}
	if c.SimulateENILinks && c.NetNS == "" {
		bad("simulate-eni-links", "needs --netns: simulated ENI links are never made in the agent's own namespace")
	}
	if c.SimulateENILinks && !c.ManageNetworking {
		bad("simulate-eni-links", "has no effect without --manage-networking")
	}
	if c.ENIMTU != 0 && (c.ENIMTU < netconf.MinMTU || c.ENIMTU > netconf.MaxMTU) {
		bad("eni-mtu", "%d is outside %d..%d", c.ENIMTU, netconf.MinMTU, netconf.MaxMTU)
	}
	for k := range c.Labels {
		if k == "" || strings.ContainsAny(k, "=, ") {
			bad("node-labels", "bad label key %q", k)
		}
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		bad("log-level", "%v", err)
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		bad("log-format", "%q is neither text nor json", c.LogFormat)
	}
	return errors.Join(errs...)
}

func validHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return err
	}
	if host == "" && port == "" {
		return errors.New("empty")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q is not a number 0..65535", port)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("%q is not one of debug, info, warn, error", s)
	}
	return l, nil
}

// NewLogger returns the logger LogLevel and LogFormat describe, writing to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	level, err := parseLevel(c.LogLevel)
	if err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// listValue is a comma-separated list flag; Set replaces the list.
type listValue struct{ p *[]string }

func (v listValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

func (v listValue) Set(s string) error {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	*v.p = out
	return nil
}

// labelsValue is a k=v,k=v flag; Set replaces the map.
type labelsValue struct{ p *map[string]string }

func (v labelsValue) String() string {
	if v.p == nil || len(*v.p) == 0 {
		return ""
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(*v.p)) {
		parts = append(parts, k+"="+(*v.p)[k])
	}
	return strings.Join(parts, ",")
}

func (v labelsValue) Set(s string) error {
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
	*v.p = out
	return nil
}

// RegisterFlags binds the flags to c's fields.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "Kubernetes node name (env NODE_NAME; default: the instance's local hostname from IMDS)")
	fs.Var(listValue{&c.Servers}, "server", "allocator gRPC addresses, comma-separated (host:port,...)")
	fs.StringVar(&c.IMDSEndpoint, "imds-endpoint", c.IMDSEndpoint, "instance metadata endpoint (\"\" = the instance's IMDS)")
	fs.DurationVar(&c.DiscoveryTimeout, "discovery-timeout", c.DiscoveryTimeout, "how long to retry IMDS at start")
	fs.StringVar(&c.SocketPath, "socket", c.SocketPath, "unix socket of the CNI service")
	fs.StringVar(&c.SocketGroup, "socket-group", c.SocketGroup, "group (name or gid) owning the socket (\"\" = the agent's)")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", c.TLSCertFile, "this node's client certificate for mutual TLS to the allocator (URI SAN ipledger://node/<node-name>)")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", c.TLSKeyFile, "private key of --tls-cert-file")
	fs.StringVar(&c.TLSCAFile, "tls-ca-file", c.TLSCAFile, "CA bundle that verifies the allocator's certificate (URI SAN ipledger://server)")
	fs.StringVar(&c.CheckpointPath, "checkpoint", c.CheckpointPath, "checkpoint file of the pool and its assignments")
	fs.StringVar(&c.MetricsListen, "metrics-listen", c.MetricsListen, "HTTP address for /metrics, /healthz and /v1/pool (\"\" = off)")
	fs.DurationVar(&c.AddWait, "add-wait", c.AddWait, "how long a CNI ADD waits for an address when the pool is empty")
	fs.DurationVar(&c.Cooldown, "cooldown", c.Cooldown, "cooldown of an address given back before it is handed out again")
	fs.DurationVar(&c.RestoreWait, "restore-wait", c.RestoreWait, "after a start, how long new pods wait for the first registration to say which addresses running pods hold (0 = no wait)")
	fs.DurationVar(&c.UsageInterval, "usage-interval", c.UsageInterval, "longest interval between usage reports to the allocator")
	fs.DurationVar(&c.UsageDebounce, "usage-debounce", c.UsageDebounce, "delay of a usage report after a change")
	fs.BoolVar(&c.ManageNetworking, "manage-networking", c.ManageNetworking, "configure secondary ENIs, their route tables and pod rules")
	fs.StringVar(&c.NetNS, "netns", c.NetNS, "network namespace to configure (\"\" = the agent's own)")
	fs.BoolVar(&c.SimulateENILinks, "simulate-eni-links", c.SimulateENILinks, "create stand-in links for simulated ENIs (needs --netns)")
	fs.IntVar(&c.ENIMTU, "eni-mtu", c.ENIMTU, "MTU of secondary ENIs (0 = 9001)")
	fs.Var(labelsValue{&c.Labels}, "node-labels", "node labels for the allocator's policy selection, k=v,k=v")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json")
	c.registerAttestFlags(fs)
}

// EnvName is the environment variable of a flag.
func EnvName(flagName string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// LoadConfig builds the configuration from the defaults, then the file named by --config (YAML
// or JSON, keys are flag names), then IPLEDGER_AGENT_<FLAG> environment variables (and
// NODE_NAME), then the command-line flags, and validates it. flag.ErrHelp when -h was asked.
func LoadConfig(args []string, lookupEnv func(string) (string, bool), usage io.Writer) (Config, error) {
	// First pass: which flags the command line sets, and the config file.
	scratch := DefaultConfig()
	fs := flag.NewFlagSet("ipledger-agent", flag.ContinueOnError)
	fs.SetOutput(usage)
	scratch.RegisterFlags(fs)
	var file string
	fs.StringVar(&file, "config", "", "optional config file (YAML or JSON; keys are flag names). Every flag can also be\n"+
		"set as IPLEDGER_AGENT_<FLAG> (e.g. IPLEDGER_AGENT_ADD_WAIT); flags override the environment, which overrides the file")
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	explicit := map[string]string{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = f.Value.String() })

	// Second pass: layer the sources onto the defaults.
	cfg := DefaultConfig()
	layer := flag.NewFlagSet("ipledger-agent", flag.ContinueOnError)
	layer.SetOutput(io.Discard)
	cfg.RegisterFlags(layer)
	if file != "" {
		settings, err := readConfigFile(file)
		if err != nil {
			return Config{}, err
		}
		for _, k := range slices.Sorted(maps.Keys(settings)) {
			if layer.Lookup(k) == nil {
				return Config{}, fmt.Errorf("config file %s: unknown setting %q", file, k)
			}
			if err := layer.Set(k, settings[k]); err != nil {
				return Config{}, fmt.Errorf("config file %s: %s: %q: %w", file, k, settings[k], err)
			}
		}
	}
	if lookupEnv != nil {
		if v, ok := lookupEnv(NodeNameEnv); ok && v != "" {
			cfg.NodeName = v
		}
		var envErr error
		layer.VisitAll(func(f *flag.Flag) {
			if v, ok := lookupEnv(EnvName(f.Name)); ok && envErr == nil {
				if err := layer.Set(f.Name, v); err != nil {
					envErr = fmt.Errorf("%s=%q: %w", EnvName(f.Name), v, err)
				}
			}
		})
		if envErr != nil {
			return Config{}, envErr
		}
	}
	for _, k := range slices.Sorted(maps.Keys(explicit)) {
		if k == "config" {
			continue
		}
		if err := layer.Set(k, explicit[k]); err != nil {
			return Config{}, fmt.Errorf("--%s: %w", k, err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// readConfigFile reads a YAML or JSON object of flag names to values.
func readConfigFile(path string) (map[string]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, fmt.Errorf("config file %s: want an object of settings: %w", path, err)
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		s, err := settingString(v)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %s: %w", path, k, err)
		}
		out[k] = s
	}
	return out, nil
}

func settingString(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
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
