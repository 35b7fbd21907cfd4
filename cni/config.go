package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// Defaults of the network config.
const (
	DefaultAgentSocket = "/run/ipledger/agent.sock"
	DefaultMTU         = 9001
	DefaultVethPrefix  = "eni"
	DefaultAddTimeout  = 12 * time.Second
	DefaultLogLevel    = "info"

	MinMTU = 576
	MaxMTU = 9001
	// MinAddTimeout and MaxAddTimeout bound addTimeout: below a second the agent has no time to
	// answer; above five minutes kubelet has long given up.
	MinAddTimeout = time.Second
	MaxAddTimeout = 5 * time.Minute
)

// NetConf is one ipledger entry of a conflist, as the runtime passes it on stdin.
type NetConf struct {
	types.PluginConf

	// AgentSocket is the absolute path of the agent's CNIService unix socket.
	AgentSocket string `json:"agentSocket"`
	// MTU of the pod's interface and its host veth (576..9001).
	MTU int `json:"mtu"`
	// VethPrefix starts every host veth name (1..4 lowercase letters).
	VethPrefix string `json:"vethPrefix"`
	// AddTimeout bounds every call to the agent; ADD waits for an address at most this long.
	AddTimeout time.Duration `json:"-"`
	// LogFile, when set, receives the plugin's log as JSON lines (appended). Never stdout.
	LogFile string `json:"logFile"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"logLevel"`

	// RawAddTimeout is addTimeout as written ("12s").
	RawAddTimeout string `json:"addTimeout"`
}

// pluginKeys are the keys of our own settings.
var pluginKeys = []string{"agentSocket", "mtu", "vethPrefix", "addTimeout", "logFile", "logLevel"}

// standardKeys are the keys the CNI spec and libcni put in a plugin's config.
var standardKeys = []string{
	"cniVersion", "name", "type", "args", "ipMasq", "ipam", "dns",
	"runtimeConfig", "capabilities", "prevResult",
}

var vethPrefixRE = regexp.MustCompile(`^[a-z]{1,4}$`)

func invalidConfig(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "ipledger: invalid network config: "+fmt.Sprintf(format, args...), "")
}

// ParseConfig decodes and validates one plugin config. Unknown top-level keys are an error
// (CNI code 7, "invalid network config", naming the key), except the standard CNI keys and the
// runtime's "cni.dev/..." keys; JSON that does not decode is CNI code 6.
func ParseConfig(stdin []byte) (*NetConf, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "ipledger: network config is not a JSON object", err.Error())
	}
	var unknown []string
	for k := range raw {
		if !slices.Contains(pluginKeys, k) && !slices.Contains(standardKeys, k) && !strings.HasPrefix(k, "cni.dev/") {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, invalidConfig("unknown field %q (ipledger understands %s)", unknown[0], strings.Join(pluginKeys, ", "))
	}
	conf := &NetConf{
		AgentSocket: DefaultAgentSocket,
		MTU:         DefaultMTU,
		VethPrefix:  DefaultVethPrefix,
		LogLevel:    DefaultLogLevel,
	}
	if err := json.Unmarshal(stdin, conf); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, invalidConfig("field %q: %s is not a valid %s", te.Field, te.Value, te.Type)
		}
		return nil, invalidConfig("%v", err)
	}
	if err := conf.Validate(); err != nil {
		return nil, err
	}
	return conf, nil
}

// Validate checks the settings and fills AddTimeout from RawAddTimeout.
func (c *NetConf) Validate() error {
	switch {
	case c.Name == "":
		return invalidConfig("missing network name")
	case !filepath.IsAbs(c.AgentSocket):
		return invalidConfig("agentSocket %q is not an absolute path", c.AgentSocket)
	case c.MTU < MinMTU || c.MTU > MaxMTU:
		return invalidConfig("mtu %d is outside %d..%d", c.MTU, MinMTU, MaxMTU)
	case !vethPrefixRE.MatchString(c.VethPrefix):
		return invalidConfig("vethPrefix %q must be 1 to 4 lowercase letters", c.VethPrefix)
	case c.LogFile != "" && !filepath.IsAbs(c.LogFile):
		return invalidConfig("logFile %q is not an absolute path", c.LogFile)
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	c.AddTimeout = DefaultAddTimeout
	if c.RawAddTimeout != "" {
		d, err := time.ParseDuration(c.RawAddTimeout)
		if err != nil {
			return invalidConfig("addTimeout %q is not a duration like \"12s\"", c.RawAddTimeout)
		}
		if d < MinAddTimeout || d > MaxAddTimeout {
			return invalidConfig("addTimeout %s is outside %s..%s", d, MinAddTimeout, MaxAddTimeout)
		}
		c.AddTimeout = d
	}
	return nil
}

// agentWait is how long the agent may wait for an address: addTimeout less a margin for the
// answer to come back, so a timeout reaches the runtime with the agent's reason.
func (c *NetConf) agentWait() time.Duration {
	if c.AddTimeout > 4*time.Second {
		return c.AddTimeout - 2*time.Second
	}
	return c.AddTimeout / 2
}

func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, invalidConfig("logLevel %q is not one of debug, info, warn, error", s)
}

// openLog returns the logger the config asks for and a function that closes its file. Without a
// logFile everything is discarded: stdout carries the CNI result and stderr is not kept by
// every runtime.
func (c *NetConf) openLog() (*slog.Logger, func()) {
	level, _ := parseLevel(c.LogLevel)
	if c.LogFile == "" {
		return slog.New(slog.NewTextHandler(io.Discard, nil)), func() {}
	}
	if err := os.MkdirAll(filepath.Dir(c.LogFile), 0o750); err != nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil)), func() {}
	}
	f, err := os.OpenFile(c.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o640)
	if err != nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil)), func() {}
	}
	return slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: level})), func() { _ = f.Close() }
}
