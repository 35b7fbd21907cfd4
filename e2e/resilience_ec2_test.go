package e2e_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/ipledger/ipledger/e2e/harness"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// ec2Trouble is a spell of EC2 misbehaviour injected into the simulator.
type ec2Trouble struct {
	name   string
	faults map[string]ec2sim.Fault
	// lasts is how long the faults stay on.
	lasts time.Duration
	// reasons are the ErrorInfo reasons a failed ADD may give meanwhile.
	reasons []string
}

func faultsOn(f ec2sim.Fault, actions ...string) map[string]ec2sim.Fault {
	out := map[string]ec2sim.Fault{}
	for _, a := range actions {
		out[a] = f
	}
	return out
}

// testEC2Trouble puts EC2 through a throttling storm, a spell of 5xx errors and a spell of slow
// answers, each while pods start on two nodes (one of which keeps no free address, so each of
// its pods needs an EC2 call) and a node joins; then a node in prefix mode meets a subnet with
// no free /28 block. Pods wait or fail with a clear reason, nothing is leased twice, and once
// the trouble ends every pod gets an address and EC2 and etcd agree again.
func (rs *resilience) testEC2Trouble(t *testing.T) {
	step := stopwatch(t)
	sim := rs.c.Sim.Sim()
	insts := rs.launch(t, subnetEC2, 2)
	probe := rs.join(t, insts[0], roleProbe)
	worker := rs.join(t, insts[1], roleDefault)
	probe.Agent().WaitView(30*time.Second, "connected with no free address", func(v agentPoolView) bool {
		return v.Server.Connected && v.Counts.Free == 0
	})
	worker.Agent().WaitConnected(30*time.Second, 1)
	mutating := []string{"AssignPrivateIpAddresses", "CreateNetworkInterface", "AttachNetworkInterface", "ModifyNetworkInterfaceAttribute", "CreateTags"}
	troubles := []ec2Trouble{
		{
			name:    "throttling storm",
			faults:  faultsOn(ec2sim.Fault{Code: "RequestLimitExceeded", Probability: 0.9}, append(mutating, "DescribeNetworkInterfaces", "DescribeInstances", "DescribeSubnets")...),
			lasts:   4 * time.Second,
			reasons: []string{"EC2_THROTTLED", "SUPPLY_TIMEOUT"},
		},
		{
			name:    "EC2 5xx",
			faults:  faultsOn(ec2sim.Fault{Code: "InternalError", Probability: 0.6}, append(mutating, "DescribeNetworkInterfaces", "DescribeInstances")...),
			lasts:   4 * time.Second,
			reasons: []string{"EC2_ERROR", "SUPPLY_TIMEOUT"},
		},
		{
			name:    "slow EC2",
			faults:  faultsOn(ec2sim.Fault{Latency: 1500 * time.Millisecond}, append(mutating, "DescribeNetworkInterfaces", "DescribeInstances")...),
			lasts:   4 * time.Second,
			reasons: []string{"SUPPLY_TIMEOUT"},
		},
	}
	nodes := []*rsNode{probe, worker}
	for i, tr := range troubles {
		registered := rs.registeredAt(t, nodes)
		before := sim.Stats()
		pods := map[*rsNode][]*harness.Pod{}
		for j := range 3 {
			pods[probe] = append(pods[probe], probe.pod(fmt.Sprintf("t%d-%d", i, j)))
			pods[worker] = append(pods[worker], worker.pod(fmt.Sprintf("t%d-%d", i, j)))
		}
		joining := rs.launch(t, subnetEC2, 1)[0]
		for action, f := range tr.faults {
			sim.SetFault(action, f)
		}
		began := time.Now()
		b := startBurst(pods, 6, began.Add(60*time.Second))
		newNode := rs.join(t, joining, roleDefault)
		nodes = append(nodes, newNode)
		step("%s: on for %v; %d pods starting, node %s joining", tr.name, tr.lasts, 6, newNode.Name())
		time.Sleep(time.Until(began.Add(tr.lasts))) // the trouble lasts this long
		sim.ClearFaults()
		ended := time.Now()
		runs := b.wait()
		retried := checkRuns(t, tr.name, runs)
		for _, r := range runs {
			for _, f := range r.failures {
				if !mentionsAny(f, tr.reasons...) && !strings.Contains(f, "(SERVER_UNREACHABLE)") {
					t.Errorf("%s: ADD of %s failed with %q; want one of %v", tr.name, r.pod.Name, f, tr.reasons)
				}
			}
		}
		var last time.Time
		var slowest time.Duration
		for _, r := range runs {
			if r.done.After(last) {
				last = r.done
			}
			slowest = max(slowest, r.done.Sub(r.began))
		}
		newNode.Agent().WaitConnected(30*time.Second, 1)
		joined := time.Since(began)
		calls, failed := simCalls(before, sim.Stats())
		rs.figs.add("%s (%v): %d EC2 calls, %d failed by the fault; %d of %d pods retried, slowest ADD %s, all pods served %s after the trouble began (%s after it ended); the joining node served %s after the trouble began",
			tr.name, tr.lasts, calls, failed, retried, len(runs), ms(slowest), ms(last.Sub(began)), ms(max(last.Sub(ended), 0)), ms(joined))
		if failed == 0 && tr.faults["AssignPrivateIpAddresses"].Probability > 0 {
			t.Errorf("%s: no EC2 call failed: the trouble did not hit the allocator", tr.name)
		}
		if tr.name == "throttling storm" {
			res := harness.Ctl(t, rs.someReplica(t), "limiter", "-o", "json")
			var lim struct {
				Throttled int `json:"throttled_total"`
			}
			if res.Exit != 0 || json.Unmarshal([]byte(res.Stdout), &lim) != nil || lim.Throttled == 0 {
				t.Errorf("after a throttling storm the leader's limiter counts no throttle:\n%s", res)
			}
		}
		rs.settle(t, tr.name)
		// A failed or throttled DescribeInstances must not have removed a node: every node
		// that was registered before the trouble still is, with the same registration.
		after := rs.registeredAt(t, nodes)
		for name, at := range registered {
			if !after[name].Equal(at) {
				t.Errorf("%s: node %s was registered at %v before the trouble and at %v after it (removed and registered again?)", tr.name, name, at, after[name])
			}
		}
	}

	// No free /28 block: another user occupies an address in every free block of the subnet.
	inst := rs.launch(t, subnetFragment, 1)[0]
	subnet := rs.subnetID(t, subnetFragment)
	occupied, err := sim.Fragment(t.Context(), subnet)
	if err != nil {
		t.Fatal(err)
	}
	pn := rs.joinWith(t, inst, rolePrefix, nodeOpts{addTimeout: "5s"})
	pn.Agent().WaitView(30*time.Second, "registered in prefix mode", func(v agentPoolView) bool {
		return v.Server.Connected && v.Mode == "ADDRESS_MODE_PREFIX"
	})
	step("subnet fragmented (%d foreign addresses); prefix node %s up", occupied, pn.Name())
	stuck := pn.pod("no-block")
	e := pn.plugin("ADD", stuck).CNIError(t)
	if e.Code != types.ErrTryAgainLater || !strings.Contains(e.Msg, "NO_FREE_PREFIX_BLOCK") {
		t.Errorf("ADD on a prefix node without a free /28: code %d %q, want 11 naming NO_FREE_PREFIX_BLOCK", e.Code, e.Msg)
	}
	t.Logf("ADD without a free /28: code %d: %s", e.Code, e.Msg)
	pn.plugin("DEL", stuck).MustSucceed(t, "DEL after the failed ADD")
	// The leader knows why (a standby's copy has no supply problems).
	res := harness.Ctl(t, rs.c.WaitLeader(20*time.Second, nil).GRPC, "node", pn.Name(), "-o", "json")
	var nd struct {
		Problem string `json:"supply_problem"`
		Message string `json:"supply_message"`
	}
	if res.Exit != 0 || json.Unmarshal([]byte(res.Stdout), &nd) != nil || nd.Problem != "no_free_prefix_block" {
		t.Errorf("ipledgerctl node %s: want supply_problem no_free_prefix_block:\n%s", pn.Name(), res)
	}
	// The other user goes away.
	freed := rs.deleteForeignENIs(t, subnet)
	ended := time.Now()
	pr := startPod(pn, stuck, ended.Add(60*time.Second))
	if pr.err != nil {
		t.Fatalf("after the subnet was freed the prefix node still gets no address: %s", pr)
	}
	rs.figs.add("no free /28 (%d foreign addresses, one in every free block): ADD failed with code 11 NO_FREE_PREFIX_BLOCK; %d foreign ENIs deleted -> the prefix node's pod served after %s (%d attempt(s))",
		occupied, freed, ms(pr.done.Sub(ended)), pr.attempts)
	rs.settle(t, "no free /28 block")
}

// mentionsAny reports whether s names one of the reasons as the plugin prints them, "(REASON)".
func mentionsAny(s string, reasons ...string) bool {
	for _, r := range reasons {
		if strings.Contains(s, "("+r+")") {
			return true
		}
	}
	return false
}

// simCalls counts the EC2 calls between two Stats, and those that failed with an error.
func simCalls(before, after ec2sim.Stats) (calls, failed int) {
	for action, s := range after.Calls {
		b := before.Calls[action]
		calls += s.Calls - b.Calls
		for code, n := range s.Errors {
			failed += n - b.Errors[code]
		}
	}
	return calls, failed
}

// deleteForeignENIs deletes, through the EC2 API as their owner would, every foreign ENI of
// the subnet, and returns how many it deleted.
func (rs *resilience) deleteForeignENIs(t *testing.T, subnet string) int {
	t.Helper()
	snap := rs.c.Sim.Sim().Snapshot()
	cli := ec2.New(ec2.Options{
		Region:       snap.Region,
		BaseEndpoint: aws.String(rs.c.Sim.Endpoint()),
		Credentials:  credentials.NewStaticCredentialsProvider("other-user", "other-user", ""),
		HTTPClient:   ec2sim.NewHTTPClient(),
	})
	n := 0
	for _, e := range snap.ENIs {
		if !e.Foreign || e.SubnetID != subnet {
			continue
		}
		if _, err := cli.DeleteNetworkInterface(t.Context(), &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(e.ID)}); err != nil {
			t.Fatalf("delete foreign ENI %s: %v", e.ID, err)
		}
		n++
	}
	return n
}

// registeredAt returns when etcd says each of the nodes registered (zero when it has no record).
func (rs *resilience) registeredAt(t *testing.T, nodes []*rsNode) map[string]time.Time {
	t.Helper()
	st, err := rs.c.Store.Load(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]time.Time{}
	for _, n := range nodes {
		out[n.Name()] = st.Nodes[n.Name()].RegisteredAt
	}
	return out
}
