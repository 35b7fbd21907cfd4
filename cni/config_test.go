package cni_test

import (
	"crypto/sha1" //nolint:gosec // the documented naming scheme
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/ipledger/ipledger/cni"
)

func TestParseConfig(t *testing.T) {
	conf, err := cni.ParseConfig([]byte(`{"cniVersion":"1.1.0","name":"n","type":"ipledger"}`))
	if err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	if conf.AgentSocket != cni.DefaultAgentSocket || conf.MTU != 9001 || conf.VethPrefix != "eni" ||
		conf.AddTimeout != 12*time.Second || conf.LogLevel != "info" || conf.LogFile != "" {
		t.Errorf("defaults = %+v", conf)
	}
	conf, err = cni.ParseConfig([]byte(`{"cniVersion":"1.0.0","name":"n","type":"ipledger","agentSocket":"/x/a.sock",
		"mtu":1500,"vethPrefix":"ipl","addTimeout":"3s","logFile":"/var/log/x.log","logLevel":"debug",
		"ipam":{},"dns":{"nameservers":["10.0.0.10"]},"runtimeConfig":{"portMappings":[]},"capabilities":{"portMappings":true},
		"args":{"cni":{}},"ipMasq":false,"prevResult":{"cniVersion":"1.0.0"},"cni.dev/valid-attachments":[],"cni.dev/attachments":[]}`))
	if err != nil {
		t.Fatalf("full config: %v", err)
	}
	if conf.AgentSocket != "/x/a.sock" || conf.MTU != 1500 || conf.VethPrefix != "ipl" || conf.AddTimeout != 3*time.Second ||
		conf.LogFile != "/var/log/x.log" || conf.LogLevel != "debug" || len(conf.DNS.Nameservers) != 1 {
		t.Errorf("parsed = %+v", conf)
	}

	tests := []struct {
		name, json string
		code       uint
		msg        string
	}{
		{"not json", `{"name":`, types.ErrDecodingFailure, "not a JSON object"},
		{"unknown field", `{"name":"n","agentSocet":"/a"}`, types.ErrInvalidNetworkConfig, `unknown field "agentSocet"`},
		{"missing name", `{"type":"ipledger"}`, types.ErrInvalidNetworkConfig, "network name"},
		{"relative socket", `{"name":"n","agentSocket":"a.sock"}`, types.ErrInvalidNetworkConfig, "agentSocket"},
		{"mtu low", `{"name":"n","mtu":575}`, types.ErrInvalidNetworkConfig, "mtu 575"},
		{"mtu high", `{"name":"n","mtu":9002}`, types.ErrInvalidNetworkConfig, "mtu 9002"},
		{"mtu string", `{"name":"n","mtu":"1500"}`, types.ErrInvalidNetworkConfig, `field "mtu"`},
		{"prefix empty", `{"name":"n","vethPrefix":""}`, types.ErrInvalidNetworkConfig, "vethPrefix"},
		{"prefix long", `{"name":"n","vethPrefix":"abcde"}`, types.ErrInvalidNetworkConfig, "vethPrefix"},
		{"prefix digits", `{"name":"n","vethPrefix":"ab1"}`, types.ErrInvalidNetworkConfig, "vethPrefix"},
		{"timeout junk", `{"name":"n","addTimeout":"12"}`, types.ErrInvalidNetworkConfig, "addTimeout"},
		{"timeout short", `{"name":"n","addTimeout":"500ms"}`, types.ErrInvalidNetworkConfig, "addTimeout"},
		{"timeout long", `{"name":"n","addTimeout":"1h"}`, types.ErrInvalidNetworkConfig, "addTimeout"},
		{"log level", `{"name":"n","logLevel":"loud"}`, types.ErrInvalidNetworkConfig, "logLevel"},
		{"relative log", `{"name":"n","logFile":"plugin.log"}`, types.ErrInvalidNetworkConfig, "logFile"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cni.ParseConfig([]byte(tt.json))
			var e *types.Error
			if !errors.As(err, &e) || e.Code != tt.code || !strings.Contains(e.Msg, tt.msg) {
				t.Fatalf("ParseConfig(%s) = %v, want code %d mentioning %q", tt.json, err, tt.code, tt.msg)
			}
		})
	}
}

// The sample conflist in deploy/ is valid for libcni and for the plugin's parser.
func TestSampleConflist(t *testing.T) {
	raw, err := os.ReadFile("../deploy/cni/10-ipledger.conflist")
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.NetworkConfFromBytes(raw)
	if err != nil {
		t.Fatalf("libcni rejects the sample conflist: %v", err)
	}
	if list.CNIVersion != "1.0.0" || len(list.Plugins) == 0 || list.Plugins[0].Network.Type != "ipledger" {
		t.Fatalf("sample conflist: version %s, plugins %d; want 1.0.0 (what containerd 1.6 and 1.7 read) with ipledger first", list.CNIVersion, len(list.Plugins))
	}
	// The runtime injects the list's name and version into each plugin's config.
	plugin, err := libcni.InjectConf(list.Plugins[0], map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
	if err != nil {
		t.Fatal(err)
	}
	conf, err := cni.ParseConfig(plugin.Bytes)
	if err != nil {
		t.Fatalf("the plugin rejects the sample conflist's entry: %v", err)
	}
	var want map[string]any
	if err := json.Unmarshal(list.Plugins[0].Bytes, &want); err != nil {
		t.Fatal(err)
	}
	if conf.AgentSocket != want["agentSocket"] || conf.MTU != 9001 || conf.VethPrefix != want["vethPrefix"] ||
		conf.AddTimeout != 12*time.Second || conf.Name != "ipledger" {
		t.Errorf("parsed sample = %+v", conf)
	}
}

func TestHostVethName(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range []struct{ prefix, cid, ifname string }{
		{"eni", "abc", "eth0"}, {"eni", "abc", "eth1"}, {"eni", "abd", "eth0"}, {"abcd", strings.Repeat("f", 64), "eth0"},
	} {
		name := cni.HostVethName(c.prefix, c.cid, c.ifname)
		if len(name) != len(c.prefix)+11 || len(name) > 15 || !strings.HasPrefix(name, c.prefix) {
			t.Errorf("HostVethName(%q, %q, %q) = %q", c.prefix, c.cid, c.ifname, name)
		}
		if seen[name] {
			t.Errorf("HostVethName collision: %q", name)
		}
		seen[name] = true
	}
	// The name is sha1(containerID + "." + ifname), as documented: stable across releases.
	if got, want := cni.HostVethName("eni", "abc", "eth0"), "eni"+sha1Prefix("abc.eth0"); got != want {
		t.Errorf("HostVethName = %q, want %q", got, want)
	}
}

func sha1Prefix(s string) string {
	sum := sha1.Sum([]byte(s)) //nolint:gosec // the documented naming scheme
	return hex.EncodeToString(sum[:])[:11]
}
