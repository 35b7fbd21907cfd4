package cni

import (
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
)

// FuzzParseConfig feeds the plugin's stdin parser arbitrary bytes, as a broken or hostile
// runtime could: it never panics, refuses with CNI code 6 (does not decode) or 7 (invalid
// config) only, and what it accepts is valid (every setting within its bounds). A previous
// result in an accepted config is decoded as CHECK does, without panicking either.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"cniVersion":"1.1.0","name":"ipledger","type":"ipledger"}`,
		`{"cniVersion":"1.1.0","name":"ipledger","type":"ipledger","agentSocket":"/run/ipledger/agent.sock","mtu":9001,"vethPrefix":"eni","addTimeout":"12s","logFile":"/var/log/ipledger/plugin.log","logLevel":"info"}`,
		`{"cniVersion":"1.0.0","name":"n","type":"ipledger","mtu":576,"addTimeout":"5m","runtimeConfig":{"portMappings":[]},"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}`,
		`{"cniVersion":"1.1.0","name":"n","type":"ipledger","prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"192.168.1.5/32","interface":0}]}}`,
		`{"cniVersion":"0.4.0","name":"n","type":"ipledger","prevResult":{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.0.0.1/32"}]}}`,
		`{"name":"n","mtu":"9001"}`,
		`{"name":"n","mtu":100000}`,
		`{"name":"n","vethPrefix":"ENI"}`,
		`{"name":"n","addTimeout":"-1s"}`,
		`{"name":"n","agentSocket":"relative.sock"}`,
		`{"name":"n","unknownKey":1}`,
		`[1,2,3]`, `null`, `{`, ``, "\x00\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, stdin []byte) {
		conf, err := ParseConfig(stdin)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || (te.Code != types.ErrDecodingFailure && te.Code != types.ErrInvalidNetworkConfig) {
				t.Fatalf("ParseConfig(%q): %v, want CNI code 6 or 7", stdin, err)
			}
			if te.Msg == "" {
				t.Fatalf("ParseConfig(%q): an error without a message", stdin)
			}
			return
		}
		if err := conf.Validate(); err != nil {
			t.Fatalf("accepted config fails its own validation: %v", err)
		}
		switch {
		case conf.Name == "":
			t.Fatal("accepted without a network name")
		case !filepath.IsAbs(conf.AgentSocket):
			t.Fatalf("accepted relative agentSocket %q", conf.AgentSocket)
		case conf.MTU < MinMTU || conf.MTU > MaxMTU:
			t.Fatalf("accepted mtu %d", conf.MTU)
		case !vethPrefixRE.MatchString(conf.VethPrefix):
			t.Fatalf("accepted vethPrefix %q", conf.VethPrefix)
		case conf.AddTimeout < MinAddTimeout || conf.AddTimeout > MaxAddTimeout:
			t.Fatalf("accepted addTimeout %v", conf.AddTimeout)
		case conf.agentWait() <= 0 || conf.agentWait() >= conf.AddTimeout:
			t.Fatalf("agent wait %v for addTimeout %v", conf.agentWait(), conf.AddTimeout)
		}
		if n := len(HostVethName(conf.VethPrefix, "c", "eth0")); n > 15 {
			t.Fatalf("host veth name of %d bytes", n)
		}
		// CHECK's use of prevResult must cope with whatever decoded.
		_ = checkPrevResult(&conf.PluginConf, netip.MustParseAddr("192.168.1.5"), &attachment{ContainerID: "c"})
	})
}

// FuzzParseAttachment feeds the plugin's environment parser (CNI_CONTAINERID, CNI_IFNAME,
// CNI_NETNS, CNI_ARGS) arbitrary values: it never panics, refuses with CNI code 4 only, and
// what it accepts is safe to use in interface names, paths and messages.
func FuzzParseAttachment(f *testing.F) {
	for _, s := range [][4]string{
		{"0123456789abcdef", "eth0", "/var/run/netns/cni-1", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=nginx;K8S_POD_INFRA_CONTAINER_ID=0123;K8S_POD_UID=abc"},
		{"c", "eth0", "", ""},
		{"c", "lo", "/proc/1/ns/net", ""},
		{"c/../x", "eth0", "/n", ""},
		{"c", "eth0/x", "/n", ""},
		{"c", "eth0", "relative/ns", ""},
		{"c", "0123456789abcdefg", "/n", ""},
		{"c", "eth0", "/n", "K8S_POD_NAME"},
		{"c", "eth0", "/n", "UNKNOWN=1"},
		{"c", "eth0", "/n", "K8S_POD_NAME=a=b;;=;"},
	} {
		f.Add(s[0], s[1], s[2], s[3], true)
	}
	f.Fuzz(func(t *testing.T, containerID, ifname, netns, args string, needNetns bool) {
		att, err := parseAttachment(&skel.CmdArgs{ContainerID: containerID, IfName: ifname, Netns: netns, Args: args}, needNetns)
		if err != nil {
			var te *types.Error
			if !errors.As(err, &te) || te.Code != types.ErrInvalidEnvironmentVariables {
				t.Fatalf("parseAttachment: %v, want CNI code 4", err)
			}
			return
		}
		if utils.ValidateContainerID(att.ContainerID) != nil {
			t.Fatalf("accepted container id %q", att.ContainerID)
		}
		if utils.ValidateInterfaceName(att.IfName) != nil || att.IfName == "lo" {
			t.Fatalf("accepted interface name %q", att.IfName)
		}
		if needNetns && att.Netns == "" || att.Netns != "" && !filepath.IsAbs(att.Netns) {
			t.Fatalf("accepted netns %q (needed: %v)", att.Netns, needNetns)
		}
		for _, v := range []string{att.PodNamespace, att.PodName, att.PodUID} {
			if strings.ContainsAny(v, ";") {
				t.Fatalf("a CNI_ARGS value %q kept the separator", v)
			}
		}
		if name := HostVethName(DefaultVethPrefix, att.ContainerID, att.IfName); len(name) > 15 || !utf8.ValidString(name) {
			t.Fatalf("host veth name %q", name)
		}
		_ = att.pod()
	})
}
