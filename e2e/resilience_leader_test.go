package e2e_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/servertest"
)

// testLeaderKills kills -9 the leading ipledger-server three times, each time while pods start
// on two nodes and a new node joins, and each time the replica that took over from the last
// victim. A probe node keeps no free address, so its pod's ADD needs a new allocation: the
// time from the kill to that ADD's success is "leader loss -> first allocation served".
func (rs *resilience) testLeaderKills(t *testing.T) {
	c := rs.c
	insts := rs.launch(t, subnetLeader, 3)
	probe := rs.join(t, insts[0], roleProbe)
	workers := []*rsNode{rs.join(t, insts[1], roleDefault), rs.join(t, insts[2], roleDefault)}
	probe.Agent().WaitConnected(30*time.Second, 0)
	for _, w := range workers {
		w.Agent().WaitConnected(30*time.Second, 1)
	}

	// IPLEDGER_LEADER_KILLS runs more kills by hand (docs/resilience.md records 20).
	kills, podsPerWorker := 3, 3
	if v, err := strconv.Atoi(os.Getenv("IPLEDGER_LEADER_KILLS")); err == nil && v > 0 {
		kills = v
	}
	var victims []*harness.ServerProc
	for k := 1; k <= kills; k++ {
		what := fmt.Sprintf("leader kill %d", k)
		pods := map[*rsNode][]*harness.Pod{}
		for _, w := range workers {
			for range podsPerWorker {
				pods[w] = append(pods[w], w.pod(fmt.Sprintf("k%d", k)))
			}
		}
		probePod := probe.pod(fmt.Sprintf("probe-k%d", k))
		joining := rs.launch(t, subnetLeader, 1)[0]
		// The probe holds no free address: its ADD will need an allocation.
		atKill := probe.Agent().WaitView(20*time.Second, "no free address on the probe node", func(v agentPoolView) bool {
			return v.Server.Connected && v.Counts.Free == 0 && v.Counts.Cooling == 0 && v.Counts.Locked == 0
		})
		leader := c.WaitLeader(20*time.Second, nil)
		if len(victims) > 0 && leader == victims[len(victims)-1] {
			t.Errorf("%s: replica %d, killed last time, leads again", what, leader.Index)
		}

		// The burst: pods on both workers, and a node joining.
		b := startBurst(pods, 2*podsPerWorker, time.Now().Add(60*time.Second))
		newNode := rs.join(t, joining, roleDefault)
		joined := make(chan time.Time, 1)
		go func() {
			ok := poll(60*time.Second, func() bool {
				v, err := newNode.Agent().View()
				return err == nil && v.Server.Registered && v.Server.Connected && v.Counts.Free >= 1
			})
			if ok {
				joined <- time.Now()
			}
			close(joined)
		}()
		// Kill once an ADD waits for an address (or after 2 s, whichever comes first).
		poll(2*time.Second, func() bool {
			for _, w := range workers {
				if v, err := w.Agent().View(); err == nil && v.Waiting > 0 {
					return true
				}
			}
			return false
		})
		killedAt := time.Now()
		pid, err := leader.Kill()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		victims = append(victims, leader)
		probed := make(chan *podRun, 1)
		go func() { probed <- startPod(probe, probePod, killedAt.Add(45*time.Second)) }()

		next := c.WaitLeader(30*time.Second, leader)
		tookOver := time.Since(killedAt)
		pr := <-probed
		if pr.err != nil {
			t.Fatalf("%s: the probe pod never got an address: %s", what, pr)
		}
		served := pr.done.Sub(killedAt)
		if poolIPs(atKill)[pr.ip.String()] {
			t.Errorf("%s: the probe pod got %s, which the probe node held before the kill: no new allocation was measured", what, pr.ip)
		}
		runs := b.wait()
		retried := checkRuns(t, what, runs)
		var last time.Time
		for _, r := range runs {
			if r.done.After(last) {
				last = r.done
			}
		}
		joinedAt, ok := <-joined
		if !ok {
			t.Fatalf("%s: the node that joined during the kill (%s) has no address after 60 s: %+v", what, newNode.Name(), newNode.Agent().MustView().Server)
		}
		since := func(at time.Time) string {
			if at.Before(killedAt) {
				return "before the kill"
			}
			return "after " + ms(at.Sub(killedAt))
		}
		rs.figs.add("%s: replica %d (pid %d) killed; replica %d led after %s; first allocation served (probe ADD) after %s (%d attempt(s)); %d pods of the burst done %s (%d retried); the joining node served %s",
			what, leader.Index, pid, next.Index, ms(tookOver), ms(served), pr.attempts, len(runs), since(last), retried, since(joinedAt))
		rs.settle(t, what)
		// The burst's pods end (an m5.large holds 27 pod addresses: twenty kills' pods would
		// fill the workers). Their addresses cool down and serve the next burst.
		for _, r := range runs {
			if rr := r.node.RT.Run("del", r.pod); rr.Err != nil {
				t.Fatalf("%s: DEL %s: %v: %s", what, r.pod.Name, rr.Err, rr.Stderr)
			}
		}
	}
	// The supervisor brought every victim back, as a standby.
	for _, v := range victims {
		servertest.WaitFor(t, 20*time.Second, fmt.Sprintf("replica %d to run again", v.Index), func() bool { return v.PID() != 0 })
	}
	harness.Eventually(t, 20*time.Second, "every replica to be ready", func() error {
		for _, r := range c.Replicas {
			if err := r.Ready(t.Context()); err != nil {
				return fmt.Errorf("replica %d: %w", r.Index, err)
			}
		}
		return nil
	})
}

// testAllocationBeforeSync asks a new leader for an address on behalf of a node whose agent has
// not reconnected its Sync stream since the takeover (so the new leader has no usage report of
// the node), as an agent does when a pod waits and its RequestAddresses reaches the new leader
// before its Sync stream: the node's only address is used by a pod, and the leader must still
// supply one more free address rather than count the used one as free or wait for a report.
func (rs *resilience) testAllocationBeforeSync(t *testing.T) {
	c := rs.c
	n := rs.join(t, rs.launch(t, subnetLeader, 1)[0], roleProbe)
	n.Agent().WaitView(30*time.Second, "connected with no free address", func(v agentPoolView) bool {
		return v.Server.Connected && v.Counts.Free == 0
	})
	pr := startPod(n, n.pod("running"), time.Now().Add(30*time.Second))
	if pr.err != nil {
		t.Fatalf("pod: %s", pr)
	}
	v := n.Agent().WaitView(10*time.Second, "the pod reported and no free address", func(v agentPoolView) bool {
		return v.Counts.InUse == 1 && v.Counts.Free == 0 && v.Counts.Cooling == 0
	})
	waitServerPodCount(t, c.LeaderAdmin(), n.Name(), 1)
	n.Agent().Kill() // its Sync stream will not reach the next leader
	leader := c.WaitLeader(20*time.Second, nil)
	if _, err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	next := c.WaitLeader(30*time.Second, leader)
	asked := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Second)
	resp, err := c.NodeService(next.Index).RequestAddresses(ctx, &ipledgerv1.RequestAddressesRequest{
		NodeName: n.Name(), Count: 1, KnownGeneration: v.Generation,
	})
	cancel()
	took := time.Since(asked)
	active := harness.PoolAddresses(resp.GetPool(), ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)
	if err != nil || len(active) < 2 {
		reason, _ := api.ReasonOf(err)
		t.Errorf("RequestAddresses for a node whose pod uses its only address, sent to the new leader (replica %d) before the node's agent reconnected: "+
			"after %s: %v (reason %q), %d active address(es) in the answer; want a pool with a free address besides %s",
			next.Index, ms(took), err, reason, len(active), pr.ip)
	}
	rs.figs.add("allocation for a node whose agent has not reconnected since the takeover: RequestAddresses answered after %s with %d active address(es) (want 2), err %v",
		ms(took), len(active), err)
	n.restartAgent()
	n.Agent().WaitConnected(30*time.Second, 0)
	rs.settle(t, "allocation before the agent reconnects")
}
