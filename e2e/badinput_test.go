package e2e_test

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/ipledger/ipledger/e2e/harness"
)

// TestBadInputAgainstRealAgent: representative bad invocations (the exhaustive list is in the
// cni package's tests) get clear CNI errors from the plugin or the real agent behind it, and
// change nothing: not the node namespace, not the pod's, not the agent's assignments.
func TestBadInputAgainstRealAgent(t *testing.T) {
	harness.RequireNodeNamespaces(t)
	s := harness.StartDev(t, nil)
	inst := harness.Running(s.Sim().Sim())[3]
	n := harness.NewNode(t, s.Sim(), inst, s.GRPCAddr())
	ag := n.StartAgentInProcess(nil)
	ag.WaitConnected(20*time.Second, 1)
	attached := n.NewPod("attached")
	ipAttached := n.Add(attached)

	p := n.NewPod("bad")
	long := strings.Repeat("x", 300)
	tests := []struct {
		name    string
		env     map[string]string
		stdin   []byte
		code    uint
		message string
	}{
		{"malformed stdin", n.Env("ADD", p), []byte(`{"cniVersion":"1.1.0","name":`), types.ErrDecodingFailure, "unmarshal"},
		{"unknown field", n.Env("ADD", p), n.Conf("1.1.0", `"vethPrefx":"eni"`), types.ErrInvalidNetworkConfig, `unknown field "vethPrefx"`},
		{"wrong cni version", n.Env("ADD", p), n.Conf("0.3.1"), types.ErrIncompatibleCNIVersion, "incompatible CNI versions"},
		{"missing netns", without(n.Env("ADD", p), "CNI_NETNS"), n.Conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "CNI_NETNS"},
		{"netns does not exist", with(n.Env("ADD", p), "CNI_NETNS", "/var/run/netns/ipl-e2e-missing"), n.Conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "does not exist"},
		// Passed on by the plugin, refused by the agent.
		{"pod name too long", with(n.Env("ADD", p), "CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME="+long), n.Conf("1.1.0"), types.ErrInvalidEnvironmentVariables, "invalid pod_name"},
		{"gc with a bad valid attachment", n.Env("GC", nil), n.Conf("1.1.0", `"cni.dev/valid-attachments":[{"containerID":"bad/id","ifname":"eth0"}]`), types.ErrInvalidNetworkConfig, "valid_attachments[0].container_id"},
	}
	before := n.NetState()
	adds := counter(t, ag.InProcess().Gatherer(), "ipledger_agent_adds_total", "")
	if adds < 1 {
		t.Fatalf("adds_total is %v after an ADD", adds)
	}
	// One node for every case, so no subtests: the node's helpers belong to this test.
	for _, tt := range tests {
		e := n.RunPlugin(tt.env, tt.stdin).CNIError(t)
		if e.Code != tt.code || !strings.Contains(e.Error(), tt.message) {
			t.Errorf("%s: code %d %q, want code %d mentioning %q", tt.name, e.Code, e.Error(), tt.code, tt.message)
		}
		if d := harness.DiffNetState(before, n.NetState()); d != "" {
			t.Errorf("%s: the node namespace changed:\n%s", tt.name, d)
		}
		if got := harness.PodLinks(t, p); len(got) != 0 {
			t.Errorf("%s: pod links %v, want none", tt.name, got)
		}
		v := ag.MustView()
		if len(v.Pods) != 1 || v.Pods[0].ContainerID != attached.ContainerID || v.Pods[0].IP != ipAttached.String() {
			t.Errorf("%s: agent pods %+v, want only %s with %s", tt.name, v.Pods, attached.Name, ipAttached)
		}
		if got := counter(t, ag.InProcess().Gatherer(), "ipledger_agent_adds_total", ""); got != adds {
			t.Errorf("%s: the agent handed out addresses for bad input: adds %v -> %v", tt.name, adds, got)
		}
	}
	n.Plugin("CHECK", attached, "1.1.0").MustSucceed(t, "CHECK of the attached pod after the bad input")
	n.Del(attached)
}

func with(env map[string]string, k, v string) map[string]string {
	out := maps.Clone(env)
	out[k] = v
	return out
}

func without(env map[string]string, keys ...string) map[string]string {
	out := maps.Clone(env)
	for k := range out {
		if slices.Contains(keys, k) {
			delete(out, k)
		}
	}
	return out
}
