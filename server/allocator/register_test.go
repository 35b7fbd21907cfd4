package allocator

import (
	"errors"
	"testing"
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
