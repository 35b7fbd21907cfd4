package allocator

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

// reconcileAfterGrace runs reconciliation, then again after the drift grace: repairs happen
// only on the second pass.
func (e *env) reconcileAfterGrace() {
	e.t.Helper()
	if _, err := e.a.reconcileAll(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	e.clk.Advance(e.cfg.DriftGrace + time.Second)
	if _, err := e.a.reconcileAll(e.ctx); err != nil {
		e.t.Fatal(err)
	}
}

// kinds of a check report's findings.
func checkKinds(r CheckReport) map[diff.Kind]int {
	out := map[diff.Kind]int{}
	for _, f := range r.Findings {
		out[f.Kind]++
	}
	return out
}

// Check reports every difference (seen on two scans) and repairs nothing; reconciliation
// repairs them once they outlast the drift grace: an address EC2 has on a node's ENI but the
// lease lacks is adopted, a lease EC2 lost is dropped (or assigned again when a pod uses it),
// a leaked ENI is deleted.
func TestReconcileRepairsWhatCheckReports(t *testing.T) {
	e := newEnv(t, nil)
	e.setPolicy(policy.Policy{Name: "three", Order: 1, MinimumIPTarget: policy.U32(3)})
	node := e.register("m5.large", subnetA)
	e.step(node)
	rec := e.record(node)
	eni := rec.PrimaryENI
	held := e.active(node)
	// EC2 loses two leases (one a pod uses), gains an address nobody leased, and holds an ENI
	// tagged for the cluster that nobody owns.
	e.usage(node, held[0])
	leaked := e.ec2.addForeign(subnetA, 1)
	e.ec2.mu.Lock()
	e.ec2.enis[leaked].Tags = map[string]string{TagCluster: testCluster, TagNode: "gone-node"}
	x := e.ec2.enis[eni]
	s := e.ec2.subnets[subnetA]
	orphan, _ := s.lowestFree()
	s.owner[orphan] = eni
	x.SecondaryIPs = []netip.Addr{held[2], orphan}
	delete(s.owner, held[0])
	delete(s.owner, held[1])
	e.ec2.mu.Unlock()

	rep, err := e.a.Check(e.ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	got := checkKinds(rep)
	if rep.OK || got[diff.LeasedNotOnEC2] != 2 || got[diff.OnEC2NotLeased] != 1 || got[diff.LeakedENI] != 1 {
		t.Fatalf("check found %v (%+v), want 2 leases lost, 1 not leased, 1 leaked", got, rep.Findings)
	}
	if rep.NodesChecked != 1 || rep.ENIsChecked != 1 {
		t.Fatalf("check counted %d nodes, %d ENIs", rep.NodesChecked, rep.ENIsChecked)
	}
	if after, _ := e.a.Check(e.ctx, false); !after.OK {
		t.Fatalf("check without EC2 found %+v", after.Findings)
	}

	pending, err := e.a.reconcileAll(e.ctx)
	if err != nil || !pending {
		t.Fatalf("first pass: pending %v, %v; want repairs waiting out the grace", pending, err)
	}
	if !e.ec2Has(eni, orphan) || len(e.active(node)) != 3 {
		t.Fatal("a repair ran before the drift grace")
	}
	e.clk.Advance(e.cfg.DriftGrace + time.Second)
	if _, err := e.a.reconcileAll(e.ctx); err != nil {
		t.Fatal(err)
	}
	now := map[netip.Addr]bool{}
	for _, ip := range e.active(node) {
		now[ip] = true
	}
	if !now[orphan] || !now[held[0]] || now[held[1]] || !e.ec2Has(eni, held[0]) {
		t.Fatalf("after the grace: leased %v; want the orphan %s adopted, %s (in use) assigned again, %s dropped", e.active(node), orphan, held[0], held[1])
	}
	for _, x := range e.ec2.snapshot() {
		if x.ID == leaked {
			t.Fatalf("the leaked ENI %s is still on EC2", leaked)
		}
	}
	if rep, _ := e.a.Check(e.ctx, true); !rep.OK {
		t.Fatalf("check after the repairs: %+v", rep.Findings)
	}
}

// A tagged ENI attached to a node's instance (created by a leader that crashed before its
// commit) is adopted into the node; a managed ENI EC2 lost is dropped.
func TestReconcileAdoptsAnAttachedENIAndDropsAMissingOne(t *testing.T) {
	e := newEnv(t, nil)
	node := e.register("m5.large", subnetA)
	rec := e.record(node)
	created, err := e.ec2.CreateENI(e.ctx, ec2gw.PriorityReconcile, ec2gw.CreateENIInput{SubnetID: subnetA,
		SecondaryIPs: []netip.Addr{netip.MustParseAddr("10.0.0.200")}, Tags: map[string]string{TagCluster: testCluster, TagNode: node}, ClientToken: "t-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.ec2.AttachENI(e.ctx, ec2gw.PriorityReconcile, created.ID, rec.InstanceID, 1, 0); err != nil {
		t.Fatal(err)
	}
	e.reconcileAfterGrace()
	rec = e.record(node)
	if len(rec.ENIs) != 2 || rec.ENIs[1].ID != created.ID || len(rec.ENIs[1].Addresses) != 1 {
		t.Fatalf("the attached ENI was not adopted: %+v", rec.ENIs)
	}
	// EC2 loses it.
	e.ec2.mu.Lock()
	e.ec2.deleteLocked(e.ec2.enis[created.ID], "")
	e.ec2.mu.Unlock()
	e.reconcileAfterGrace()
	if rec = e.record(node); len(rec.ENIs) != 1 {
		t.Fatalf("the lost ENI is still leased: %+v", rec.ENIs)
	}
}

// The instance check removes nodes whose instances are gone; the sweep deletes the ENIs they
// left behind.
func TestInstanceCheckRemovesGoneNodesAndSweepDeletesTheirENIs(t *testing.T) {
	e := newEnv(t, nil)
	e.setPolicy(policy.Policy{Name: "twelve", Order: 1, MinimumIPTarget: policy.U32(12)})
	gone := e.register("m5.large", subnetA)
	stays := e.register("m5.large", subnetA)
	e.step(gone)
	rec := e.record(gone)
	var second string
	for _, x := range rec.ENIs {
		if x.DeviceIndex == 1 {
			second = x.ID
		}
	}
	sub := e.subscribe(gone)
	// The second ENI lost its DeleteOnTermination: it outlives the instance.
	e.ec2.mu.Lock()
	e.ec2.enis[second].Attachment.DeleteOnTermination = false
	e.ec2.mu.Unlock()
	e.ec2.terminate(rec.InstanceID)
	if err := e.a.checkInstances(e.ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.a.led.Node(gone); ok {
		t.Fatal("the node of a terminated instance is still registered")
	}
	if _, ok := e.a.led.Node(stays); !ok {
		t.Fatal("a running node was removed")
	}
	if _, ok := e.st.nodes[gone]; ok {
		t.Fatal("the store still has the removed node")
	}
	ended := false
	for range 10 {
		if _, err := sub.Next(e.ctx); err != nil {
			ended = true
			break
		}
	}
	if !ended {
		t.Fatal("the removed node's stream did not end")
	}
	if err := e.a.sweepOnce(e.ctx); err != nil {
		t.Fatal(err)
	}
	for _, x := range e.ec2.snapshot() {
		if x.ID == second {
			t.Fatalf("the leftover ENI %s was not deleted", second)
		}
	}
}

// A pre-warm reservation creates a tagged ENI with its addresses; a node of its type starting in
// its subnet gets it attached (one EC2 call); a cancelled reservation's unused ENIs are deleted.
func TestPrewarm(t *testing.T) {
	e := newEnv(t, nil)
	pw, err := e.a.Prewarm(e.ctx, PrewarmRequest{SubnetID: subnetA, InstanceType: "m5.large", NodeCount: 2, AddressesPerNode: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.a.prewarmStep(e.ctx, pw.ID); err != nil {
		t.Fatal(err)
	}
	cur, _ := e.a.led.Prewarm(pw.ID)
	if cur.State != ledger.PrewarmReady || cur.ENIs[0].ID == "" || cur.ENIs[1].ID == "" {
		t.Fatalf("after a step: %+v", cur)
	}
	node := e.register("m5.large", subnetA)
	creates := e.ec2.callCount("CreateNetworkInterface")
	e.step(node)
	rec := e.record(node)
	if len(rec.ENIs) != 2 || len(rec.ENIs[1].Addresses) != 3 || e.ec2.callCount("CreateNetworkInterface") != creates {
		t.Fatalf("the starting node: ENIs %+v, creates %d -> %d; want the pre-warmed ENI attached", rec.ENIs, creates, e.ec2.callCount("CreateNetworkInterface"))
	}
	cur, _ = e.a.led.Prewarm(pw.ID)
	attached := 0
	for _, x := range cur.ENIs {
		if x.State == ledger.PrewarmENIAttached {
			attached++
		}
	}
	if attached != 1 {
		t.Fatalf("reservation after the attach: %+v", cur)
	}
	if _, err := e.a.CancelPrewarm(e.ctx, pw.ID); err != nil {
		t.Fatal(err)
	}
	if err := e.a.prewarmStep(e.ctx, pw.ID); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.a.led.Prewarm(pw.ID); ok {
		t.Fatal("the cancelled reservation is still recorded")
	}
	for _, x := range e.ec2.snapshot() {
		if x.Tags[TagPrewarm] == pw.ID && x.Attachment == nil {
			t.Fatalf("an unused pre-warm ENI %s was left", x.ID)
		}
	}
	if _, err := e.a.CancelPrewarm(e.ctx, "pw-bad"); err == nil {
		t.Fatal("a bad reservation id was accepted")
	}
	for _, bad := range []PrewarmRequest{
		{InstanceType: "m5.large", NodeCount: 1, AddressesPerNode: 1},
		{SubnetID: subnetA, InstanceType: "m5.large", NodeCount: 0, AddressesPerNode: 1},
		{SubnetID: subnetA, InstanceType: "m5.large", NodeCount: 1, AddressesPerNode: 50},
		{SubnetID: subnetA, InstanceType: "m5.large", NodeCount: 1, AddressesPerNode: 1, Expiry: time.Millisecond},
		{SubnetID: subnetB, InstanceType: "m5.large", NodeCount: 100, AddressesPerNode: 9},
	} {
		if _, err := e.a.Prewarm(e.ctx, bad); err == nil {
			t.Errorf("Prewarm(%+v) was accepted", bad)
		}
	}
}

// A reservation past its expiry ends and its ENIs go.
func TestPrewarmExpires(t *testing.T) {
	e := newEnv(t, nil)
	pw, err := e.a.Prewarm(e.ctx, PrewarmRequest{AvailabilityZone: testAZ, InstanceType: "m5.large", NodeCount: 1, AddressesPerNode: 2, Expiry: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.a.prewarmStep(e.ctx, pw.ID); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(2 * time.Minute)
	for range 2 {
		if err := e.a.prewarmStep(e.ctx, pw.ID); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := e.a.led.Prewarm(pw.ID); ok {
		t.Fatal("the expired reservation is still recorded")
	}
	for _, x := range e.ec2.snapshot() {
		if x.Tags[TagPrewarm] == pw.ID {
			t.Fatalf("the expired reservation's ENI %s was left", x.ID)
		}
	}
}

// A reservation's record may list addresses for an ENI not created yet that a node's instance
// holds now (the reservation's commit was taken although its answer was lost, and EC2 gave the
// address to a new instance): a new leader's ledger still builds, the ENI choosing again.
func TestBuildLedgerSettlesAReservationThatLostItsAddresses(t *testing.T) {
	e := newEnv(t, nil)
	node := e.register("m5.large", subnetA)
	rec := e.record(node)
	subnet, _ := e.a.led.Subnet(subnetA)
	pw := ledger.PrewarmRecord{ID: "pw-0000000000000001", SubnetID: subnetA, AvailabilityZone: testAZ, InstanceType: "m5.large",
		NodeCount: 1, AddressesPerNode: 1, CreatedAt: testEpoch, ExpiresAt: testEpoch.Add(time.Hour), State: ledger.PrewarmPending,
		ENIs: []ledger.PrewarmENI{{State: ledger.PrewarmENICreating, ClientToken: "ipledger-t1", PrimaryIP: rec.PrimaryIP,
			Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.99")}}}}
	records := diff.Records{Nodes: []ledger.NodeRecord{rec}, Subnets: []ledger.SubnetRecord{subnet}, Prewarms: []ledger.PrewarmRecord{pw}}
	led, err := BuildLedger(records, ledger.Options{})
	if err != nil {
		t.Fatalf("the ledger does not build: %v", err)
	}
	got, _ := led.Prewarm(pw.ID)
	if x := got.ENIs[0]; x.PrimaryIP.IsValid() || len(x.Addresses) != 0 || x.ClientToken == pw.ENIs[0].ClientToken {
		t.Fatalf("the ENI kept its lost choice: %+v", x)
	}
	// Two nodes on one address still fail the build: that is corruption, not a race.
	twin := rec
	twin.Name, twin.InstanceID = "twin", "i-0000000000000fff1"
	records.Nodes = append(records.Nodes, twin)
	if _, err := BuildLedger(records, ledger.Options{}); err == nil {
		t.Fatal("two nodes on one ENI built a ledger")
	}
}

// A pre-warmed ENI attached to a node whose commit was lost (or whose leader died after the
// attach) is found attached on EC2 while the reservation still offers it: reconciliation gives
// it to the node, and an ended reservation's other ENIs are deleted even while one cannot be.
func TestReconcileAdoptsAPrewarmedENIWhoseAttachWasNotCommitted(t *testing.T) {
	e := newEnv(t, nil)
	pw, err := e.a.Prewarm(e.ctx, PrewarmRequest{SubnetID: subnetA, InstanceType: "m5.large", NodeCount: 1, AddressesPerNode: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.a.prewarmStep(e.ctx, pw.ID); err != nil {
		t.Fatal(err)
	}
	node := e.register("m5.large", subnetA)
	fails := 0
	e.st.fail = func() error {
		if e.ec2.callCount("AttachNetworkInterface") == 1 && fails == 0 {
			fails++
			return errors.New("etcd unavailable")
		}
		return nil
	}
	e.a.supply(e.ctx, e.ns(node))
	if fails != 1 || len(e.record(node).ENIs) != 1 {
		t.Fatalf("the attach's commit did not fail as the test wanted (fails %d, ENIs %+v)", fails, e.record(node).ENIs)
	}
	rep, err := e.a.Check(e.ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if checkKinds(rep)[diff.ReservedENIAttached] != 1 {
		t.Fatalf("check: %+v", rep.Findings)
	}
	e.reconcileAfterGrace()
	rec := e.record(node)
	cur, _ := e.a.led.Prewarm(pw.ID)
	if len(rec.ENIs) != 2 || len(rec.ENIs[1].Addresses) != 2 || cur.ENIs[0].State != ledger.PrewarmENIAttached || cur.ENIs[0].NodeName != node {
		t.Fatalf("after reconciliation: node ENIs %+v, reservation %+v", rec.ENIs, cur.ENIs)
	}
	if rep, _ := e.a.Check(e.ctx, true); !rep.OK {
		t.Fatalf("check after the adoption: %+v", rep.Findings)
	}
}
