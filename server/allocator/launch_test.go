package allocator

import (
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ledger"
)

// TestLaunchHintLearnsEachPolicysFirstMinute: the first-minute starts a hint is for are the
// policy's own new nodes' (not the cluster's), and the hint for a group with none yet says so.
func TestLaunchHintLearnsEachPolicysFirstMinute(t *testing.T) {
	e := newEnv(t, nil)
	web := policy.Policy{Name: "web", Order: 1, Mode: ledger.ModeSecondaryIP, Selector: policy.Selector{Labels: map[string]string{"pool": "web"}}}
	if _, err := e.a.SetPolicy(e.ctx, web); err != nil {
		t.Fatal(err)
	}
	start := func(labels map[string]string, pods uint64) {
		req := e.taggedInstance("m5.xlarge", subnetA, labels)
		if _, _, err := e.a.RegisterNode(e.ctx, req); err != nil {
			t.Fatal(err)
		}
		// The agent's report after the node's first minute: its adds are the minute's starts.
		e.clk.Advance(policy.StartWindow)
		if err := e.a.ReportUsage(req.NodeName, Usage{AddsTotal: pods}); err != nil {
			t.Fatal(err)
		}
	}
	hint := func(name string) policy.LaunchHint {
		t.Helper()
		h, err := e.a.LaunchHint(e.ctx, LaunchHintRequest{Policy: name, InstanceType: "m5.xlarge"})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	if h := hint("web"); h.Observed != 0 || h.SecondaryAddresses != 1 || !strings.Contains(strings.Join(h.Reasons, " "), "no new node") {
		t.Fatalf("web before any node: %+v", h)
	}
	start(map[string]string{"pool": "web"}, 5)
	start(map[string]string{"pool": "web"}, 7)
	start(map[string]string{"pool": "web"}, 6)
	start(nil, 1)
	// web: median 6, so 6 in use + 6 free; default: 1 + 1.
	if h := hint("web"); h.Observed != 3 || h.FirstMinute != 6 || h.SecondaryAddresses != 12 {
		t.Fatalf("web: %+v", h)
	}
	if h := hint(policy.DefaultName); h.Observed != 1 || h.FirstMinute != 1 || h.SecondaryAddresses != 2 {
		t.Fatalf("default: %+v", h)
	}
	// The request's expectation replaces the observation.
	four := 4
	if h, err := e.a.LaunchHint(e.ctx, LaunchHintRequest{Policy: "web", InstanceType: "m5.xlarge", ExpectedPods: &four}); err != nil || h.SecondaryAddresses != 8 || h.Observed != 3 {
		t.Fatalf("expected 4: %+v %v", h, err)
	}
	// A new web node's start prior is web's, not the cluster's median.
	req := e.taggedInstance("m5.xlarge", subnetA, map[string]string{"pool": "web"})
	if _, _, err := e.a.RegisterNode(e.ctx, req); err != nil {
		t.Fatal(err)
	}
	e.a.mu.Lock()
	in := e.a.inputsLocked(e.a.nodes[req.NodeName], e.record(req.NodeName))
	e.a.mu.Unlock()
	if in.StartPrior != 6 {
		t.Fatalf("a new web node expects %d starts, want web's 6", in.StartPrior)
	}

	// A prefix-mode node joins web's subnet: its whole /28 blocks now matter, and web's hint
	// (m5.xlarge is Nitro) turns to prefixes, saying why.
	pfx := policy.Policy{Name: "pfx", Order: 2, Mode: ledger.ModePrefix, Selector: policy.Selector{Labels: map[string]string{"pool": "pfx"}}}
	if _, err := e.a.SetPolicy(e.ctx, pfx); err != nil {
		t.Fatal(err)
	}
	req = e.taggedInstance("m5.xlarge", subnetA, map[string]string{"pool": "pfx"})
	if _, _, err := e.a.RegisterNode(e.ctx, req); err != nil {
		t.Fatal(err)
	}
	if h := hint("web"); !h.PreferPrefixes || h.Prefixes != 1 || h.SecondaryAddresses != 0 || !strings.Contains(strings.Join(h.Warnings, " "), "1 prefix-mode node(s)") {
		t.Fatalf("web beside a prefix-mode node: %+v", h)
	}

	for _, bad := range []LaunchHintRequest{{Policy: "", InstanceType: "m5.large"}, {Policy: "Web_1", InstanceType: "m5.large"}, {Policy: "web", InstanceType: "m5.huge"}} {
		if _, err := e.a.LaunchHint(e.ctx, bad); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("%+v: %v, want invalid argument", bad, err)
		}
	}
	if _, err := e.a.LaunchHint(e.ctx, LaunchHintRequest{Policy: "nope", InstanceType: "m5.large"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown policy: %v", err)
	}
}

// taggedInstance launches an instance whose EC2 tags (what policies match) are tags, and says
// the same in the agent's labels (shown only).
func (e *env) taggedInstance(typ, subnet string, tags map[string]string) Registration {
	req := e.instance(typ, subnet)
	e.ec2.mu.Lock()
	e.ec2.instances[req.InstanceID].tags = maps.Clone(tags)
	e.ec2.mu.Unlock()
	req.Labels = maps.Clone(tags)
	return req
}
