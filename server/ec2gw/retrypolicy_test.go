package ec2gw

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/ec2sim"
)

// Each action has a retry policy: a mutation EC2 may have carried out (a 5xx, a reset, no
// answer) is repeated only where a repeat cannot do the work twice; otherwise the caller gets
// an error that says the outcome is unknown, after one call.
func TestGatewayRetryPolicy(t *testing.T) {
	srv := startSim(t, 1, nil)
	g, _ := newSimGateway(t, srv, 1, func(c *Config) { c.MaxRetries = 3 })
	ctx := t.Context()
	sim := srv.Sim()
	st := sim.Snapshot()
	pick := newAddrPicker(t, st)
	in := st.Instances[0]
	eni, err := g.CreateENI(ctx, PriorityNodeStart, CreateENIInput{SubnetID: in.SubnetID, ClientToken: "policy-1"})
	if err != nil {
		t.Fatal(err)
	}
	onENI := func(id string) map[string]bool {
		e, _ := sim.Snapshot().ENI(id)
		out := map[string]bool{}
		for _, ip := range e.SecondaryIPs {
			out[ip] = true
		}
		return out
	}

	for _, outcome := range []string{ec2sim.OutcomeAfter, ec2sim.OutcomeReset} {
		t.Run("assign, "+outcome, func(t *testing.T) {
			sim.SetFault(ActionAssignPrivateIPAddresses, ec2sim.Fault{Probability: 1, Outcome: outcome})
			defer sim.SetFault(ActionAssignPrivateIPAddresses, ec2sim.Fault{})
			ip := pick.addrs(in.SubnetID, 1)[0]
			before := simCalls(srv, ActionAssignPrivateIPAddresses)
			err := g.AssignAddresses(ctx, PriorityWarmRefill, eni.ID, []netip.Addr{ip})
			if !errors.Is(err, ErrUnavailable) || !OutcomeUnknown(err) {
				t.Fatalf("err %v, want ErrUnavailable with an unknown outcome", err)
			}
			if n := simCalls(srv, ActionAssignPrivateIPAddresses) - before; n != 1 {
				t.Fatalf("an Assign of unknown outcome was sent %d times, want once (not retried)", n)
			}
			if !onENI(eni.ID)[ip.String()] {
				t.Fatalf("EC2 carried out the assign, but %s is not on %s", ip, eni.ID)
			}
		})
	}

	t.Run("attach, no answer", func(t *testing.T) {
		sim.SetFault(ActionAttachNetworkInterface, ec2sim.Fault{Probability: 1, Outcome: ec2sim.OutcomeTimeout})
		defer sim.SetFault(ActionAttachNetworkInterface, ec2sim.Fault{})
		cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		before := simCalls(srv, ActionAttachNetworkInterface)
		_, err := g.AttachENI(cctx, PriorityNodeStart, eni.ID, in.ID, 1, 0)
		if !OutcomeUnknown(err) {
			t.Fatalf("err %v, want an unknown outcome", err)
		}
		if n := simCalls(srv, ActionAttachNetworkInterface) - before; n != 1 {
			t.Fatalf("an Attach of unknown outcome was sent %d times, want once", n)
		}
		if e, _ := sim.Snapshot().ENI(eni.ID); e.Attachment == nil || e.Attachment.InstanceID != in.ID {
			t.Fatalf("EC2 carried out the attach, but %s is not attached to %s", eni.ID, in.ID)
		}
	})

	t.Run("a throttled assign is retried", func(t *testing.T) {
		sim.SetFault(ActionAssignPrivateIPAddresses, ec2sim.Fault{Code: "RequestLimitExceeded", Probability: 1})
		before := simCalls(srv, ActionAssignPrivateIPAddresses)
		err := g.AssignAddresses(ctx, PriorityWarmRefill, eni.ID, pick.addrs(in.SubnetID, 1))
		sim.SetFault(ActionAssignPrivateIPAddresses, ec2sim.Fault{})
		if !errors.Is(err, ErrThrottled) || OutcomeUnknown(err) {
			t.Fatalf("err %v, want ErrThrottled with a known outcome (EC2 did nothing)", err)
		}
		if n := simCalls(srv, ActionAssignPrivateIPAddresses) - before; n != 4 {
			t.Fatalf("a throttled Assign was sent %d times, want 4 (1 + 3 retries)", n)
		}
	})

	t.Run("a delete carried out before its 500 is done", func(t *testing.T) {
		spare, err := g.CreateENI(ctx, PriorityNodeStart, CreateENIInput{SubnetID: in.SubnetID, ClientToken: "policy-2"})
		if err != nil {
			t.Fatal(err)
		}
		sim.SetFault(ActionDeleteNetworkInterface, ec2sim.Fault{Probability: 1, Outcome: ec2sim.OutcomeAfter})
		defer sim.SetFault(ActionDeleteNetworkInterface, ec2sim.Fault{})
		before := simCalls(srv, ActionDeleteNetworkInterface)
		if err := g.DeleteENI(ctx, PriorityRelease, spare.ID); err != nil {
			t.Fatalf("DeleteENI: %v, want success (the first attempt deleted it)", err)
		}
		if n := simCalls(srv, ActionDeleteNetworkInterface) - before; n != 2 {
			t.Fatalf("DeleteENI sent %d calls, want 2 (the 500, then a NotFound)", n)
		}
		if _, ok := sim.Snapshot().ENI(spare.ID); ok {
			t.Fatal("the ENI still exists")
		}
	})

	t.Run("a create with a client token is retried and creates once", func(t *testing.T) {
		sim.SetFault(ActionCreateNetworkInterface, ec2sim.Fault{Probability: 0.5, Outcome: ec2sim.OutcomeAfter})
		defer sim.SetFault(ActionCreateNetworkInterface, ec2sim.Fault{})
		enisBefore := len(sim.Snapshot().ENIs)
		created := 0
		for i := range 6 {
			_, err := g.CreateENI(ctx, PriorityNodeStart, CreateENIInput{SubnetID: in.SubnetID, ClientToken: "policy-retry-" + string(rune('a'+i))})
			if err == nil {
				created++
			} else if !OutcomeUnknown(err) {
				t.Fatalf("create %d: %v", i, err)
			}
		}
		// Every token made one ENI at most, whatever the retries.
		if got := len(sim.Snapshot().ENIs) - enisBefore; got != 6 || created == 0 {
			t.Fatalf("6 tokens made %d ENIs (%d calls succeeded), want 6", got, created)
		}
	})
}
