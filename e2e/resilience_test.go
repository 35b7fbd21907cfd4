package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Subnets of the default scenario, one per part of TestResilience so that the parts do not
// share addresses (the default scenario's own instances, which run no agent, live in the first
// three).
const (
	subnetLeader    = "192.168.32.0/19"
	subnetEtcd      = "192.168.64.0/19"
	subnetAgent     = "192.168.96.0/19"
	subnetEC2       = "192.168.128.0/19"
	subnetFragment  = "192.168.160.0/19"
	subnetTerminate = "192.168.0.0/19"
)

// resilience is the state TestResilience's parts share: one cluster, its nodes, the figures.
type resilience struct {
	c    *harness.ProcCluster
	figs figures

	mu    sync.Mutex
	nodes []*rsNode // nodes of the part running now (removed when the part ends)
}

// TestResilience runs ipledger as in production, on loopback and in namespaces it creates: a
// real 3-member etcd cluster, three ipledger-server processes (each restarted by a supervisor
// when it exits, as Kubernetes would), the EC2 simulator, agents in their own node namespaces
// and pods started through the CNI plugin with cnitool as the container runtime. It then breaks
// it, one part after the other on the same cluster: the leader is killed three times during
// bursts of node joins and pod starts; an etcd member is lost, then quorum; agents are killed in
// the middle of an ADD and restarted on a stale checkpoint; EC2 throttles, fails, slows down
// and runs out of /28 blocks; instances are terminated under their agents. After each part no
// address is leased twice (the simulator's EC2 state against etcd, and the agents' pods), nothing
// leaks once reconciliation has run, and `ipledgerctl check` is clean. A watchdog checks for
// addresses with two owners all along. Recovery times are logged (and kept in
// $IPLEDGER_ARTIFACTS_DIR/resilience.txt); docs/resilience.md records them.
//
// The parts can run alone: go test -race -run 'TestResilience/EtcdQuorum' ./e2e/
func TestResilience(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: starts etcd, three servers and agents")
	}
	nstest.RequireIPNetns(t)
	nstest.GuardRootNS(t, "eni", "sim-")
	started := time.Now()
	c := harness.StartProcCluster(t, harness.ProcClusterConfig{Name: "resilience"})
	rs := &resilience{c: c}
	rs.figs.add("cluster (3 etcd members, 3 servers) up and leading in %s", ms(time.Since(started)))
	for _, p := range rolePolicies() {
		if _, err := c.LeaderAdmin().SetPolicy(t.Context(), &ipledgerv1.SetPolicyRequest{Policy: p}); err != nil {
			t.Fatalf("set policy %s: %v", p.GetName(), err)
		}
	}
	rs.watch(t)
	defer rs.figs.report(t)

	t.Run("LeaderKilledDuringBurst", rs.testLeaderKills)
	t.Run("AllocationBeforeAgentReconnects", rs.testAllocationBeforeSync)
	t.Run("EtcdMemberThenQuorumLost", rs.testEtcdQuorum)
	t.Run("AgentKilledMidAdd", rs.testAgentKilledMidAdd)
	t.Run("AgentStaleCheckpoint", rs.testStaleCheckpoint)
	t.Run("EC2Trouble", rs.testEC2Trouble)
	t.Run("InstancesTerminated", rs.testInstancesTerminated)
}

func (rs *resilience) nodesNow() []*rsNode {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]*rsNode(nil), rs.nodes...)
}

// watch checks, every 250 ms until the test ends, that no address has two owners: in EC2, in
// etcd, or among one agent's pods. It skips a round when etcd cannot be read (quorum lost).
func (rs *resilience) watch(t *testing.T) {
	stop := make(chan struct{})
	done := make(chan struct{})
	var rounds int
	go func() {
		defer close(done)
		reported := map[string]bool{}
		for {
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err := rs.c.Invariants(ctx)
			cancel()
			rounds++
			var msgs []string
			if errors.Is(err, harness.ErrTwice) {
				msgs = append(msgs, err.Error())
			}
			for _, n := range rs.nodesNow() {
				if n.Agent().Exited() {
					continue
				}
				v, err := n.Agent().View()
				if err != nil {
					continue
				}
				seen := map[string]string{}
				for _, p := range v.Pods {
					if o, ok := seen[p.IP]; ok {
						msgs = append(msgs, fmt.Sprintf("node %s: %s is used by %s and %s", n.Name(), p.IP, o, p.ContainerID))
					}
					seen[p.IP] = p.ContainerID
				}
			}
			for _, m := range msgs {
				if !reported[m] {
					reported[m] = true
					t.Errorf("watchdog: an address has two owners: %s", m)
				}
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		t.Logf("watchdog: %d rounds of checks for addresses with two owners", rounds)
	})
}

// someReplica returns the gRPC address of a running replica, a standby if there is one (so
// that ipledgerctl's NOT_LEADER redirect is exercised too).
func (rs *resilience) someReplica(t *testing.T) string {
	leader := rs.c.Leader(t.Context())
	for _, r := range rs.c.Replicas {
		if r.PID() != 0 && r != leader {
			return r.GRPC
		}
	}
	if leader != nil {
		return leader.GRPC
	}
	return rs.c.Replicas[0].GRPC
}

// checkReport is the part of `ipledgerctl check -o json` the tests read.
type checkReport struct {
	OK       bool `json:"ok"`
	Findings []struct {
		Kind    string `json:"kind"`
		Node    string `json:"node_name"`
		ENI     string `json:"eni_id"`
		Address string `json:"address"`
		Detail  string `json:"detail"`
	} `json:"findings"`
	Nodes       int  `json:"nodes_checked"`
	ENIs        int  `json:"enis_checked"`
	Addresses   int  `json:"addresses_checked"`
	IncludedEC2 bool `json:"included_ec2"`
}

// settle waits until EC2, etcd and the agents agree (reconciliation has run) and then until
// `ipledgerctl check` (the real binary, through a standby) exits 0. A double owner on the way
// fails the test (it must never happen, not even for a moment), but the wait goes on.
func (rs *resilience) settle(t *testing.T, what string) {
	t.Helper()
	began := time.Now()
	ctx := t.Context()
	// Two owners of an address are never acceptable, not even for a moment: each is reported
	// (once) as a failure, and the wait goes on so that the rest of the part still runs.
	reported := map[string]bool{}
	report := func(msg string) {
		if !reported[msg] {
			reported[msg] = true
			t.Errorf("%s: %s", what, msg)
		}
	}
	harness.Eventually(t, 45*time.Second, what+": EC2, etcd and the agents to agree", func() error {
		err := rs.c.Invariants(ctx)
		if err == nil {
			var vs map[string]agent.PoolView
			if vs, err = views(rs.nodesNow()); err == nil {
				err = harness.PodsLeased(ctx, rs.c.Sim.Sim(), rs.c.Store, vs)
			}
		}
		if errors.Is(err, harness.ErrTwice) {
			report(err.Error())
		}
		return err
	})
	var last harness.CtlResult
	var rep checkReport
	harness.Eventually(t, 30*time.Second, what+": ipledgerctl check to be clean", func() error {
		last = harness.Ctl(t, rs.someReplica(t), "check", "-o", "json")
		if last.Exit != 0 && last.Exit != 4 {
			return errors.New(last.String())
		}
		rep = checkReport{}
		if err := json.Unmarshal([]byte(last.Stdout), &rep); err != nil {
			return fmt.Errorf("ipledgerctl check -o json: %v\n%s", err, last)
		}
		for _, f := range rep.Findings {
			if f.Kind == "double_owner" || f.Kind == "double_use" {
				report(fmt.Sprintf("ipledgerctl check found %s: %s on %s of node %s: %s", f.Kind, f.Address, f.ENI, f.Node, f.Detail))
			}
		}
		if last.Exit != 0 || !rep.OK || len(rep.Findings) > 0 {
			return errors.New(last.String())
		}
		return nil
	})
	if !rep.IncludedEC2 {
		t.Errorf("%s: ipledgerctl check did not include EC2: %s", what, last)
	}
	if err := harness.BudgetsAddUp(ctx, rs.c.LeaderAdmin()); err != nil {
		t.Errorf("%s: %v", what, err)
	}
	t.Logf("%s: settled in %s; ipledgerctl check clean (%d nodes, %d ENIs, %d addresses checked)",
		what, ms(time.Since(began)), rep.Nodes, rep.ENIs, rep.Addresses)
}

// stderrLine is the first line of a command's stderr, for messages.
func stderrLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
