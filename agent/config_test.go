package agent

import (
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	c := DefaultConfig()
	c.Servers = []string{"127.0.0.1:7000"}
	return c
}

func TestValidate(t *testing.T) {
	if err := validConfig().Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	tests := []struct {
		edit func(*Config)
		flag string
	}{
		{func(c *Config) { c.NodeName = "Node_A" }, "node-name"},
		{func(c *Config) { c.NodeName = strings.Repeat("a", 254) }, "node-name"},
		{func(c *Config) { c.Servers = nil }, "server"},
		{func(c *Config) { c.Servers = []string{"no-port"} }, "server"},
		{func(c *Config) { c.Servers = []string{"h:port"} }, "server"},
		{func(c *Config) { c.DiscoveryTimeout = 0 }, "discovery-timeout"},
		{func(c *Config) { c.SocketPath = "agent.sock" }, "socket"},
		{func(c *Config) { c.SocketPath = "/" + strings.Repeat("x", 200) }, "socket"},
		{func(c *Config) { c.SocketGroup = "no-such-group-ipledger" }, "socket-group"},
		{func(c *Config) { c.CheckpointPath = "" }, "checkpoint"},
		{func(c *Config) { c.CheckpointPath = "rel/cp.json" }, "checkpoint"},
		{func(c *Config) { c.MetricsListen = "61680" }, "metrics-listen"},
		{func(c *Config) { c.AddWait = 0 }, "add-wait"},
		{func(c *Config) { c.AddWait = time.Hour }, "add-wait"},
		{func(c *Config) { c.Cooldown = -time.Second }, "cooldown"},
		{func(c *Config) { c.RestoreWait = -time.Second }, "restore-wait"},
		{func(c *Config) { c.RestoreWait = time.Hour }, "restore-wait"},
		{func(c *Config) { c.UsageInterval = 0 }, "usage-interval"},
		{func(c *Config) { c.UsageDebounce = time.Minute }, "usage-debounce"},
		{func(c *Config) { c.NetNS = "ns/node" }, "netns"},
		{func(c *Config) { c.SimulateENILinks = true }, "simulate-eni-links"},
		{func(c *Config) { c.ENIMTU = 100 }, "eni-mtu"},
		{func(c *Config) { c.Labels = map[string]string{"a=b": "c"} }, "node-labels"},
		{func(c *Config) { c.LogLevel = "loud" }, "log-level"},
		{func(c *Config) { c.LogFormat = "xml" }, "log-format"},
		{func(c *Config) { c.TLSCertFile = "/etc/ipledger/pki/node.crt" }, "tls-cert-file"},
		{func(c *Config) {
			c.TLSCertFile, c.TLSKeyFile, c.TLSCAFile = "node.crt", "/etc/ipledger/pki/node.key", "/etc/ipledger/pki/ca.crt"
		}, "tls-cert-file"},
	}
	for _, tc := range tests {
		t.Run(tc.flag, func(t *testing.T) {
			c := validConfig()
			tc.edit(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), "--"+tc.flag+":") {
				t.Fatalf("Validate: %v, want an error naming --%s", err, tc.flag)
			}
			if _, err := New(c); err == nil {
				t.Fatal("New accepted an invalid config")
			}
		})
	}
	// Several bad settings are all named.
	c := validConfig()
	c.AddWait, c.Cooldown = 0, 0
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--add-wait") || !strings.Contains(err.Error(), "--cooldown") {
		t.Fatalf("Validate: %v", err)
	}
}

func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

func TestLoadConfigLayers(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "agent.yaml")
	if err := os.WriteFile(file, []byte(`
server: [10.0.0.1:7000, 10.0.0.2:7000]
add-wait: 5s
cooldown: 45s
manage-networking: false
eni-mtu: 1500
node-labels:
  pool: blue
  zone: a
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantWait  time.Duration
		wantNode  string
		wantSrv   []string
		wantCool  time.Duration
		wantNetMg bool
	}{
		{"defaults", []string{"--server", "127.0.0.1:1"}, nil, 10 * time.Second, "", []string{"127.0.0.1:1"}, 30 * time.Second, true},
		{"file", []string{"--config", file}, nil, 5 * time.Second, "", []string{"10.0.0.1:7000", "10.0.0.2:7000"}, 45 * time.Second, false},
		{"env over file", []string{"--config", file},
			map[string]string{"IPLEDGER_AGENT_ADD_WAIT": "7s", "NODE_NAME": "node-x", "IPLEDGER_AGENT_SERVER": "s:1"},
			7 * time.Second, "node-x", []string{"s:1"}, 45 * time.Second, false},
		{"flags over env", []string{"--config", file, "--add-wait=9s", "--node-name", "node-z", "--manage-networking"},
			map[string]string{"IPLEDGER_AGENT_ADD_WAIT": "7s", "NODE_NAME": "node-x", "IPLEDGER_AGENT_NODE_NAME": "node-y"},
			9 * time.Second, "node-z", []string{"10.0.0.1:7000", "10.0.0.2:7000"}, 45 * time.Second, true},
		{"agent variable over downward API", []string{"--server", "a:1"},
			map[string]string{"NODE_NAME": "node-x", "IPLEDGER_AGENT_NODE_NAME": "node-y"},
			10 * time.Second, "node-y", []string{"a:1"}, 30 * time.Second, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadConfig(tc.args, env(tc.env), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.AddWait != tc.wantWait || c.NodeName != tc.wantNode || !slices.Equal(c.Servers, tc.wantSrv) ||
				c.Cooldown != tc.wantCool || c.ManageNetworking != tc.wantNetMg {
				t.Fatalf("config %+v", c)
			}
		})
	}
	c, err := LoadConfig([]string{"--config", file}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.ENIMTU != 1500 || c.Labels["pool"] != "blue" || c.Labels["zone"] != "a" || len(c.Labels) != 2 {
		t.Fatalf("file settings: mtu %d labels %v", c.ENIMTU, c.Labels)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "unknown.yaml")
	_ = os.WriteFile(unknown, []byte("server: a:1\nwarm-target: 3\n"), 0o600)
	badValue := filepath.Join(dir, "bad.yaml")
	_ = os.WriteFile(badValue, []byte("server: a:1\nadd-wait: soon\n"), 0o600)
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown flag", []string{"--warm-target=3"}, nil, "warm-target"},
		{"stray argument", []string{"--server", "a:1", "extra"}, nil, "unexpected arguments"},
		{"unknown file setting", []string{"--config", unknown}, nil, `unknown setting "warm-target"`},
		{"bad file value", []string{"--config", badValue}, nil, "add-wait"},
		{"missing file", []string{"--config", filepath.Join(dir, "nope.yaml")}, nil, "nope.yaml"},
		{"bad env value", []string{"--server", "a:1"}, map[string]string{"IPLEDGER_AGENT_COOLDOWN": "long"}, "IPLEDGER_AGENT_COOLDOWN"},
		{"invalid result", []string{"--server", "a:1", "--add-wait", "0s"}, nil, "--add-wait"},
		{"bad labels", []string{"--server", "a:1", "--node-labels", "novalue"}, nil, "node-labels"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LoadConfig(tc.args, env(tc.env), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("LoadConfig: %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := LoadConfig([]string{"-h"}, nil, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
}

func TestEnvName(t *testing.T) {
	if got := EnvName("add-wait"); got != "IPLEDGER_AGENT_ADD_WAIT" {
		t.Fatal(got)
	}
}
