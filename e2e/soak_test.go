package e2e_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// Soak settings, from the environment: IPLEDGER_SOAK_DURATION (how long the churn and the
// faults run; `make soak` sets an hour) and IPLEDGER_SOAK_SEED (which faults, in which order).
const (
	defaultSoakDuration = 40 * time.Second
	defaultSoakSeed     = 1
)

// The faults the soak injects, one at a time, each followed by a pause.
const (
	faultLeaderKill   = "leader killed (kill -9)"
	faultEtcdRestart  = "etcd member restarted"
	faultThrottle     = "EC2 throttling spell"
	faultServerError  = "EC2 5xx spell"
	faultAmbiguous    = "EC2 ambiguous outcomes (applied, then 500 or reset)"
	faultAgentRestart = "agent restarted"
)

var soakFaults = []string{faultLeaderKill, faultEtcdRestart, faultThrottle, faultServerError, faultAmbiguous, faultAgentRestart}

// TestSoak runs churn on a production-shaped cluster (3 etcd members, 3 servers, 4 nodes with
// agents, pods through cnitool) while injecting, one after the other in a seeded random order,
// leader kills, etcd member restarts, EC2 throttling and 5xx spells, ambiguous EC2 outcomes
// and agent restarts. All along, a watchdog checks that no address has two owners (EC2, etcd,
// one agent's pods); every pod must start (a kubelet retries), each with its own address; after
// the faults stop and the pods are gone, EC2, etcd and the agents agree, nothing leaks and
// ipledgerctl check is clean. `make test` runs it for 40 s; `make soak` for an hour
// (IPLEDGER_SOAK_DURATION=1h), whose figures docs/resilience.md records.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: starts etcd, three servers and agents")
	}
	nstest.RequireIPNetns(t)
	nstest.GuardRootNS(t, "eni", "sim-")
	dur := defaultSoakDuration
	if v := os.Getenv("IPLEDGER_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("IPLEDGER_SOAK_DURATION=%q: want a positive duration such as 1h", v)
		}
		dur = d
	}
	seed := uint64(defaultSoakSeed)
	if v := os.Getenv("IPLEDGER_SOAK_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("IPLEDGER_SOAK_SEED=%q: want a number", v)
		}
		seed = n
	}
	t.Logf("soak: %v, seed %d", dur, seed)

	c := harness.StartProcCluster(t, harness.ProcClusterConfig{Name: "soak"})
	rs := &resilience{c: c}
	for _, p := range rolePolicies() {
		if _, err := c.LeaderAdmin().SetPolicy(t.Context(), &ipledgerv1.SetPolicyRequest{Policy: p}); err != nil {
			t.Fatalf("set policy %s: %v", p.GetName(), err)
		}
	}
	rs.watch(t)
	rs.figs.name = "soak.txt"
	defer rs.figs.report(t)

	insts := rs.launch(t, subnetLeader, 4)
	var nodes []*rsNode
	for i, role := range []string{roleDefault, roleDefault, roleWarm, roleProbe} {
		nodes = append(nodes, rs.join(t, insts[i], role))
	}
	for _, n := range nodes {
		n.Agent().WaitConnected(30*time.Second, 0)
	}

	began := time.Now()
	end := began.Add(dur)
	s := &soak{rs: rs, t: t, rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), end: end, faults: map[string]int{}}

	// Churn: two pods cycling on each node, each started as a kubelet starts it (ADD, and after
	// a failure DEL and ADD again) and deleted after a short life.
	var wg sync.WaitGroup
	for i, n := range nodes {
		for lane := range 2 {
			r := rand.New(rand.NewPCG(seed, uint64(2*i+lane+1)))
			wg.Go(func() { s.churn(n, lane, r) })
		}
	}
	s.inject(nodes)
	wg.Wait()

	// Settle: no pods, no faults, all members and replicas up; then everything must agree.
	c.Sim.Sim().ClearFaults()
	runs := s.allRuns()
	retried := s.check()
	rs.settle(t, "soak")

	var worst time.Duration
	for _, r := range runs {
		worst = max(worst, r.done.Sub(r.began))
	}
	var kinds []string
	for k, n := range s.faults {
		kinds = append(kinds, fmt.Sprintf("%s x%d", k, n))
	}
	sort.Strings(kinds)
	rs.figs.add("soak %v (seed %d): %d pods started and deleted on %d nodes, %d needed more than one ADD, slowest start %s; faults: %s",
		dur, seed, len(runs), len(nodes), retried, ms(worst), strings.Join(kinds, ", "))
}

// soak is the state of one TestSoak run.
type soak struct {
	rs  *resilience
	t   *testing.T
	rng *rand.Rand // the fault injector's
	end time.Time

	mu      sync.Mutex
	runs    []*podRun
	deleted map[*podRun]time.Time // when the pod's DEL succeeded
	faults  map[string]int
}

func (s *soak) record(r *podRun) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runs = append(s.runs, r)
}

func (s *soak) recordDel(r *podRun) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deleted == nil {
		s.deleted = map[*podRun]time.Time{}
	}
	s.deleted[r] = time.Now()
}

func (s *soak) allRuns() []*podRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*podRun(nil), s.runs...)
}

// check fails the test for a pod that never started, a failed ADD without a clear reason, and
// two pods that held the same address at the same time (from the ADD that gave it until its
// DEL succeeded; an address is used again after its DEL and cooldown). It returns how many
// pods needed more than one ADD.
func (s *soak) check() (retried int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	byIP := map[string][]*podRun{}
	for _, r := range s.runs {
		if r.err != nil {
			s.t.Errorf("soak: pod %s", r)
			continue
		}
		if r.attempts > 1 {
			retried++
			for _, f := range r.failures {
				if !clearReason(f) {
					s.t.Errorf("soak: a failed ADD of %s/%s gave no clear reason: %s", r.node.Name(), r.pod.Name, f)
				}
			}
		}
		byIP[r.ip.String()] = append(byIP[r.ip.String()], r)
	}
	for ip, rs := range byIP {
		sort.Slice(rs, func(i, j int) bool { return rs[i].done.Before(rs[j].done) })
		for i := 1; i < len(rs); i++ {
			prev, cur := rs[i-1], rs[i]
			if del, ok := s.deleted[prev]; !ok || cur.done.Before(del) {
				s.t.Errorf("soak: %s was given to %s/%s while %s/%s still held it", ip, cur.node.Name(), cur.pod.Name, prev.node.Name(), prev.pod.Name)
			}
		}
	}
	return retried
}

// churn starts and deletes pods on one lane of a node until the soak ends. A pod has a minute
// to start (across leader kills and etcd restarts); its DEL is retried until it succeeds.
func (s *soak) churn(n *rsNode, lane int, r *rand.Rand) {
	for i := 0; time.Now().Before(s.end); i++ {
		p := n.CNIToolPod(fmt.Sprintf("soak-%d-%d", lane, i))
		run := startPod(n, p, time.Now().Add(60*time.Second))
		s.record(run)
		if run.err != nil {
			_ = n.RT.Run("del", p)
			continue
		}
		time.Sleep(time.Duration(200+r.IntN(800)) * time.Millisecond) // the pod's life
		if !poll(30*time.Second, func() bool { return n.RT.Run("del", p).Err == nil }) {
			s.t.Errorf("soak: DEL of %s/%s did not succeed within 30 s", n.Name(), p.Name)
			continue
		}
		s.recordDel(run)
	}
}

// inject runs faults one after the other until the soak ends, then undoes what remains.
func (s *soak) inject(nodes []*rsNode) {
	t, c := s.t, s.rs.c
	sim := c.Sim.Sim()
	for {
		pause := time.Duration(1500+s.rng.IntN(2500)) * time.Millisecond
		if time.Now().Add(pause + 5*time.Second).After(s.end) {
			return
		}
		time.Sleep(pause) // the cluster's quiet time between faults, not synchronisation
		kind := soakFaults[s.rng.IntN(len(soakFaults))]
		s.mu.Lock()
		s.faults[kind]++
		s.mu.Unlock()
		spell := func(actions []string, f ec2sim.Fault) {
			for _, a := range actions {
				sim.SetFault(a, f)
			}
			time.Sleep(time.Duration(2000+s.rng.IntN(2000)) * time.Millisecond) // the spell
			for _, a := range actions {
				sim.SetFault(a, ec2sim.Fault{})
			}
		}
		mutations := []string{ec2gw.ActionAssignPrivateIPAddresses, ec2gw.ActionUnassignPrivateIPAddresses,
			ec2gw.ActionCreateNetworkInterface, ec2gw.ActionAttachNetworkInterface}
		switch kind {
		case faultLeaderKill:
			leader := c.WaitLeader(30*time.Second, nil)
			if _, err := leader.Kill(); err != nil {
				t.Errorf("soak: kill the leader: %v", err)
			}
		case faultEtcdRestart:
			i := s.rng.IntN(c.Etcd.Size())
			if err := c.Etcd.Kill(i); err != nil {
				t.Errorf("soak: kill etcd member %d: %v", i, err)
				continue
			}
			time.Sleep(time.Duration(1000+s.rng.IntN(2000)) * time.Millisecond) // the member's outage
			if err := c.Etcd.Restart(i); err != nil {
				t.Fatalf("soak: restart etcd member %d: %v", i, err)
			}
		case faultThrottle:
			spell(mutations, ec2sim.Fault{Code: "RequestLimitExceeded", Probability: 1})
		case faultServerError:
			spell(mutations, ec2sim.Fault{Code: "InternalError", Probability: 0.5})
		case faultAmbiguous:
			outcome := []string{ec2sim.OutcomeAfter, ec2sim.OutcomeReset}[s.rng.IntN(2)]
			spell([]string{ec2gw.ActionAssignPrivateIPAddresses, ec2gw.ActionUnassignPrivateIPAddresses},
				ec2sim.Fault{Code: "InternalError", Probability: 0.3, Outcome: outcome})
		case faultAgentRestart:
			n := nodes[s.rng.IntN(len(nodes))]
			n.Agent().Kill()
			n.restartAgent()
		}
	}
}
