package allocator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ledger"
)

// waitFor polls cond (in real time) until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// running starts Run with its loops, the fake clock moving 100 ms every millisecond of wall
// time, and stops it at the end of the test.
func (e *env) running() (stop func() error) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- e.a.Run(ctx) }()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			time.Sleep(time.Millisecond)
			e.clk.Advance(100 * time.Millisecond)
		}
	}()
	select {
	case <-e.a.Started():
	case err := <-done:
		e.t.Fatalf("Run: %v", err)
	}
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
			wg.Wait()
		})
		return err
	}
	e.t.Cleanup(func() { stop() })
	return stop
}

// The allocator's loops, workers and API together, concurrently: many nodes register at once,
// waiting pods get addresses, agents take in pools and answer proposals, the policy changes; no
// address is leased twice and no lock is held across I/O (the lock watch).
func TestRunServesNodesConcurrently(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Workers, c.ReleaseWorkers = 4, 2 })
	e.running()
	const nodes = 12
	var reqs []Registration
	for i := range nodes {
		subnet := subnetA
		if i%3 == 0 {
			subnet = subnetB
		}
		reqs = append(reqs, e.instance("m5.large", subnet))
	}
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	for _, r := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := e.a.RegisterNode(e.ctx, r); err != nil {
				errs <- fmt.Errorf("register %s: %w", r.NodeName, err)
				return
			}
			sub, err := e.a.Subscribe(r.NodeName)
			if err != nil {
				errs <- err
				return
			}
			defer e.a.Unsubscribe(sub)
			ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
			defer cancel()
			pool, err := e.a.RequestAddresses(ctx, r.NodeName, 2, 0)
			if err != nil {
				errs <- fmt.Errorf("request addresses for %s: %w", r.NodeName, err)
				return
			}
			if pool.Node.Name != r.NodeName {
				errs <- fmt.Errorf("a pool of %s for %s", pool.Node.Name, r.NodeName)
			}
			// The agent reports and answers whatever it is asked.
			if err := e.a.ReportUsage(r.NodeName, Usage{}); err != nil {
				errs <- err
			}
			for {
				m, err := sub.Next(ctx)
				if err != nil {
					return
				}
				if m.Proposal != nil {
					_ = e.a.AckRelease(ctx, r.NodeName, ReleaseAck{ProposalID: m.Proposal.ID, Confirmed: m.Proposal.Items})
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	e.setPolicy(policy.Policy{Name: "three", Order: 1, MinimumIPTarget: policy.U32(3)})
	waitFor(t, 10*time.Second, "every node at the new target", func() bool {
		for _, r := range reqs {
			if len(e.active(r.NodeName)) < 3 {
				return false
			}
		}
		return true
	})
	seen := map[string]string{}
	for name, rec := range e.st.nodes {
		for _, x := range rec.ENIs {
			for _, ad := range x.Addresses {
				if other, ok := seen[ad.IP.String()]; ok {
					t.Fatalf("%s is leased to %s and %s", ad.IP, other, name)
				}
				seen[ad.IP.String()] = name
			}
		}
	}
	rt, ok := e.a.Runtime(reqs[0].NodeName)
	if !ok || rt.Targets.WantAddresses < 3 || rt.Policy.Name != "three" {
		t.Fatalf("runtime of %s: %+v", reqs[0].NodeName, rt)
	}
}

func TestRunEndsWhenLeadershipIsLost(t *testing.T) {
	e := newEnv(t, nil)
	node := e.register("m5.large", subnetA)
	sub := e.subscribe(node)
	stop := e.running()
	e.st.depose()
	waitFor(t, 10*time.Second, "the stream to end", func() bool {
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Millisecond)
		defer cancel()
		_, err := sub.Next(ctx)
		return errors.Is(err, ErrNotLeader)
	})
	if err := stop(); !errors.Is(err, ErrLostLeadership) {
		t.Fatalf("Run returned %v, want ErrLostLeadership", err)
	}
}

// RequestAddresses waits for a pool with a free address, or fails at once with a definitive
// reason, or when its deadline passes.
func TestRequestAddresses(t *testing.T) {
	e := newEnv(t, nil)
	node := e.register("m5.large", subnetA)
	if _, err := e.a.RequestAddresses(e.ctx, node, 0, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("count 0: %v", err)
	}
	if _, err := e.a.RequestAddresses(e.ctx, "nobody", 1, 0); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("unknown node: %v", err)
	}
	// Nobody works the queue: the deadline passes.
	ctx, cancel := context.WithTimeout(e.ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := e.a.RequestAddresses(ctx, node, 1, 0); !errors.Is(err, ErrSupplyTimeout) {
		t.Fatalf("no supply before the deadline: %v", err)
	}
	e.running()
	pool, err := e.a.RequestAddresses(e.ctx, node, 1, 0)
	if err != nil || pool.Generation == 0 {
		t.Fatalf("with workers: %+v, %v", pool, err)
	}
	b, _ := e.a.led.Budget(subnetA, e.clk.Now())
	if _, err := e.a.SetSubnetBudget(e.ctx, subnetA, b.Held, 0); err != nil {
		t.Fatal(err)
	}
	e.usage(node, e.active(node)...)
	if _, err := e.a.RequestAddresses(e.ctx, node, 4, pool.Generation); !errors.Is(err, ErrBudgetExhausted) {
		t.Fatalf("under a full budget: %v, want ErrBudgetExhausted at once", err)
	}
}

// Policies: the default is listed until replaced; a policy that matches moves its nodes to it,
// deleting it moves them back.
func TestPoliciesAreMatchedAndRematched(t *testing.T) {
	e := newEnv(t, nil)
	node := e.register("m5.large", subnetA)
	if ps := e.a.Policies(); len(ps) != 1 || ps[0].Name != policy.DefaultName {
		t.Fatalf("policies of a new cluster: %+v", ps)
	}
	if _, err := e.a.SetPolicy(e.ctx, policy.Policy{Name: "Bad Name"}); !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("an invalid policy: %v", err)
	}
	big := policy.Policy{Name: "big", Order: 5, WarmIPTarget: policy.U32(4), Selector: policy.Selector{InstanceTypes: []string{"m5.large"}}}
	e.setPolicy(big)
	commits := e.st.commits
	e.setPolicy(big) // unchanged: nothing written
	if e.st.commits != commits {
		t.Fatal("setting an unchanged policy committed")
	}
	if rec := e.record(node); rec.Policy != "big" {
		t.Fatalf("the node's policy is %q, want big", rec.Policy)
	}
	e.step(node)
	if got := len(e.active(node)); got != 4 {
		t.Fatalf("under warm_ip_target 4 the node holds %d", got)
	}
	if err := e.a.DeletePolicy(e.ctx, "big"); err != nil {
		t.Fatal(err)
	}
	if rec := e.record(node); rec.Policy != policy.DefaultName {
		t.Fatalf("after the delete the node's policy is %q", rec.Policy)
	}
	if err := e.a.DeletePolicy(e.ctx, "big"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleting a deleted policy: %v", err)
	}
	if _, ok := e.st.policies["big"]; ok {
		t.Fatal("the store still has the deleted policy")
	}
}

// The pool an agent receives carries its subnets' CIDRs and the targets; a node's runtime says
// whether its agent is connected.
func TestPoolAndRuntime(t *testing.T) {
	e := newEnv(t, nil)
	node := e.register("m5.large", subnetA)
	e.step(node)
	p, err := e.a.Pool(node)
	if err != nil {
		t.Fatal(err)
	}
	if p.SubnetCIDRs[subnetA].String() != "10.0.0.0/24" || p.Targets.TargetFree != 1 || p.Node.Name != node {
		t.Fatalf("pool: %+v", p)
	}
	if rt, _ := e.a.Runtime(node); rt.Connected {
		t.Fatal("connected before any stream")
	}
	s := e.subscribe(node)
	if rt, _ := e.a.Runtime(node); !rt.Connected {
		t.Fatal("not connected with a stream open")
	}
	first := messages(t, s)
	if len(first) != 1 || first[0].Pool == nil || first[0].Pool.Generation != p.Generation {
		t.Fatalf("a new stream starts with the pool: %+v", first)
	}
	if _, err := e.a.Pool("nobody"); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("pool of an unknown node: %v", err)
	}
	if err := e.a.ReportUsage("nobody", Usage{}); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("usage of an unknown node: %v", err)
	}
}

// The forecaster samples the ledger on the clock and forecasts when headroom runs out.
func TestForecaster(t *testing.T) {
	e := newEnv(t, nil)
	f := NewForecaster(func() *ledger.Ledger { return e.a.led }, time.Hour, e.clk)
	f.Sample()
	for range 5 {
		e.register("m5.large", subnetA)
		e.clk.Advance(time.Minute)
		f.Sample()
	}
	fc := f.Forecast(subnetA, 100)
	if fc.HeldPerHour <= 0 || !fc.OK || fc.TimeToExhaustion <= 0 {
		t.Fatalf("forecast of a growing subnet: %+v", fc)
	}
	if fc := f.Forecast("subnet-unknown", 100); fc.OK {
		t.Fatalf("forecast of an unknown subnet: %+v", fc)
	}
}

// A node that holds all its policy allows, every address in use, is full: RequestAddresses says
// so at once (ErrNodeAtLimit, naming the node and its type) instead of waiting for a supply that
// cannot come; with one address free again it is served.
func TestRequestAddressesOnAFullNode(t *testing.T) {
	e := newEnv(t, nil)
	e.setPolicy(policy.Policy{Name: "small", Order: 1, MinimumIPTarget: policy.U32(3), MaxAddresses: policy.U32(3),
		Selector: policy.Selector{InstanceTypes: []string{"m5.large"}}})
	node := e.register("m5.large", subnetA)
	e.step(node)
	held := e.active(node)
	if len(held) != 3 {
		t.Fatalf("the node holds %d addresses, want its max of 3", len(held))
	}
	e.usage(node, held...)
	e.running()
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	_, err := e.a.RequestAddresses(ctx, node, 1, e.ns(node).generation)
	if !errors.Is(err, ErrNodeAtLimit) || !strings.Contains(err.Error(), node) || !strings.Contains(err.Error(), "m5.large") {
		t.Fatalf("a full node: %v, want ErrNodeAtLimit naming it", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the answer came only at the deadline")
	}
	e.usage(node, held[:2]...)
	if pool, err := e.a.RequestAddresses(ctx, node, 1, 0); err != nil || pool == nil {
		t.Fatalf("with an address free again: %v", err)
	}
}
