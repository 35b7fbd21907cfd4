package allocator

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

func TestRegisterCommitsTheNodeAndSupplyFillsItsTarget(t *testing.T) {
	e := newEnv(t, nil)
	node := e.register("m5.large", subnetA)
	if _, ok := e.st.nodes[node]; !ok {
		t.Fatalf("the store has no record of %s after registration", node)
	}
	if got := len(e.active(node)); got != 0 {
		t.Fatalf("a new node holds %d pod addresses before supply, want 0", got)
	}
	e.step(node)
	got := e.active(node)
	if len(got) != 1 {
		t.Fatalf("after supply the node holds %v, want the adaptive floor of 1 free address", got)
	}
	rec := e.record(node)
	if !e.ec2Has(rec.PrimaryENI, got[0]) {
		t.Fatalf("%s is leased but EC2 does not have it on %s", got[0], rec.PrimaryENI)
	}
	if committed := e.st.nodes[node]; len(committed.ENIs[0].Addresses) != 1 {
		t.Fatalf("the lease is not committed: %+v", committed.ENIs)
	}
}

func TestRegisterTwiceIsIdempotentAndMismatchIsRefused(t *testing.T) {
	e := newEnv(t, nil)
	req := e.instance("m5.large", subnetA)
	if _, _, err := e.a.RegisterNode(e.ctx, req); err != nil {
		t.Fatal(err)
	}
	commits := e.st.commits
	if _, _, err := e.a.RegisterNode(e.ctx, req); err != nil {
		t.Fatalf("second registration: %v", err)
	}
	if e.st.commits != commits {
		t.Fatalf("a repeated registration committed %d times", e.st.commits-commits)
	}
	bad := req
	bad.InstanceType = "m5.xlarge"
	if _, _, err := e.a.RegisterNode(e.ctx, bad); !errors.Is(err, ErrInstanceMismatch) {
		t.Fatalf("registration with another type: %v, want ErrInstanceMismatch", err)
	}
	other := e.instance("m5.large", subnetA)
	other.NodeName = req.NodeName
	if _, _, err := e.a.RegisterNode(e.ctx, other); !errors.Is(err, ErrNodeNameTaken) {
		t.Fatalf("another running instance under the same name: %v, want ErrNodeNameTaken", err)
	}
}

// A registration writes the node's record only, even when the subnet's last scan (taken after
// the instance started, before it registered) lists the instance's primary address as
// foreign: the node's record wins over a scan older than the node, with no conflict, and the
// next scan leaves the address out.
func TestRegisterWritesOnlyTheNodeWhenTheScanPredatesIt(t *testing.T) {
	e := newEnv(t, nil)
	req := e.instance("m5.large", subnetA)
	if err := e.a.rescanSubnet(e.ctx, ec2gw.PriorityReconcile, subnetA); err != nil {
		t.Fatal(err)
	}
	listed := func(s ledger.SubnetRecord) bool {
		for _, r := range s.Foreign {
			if r.First.Compare(req.PrimaryIP) <= 0 && req.PrimaryIP.Compare(r.Last) <= 0 {
				return true
			}
		}
		return false
	}
	_, subnets, _ := e.st.records()
	if !listed(subnets[subnetA]) {
		t.Fatalf("the scan after the instance started does not list its primary %s as foreign: %+v", req.PrimaryIP, subnets[subnetA].Foreign)
	}
	commits, scanned := e.st.commits, subnets[subnetA]
	if _, _, err := e.a.RegisterNode(e.ctx, req); err != nil {
		t.Fatal(err)
	}
	nodes, subnets, prewarms := e.st.records()
	if e.st.commits != commits+1 || !reflect.DeepEqual(subnets[subnetA], scanned) {
		t.Fatalf("registration made %d commits and changed the subnet record (%+v, was %+v); want one commit of the node",
			e.st.commits-commits, subnets[subnetA], scanned)
	}
	if _, ok := nodes[req.NodeName]; !ok {
		t.Fatalf("no record of %s", req.NodeName)
	}
	if c := e.a.led.Conflicts(); len(c) != 0 {
		t.Fatalf("ledger conflicts after the registration: %+v", c)
	}
	if fs := diff.Diff(testCluster, diff.RecordsOf(nodes, subnets, prewarms), diff.EC2{ENIs: e.ec2.snapshot()}); len(fs) != 0 {
		t.Fatalf("differences after the registration: %v", fs)
	}
	if o, _ := e.a.led.OwnerOf(req.PrimaryIP); o.Kind != ledger.OwnerENIPrimary || o.Node != req.NodeName {
		t.Fatalf("the primary %s is owned by %+v, want the node's ENI primary", req.PrimaryIP, o)
	}
	// A scan taken after the registration does not list it.
	e.clk.Advance(time.Second)
	if err := e.a.rescanSubnet(e.ctx, ec2gw.PriorityReconcile, subnetA); err != nil {
		t.Fatal(err)
	}
	if _, subnets, _ = e.st.records(); listed(subnets[subnetA]) {
		t.Fatalf("a scan after the registration still lists %s as foreign", req.PrimaryIP)
	}
}
