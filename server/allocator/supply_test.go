package allocator

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

func (e *env) setPolicy(p policy.Policy) {
	e.t.Helper()
	if _, err := e.a.SetPolicy(e.ctx, p); err != nil {
		e.t.Fatal(err)
	}
}

// messages drains what a subscription holds now.
func messages(t *testing.T, s *Subscription) []SyncMessage {
	t.Helper()
	done, cancel := context.WithCancel(t.Context())
	cancel()
	var out []SyncMessage
	for {
		m, err := s.Next(done)
		if err != nil {
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("subscription ended: %v", err)
			}
			return out
		}
		out = append(out, m)
	}
}

func lastProposal(ms []SyncMessage) *ledger.ReleaseProposal {
	var p *ledger.ReleaseProposal
	for _, m := range ms {
		if m.Proposal != nil {
			p = m.Proposal
		}
	}
	return p
}

// A static target beyond one ENI's secondaries makes supply create, attach and commit a second,
// tagged ENI; the release lane then sets DeleteOnTermination on it.
func TestSupplyAddsAnENIWhenThePrimaryIsFull(t *testing.T) {
	e := newEnv(t, nil)
	e.setPolicy(policy.Policy{Name: "twelve", Order: 1, MinimumIPTarget: policy.U32(12)})
	node := e.register("m5.large", subnetA) // 9 secondaries per ENI
	e.step(node)
	rec := e.record(node)
	if len(rec.ENIs) != 2 || len(e.active(node)) != 12 {
		t.Fatalf("want 2 ENIs holding 12 addresses, got %d ENIs and %v", len(rec.ENIs), e.active(node))
	}
	var second ledger.ENIRecord
	for _, x := range rec.ENIs {
		if x.DeviceIndex == 1 {
			second = x
		}
	}
	for _, x := range e.ec2.snapshot() {
		if x.ID != second.ID {
			continue
		}
		if x.Tags[TagCluster] != testCluster || x.Tags[TagNode] != node || x.Attachment == nil || !x.Attachment.DeleteOnTermination {
			t.Fatalf("the new ENI on EC2: %+v (attachment %+v)", x, x.Attachment)
		}
	}
	if !e.st.nodes[node].ENIs[1].DeleteOnTermination && !e.st.nodes[node].ENIs[0].DeleteOnTermination {
		t.Fatal("DeleteOnTermination was not committed")
	}
}

// In prefix mode a node leases /28 prefixes, which EC2 has on its ENI.
func TestPrefixModeLeasesPrefixes(t *testing.T) {
	e := newEnv(t, nil)
	e.setPolicy(policy.Policy{Name: "pfx", Order: 1, Mode: ledger.ModePrefix, Selector: policy.Selector{InstanceTypes: []string{"m5.xlarge"}}})
	node := e.register("m5.xlarge", subnetA)
	e.step(node)
	rec := e.record(node)
	if rec.Mode != ledger.ModePrefix || len(rec.ENIs[0].Prefixes) != 1 {
		t.Fatalf("want one prefix in prefix mode, got mode %s, ENIs %+v", rec.Mode, rec.ENIs)
	}
	p := rec.ENIs[0].Prefixes[0].Prefix
	found := false
	for _, x := range e.ec2.snapshot() {
		for _, q := range x.Prefixes {
			found = found || (x.ID == rec.ENIs[0].ID && q == p)
		}
	}
	if !found {
		t.Fatalf("EC2 does not have %s on %s", p, rec.ENIs[0].ID)
	}
}

// Surplus is proposed for release; confirmed items are unassigned on EC2 and dropped from the
// lease, refused ones become ACTIVE again.
func TestReleaseHandshake(t *testing.T) {
	e := newEnv(t, nil)
	e.setPolicy(policy.Policy{Name: "five", Order: 1, MinimumIPTarget: policy.U32(5)})
	node := e.register("m5.large", subnetA)
	e.step(node)
	held := e.active(node)
	if len(held) != 5 {
		t.Fatalf("held %v, want 5", held)
	}
	sub := e.subscribe(node)
	e.usage(node, held[0])
	if err := e.a.DeletePolicy(e.ctx, "five"); err != nil { // back to the adaptive default: 1 free
		t.Fatal(err)
	}
	e.step(node)
	p := lastProposal(messages(t, sub))
	if p == nil || len(p.Items) != 3 {
		t.Fatalf("want a proposal of 3 items (5 held, 1 in use, 1 free kept), got %+v", p)
	}
	confirmed, refused := p.Items[:2], p.Items[2:]
	if err := e.a.AckRelease(e.ctx, node, ReleaseAck{ProposalID: p.ID, Confirmed: confirmed, Refused: refused}); err != nil {
		t.Fatal(err)
	}
	if err := e.a.AckRelease(e.ctx, node, ReleaseAck{ProposalID: p.ID, Confirmed: confirmed}); err != nil {
		t.Fatalf("a stale ack must change nothing, got %v", err)
	}
	e.a.releaseLane(e.ctx, e.ns(node))
	eni := e.record(node).PrimaryENI
	for _, it := range confirmed {
		ip := netip.MustParseAddr(it)
		if e.ec2Has(eni, ip) {
			t.Fatalf("%s is still on EC2 after the release", ip)
		}
		if _, ok := e.a.led.OwnerOf(ip); ok {
			if o, _ := e.a.led.OwnerOf(ip); o.Kind == ledger.OwnerLeased {
				t.Fatalf("%s is still leased", ip)
			}
		}
	}
	if st, ok := poolItemState(&Pool{Node: e.record(node)}, refused[0]); !ok || st != ledger.LeaseActive {
		t.Fatalf("refused %s: state %q, want active", refused[0], st)
	}
	if e.ec2.callCount("UnassignPrivateIpAddresses") != 1 {
		t.Fatalf("want one UnassignPrivateIpAddresses, got %d", e.ec2.callCount("UnassignPrivateIpAddresses"))
	}
}

// A proposal nobody answers is taken back after the proposal timeout; an ack naming items the
// proposal does not hold is refused.
func TestProposalExpiresAndBadAcksAreRefused(t *testing.T) {
	e := newEnv(t, nil)
	e.setPolicy(policy.Policy{Name: "three", Order: 1, MinimumIPTarget: policy.U32(3)})
	node := e.register("m5.large", subnetA)
	e.step(node)
	sub := e.subscribe(node)
	e.usage(node)
	if err := e.a.DeletePolicy(e.ctx, "three"); err != nil {
		t.Fatal(err)
	}
	e.step(node)
	p := lastProposal(messages(t, sub))
	if p == nil {
		t.Fatal("no proposal")
	}
	err := e.a.AckRelease(e.ctx, node, ReleaseAck{ProposalID: p.ID, Confirmed: []string{"10.9.9.9"}})
	var ia *InvalidArgumentError
	if !errors.As(err, &ia) {
		t.Fatalf("an ack of an item not proposed: %v, want an invalid argument", err)
	}
	e.clk.Advance(2 * time.Minute)
	e.a.expireProposal(e.ctx, e.ns(node))
	rec := e.record(node)
	if rec.Proposal != nil {
		t.Fatalf("the proposal is still open after its timeout: %+v", rec.Proposal)
	}
	for _, it := range p.Items {
		if st, _ := poolItemState(&Pool{Node: rec}, it); st != ledger.LeaseActive {
			t.Fatalf("%s is %s after the proposal expired, want active", it, st)
		}
	}
}

// EC2 failures: throttling holds supply back for a back-off; an assign whose answer was lost is
// found on EC2 and committed; a failed commit is retried by the next pass.
func TestSupplyFailures(t *testing.T) {
	e := newEnv(t, nil)
	node := e.register("m5.large", subnetA)
	e.ec2.fault = func(action string) fakeFault {
		if action == "AssignPrivateIpAddresses" {
			return faultThrottle
		}
		return faultNone
	}
	e.step(node)
	ns := e.ns(node)
	e.a.mu.Lock()
	problem, next := ns.problem, ns.nextSupply
	e.a.mu.Unlock()
	if !errors.Is(problem, ErrThrottled) || !next.After(e.clk.Now()) {
		t.Fatalf("throttled supply: problem %v, next supply %v (now %v)", problem, next, e.clk.Now())
	}
	e.step(node) // within the back-off: no call
	if n := e.ec2.callCount("AssignPrivateIpAddresses"); n != 1 {
		t.Fatalf("%d assigns within the back-off, want 1", n)
	}
	e.ec2.fault = func(action string) fakeFault {
		if action == "AssignPrivateIpAddresses" {
			return faultLate
		}
		return faultNone
	}
	e.clk.Advance(time.Minute)
	e.step(node)
	if got := e.active(node); len(got) != 1 || !e.ec2Has(e.record(node).PrimaryENI, got[0]) {
		t.Fatalf("an assign whose answer was lost: leased %v", got)
	}
	// A commit that fails after EC2 assigned: the addresses stay reserved and are committed by
	// the next pass.
	e.ec2.fault = nil
	e.setPolicy(policy.Policy{Name: "four", Order: 1, MinimumIPTarget: policy.U32(4)})
	fails := 1
	e.st.fail = func() error {
		if fails > 0 {
			fails--
			return errors.New("etcd unavailable")
		}
		return nil
	}
	e.step(node)
	e.a.mu.Lock()
	pending := len(ns.uncommitted)
	e.a.mu.Unlock()
	if pending != 1 {
		t.Fatalf("want the failed commit queued, got %d", pending)
	}
	e.clk.Advance(time.Minute)
	e.step(node)
	if got := len(e.active(node)); got != 4 {
		t.Fatalf("after the retry the node holds %d, want 4", got)
	}
	if got := len(e.st.nodes[node].ENIs[0].Addresses); got != 4 {
		t.Fatalf("the store holds %d, want 4", got)
	}
}

// A full subnet budget stops supply with the budget's reason; CanFit says why nodes do not fit.
func TestSubnetBudgetAndCanFit(t *testing.T) {
	e := newEnv(t, nil)
	node := e.register("m5.large", subnetA)
	b, err := e.a.led.Budget(subnetA, e.clk.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.a.SetSubnetBudget(e.ctx, subnetA, b.Held, 0); err != nil {
		t.Fatal(err)
	}
	e.step(node)
	if p := e.ns(node).problem; !errors.Is(p, ErrBudgetExhausted) || !definitive(p) {
		t.Fatalf("supply under a full budget: %v, want a definitive ErrBudgetExhausted", p)
	}
	if _, err := e.a.SetSubnetBudget(e.ctx, subnetA, 1<<20, 0); err == nil {
		t.Fatal("a budget above the subnet's size was accepted")
	}
	if _, err := e.a.SetSubnetBudget(e.ctx, "subnet-00000000000000099", 10, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an unknown subnet: %v", err)
	}
	res, err := CanFit(e.a.led, CanFitRequest{SubnetID: subnetA, NodeCount: 3, PodsPerNode: 10, InstanceType: "m5.large"}, e.clk.Now())
	if err != nil || res.Fits || len(res.Reasons) == 0 {
		t.Fatalf("CanFit under a full budget: %+v, %v", res, err)
	}
	if _, err := CanFit(e.a.led, CanFitRequest{NodeCount: 1}, e.clk.Now()); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("CanFit without a subnet or zone: %v", err)
	}
	if _, err := CanFit(e.a.led, CanFitRequest{AvailabilityZone: "eu-west-9z", NodeCount: 1}, e.clk.Now()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CanFit in an unused zone: %v", err)
	}
	if _, err := CanFit(e.a.led, CanFitRequest{SubnetID: subnetA, NodeCount: 1, InstanceType: "x9.huge"}, e.clk.Now()); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("CanFit with an unknown type: %v", err)
	}
}

// Draining a node leaves it what its pods use; waiting pods are told at once.
func TestDrain(t *testing.T) {
	e := newEnv(t, nil)
	e.setPolicy(policy.Policy{Name: "four", Order: 1, MinimumIPTarget: policy.U32(4)})
	node := e.register("m5.large", subnetA)
	e.step(node)
	sub := e.subscribe(node)
	e.usage(node, e.active(node)[0])
	if err := e.a.Drain(e.ctx, node, false); err != nil {
		t.Fatal(err)
	}
	e.step(node)
	p := lastProposal(messages(t, sub))
	if p == nil || len(p.Items) != 3 {
		t.Fatalf("a drained node with one pod: proposal %+v, want its 3 free addresses", p)
	}
	if _, err := e.a.RequestAddresses(e.ctx, node, 1, 0); !errors.Is(err, ErrDraining) {
		t.Fatalf("RequestAddresses on a drained node: %v", err)
	}
	if err := e.a.Drain(e.ctx, node, true); err != nil || e.record(node).Draining {
		t.Fatalf("undrain: %v", err)
	}
	if err := e.a.Drain(e.ctx, "nobody", false); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("drain an unknown node: %v", err)
	}
}

func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{
		{apiErr("A", "RequestLimitExceeded", ec2gw.ErrThrottled), ErrThrottled},
		{apiErr("A", "InsufficientFreeAddressesInSubnet", ec2gw.ErrSubnetFull), ErrSubnetExhausted},
		{apiErr("A", "InsufficientCidrBlocks", ec2gw.ErrNoCidrBlock), ErrNoFreePrefixBlock},
		{apiErr("A", "AttachmentLimitExceeded", ec2gw.ErrAttachmentLimit), ErrNodeAtLimit},
		{apiErr("A", "InternalError", ec2gw.ErrUnavailable), ErrEC2},
	} {
		if got := ec2Err(tc.err, "subnet-1"); !errors.Is(got, tc.want) {
			t.Errorf("ec2Err(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	for _, tc := range []struct {
		err  error
		want error
	}{
		{ledger.ErrBudgetExhausted, ErrBudgetExhausted}, {ledger.ErrNoFreePrefixBlock, ErrNoFreePrefixBlock},
		{ledger.ErrSubnetExhausted, ErrSubnetExhausted}, {errors.New("other"), ErrEC2},
	} {
		if got := ledgerErr(tc.err, "subnet-1"); !errors.Is(got, tc.want) {
			t.Errorf("ledgerErr(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	if definitive(ErrThrottled) || !definitive(ErrNodeAtLimit) {
		t.Error("definitive: throttling is not, a node at its limit is")
	}
}

func TestRegistrationValidation(t *testing.T) {
	e := newEnv(t, nil)
	good := e.instance("m5.large", subnetA)
	for _, tc := range []struct {
		field string
		mod   func(*Registration)
	}{
		{"node_name", func(r *Registration) { r.NodeName = "Bad_Name" }},
		{"instance_id", func(r *Registration) { r.InstanceID = "x-1" }},
		{"instance_type", func(r *Registration) { r.InstanceType = "x9.huge" }},
		{"availability_zone", func(r *Registration) { r.AvailabilityZone = "nowhere" }},
		{"subnet_id", func(r *Registration) { r.SubnetID = "sub" }},
		{"primary_eni_id", func(r *Registration) { r.PrimaryENI = "eni" }},
		{"primary_ip", func(r *Registration) { r.PrimaryIP = netip.Addr{} }},
		{"labels", func(r *Registration) { r.Labels = map[string]string{"bad key!": "v"} }},
		{"agent_version", func(r *Registration) { r.AgentVersion = string(make([]byte, 200)) }},
	} {
		r := good
		tc.mod(&r)
		_, _, err := e.a.RegisterNode(e.ctx, r)
		var ia *InvalidArgumentError
		if !errors.As(err, &ia) || ia.Field != tc.field {
			t.Errorf("%s: got %v", tc.field, err)
		}
	}
	if e.ec2.callCount("DescribeInstances") != 0 {
		t.Fatal("invalid registrations reached EC2")
	}
	// EC2 disagrees with the request.
	r := good
	r.PrimaryIP = netip.MustParseAddr("10.0.0.200")
	if _, _, err := e.a.RegisterNode(e.ctx, r); !errors.Is(err, ErrInstanceMismatch) {
		t.Fatalf("wrong primary IP: %v", err)
	}
	r = good
	r.InstanceID = "i-0000000000000ffff"
	if _, _, err := e.a.RegisterNode(e.ctx, r); !errors.Is(err, ErrInstanceMismatch) {
		t.Fatalf("an instance EC2 does not know: %v", err)
	}
}

// A name registered for an instance that is gone passes to the new instance; labels of a
// repeated registration are updated.
func TestRegistrationTakesOverANameFromAGoneInstance(t *testing.T) {
	e := newEnv(t, nil)
	old := e.instance("m5.large", subnetA)
	if _, _, err := e.a.RegisterNode(e.ctx, old); err != nil {
		t.Fatal(err)
	}
	old.Labels = map[string]string{"team": "a"}
	if _, _, err := e.a.RegisterNode(e.ctx, old); err != nil || e.record(old.NodeName).Labels["team"] != "a" {
		t.Fatalf("labels of a repeated registration: %v, %v", err, e.record(old.NodeName).Labels)
	}
	e.ec2.terminate(old.InstanceID)
	repl := e.instance("m5.large", subnetA)
	repl.NodeName = old.NodeName
	if _, _, err := e.a.RegisterNode(e.ctx, repl); err != nil {
		t.Fatalf("the new instance under the old name: %v", err)
	}
	if got := e.record(old.NodeName).InstanceID; got != repl.InstanceID {
		t.Fatalf("the name belongs to %s, want %s", got, repl.InstanceID)
	}
	other := e.instance("m5.large", subnetA)
	other.NodeName = "another"
	other.InstanceID = repl.InstanceID
	if _, _, err := e.a.RegisterNode(e.ctx, other); err == nil {
		t.Fatal("an instance registered under two names")
	}
}

// An empty ENI whose delete stopped after the detach (DeleteNetworkInterface failed) gets no
// addresses from supply (EC2 would assign them to an ENI no instance has); the next release
// pass, or reconciliation, finishes the delete.
func TestSupplyLeavesAnENIBeingDeleted(t *testing.T) {
	e := newEnv(t, nil)
	e.setPolicy(policy.Policy{Name: "twelve", Order: 1, MinimumIPTarget: policy.U32(12)})
	node := e.register("m5.large", subnetA)
	e.step(node)
	sub := e.subscribe(node)
	e.usage(node)
	if err := e.a.DeletePolicy(e.ctx, "twelve"); err != nil {
		t.Fatal(err)
	}
	e.step(node)
	p := lastProposal(messages(t, sub))
	if p == nil {
		t.Fatal("no proposal")
	}
	if err := e.a.AckRelease(e.ctx, node, ReleaseAck{ProposalID: p.ID, Confirmed: p.Items}); err != nil {
		t.Fatal(err)
	}
	e.ec2.fault = func(action string) fakeFault {
		if action == "DeleteNetworkInterface" {
			return faultFail
		}
		return faultNone
	}
	e.a.releaseLane(e.ctx, e.ns(node)) // unassigns, detaches the emptied second ENI, fails its delete
	rec := e.record(node)
	if len(rec.ENIs) != 2 {
		t.Fatalf("the ENI whose delete failed left the record: %+v", rec.ENIs)
	}
	second := rec.ENIs[1]
	for _, x := range e.ec2.snapshot() {
		if x.ID == second.ID && x.Attachment != nil {
			t.Fatalf("the emptied ENI is still attached: %+v", x.Attachment)
		}
	}
	// Demand comes back: supply uses the primary ENI or a new one, never the detached one.
	e.setPolicy(policy.Policy{Name: "twelve", Order: 1, MinimumIPTarget: policy.U32(12)})
	e.clk.Advance(time.Minute)
	e.a.supply(e.ctx, e.ns(node))
	for _, x := range e.record(node).ENIs {
		if x.ID == second.ID && len(x.Addresses) > 0 {
			t.Fatalf("supply assigned %v to the detached ENI %s", x.Addresses, x.ID)
		}
	}
	e.ec2.fault = nil
	e.a.releaseLane(e.ctx, e.ns(node))
	for _, x := range e.record(node).ENIs {
		if x.ID == second.ID {
			t.Fatalf("the detached ENI is still in the record: %+v", e.record(node).ENIs)
		}
	}
}

// An attach or an unassign whose answer is lost (EC2 did the work) is read again at once: the
// attached ENI is kept and leased (not deleted as a failed attach), and the unassigned
// addresses leave the lease in the same pass, without another call to unassign them.
func TestUnknownOutcomesAreReadAgainAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	e.setPolicy(policy.Policy{Name: "twelve", Order: 1, MinimumIPTarget: policy.U32(12)})
	node := e.register("m5.large", subnetA) // 9 secondary addresses per ENI: 12 needs a second ENI
	lost := map[string]bool{"AttachNetworkInterface": true, "UnassignPrivateIpAddresses": true}
	e.ec2.fault = func(action string) fakeFault {
		if lost[action] {
			return faultLate
		}
		return faultNone
	}
	e.step(node)
	rec := e.record(node)
	if len(rec.ENIs) != 2 || len(e.active(node)) != 12 {
		t.Fatalf("after an attach whose answer was lost: %d ENIs, %d addresses, want 2 and 12", len(rec.ENIs), len(e.active(node)))
	}
	if n := e.ec2.callCount("DeleteNetworkInterface"); n != 0 {
		t.Fatalf("the attached ENI was deleted as a failed attach (%d deletes)", n)
	}
	held := e.active(node)
	sub := e.subscribe(node)
	e.usage(node, held[0])
	if err := e.a.DeletePolicy(e.ctx, "twelve"); err != nil {
		t.Fatal(err)
	}
	e.step(node)
	p := lastProposal(messages(t, sub))
	if p == nil || len(p.Items) == 0 {
		t.Fatalf("no release proposal: %+v", p)
	}
	if err := e.a.AckRelease(e.ctx, node, ReleaseAck{ProposalID: p.ID, Confirmed: p.Items}); err != nil {
		t.Fatal(err)
	}
	e.a.releaseLane(e.ctx, e.ns(node))
	for _, it := range p.Items {
		ip := netip.MustParseAddr(it)
		if o, ok := e.a.led.OwnerOf(ip); ok && o.Kind == ledger.OwnerLeased {
			t.Fatalf("%s: unassigned on EC2 (answer lost) but still leased after the pass", ip)
		}
	}
	if n := e.ec2.callCount("UnassignPrivateIpAddresses"); n > len(rec.ENIs) {
		t.Fatalf("%d unassign calls for %d ENIs: the lost answers were retried instead of read", n, len(rec.ENIs))
	}
}
