package ctl

import (
	"strings"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/servertest"
)

func TestPrewarmAndCanFit(t *testing.T) {
	c := startCluster(t)
	ac := admin(t, c.addr)
	subnet := c.agents[0].Inst.SubnetID

	listed := func(t *testing.T) []Reservation {
		t.Helper()
		var rs []Reservation
		decode(t, mustCtl(t, 0, c.addr, "prewarm", "list", "-o", "json"), &rs)
		return rs
	}

	t.Run("prewarm create, list, cancel", func(t *testing.T) {
		var r Reservation
		decode(t, mustCtl(t, 0, c.addr, "prewarm", "create", "--subnet", subnet, "--instance-type", "m5.large", "--nodes", "2",
			"--addresses-per-node", "3", "--expiry", "10m", "-o", "json"), &r)
		if !strings.HasPrefix(r.ID, "pw-") || r.SubnetID != subnet || r.InstanceType != "m5.large" || r.NodeCount != 2 || r.AddressesPerNode != 3 ||
			r.State != "pending" || len(r.ENIs) != 2 || r.CreatedAt == nil || r.ExpiresAt == nil {
			t.Fatalf("reservation %+v", r)
		}
		if d := r.ExpiresAt.Sub(*r.CreatedAt); d != 10*time.Minute {
			t.Fatalf("--expiry 10m gave a reservation of %s", d)
		}
		// The ENIs are created under the limiter; list follows them to ready.
		var ready Reservation
		servertest.WaitFor(t, 15*time.Second, "the reservation's ENIs ready", func() bool {
			for _, x := range listed(t) {
				if x.ID == r.ID && x.State == "ready" {
					ready = x
					return true
				}
			}
			return false
		})
		snap := c.s.Sim().Sim().Snapshot()
		for _, e := range ready.ENIs {
			se, ok := snap.ENI(e.ENIID)
			if e.State != "ready" || len(e.Addresses) != 3 || !ok || se.Tags["ipledger.io/prewarm"] != r.ID || len(se.SecondaryIPs) != 3 {
				t.Fatalf("pre-warm ENI %+v; EC2 has %+v", e, se)
			}
		}
		if ready.ReservedAddresses != 8 {
			t.Fatalf("2 ENIs x (1 primary + 3) should reserve 8 addresses, got %d", ready.ReservedAddresses)
		}
		var subnets []Subnet
		decode(t, mustCtl(t, 0, c.addr, "subnets", "-o", "json"), &subnets)
		for _, s := range subnets {
			if s.SubnetID == subnet && s.PrewarmReserved != 8 {
				t.Fatalf("subnets shows %d pre-warm reserved, want 8", s.PrewarmReserved)
			}
		}
		tab := mustCtl(t, 0, c.addr, "prewarm", "list")
		rows := tableRows(t, tab.stdout, "ID", "SUBNET", "AZ")
		if len(rows) != 1 || rows[0][0] != r.ID || rows[0][8] != "(2" || rows[0][9] != "ready)" || rows[0][10] != "ready" {
			t.Fatalf("prewarm list table:\n%s", tab.stdout)
		}

		// By AZ: the server picks the subnet.
		var byAZ Reservation
		decode(t, mustCtl(t, 0, c.addr, "prewarm", "create", "--az", c.agents[0].Inst.AvailabilityZone, "--instance-type", "m5.large",
			"--nodes", "1", "--addresses-per-node", "1", "-o", "json"), &byAZ)
		if byAZ.AZ != c.agents[0].Inst.AvailabilityZone || byAZ.SubnetID == "" {
			t.Fatalf("reservation by AZ %+v", byAZ)
		}
		if d := byAZ.ExpiresAt.Sub(*byAZ.CreatedAt); d != DefaultPrewarmExpiry {
			t.Fatalf("default expiry %s", d)
		}

		var cancelled Reservation
		decode(t, mustCtl(t, 0, c.addr, "prewarm", "cancel", r.ID, "-o", "json"), &cancelled)
		if cancelled.ID != r.ID || cancelled.State != "cancelled" {
			t.Fatalf("cancel printed %+v", cancelled)
		}
		mustCtl(t, 0, c.addr, "prewarm", "cancel", byAZ.ID)
		servertest.WaitFor(t, 15*time.Second, "cancelled reservations cleaned up", func() bool { return len(listed(t)) == 0 })
		for _, e := range ready.ENIs {
			if _, ok := c.s.Sim().Sim().Snapshot().ENI(e.ENIID); ok {
				t.Fatalf("ENI %s of a cancelled reservation is still in EC2", e.ENIID)
			}
		}

		// The server's refusals come through with their reasons.
		res := mustCtl(t, 1, c.addr, "prewarm", "create", "--subnet", subnet, "--instance-type", "m5.large", "--nodes", "1", "--addresses-per-node", "50")
		if !strings.Contains(res.stderr, "INVALID_ARGUMENT") || !strings.Contains(res.stderr, "field=addresses_per_node") {
			t.Fatalf("too many addresses per node: %s", res)
		}
		res = mustCtl(t, 1, c.addr, "prewarm", "cancel", "nonsense")
		if !strings.Contains(res.stderr, "InvalidArgument") {
			t.Fatalf("cancel of a bad id: %s", res)
		}
	})

	t.Run("canfit", func(t *testing.T) {
		truth, err := ac.CanFit(t.Context(), &ipledgerv1.CanFitRequest{SubnetId: subnet, NodeCount: 3, PodsPerNode: 5})
		if err != nil {
			t.Fatal(err)
		}
		var fit Fit
		decode(t, mustCtl(t, 0, c.addr, "canfit", "--subnet", subnet, "--nodes", "3", "--pods-per-node", "5", "-o", "json"), &fit)
		if !fit.Fits || fit.Needed != truth.GetNeeded() || fit.Available != truth.GetAvailable() || len(fit.Reasons) != 0 ||
			len(fit.Subnets) != 1 || fit.Subnets[0].SubnetID != subnet {
			t.Fatalf("canfit %+v, server %v", fit, truth)
		}
		r := mustCtl(t, 0, c.addr, "canfit", "--subnet", subnet, "--nodes", "3", "--pods-per-node", "5")
		if !strings.Contains(r.stdout, "3 nodes x 5 pods fits") {
			t.Fatalf("canfit table:\n%s", r.stdout)
		}

		// A tight budget: it does not fit, exit 3, the reasons printed.
		mustCtl(t, 0, c.addr, "subnet", "budget", subnet, "--max-held", "20")
		r = mustCtl(t, 3, c.addr, "canfit", "--subnet", subnet, "--nodes", "3", "--pods-per-node", "5")
		if !strings.Contains(r.stdout, "does not fit") || !strings.Contains(r.stdout, "  - ") || r.stderr != "" {
			t.Fatalf("canfit over the budget: %s", r)
		}
		decode(t, mustCtl(t, 3, c.addr, "canfit", "--subnet", subnet, "--nodes", "3", "--pods-per-node", "5", "-o", "json"), &fit)
		if fit.Fits || len(fit.Reasons) == 0 || fit.Needed <= fit.Available {
			t.Fatalf("canfit over the budget: %+v", fit)
		}
		// By AZ, every subnet of the AZ is considered.
		mustCtl(t, 0, c.addr, "subnet", "budget", subnet, "--max-held", "0")
		decode(t, mustCtl(t, 0, c.addr, "canfit", "--az", "eu-west-1a", "--nodes", "2", "-o", "json"), &fit)
		if !fit.Fits || len(fit.Subnets) != 2 {
			t.Fatalf("canfit by AZ %+v", fit)
		}
	})
}
