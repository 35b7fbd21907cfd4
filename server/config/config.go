// Package config owns ipledger-server's configuration: the defaults, the flags, the matching
// IPLEDGER_* environment variables, the optional YAML/JSON file, and validation that names the
// bad setting. Precedence, lowest first: defaults, file, environment, flags; the loading itself
// is internal/conf's, shared with the agent. It never starts anything.
package config

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ipledger/ipledger/internal/conf"
)

// Config is everything ipledger-server can be told.
type Config struct {
	// Dev runs embedded etcd and the in-process EC2 simulator: no setup at all.
	Dev bool `json:"dev"`
	// DataDir holds embedded etcd's data (and, with --dev, the generated certificates).
	DataDir string `json:"data_dir"`
	// ClusterName scopes etcd keys (/ipledger/<name>/) and the ipledger.io/cluster ENI tag.
	ClusterName string `json:"cluster_name"`

	// EtcdEndpoints selects an external etcd cluster; empty means embedded etcd in DataDir.
	EtcdEndpoints []string `json:"etcd_endpoints"`
	EtcdCAFile    string   `json:"etcd_ca_file"`
	EtcdCertFile  string   `json:"etcd_cert_file"`
	EtcdKeyFile   string   `json:"etcd_key_file"`
	// SessionTTL is the leader's etcd session lease: a dead leader is replaced after at most this.
	SessionTTL Duration `json:"session_ttl"`
	// RebuildFromEC2 lets a leader that finds etcd empty, while EC2 holds ENIs tagged for the
	// cluster, rebuild the ledger from EC2 and the agents instead of refusing to lead.
	RebuildFromEC2 bool `json:"rebuild_from_ec2"`

	// Region and EC2Endpoint select EC2. EC2Endpoint "" uses AWS's endpoint for the region.
	Region      string `json:"region"`
	EC2Endpoint string `json:"ec2_endpoint"`
	// EC2Buckets overrides EC2's default token buckets for accounts with raised limits
	// (file only).
	EC2Buckets []BucketOverride `json:"ec2_buckets"`
	// SecurityGroups for ENIs ipledger creates; empty copies the node's primary ENI's groups.
	SecurityGroups []string `json:"security_groups"`
	// Subnets the cluster uses before any node registers there (budgets, pre-warm by AZ,
	// CanFit). A node's own subnet is always used. With --dev: every subnet of the simulated VPC.
	Subnets []string `json:"subnets"`

	// GRPCListen serves NodeService and AdminService; HTTPListen serves /metrics, /healthz,
	// /readyz and the dashboard.
	GRPCListen string `json:"grpc_listen"`
	HTTPListen string `json:"http_listen"`
	// AdvertiseAddress is the gRPC address other replicas send agents to when this replica
	// leads. Default: GRPCListen when it names a host, else $POD_IP with GRPCListen's port.
	AdvertiseAddress string `json:"advertise_address"`

	// TLSCertFile, TLSKeyFile and TLSClientCAFile turn on mutual TLS for gRPC: the server's
	// certificate (it must name ipledger://server) and key, and the CA that signs agents' and
	// admins' client certificates. All three or none; the files are read again when they change.
	TLSCertFile     string `json:"tls_cert_file"`
	TLSKeyFile      string `json:"tls_key_file"`
	TLSClientCAFile string `json:"tls_client_ca_file"`
	// Insecure allows plaintext gRPC on a listen address that is not loopback. Without TLS files
	// and without --dev, gRPC is plaintext and must be loopback unless Insecure is set. With --dev
	// and without TLS files, Insecure is what turns the generated certificates off.
	Insecure bool `json:"insecure"`
	// NodeRateLimit and NodeRateBurst are each node's token buckets (per second, and the burst):
	// one for NodeService calls, one for Sync streams and their messages.
	NodeRateLimit float64 `json:"node_rate_limit"`
	NodeRateBurst int     `json:"node_rate_burst"`

	// PolicyFile holds node group policies (YAML or JSON list of NodePolicy objects); applied by
	// the leader when it takes over.
	PolicyFile string `json:"policy_file"`

	// ReleaseDelay is how long surplus must last before it is proposed for release (a policy
	// may override it).
	ReleaseDelay Duration `json:"release_delay"`
	// ReleaseCooldown is how long an address unassigned from EC2 waits before another node gets it.
	ReleaseCooldown Duration `json:"release_cooldown"`
	// ProposalTimeout cancels a release proposal the agent has not answered.
	ProposalTimeout Duration `json:"proposal_timeout"`
	// ReconcileInterval is how often the leader compares its state with EC2.
	ReconcileInterval Duration `json:"reconcile_interval"`
	// InstanceCheckInterval is how often the leader looks for terminated instances.
	InstanceCheckInterval Duration `json:"instance_check_interval"`
	// DriftGrace is how long a difference between etcd and EC2 must persist before the leader
	// repairs it: adopts or drops addresses, deletes ENIs tagged for the cluster that nobody owns.
	DriftGrace Duration `json:"drift_grace"`

	// TimeScale speeds the EC2 simulator and the limiter's pacing alike (dev and tests only).
	TimeScale float64 `json:"time_scale"`
	// SimScenario, SimSeed and SimThrottle configure the in-process simulator of --dev.
	SimScenario string `json:"sim_scenario"`
	SimSeed     int64  `json:"sim_seed"`
	SimThrottle bool   `json:"sim_throttle"`

	LogLevel  string `json:"log_level"`
	LogFormat string `json:"log_format"`

	// Kubeconfig selects the Kubernetes API the server reads (pods bound to nodes, Nodes,
	// Karpenter NodeClaims) and writes Events and a Node condition to: "" uses the in-cluster
	// configuration when the server runs in a pod (and none otherwise), "none" turns the client
	// off, anything else is a kubeconfig file. Without it ipledger runs on agents' reports alone.
	Kubeconfig string `json:"kubeconfig"`
	// KubeLookahead counts pods bound to a node that hold no address yet as the node's demand
	// (with a Kubernetes client).
	KubeLookahead bool `json:"kube_lookahead"`
	// KubeStalePodGrace is how long a pod deleted in the API may keep the address its agent
	// reports (its CNI DEL never came) before the agent is asked to give it back.
	KubeStalePodGrace Duration `json:"kube_stale_pod_grace"`
	// PendingDiscoveryInterval is how often the leader asks EC2 (one filtered describe, at the
	// limiter's lowest priority) for pending instances with the cluster's instance tag
	// (--attest-instance-tag's) and registers them before their agents; 0 turns it off.
	PendingDiscoveryInterval Duration `json:"pending_discovery_interval"`

	// Attestation and the dashboard's listener (attest.go).
	Attest
}

// BucketOverride replaces one of EC2's token buckets.
type BucketOverride struct {
	Name            string   `json:"name"`
	Capacity        int      `json:"capacity"`
	RefillPerSecond float64  `json:"refill_per_second"`
	Actions         []string `json:"actions,omitempty"`
}

// Duration is a time.Duration that reads "30s" from files and flags.
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

// UnmarshalJSON reads "30s" (or a number of seconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q (want e.g. \"30s\")", s)
	}
	*d = Duration(v)
	return nil
}

// Defaults of the per-node rate limit: far above what a healthy agent sends (a debounced usage
// report at most every 200 ms, one registration, one urgent request at a time).
const (
	DefaultNodeRateLimit = 20
	DefaultNodeRateBurst = 50
)

// Default returns the production defaults.
func Default() Config {
	return Config{
		DataDir:                  defaultDataDir(),
		SessionTTL:               Duration(5 * time.Second),
		GRPCListen:               "127.0.0.1:7400",
		HTTPListen:               "127.0.0.1:7401",
		NodeRateLimit:            DefaultNodeRateLimit,
		NodeRateBurst:            DefaultNodeRateBurst,
		ReleaseDelay:             Duration(60 * time.Second),
		ReleaseCooldown:          Duration(30 * time.Second),
		ProposalTimeout:          Duration(60 * time.Second),
		ReconcileInterval:        Duration(5 * time.Minute),
		InstanceCheckInterval:    Duration(60 * time.Second),
		DriftGrace:               Duration(time.Minute),
		TimeScale:                1,
		SimSeed:                  1,
		SimThrottle:              true,
		LogLevel:                 "info",
		LogFormat:                "text",
		KubeLookahead:            true,
		KubeStalePodGrace:        Duration(2 * time.Minute),
		PendingDiscoveryInterval: Duration(5 * time.Second),
		Attest:                   DefaultAttest(),
	}
}

func defaultDataDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "ipledger")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "ipledger")
	}
	return filepath.Join(os.TempDir(), "ipledger")
}

// setting binds one flag (and its environment variable) to a Config field.
type setting struct {
	name  string
	usage string
	bind  func(fs *flag.FlagSet, c *Config)
}

func settings() []setting {
	str := func(name, usage string, field func(*Config) *string) setting {
		return setting{name, usage, func(fs *flag.FlagSet, c *Config) { fs.StringVar(field(c), name, *field(c), usage) }}
	}
	boolean := func(name, usage string, field func(*Config) *bool) setting {
		return setting{name, usage, func(fs *flag.FlagSet, c *Config) { fs.BoolVar(field(c), name, *field(c), usage) }}
	}
	dur := func(name, usage string, field func(*Config) *Duration) setting {
		return setting{name, usage, func(fs *flag.FlagSet, c *Config) {
			fs.DurationVar((*time.Duration)(field(c)), name, field(c).D(), usage)
		}}
	}
	list := func(name, usage string, field func(*Config) *[]string) setting {
		return setting{name, usage, func(fs *flag.FlagSet, c *Config) { fs.Var(conf.ListValue{P: field(c)}, name, usage) }}
	}
	return []setting{
		boolean("dev", "run embedded etcd and the in-process EC2 simulator (no setup at all)", func(c *Config) *bool { return &c.Dev }),
		boolean("rebuild-from-ec2", "when etcd holds nothing for the cluster but EC2 holds its ENIs (etcd lost), rebuild the ledger from EC2 and the agents instead of refusing to lead", func(c *Config) *bool { return &c.RebuildFromEC2 }),
		str("data-dir", "directory for embedded etcd data and dev certificates", func(c *Config) *string { return &c.DataDir }),
		str("cluster-name", "cluster name: etcd key prefix /ipledger/<name>/ and the ipledger.io/cluster ENI tag", func(c *Config) *string { return &c.ClusterName }),
		list("etcd-endpoints", "comma-separated external etcd endpoints (empty: embedded etcd)", func(c *Config) *[]string { return &c.EtcdEndpoints }),
		str("etcd-ca-file", "CA bundle for external etcd TLS", func(c *Config) *string { return &c.EtcdCAFile }),
		str("etcd-cert-file", "client certificate for external etcd", func(c *Config) *string { return &c.EtcdCertFile }),
		str("etcd-key-file", "client key for external etcd", func(c *Config) *string { return &c.EtcdKeyFile }),
		dur("session-ttl", "leader session lease TTL (a dead leader is replaced after at most this)", func(c *Config) *Duration { return &c.SessionTTL }),
		str("region", "AWS region of EC2 and of the instances that attest: required (ipledger-server does not read AWS_REGION or ~/.aws/config for it); --dev defaults it to eu-west-1, the simulator's", func(c *Config) *string { return &c.Region }),
		str("ec2-endpoint", "EC2 endpoint URL (empty: AWS's endpoint for the region)", func(c *Config) *string { return &c.EC2Endpoint }),
		list("subnets", "comma-separated subnet ids the cluster uses before any node registers there", func(c *Config) *[]string { return &c.Subnets }),
		list("security-groups", "comma-separated security groups for new ENIs (empty: copy the node's primary ENI)", func(c *Config) *[]string { return &c.SecurityGroups }),
		str("grpc-listen", "address for NodeService and AdminService", func(c *Config) *string { return &c.GRPCListen }),
		str("http-listen", "address for /metrics, /healthz, /readyz and the dashboard", func(c *Config) *string { return &c.HTTPListen }),
		str("advertise-address", "gRPC address agents are sent to when this replica leads", func(c *Config) *string { return &c.AdvertiseAddress }),
		str("tls-cert-file", "server certificate (PEM; must carry the URI SAN ipledger://server) for mutual TLS on gRPC", func(c *Config) *string { return &c.TLSCertFile }),
		str("tls-key-file", "private key of --tls-cert-file", func(c *Config) *string { return &c.TLSKeyFile }),
		str("tls-client-ca-file", "CA bundle that verifies agents' and admins' client certificates", func(c *Config) *string { return &c.TLSClientCAFile }),
		boolean("insecure", "allow plaintext gRPC on a non-loopback address (no TLS files), or turn off --dev's certificates", func(c *Config) *bool { return &c.Insecure }),
		{"node-rate-limit", "requests per second each node may send (NodeService calls; Sync messages, separately)", func(fs *flag.FlagSet, c *Config) {
			fs.Float64Var(&c.NodeRateLimit, "node-rate-limit", c.NodeRateLimit, "requests per second each node may send (NodeService calls; Sync messages, separately)")
		}},
		{"node-rate-burst", "burst of each node's request rate limit", func(fs *flag.FlagSet, c *Config) {
			fs.IntVar(&c.NodeRateBurst, "node-rate-burst", c.NodeRateBurst, "burst of each node's request rate limit")
		}},
		str("policy-file", "YAML or JSON file of node group policies, applied when this replica takes over", func(c *Config) *string { return &c.PolicyFile }),
		dur("release-delay", "how long surplus lasts before it is proposed for release", func(c *Config) *Duration { return &c.ReleaseDelay }),
		dur("release-cooldown", "how long an unassigned address waits before another node gets it", func(c *Config) *Duration { return &c.ReleaseCooldown }),
		dur("proposal-timeout", "cancel a release proposal the agent has not answered after this", func(c *Config) *Duration { return &c.ProposalTimeout }),
		dur("reconcile-interval", "how often the leader compares its state with EC2", func(c *Config) *Duration { return &c.ReconcileInterval }),
		dur("instance-check-interval", "how often the leader looks for terminated instances", func(c *Config) *Duration { return &c.InstanceCheckInterval }),
		dur("drift-grace", "how long a difference between etcd and EC2 must persist before it is repaired", func(c *Config) *Duration { return &c.DriftGrace }),
		{"time-scale", "speed factor for the EC2 simulator and limiter pacing (dev and tests only)", func(fs *flag.FlagSet, c *Config) {
			fs.Float64Var(&c.TimeScale, "time-scale", c.TimeScale, "speed factor for the EC2 simulator and limiter pacing (dev and tests only)")
		}},
		str("sim-scenario", "scenario file for the in-process EC2 simulator (--dev)", func(c *Config) *string { return &c.SimScenario }),
		{"sim-seed", "random seed of the in-process EC2 simulator (--dev)", func(fs *flag.FlagSet, c *Config) {
			fs.Int64Var(&c.SimSeed, "sim-seed", c.SimSeed, "random seed of the in-process EC2 simulator (--dev)")
		}},
		boolean("sim-throttle", "EC2 throttling in the in-process simulator (--dev)", func(c *Config) *bool { return &c.SimThrottle }),
		str("log-level", "debug, info, warn or error", func(c *Config) *string { return &c.LogLevel }),
		str("log-format", "text or json", func(c *Config) *string { return &c.LogFormat }),
		list("attest-account-ids", "AWS accounts whose instances may attest (empty: any account EC2 describes with the server's credentials)", func(c *Config) *[]string { return &c.AttestAccountIDs }),
		list("attest-vpc-ids", "VPCs whose instances may attest (empty: any)", func(c *Config) *[]string { return &c.AttestVPCIDs }),
		str("attest-instance-tag", "tag an attesting instance must carry, key or key=value (default kubernetes.io/cluster/<cluster-name>; none: no check)", func(c *Config) *string { return &c.AttestInstanceTag }),
		dur("attest-max-instance-age", "longest time from an instance's launch to its first attestation (0: no limit)", func(c *Config) *Duration { return &c.AttestMaxInstanceAge }),
		str("attest-node-name", "node name of attested instances: private-dns or instance-id", func(c *Config) *string { return &c.AttestNodeName }),
		str("attest-trust-file", "PEM file of further certificates that may sign instance identity documents, for any region", func(c *Config) *string { return &c.AttestTrustFile }),
		str("issuer-cert-file", "issuing CA certificate for node certificates (turns attestation on)", func(c *Config) *string { return &c.IssuerCertFile }),
		str("issuer-key-file", "private key of --issuer-cert-file", func(c *Config) *string { return &c.IssuerKeyFile }),
		dur("node-cert-lifetime", "lifetime of the node certificates attestation issues", func(c *Config) *Duration { return &c.NodeCertLifetime }),
		str("kubeconfig", "kubeconfig of the Kubernetes API to read pods, Nodes and NodeClaims from (empty: in-cluster when in a pod; none: no client)", func(c *Config) *string { return &c.Kubeconfig }),
		dur("kube-stale-pod-grace", "how long a pod deleted in Kubernetes may keep the address its agent reports before the agent is asked to give it back (its CNI DEL never came)", func(c *Config) *Duration { return &c.KubeStalePodGrace }),
		dur("pending-discovery-interval", "how often to look in EC2 for pending instances with the cluster tag and register them before their agents (0: never)", func(c *Config) *Duration { return &c.PendingDiscoveryInterval }),
		boolean("kube-lookahead", "count pods bound to a node that hold no address yet as its demand (with a Kubernetes client)", func(c *Config) *bool { return &c.KubeLookahead }),
		str("dashboard-token-file", "file holding a bearer token that opens the dashboard to clients not on loopback", func(c *Config) *string { return &c.DashboardTokenFile }),
	}
}

// EnvName is the environment variable that sets a flag: IPLEDGER_ + upper-case name with
// dashes as underscores ("etcd-endpoints" -> IPLEDGER_ETCD_ENDPOINTS).
func EnvName(flagName string) string { return conf.EnvName("IPLEDGER_", flagName) }

// configUsage is the help of --config.
const configUsage = "YAML or JSON configuration file (env IPLEDGER_CONFIG)"

// sources are where the server's settings come from (see package conf): the file's keys are
// the flag names with underscores (ec2_buckets exists only there), and an empty variable counts
// as unset.
func sources(getenv func(string) string) conf.Options {
	return conf.Options{
		ConfigFlag:     "config",
		ConfigUsage:    configUsage,
		ConfigEnv:      "IPLEDGER_CONFIG",
		EnvName:        EnvName,
		IgnoreEmptyEnv: true,
		Lookup:         func(k string) (string, bool) { v := getenv(k); return v, v != "" },
		FileKey: func(key string) string {
			if strings.Contains(key, "-") {
				return "" // flag spelling: not a file key
			}
			return strings.ReplaceAll(key, "_", "-")
		},
		FileOnly:    []string{"ec2_buckets"},
		VersionFlag: "version",
	}
}

// Load builds the configuration from defaults, the file named by --config (or
// IPLEDGER_CONFIG), the environment and the flags in args, then validates it.
func Load(name string, args []string, getenv func(string) string) (Config, error) {
	cfg := Default()
	l, err := conf.Load(newFlagSet(name, &cfg), args, sources(getenv))
	if err != nil {
		return Config{}, err
	}
	if err := l.Decode("ec2_buckets", &cfg.EC2Buckets); err != nil {
		return Config{}, err
	}
	cfg.applyDevDefaults(l)
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// FlagSet returns the flags (for usage output).
func FlagSet(name string) *flag.FlagSet {
	c := Default()
	fs := newFlagSet(name, &c)
	fs.String("config", "", configUsage)
	fs.Bool("version", false, conf.VersionUsage)
	return fs
}

func newFlagSet(name string, c *Config) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	for _, s := range settings() {
		s.bind(fs, c)
	}
	return fs
}

// applyDevDefaults fills what --dev implies and the user did not set.
func (c *Config) applyDevDefaults(l *conf.Loaded) {
	if !c.Dev {
		return
	}
	if c.ClusterName == "" {
		c.ClusterName = "dev"
	}
	if c.Region == "" && l.Origin("region") < conf.FromEnv {
		c.Region = "eu-west-1"
	}
}

var clusterNameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Validate checks every setting and names the first bad one.
func (c Config) Validate() error {
	var errs []error
	bad := func(setting, format string, args ...any) {
		errs = append(errs, fmt.Errorf("invalid setting %s: %s", setting, fmt.Sprintf(format, args...)))
	}
	if !clusterNameRE.MatchString(c.ClusterName) {
		bad("cluster-name", "%q must be a DNS-1123 label (lower-case letters, digits, '-', at most 63)", c.ClusterName)
	}
	if c.Dev && len(c.EtcdEndpoints) > 0 && c.EC2Endpoint == "" {
		bad("etcd-endpoints", "--dev runs embedded etcd (in --data-dir) with an in-process EC2 simulator whose account is new at every start; "+
			"the state in the etcd of --etcd-endpoints would outlive the account it describes. Leave out --etcd-endpoints for --dev, "+
			"or run without --dev (--region, and --ec2-endpoint for a simulator of your own)")
	}
	if len(c.EtcdEndpoints) == 0 && c.DataDir == "" {
		bad("data-dir", "required for embedded etcd (no --etcd-endpoints given)")
	}
	for _, e := range c.EtcdEndpoints {
		if e == "" || strings.ContainsAny(e, " \t") {
			bad("etcd-endpoints", "empty or malformed endpoint %q", e)
		}
	}
	if (c.EtcdCertFile == "") != (c.EtcdKeyFile == "") {
		bad("etcd-cert-file", "etcd-cert-file and etcd-key-file go together")
	}
	if !c.Dev && c.Region == "" {
		bad("region", "required outside --dev (or set AWS_REGION and pass it as IPLEDGER_REGION)")
	}
	if c.EC2Endpoint != "" && !strings.HasPrefix(c.EC2Endpoint, "http://") && !strings.HasPrefix(c.EC2Endpoint, "https://") {
		bad("ec2-endpoint", "%q must be an http:// or https:// URL", c.EC2Endpoint)
	}
	for _, sn := range c.Subnets {
		if !strings.HasPrefix(sn, "subnet-") {
			bad("subnets", "%q is not a subnet id (subnet-...)", sn)
		}
	}
	for _, sg := range c.SecurityGroups {
		if !strings.HasPrefix(sg, "sg-") {
			bad("security-groups", "%q is not a security group id (sg-...)", sg)
		}
	}
	for i, b := range c.EC2Buckets {
		if b.Name == "" || b.Capacity <= 0 || b.RefillPerSecond <= 0 {
			bad("ec2_buckets", "entry %d needs a name, capacity > 0 and refill_per_second > 0", i)
		}
	}
	if err := checkListen(c.GRPCListen); err != nil {
		bad("grpc-listen", "%v", err)
	}
	if err := checkListen(c.HTTPListen); err != nil {
		bad("http-listen", "%v", err)
	} else if samePort(c.GRPCListen, c.HTTPListen) {
		bad("http-listen", "%q uses the port of --grpc-listen %q: gRPC and HTTP need a port each (defaults 7400 and 7401)", c.HTTPListen, c.GRPCListen)
	}
	if c.AdvertiseAddress != "" {
		if _, _, err := net.SplitHostPort(c.AdvertiseAddress); err != nil {
			bad("advertise-address", "%q is not host:port", c.AdvertiseAddress)
		}
	}
	tlsFiles := map[string]string{"tls-cert-file": c.TLSCertFile, "tls-key-file": c.TLSKeyFile, "tls-client-ca-file": c.TLSClientCAFile}
	var given, missing []string
	for _, name := range []string{"tls-cert-file", "tls-key-file", "tls-client-ca-file"} {
		if tlsFiles[name] != "" {
			given = append(given, "--"+name)
		} else {
			missing = append(missing, "--"+name)
		}
	}
	switch {
	case len(given) > 0 && len(missing) > 0:
		bad(strings.TrimPrefix(missing[0], "--"), "mutual TLS needs --tls-cert-file, --tls-key-file and --tls-client-ca-file together; %s given, %s missing",
			strings.Join(given, ", "), strings.Join(missing, ", "))
	case len(given) > 0 && c.Insecure:
		bad("insecure", "--insecure and the TLS files (%s) exclude each other", strings.Join(given, ", "))
	case c.Transport() == TransportPlaintext && !c.Insecure && checkListen(c.GRPCListen) == nil && !isLoopback(c.GRPCListen):
		bad("grpc-listen", "%q is not a loopback address and gRPC has no TLS: give --tls-cert-file, --tls-key-file and --tls-client-ca-file "+
			"(or --dev for generated certificates), or --insecure to serve plaintext anyway", c.GRPCListen)
	}
	if c.NodeRateLimit <= 0 || math.IsInf(c.NodeRateLimit, 0) || math.IsNaN(c.NodeRateLimit) {
		bad("node-rate-limit", "must be a positive number of requests per second, got %g", c.NodeRateLimit)
	}
	if c.NodeRateBurst < 1 {
		bad("node-rate-burst", "must be at least 1, got %d", c.NodeRateBurst)
	}
	positive := map[string]Duration{
		"session-ttl": c.SessionTTL, "release-cooldown": c.ReleaseCooldown, "proposal-timeout": c.ProposalTimeout,
		"reconcile-interval": c.ReconcileInterval, "instance-check-interval": c.InstanceCheckInterval, "drift-grace": c.DriftGrace, "kube-stale-pod-grace": c.KubeStalePodGrace,
	}
	for name, d := range positive {
		if d <= 0 {
			bad(name, "must be positive, got %s", d.D())
		}
	}
	if c.SessionTTL.D()%time.Second != 0 {
		bad("session-ttl", "must be whole seconds (etcd lease granularity), got %s", c.SessionTTL.D())
	}
	if c.ReleaseDelay < 0 {
		bad("release-delay", "must not be negative")
	}
	if c.PendingDiscoveryInterval < 0 {
		bad("pending-discovery-interval", "must not be negative (0 turns discovery off), got %s", c.PendingDiscoveryInterval.D())
	}
	if c.TimeScale < 1 || c.TimeScale > 1000 {
		bad("time-scale", "must be between 1 and 1000, got %g", c.TimeScale)
	}
	if c.TimeScale != 1 && !c.Dev && c.EC2Endpoint == "" {
		bad("time-scale", "only makes sense against the EC2 simulator (--dev or --ec2-endpoint)")
	}
	if _, err := conf.ParseLevel(c.LogLevel); err != nil {
		bad("log-level", "%v", err)
	}
	if err := conf.CheckFormat(c.LogFormat); err != nil {
		bad("log-format", "%v", err)
	}
	c.validateAttest(bad)
	return errors.Join(errs...)
}

// Transport is how the gRPC listener is secured.
type Transport int

// Transports.
const (
	// TransportPlaintext: no TLS (loopback, or --insecure).
	TransportPlaintext Transport = iota
	// TransportTLSFiles: mutual TLS with --tls-cert-file, --tls-key-file, --tls-client-ca-file.
	TransportTLSFiles
	// TransportDevCerts: mutual TLS with certificates --dev generates in <data-dir>/certs.
	TransportDevCerts
)

func (t Transport) String() string {
	switch t {
	case TransportTLSFiles:
		return "mutual TLS (files)"
	case TransportDevCerts:
		return "mutual TLS (--dev certificates)"
	}
	return "plaintext"
}

// Transport says how gRPC is secured: TLS files when given, else the --dev certificates unless
// --insecure, else plaintext.
func (c Config) Transport() Transport {
	switch {
	case c.TLSCertFile != "" || c.TLSKeyFile != "" || c.TLSClientCAFile != "":
		return TransportTLSFiles
	case c.Dev && !c.Insecure:
		return TransportDevCerts
	}
	return TransportPlaintext
}

// DevCertsDir is where --dev keeps its CA and certificates.
func (c Config) DevCertsDir() string { return filepath.Join(c.DataDir, "certs") }

// isLoopback reports whether a listen address binds loopback only.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func checkListen(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			return fmt.Errorf("%q: host must be an IP address or localhost", addr)
		}
	}
	if port == "" {
		return fmt.Errorf("%q: port missing", addr)
	}
	return nil
}

// samePort reports whether two listen addresses would take the same port: the same port
// number (not 0, which picks a free one) on the same host, or on hosts of which one is every
// address ("", 0.0.0.0, ::).
func samePort(a, b string) bool {
	ha, pa, err1 := net.SplitHostPort(a)
	hb, pb, err2 := net.SplitHostPort(b)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	everyAddr := func(h string) bool {
		ip, err := netip.ParseAddr(h)
		return h == "" || err == nil && ip.IsUnspecified()
	}
	return ha == hb || everyAddr(ha) || everyAddr(hb) || (ha == "localhost") != (hb == "localhost") && isLoopback(a) && isLoopback(b)
}

// Advertise returns the address other replicas send agents to.
func (c Config) Advertise(boundGRPC string, getenv func(string) string) string {
	if c.AdvertiseAddress != "" {
		return c.AdvertiseAddress
	}
	host, port, err := net.SplitHostPort(boundGRPC)
	if err != nil {
		return boundGRPC
	}
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() || host == "" {
		if podIP := getenv("POD_IP"); podIP != "" {
			return net.JoinHostPort(podIP, port)
		}
	}
	return net.JoinHostPort(host, port)
}

// DevConfig is a --dev configuration for tests and the demo: embedded etcd in dataDir, the
// in-process EC2 simulator, and listeners on ephemeral loopback ports.
func DevConfig(dataDir string) Config {
	c := Default()
	c.Dev = true
	c.DataDir = dataDir
	c.ClusterName = "dev"
	c.Region = "eu-west-1"
	c.GRPCListen = "127.0.0.1:0"
	c.HTTPListen = "127.0.0.1:0"
	// Plain loopback gRPC for in-process tests; tests of TLS turn this off (then --dev creates
	// certificates) or set the TLS files.
	c.Insecure = true
	return c
}
