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

	"github.com/containernetworking/cni/pkg/types"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/api"
)

// etcdLeader returns the index of the etcd member that leads raft.
func (rs *resilience) etcdLeader(t *testing.T) int {
	t.Helper()
	cli := rs.c.Store.Client()
	for i, ep := range rs.c.Etcd.Endpoints() {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		resp, err := cli.Status(ctx, ep)
		cancel()
		if err == nil && resp.Header.GetMemberId() == resp.Leader {
			return i
		}
	}
	t.Fatal("no etcd member says it leads")
	return -1
}

// answering asks every replica for its status and /readyz at once (without quorum each answer
// takes the replica's 2 s etcd health check) and returns those that answered.
func (rs *resilience) answering(ctx context.Context) map[*harness.ServerProc]replicaState {
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[*harness.ServerProc]replicaState{}
	for _, r := range rs.c.Replicas {
		wg.Go(func() {
			st, err := rs.c.Status(ctx, r.Index)
			if err != nil {
				return
			}
			ready := r.Ready(ctx)
			mu.Lock()
			out[r] = replicaState{st, ready}
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// replicaState is a replica's GetClusterStatus answer and the outcome of its /readyz.
type replicaState struct {
	status *ipledgerv1.ClusterStatus
	ready  error
}

// allHealthy checks that every replica answers with a healthy store and a known leader, and
// is ready.
func (rs *resilience) allHealthy(ctx context.Context) error {
	ans := rs.answering(ctx)
	for _, r := range rs.c.Replicas {
		s, ok := ans[r]
		switch {
		case !ok:
			return fmt.Errorf("replica %d does not answer", r.Index)
		case !s.status.GetStoreHealthy() || s.status.GetLeader() == "":
			return fmt.Errorf("replica %d: store healthy %v (%s), leader %q", r.Index, s.status.GetStoreHealthy(), s.status.GetStoreMessage(), s.status.GetLeader())
		case s.ready != nil:
			return fmt.Errorf("replica %d: %w", r.Index, s.ready)
		}
	}
	return nil
}

// etcdHealthy checks every etcd member with a client of its own (a fresh connection: the
// clients that watched the member die may still be backing off) and a linearizable read.
func (rs *resilience) etcdHealthy(ctx context.Context) error {
	var errs []error
	for i, ep := range rs.c.Etcd.Endpoints() {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: time.Second, Logger: zap.NewNop()})
		if err != nil {
			errs = append(errs, fmt.Errorf("m%d: %w", i, err))
			continue
		}
		gctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err = cli.Get(gctx, "health")
		cancel()
		_ = cli.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("m%d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// testEtcdQuorum kills one etcd member (the raft leader): everything keeps working. Then it
// kills a second one: the servers cannot commit and say so (status, /readyz, ipledgerctl, the
// errors of changes), while agents keep serving pods from their pools. Then quorum returns and
// supply resumes; the time from quorum's return to the first allocation served is measured.
func (rs *resilience) testEtcdQuorum(t *testing.T) {
	c := rs.c
	ctx := t.Context()
	step := stopwatch(t)
	insts := rs.launch(t, subnetEtcd, 2)
	// A short addTimeout (the agent waits 3 s) so that ADDs that cannot be served end soon.
	short := nodeOpts{addTimeout: "5s"}
	warm := rs.joinWith(t, insts[0], roleWarm, short)
	probe := rs.joinWith(t, insts[1], roleProbe, short)
	warm.Agent().WaitConnected(30*time.Second, 3)
	probe.Agent().WaitView(30*time.Second, "connected with no free address", func(v agentPoolView) bool {
		return v.Server.Connected && v.Counts.Free == 0
	})
	harness.Eventually(t, 20*time.Second, "every replica healthy and ready", func() error { return rs.allHealthy(ctx) })
	step("nodes ready")

	// One member lost (the raft leader, the worst one to lose): everything keeps working.
	first := rs.etcdLeader(t)
	ipledgerLeader := c.WaitLeader(20*time.Second, nil)
	leaderRun := ipledgerLeader.Runs()
	killedAt := time.Now()
	if err := c.Etcd.Kill(first); err != nil {
		t.Fatal(err)
	}
	step("killed etcd member m%d", first)
	pr := startPod(probe, probe.pod("one-member-lost"), killedAt.Add(30*time.Second))
	step("probe ADD: %s", pr)
	if pr.err != nil {
		t.Fatalf("with one etcd member lost, no allocation: %s", pr)
	}
	harness.Eventually(t, 20*time.Second, "every replica healthy and ready with one member lost", func() error { return rs.allHealthy(ctx) })
	after := c.WaitLeader(20*time.Second, nil)
	leadership := "unchanged"
	if after != ipledgerLeader || after.Runs() != leaderRun {
		// With a session TTL close to etcd's election time, the leader's session can expire
		// while etcd elects a new raft leader; the replica then exits and another one leads.
		leadership = fmt.Sprintf("moved from replica %d (run %d) to replica %d (run %d)", ipledgerLeader.Index, leaderRun, after.Index, after.Runs())
	}
	step("ipledger leadership %s", leadership)
	rs.figs.add("one etcd member lost (m%d, the raft leader): allocation served after %s (%d attempt(s)); ipledger leadership %s",
		first, ms(pr.done.Sub(killedAt)), pr.attempts, leadership)
	rs.settle(t, "one etcd member lost")

	// The probe's pool must be empty again before quorum goes: the leader that lost its session
	// above may have assigned an address on EC2 without committing it, which reconciliation
	// adopts into the probe's lease, and the probe then gives the surplus back.
	probe.Agent().WaitView(30*time.Second, "connected with no free address again", func(v agentPoolView) bool {
		return v.Server.Connected && v.Counts.Free == 0
	})

	// Quorum lost.
	second := (first + 1) % c.Etcd.Size()
	warmFree := warm.Agent().WaitConnected(10*time.Second, 3).Counts.Free
	revBefore, err := c.Store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lostAt := time.Now()
	if err := c.Etcd.Kill(second); err != nil {
		t.Fatal(err)
	}
	step("killed etcd member m%d: quorum lost", second)
	// Every replica that answers says its store is unhealthy.
	var ans map[*harness.ServerProc]replicaState
	harness.Eventually(t, 20*time.Second, "the replicas to report etcd unhealthy", func() error {
		ans = rs.answering(ctx)
		if len(ans) == 0 {
			return errors.New("no replica answers")
		}
		for r, s := range ans {
			st := s.status
			if st.GetStoreHealthy() {
				return fmt.Errorf("replica %d says its store is healthy", r.Index)
			}
			if st.GetIsLeader() {
				return fmt.Errorf("replica %d still says it leads", r.Index)
			}
		}
		return nil
	})
	said := time.Since(lostAt)
	step("every answering replica says etcd is unhealthy")
	for r, s := range ans {
		st := s.status
		if err := s.ready; err == nil {
			t.Errorf("replica %d is ready without etcd quorum", r.Index)
		} else if nr := (*harness.NotReadyError)(nil); !errors.As(err, &nr) || nr.Status != 503 || !strings.Contains(nr.Body, "etcd") {
			t.Errorf("replica %d /readyz without quorum: %v, want 503 naming etcd", r.Index, err)
		}
		t.Logf("replica %d without quorum: store_healthy=%v %q, leader %q", r.Index, st.GetStoreHealthy(), st.GetStoreMessage(), st.GetLeader())
	}
	step("replicas' status and /readyz checked")
	// ipledgerctl status says so too.
	someone := rs.someReplica(t)
	res := harness.Ctl(t, someone, "status", "-o", "json")
	var cs struct {
		StoreHealthy bool   `json:"store_healthy"`
		StoreMessage string `json:"store_message"`
	}
	if res.Exit != 0 || json.Unmarshal([]byte(res.Stdout), &cs) != nil || cs.StoreHealthy || cs.StoreMessage == "" {
		t.Errorf("ipledgerctl status without quorum: want exit 0 with store_healthy false and a message:\n%s", res)
	}
	// Changes fail with a clear error: a drain through ipledgerctl, RequestAddresses on every
	// replica that answers.
	step("ipledgerctl status checked")
	res = harness.Ctl(t, someone, "drain", warm.Name())
	if res.Exit != 1 || !mentionsUnavailable(res.Stderr) {
		t.Errorf("ipledgerctl drain without quorum: want exit 1 saying etcd or the leader is unavailable:\n%s", res)
	}
	t.Logf("ipledgerctl drain without quorum: exit %d: %s", res.Exit, strings.TrimSpace(res.Stderr))
	step("ipledgerctl drain checked")
	for r := range ans {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.NodeService(r.Index).RequestAddresses(rctx, &ipledgerv1.RequestAddressesRequest{NodeName: probe.Name(), Count: 1})
		cancel()
		reason, _ := api.ReasonOf(err)
		if status.Code(err) != codes.Unavailable || (reason != "STORE_UNAVAILABLE" && reason != "NOT_LEADER") {
			t.Errorf("RequestAddresses on replica %d without quorum: %v (reason %q), want UNAVAILABLE with STORE_UNAVAILABLE or NOT_LEADER", r.Index, err, reason)
		}
		t.Logf("RequestAddresses on replica %d without quorum: %s (%s): %s", r.Index, status.Code(err), reason, status.Convert(err).Message())
	}
	step("changes refused")
	// Agents keep serving from their pools.
	var served []*podRun
	for i := range min(warmFree, 2) {
		pr := startPod(warm, warm.pod(fmt.Sprintf("no-quorum-%d", i)), time.Now())
		if pr.err != nil {
			t.Errorf("ADD on a node with free addresses, without quorum: %s", pr)
		}
		served = append(served, pr)
	}
	// A node with an empty pool cannot get an address and says why (CNI code 11).
	stuck := probe.pod("no-quorum")
	e := probe.plugin("ADD", stuck).CNIError(t)
	if e.Code != types.ErrTryAgainLater || !clearReason(e.Msg) {
		t.Errorf("ADD on an empty pool without quorum: code %d %q, want 11 with a reason", e.Code, e.Msg)
	}
	t.Logf("ADD on an empty pool without quorum: code %d: %s", e.Code, e.Msg)
	probe.plugin("DEL", stuck).MustSucceed(t, "DEL after the failed ADD")
	step("pods served from pools; an empty pool says why")
	if revNow, err := rs.storeRevision(ctx); err == nil {
		t.Errorf("etcd answered a read without quorum (revision %d)", revNow)
	}

	// Quorum returns: the second member comes back first.
	restoredAt := time.Now()
	if err := c.Etcd.Restart(second); err != nil {
		t.Fatal(err)
	}
	step("restarted m%d: quorum is back", second)
	pr = startPod(probe, probe.pod("quorum-back"), restoredAt.Add(60*time.Second))
	step("probe ADD: %s", pr)
	if pr.err != nil {
		t.Fatalf("after quorum returned, no allocation: %s", pr)
	}
	recovered := pr.done.Sub(restoredAt)
	harness.Eventually(t, 30*time.Second, "every replica healthy and ready after quorum returned", func() error { return rs.allHealthy(ctx) })
	ready := time.Since(restoredAt)
	step("every replica healthy and ready")
	if err := c.Etcd.Restart(first); err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 30*time.Second, "every etcd member healthy", func() error { return rs.etcdHealthy(ctx) })
	state, err := c.Store.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if state.Nodes[warm.Name()].Draining {
		t.Errorf("the drain refused without quorum was applied: %s is draining", warm.Name())
	}
	if state.Revision < revBefore.Revision {
		t.Errorf("etcd revision went back from %d to %d", revBefore.Revision, state.Revision)
	}
	step("every etcd member back")
	// Changes work again.
	if res := harness.Ctl(t, rs.someReplica(t), "drain", warm.Name()); res.Exit != 0 {
		t.Errorf("drain after quorum returned:\n%s", res)
	}
	if res := harness.Ctl(t, rs.someReplica(t), "drain", "--undo", warm.Name()); res.Exit != 0 {
		t.Errorf("drain --undo after quorum returned:\n%s", res)
	}
	warm.Agent().WaitConnected(30*time.Second, 3)
	rs.figs.add("etcd quorum lost (m%d and m%d down): replicas said store_healthy=false after %s; %d ADD(s) served from a warm pool meanwhile; quorum back (m%d restarted) -> first allocation served after %s (%d attempt(s)), every replica ready after %s",
		first, second, ms(said), len(served), second, ms(recovered), pr.attempts, ms(ready))
	rs.settle(t, "etcd quorum lost and back")
}

// storeRevision reads etcd's revision with a short deadline (fails without quorum).
func (rs *resilience) storeRevision(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := rs.c.Store.Load(ctx)
	if err != nil {
		return 0, err
	}
	return st.Revision, nil
}

// mentionsUnavailable reports whether an error message tells that the change could not be made
// because etcd or the leader is unavailable.
func mentionsUnavailable(s string) bool {
	for _, w := range []string{"STORE_UNAVAILABLE", "NOT_LEADER", "Unavailable", "no leader"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}
