package server_test

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
)

func TestPrewarmEndToEnd(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	admin := ipledgerv1.NewAdminServiceClient(conn)
	first := servertest.Instances(s)[0]
	servertest.NewAgent(t, conn, first).Register() // the cluster now uses first's subnet

	res, err := admin.Prewarm(t.Context(), &ipledgerv1.PrewarmRequest{
		SubnetId: first.SubnetID, InstanceType: "m5.large", NodeCount: 2, AddressesPerNode: 5, Expiry: durationpb.New(time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetReservedAddresses() != 12 || len(res.GetEnis()) != 2 {
		t.Fatalf("reservation: %v", res)
	}
	var ready *ipledgerv1.PrewarmReservation
	servertest.WaitFor(t, 10*time.Second, "pre-warm ready", func() bool {
		l, err := admin.ListPrewarms(t.Context(), &ipledgerv1.ListPrewarmsRequest{})
		if err != nil || len(l.GetReservations()) != 1 {
			return false
		}
		ready = l.GetReservations()[0]
		return ready.GetState() == "ready"
	})
	for _, e := range ready.GetEnis() {
		sim := servertest.SimENI(t, s.Sim(), e.GetEniId())
		if sim.Status != "available" || len(sim.SecondaryIPs) != 5 || sim.Tags[allocator.TagPrewarm] != res.GetId() || sim.Tags[allocator.TagCluster] != "dev" {
			t.Fatalf("pre-created ENI in EC2: %+v", sim)
		}
	}
	budget := subnetBudget(t, admin, first.SubnetID)
	if budget.GetPrewarmReserved() != 12 {
		t.Fatalf("budget holds %d for the reservation, want 12", budget.GetPrewarmReserved())
	}
	servertest.CheckBudgetsAddUp(t, s)

	// A new node of that type starts in the subnet: it gets a pre-created ENI attached, with one
	// EC2 call instead of an assign or a create + attach.
	launched, err := s.Sim().Sim().RunInstances(t.Context(), ec2sim.InstanceSpec{InstanceType: "m5.large", SubnetID: first.SubnetID}, 1)
	if err != nil {
		t.Fatal(err)
	}
	before := s.Sim().Sim().Stats()
	a := servertest.NewAgent(t, conn, launched[0])
	a.Register()
	a.Sync()
	p := a.WaitPool(10*time.Second, "the pre-warmed ENI", func(p *ipledgerv1.NodePool) bool {
		return len(p.GetInterfaces()) == 2 && len(p.GetInterfaces()[1].GetAddresses()) == 5
	})
	attached := p.GetInterfaces()[1].GetEniId()
	if attached != ready.GetEnis()[0].GetEniId() && attached != ready.GetEnis()[1].GetEniId() {
		t.Fatalf("attached %s, not a pre-created ENI", attached)
	}
	after := s.Sim().Sim().Stats()
	calls := func(st ec2sim.Stats, action string) int { return st.Calls[action].Calls }
	if d := calls(after, "AttachNetworkInterface") - calls(before, "AttachNetworkInterface"); d != 1 {
		t.Fatalf("%d attaches for the new node, want 1", d)
	}
	for _, action := range []string{"AssignPrivateIpAddresses", "CreateNetworkInterface"} {
		if d := calls(after, action) - calls(before, action); d != 0 {
			t.Fatalf("node start with a pre-warmed ENI made %d %s calls", d, action)
		}
	}
	budget = subnetBudget(t, admin, first.SubnetID)
	if budget.GetPrewarmReserved() != 6 {
		t.Fatalf("after one attach the reservation holds %d, want 6", budget.GetPrewarmReserved())
	}
	servertest.CheckNoAddressTwice(t, s)
	servertest.CheckBudgetsAddUp(t, s)

	// Cancel: the unused ENI is deleted and the budget returns.
	if _, err := admin.CancelPrewarm(t.Context(), &ipledgerv1.CancelPrewarmRequest{Id: res.GetId()}); err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, 10*time.Second, "reservation gone", func() bool {
		l, _ := admin.ListPrewarms(t.Context(), &ipledgerv1.ListPrewarmsRequest{})
		return len(l.GetReservations()) == 0
	})
	for _, e := range s.Sim().Sim().Snapshot().ENIs {
		if e.Tags[allocator.TagPrewarm] != "" && e.Attachment == nil {
			t.Fatalf("unused pre-warmed ENI %s left in EC2", e.ID)
		}
	}
	if b := subnetBudget(t, admin, first.SubnetID); b.GetPrewarmReserved() != 0 {
		t.Fatalf("cancelled reservation still holds %d", b.GetPrewarmReserved())
	}

	// Expiry: an unused reservation ends by itself and its ENIs are deleted.
	exp, err := admin.Prewarm(t.Context(), &ipledgerv1.PrewarmRequest{
		AvailabilityZone: first.AvailabilityZone, InstanceType: "m5.large", NodeCount: 1, AddressesPerNode: 3, Expiry: durationpb.New(2 * time.Second),
	})
	if err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, 15*time.Second, "expired reservation gone", func() bool {
		l, _ := admin.ListPrewarms(t.Context(), &ipledgerv1.ListPrewarmsRequest{})
		return len(l.GetReservations()) == 0
	})
	for _, e := range s.Sim().Sim().Snapshot().ENIs {
		if e.Tags[allocator.TagPrewarm] == exp.GetId() {
			t.Fatalf("ENI %s of the expired reservation left in EC2", e.ID)
		}
	}
	servertest.CheckBudgetsAddUp(t, s)

	// Bad requests change nothing.
	for _, bad := range []*ipledgerv1.PrewarmRequest{
		{SubnetId: first.SubnetID, AvailabilityZone: first.AvailabilityZone, InstanceType: "m5.large", NodeCount: 1, AddressesPerNode: 1},
		{SubnetId: first.SubnetID, InstanceType: "m5.large", NodeCount: 0, AddressesPerNode: 1},
		{SubnetId: first.SubnetID, InstanceType: "m5.large", NodeCount: 1, AddressesPerNode: 10},
		{SubnetId: first.SubnetID, InstanceType: "no.such", NodeCount: 1, AddressesPerNode: 1},
	} {
		if _, err := admin.Prewarm(t.Context(), bad); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("prewarm %v: want InvalidArgument, got %v", bad, err)
		}
	}
	if _, err := admin.Prewarm(t.Context(), &ipledgerv1.PrewarmRequest{SubnetId: first.SubnetID, InstanceType: "m5.large", NodeCount: 1000, AddressesPerNode: 9}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a reservation larger than the subnet: want ResourceExhausted, got %v", err)
	}
}

func subnetBudget(t *testing.T, admin ipledgerv1.AdminServiceClient, id string) *ipledgerv1.SubnetBudget {
	t.Helper()
	resp, err := admin.ListSubnets(t.Context(), &ipledgerv1.ListSubnetsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range resp.GetSubnets() {
		if b.GetSubnetId() == id {
			return b
		}
	}
	t.Fatalf("subnet %s not listed", id)
	return nil
}

func TestCanFit(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	admin := ipledgerv1.NewAdminServiceClient(conn)
	first := servertest.Instances(s)[0]
	servertest.NewAgent(t, conn, first).Register()

	fit, err := admin.CanFit(t.Context(), &ipledgerv1.CanFitRequest{SubnetId: first.SubnetID, NodeCount: 10, PodsPerNode: 20, InstanceType: "m5.large"})
	if err != nil {
		t.Fatal(err)
	}
	// 1 node address + 2 extra ENI primaries (21 addresses over 9-address ENIs) + 20 pods + 1 warm.
	if !fit.GetFits() || fit.GetNeeded() != 240 || len(fit.GetSubnets()) != 1 {
		t.Fatalf("10 nodes in a /19: %v", fit)
	}
	// Cap the subnet: the same request no longer fits, and the answer says why.
	if _, err := admin.SetSubnetBudget(t.Context(), &ipledgerv1.SetSubnetBudgetRequest{SubnetId: first.SubnetID, MaxHeld: 100}); err != nil {
		t.Fatal(err)
	}
	fit, err = admin.CanFit(t.Context(), &ipledgerv1.CanFitRequest{SubnetId: first.SubnetID, NodeCount: 10, PodsPerNode: 20, InstanceType: "m5.large"})
	if err != nil {
		t.Fatal(err)
	}
	if fit.GetFits() || len(fit.GetReasons()) == 0 {
		t.Fatalf("capped subnet still fits: %v", fit)
	}
	// More pods than the type can hold.
	fit, err = admin.CanFit(t.Context(), &ipledgerv1.CanFitRequest{AvailabilityZone: first.AvailabilityZone, NodeCount: 1, PodsPerNode: 40, InstanceType: "m5.large"})
	if err != nil {
		t.Fatal(err)
	}
	if fit.GetFits() {
		t.Fatalf("40 pods on an m5.large fit: %v", fit)
	}
	if _, err := admin.CanFit(t.Context(), &ipledgerv1.CanFitRequest{AvailabilityZone: "xx-nowhere-9z", NodeCount: 1}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown AZ: %v", err)
	}
	if _, err := admin.CanFit(t.Context(), &ipledgerv1.CanFitRequest{NodeCount: 1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("neither subnet nor AZ: %v", err)
	}
}
