package server_test

import (
	"context"
	"sync"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
)

// Many nodes register at once while supply runs for those already registered: the leader must
// not place a registering instance's own addresses for another node (the benchmark's 1,000-node
// burst once made the leader exit on exactly that), and no address may be leased twice.
func TestConcurrentRegistrationsWhileSupplyRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("registers 250 nodes")
	}
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	subnet := servertest.Instances(s)[0].SubnetID
	// 100 busy nodes: each asks for addresses until it holds what an m5.large can (27), so supply
	// keeps placing addresses in the subnet while 150 more nodes register there.
	busy, err := s.Sim().Sim().RunInstances(t.Context(), ec2sim.InstanceSpec{InstanceType: "m5.large", SubnetID: subnet}, 100)
	if err != nil {
		t.Fatal(err)
	}
	var load sync.WaitGroup
	for _, in := range busy {
		a := servertest.NewAgent(t, conn, in)
		a.Register()
		load.Add(1)
		go func() {
			defer load.Done()
			for i := 0; i < 6; i++ {
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				_, _ = a.Client.RequestAddresses(ctx, &ipledgerv1.RequestAddressesRequest{NodeName: a.Name(), Count: 5, KnownGeneration: uint64(i)})
				cancel()
			}
		}()
	}
	launched, err := s.Sim().Sim().RunInstances(t.Context(), ec2sim.InstanceSpec{InstanceType: "m5.large", SubnetID: subnet}, 150)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(launched))
	agents := make([]*servertest.Agent, len(launched))
	for i, in := range launched {
		agents[i] = servertest.NewAgent(t, conn, in)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := agents[i].Client.RegisterNode(t.Context(), agents[i].RegisterRequest()); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	load.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("registration failed: %v", err)
	}
	if t.Failed() {
		return
	}
	servertest.WaitFor(t, 60*time.Second, "every node's warm address", func() bool {
		for _, in := range launched {
			c, ok := s.Ledger().NodeCounts(in.PrivateDNSName)
			if !ok || c.Idle < 1 {
				return false
			}
		}
		return true
	})
	select {
	case <-s.Done():
		t.Fatalf("the replica stopped: %v", s.Wait())
	default:
	}
	if !s.IsLeader() {
		t.Fatal("the replica lost leadership during the registrations")
	}
	servertest.CheckNoAddressTwice(t, s)
	servertest.CheckBudgetsAddUp(t, s)
	rep, err := ipledgerv1.NewAdminServiceClient(conn).Check(t.Context(), &ipledgerv1.CheckRequest{IncludeEc2: true})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.GetOk() {
		t.Fatalf("check after the registrations: %v", rep.GetFindings())
	}
}
