package agent

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/credentials"

	"github.com/ipledger/ipledger/agent/cniserver"
	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/pool"
	"github.com/ipledger/ipledger/agent/serverconn"
	"github.com/ipledger/ipledger/internal/conf"
	"github.com/ipledger/ipledger/internal/version"
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
	// Source NAT of pods' traffic leaving the VPC (config_snat.go).
	SNATConfig

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
		AgentVersion:     version.Get().Version,
		AttestConfig:     DefaultAttestConfig(),
		SNATConfig:       SNATConfig{VethPrefix: DefaultVethPrefix},
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
	c.SNATConfig.validate(bad)
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
	if _, err := conf.ParseLevel(c.LogLevel); err != nil {
		bad("log-level", "%v", err)
	}
	if err := conf.CheckFormat(c.LogFormat); err != nil {
		bad("log-format", "%v", err)
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

// NewLogger returns the logger LogLevel and LogFormat describe, writing to w.
func (c Config) NewLogger(w io.Writer) *slog.Logger {
	return conf.NewLogger(w, c.LogLevel, c.LogFormat)
}

// RegisterFlags binds the flags to c's fields.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "Kubernetes node name (env NODE_NAME; default: the instance's local hostname from IMDS)")
	fs.Var(conf.ListValue{P: &c.Servers}, "server", "allocator gRPC addresses, comma-separated (host:port,...)")
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
	fs.Var(conf.LabelsValue{P: &c.Labels}, "node-labels", "node labels for the allocator's policy selection, k=v,k=v")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "text or json")
	c.registerAttestFlags(fs)
	c.SNATConfig.registerFlags(fs)
}

// EnvName is the environment variable of a flag.
func EnvName(flagName string) string { return conf.EnvName(EnvPrefix, flagName) }

// LoadConfig builds the configuration from the defaults, then the file named by --config (YAML
// or JSON, keys are flag names), then IPLEDGER_AGENT_<FLAG> environment variables (and
// NODE_NAME), then the command-line flags, and validates it (see package conf). flag.ErrHelp
// when -h was asked.
func LoadConfig(args []string, lookupEnv func(string) (string, bool), usage io.Writer) (Config, error) {
	cfg := DefaultConfig()
	fs := flag.NewFlagSet("ipledger-agent", flag.ContinueOnError)
	fs.SetOutput(usage)
	cfg.RegisterFlags(fs)
	_, err := conf.Load(fs, args, conf.Options{
		ConfigFlag: "config",
		ConfigUsage: "optional config file (YAML or JSON; keys are flag names). Every flag can also be\n" +
			"set as IPLEDGER_AGENT_<FLAG> (e.g. IPLEDGER_AGENT_ADD_WAIT); flags override the environment, which overrides the file",
		EnvName:     EnvName,
		EnvAliases:  map[string]string{NodeNameEnv: "node-name"},
		Lookup:      lookupEnv,
		VersionFlag: "version",
	})
	if err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}
