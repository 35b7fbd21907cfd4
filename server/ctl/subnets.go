package ctl

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func subnetsCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "subnets",
		Short: "List every subnet's address budget with its exhaustion forecast",
		Long: `
Columns: SIZE addresses in the CIDR; RESERVED by AWS (5 per subnet); FOREIGN used by ENIs
ipledger does not manage; HELD on the cluster's nodes (ENI primaries + leased); IN-USE by pods;
FREE for anyone; FREE-/28 aligned blocks with every address free; PREWARM reserved for pre-warm
reservations; BUDGET the admin cap (max_held / keep_free, "-" when none); HEADROOM what the
cluster may still take; FORECAST when headroom runs out at the trend of the last hour ("never"
when flat or shrinking, "n/a" with less than a minute of history); POD-SUBNET-OF the policies
(policy@zone) whose nodes put their pods' ENIs there ("-": none). A TOTAL line ends the table.

When policies name pod subnets, a second table lists each policy's pod subnets per zone, best
first (the order a new ENI tries them in now: supply spills over from one to the next), with
their summed HEADROOM and FREE-/28 and the FORECAST of the group (the sum of the subnets'
trends against the sum of their headroom), the policy's NODES there and CUSTOM-NET (the
primary ENI holds no pods). -o json and yaml print the list of subnets as before (each with its
pod_subnet_of); --pod-subnet-groups prints the groups instead.`,
	}
	groupsOnly := cmd.Flags().Bool("pod-subnet-groups", false, "print only the pod subnet groups (policy, zone)")
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		resp, err := call(ctx, c, "list subnets", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.ListSubnetsResponse, error) {
			return a.ListSubnets(ctx, &ipledgerv1.ListSubnetsRequest{})
		})
		if err != nil {
			return err
		}
		docs := subnetDocs(resp.GetSubnets())
		groups := podSubnetGroupDocs(resp.GetPodSubnetGroups())
		groupTable := func(w io.Writer) {
			row(w, "POLICY", "AZ", "POD-SUBNETS", "HEADROOM", "FREE-/28", "FORECAST", "NODES", "CUSTOM-NET")
			for _, g := range groups {
				row(w, g.Policy, g.AZ, strings.Join(g.SubnetIDs, ","), g.Headroom, g.FreePrefixes, g.Forecast.text(), g.Nodes, g.ExcludePrimaryENI)
			}
		}
		if *groupsOnly {
			return c.emit(groups, groupTable)
		}
		return c.emit(docs, func(w io.Writer) {
			subnetTable(w, docs, true)
			if len(groups) > 0 {
				fmt.Fprintln(w)
				groupTable(w)
			}
		})
	})
}

func budgetText(s Subnet) string {
	switch {
	case s.MaxHeld == 0 && s.KeepFree == 0:
		return "-"
	case s.KeepFree == 0:
		return fmt.Sprintf("max=%d", s.MaxHeld)
	case s.MaxHeld == 0:
		return fmt.Sprintf("keep=%d", s.KeepFree)
	}
	return fmt.Sprintf("max=%d keep=%d", s.MaxHeld, s.KeepFree)
}

func subnetTable(w io.Writer, docs []Subnet, totals bool) {
	row(w, "SUBNET", "AZ", "CIDR", "SIZE", "RESERVED", "FOREIGN", "HELD", "IN-USE", "FREE", "FREE-/28", "PREWARM", "BUDGET", "HEADROOM", "FORECAST", "POD-SUBNET-OF")
	var t Subnet
	for _, s := range docs {
		roles := "-"
		if len(s.PodSubnetOf) > 0 {
			var rs []string
			for _, r := range s.PodSubnetOf {
				rs = append(rs, r.Policy+"@"+r.AZ)
			}
			roles = strings.Join(rs, ",")
		}
		row(w, s.SubnetID, s.AZ, s.CIDR, s.Size, s.Reserved, s.Foreign, s.Held, s.InUse, s.Free, s.FreePrefixes,
			s.PrewarmReserved, budgetText(s), s.Headroom, s.Forecast.text(), roles)
		t.Size += s.Size
		t.Reserved += s.Reserved
		t.Foreign += s.Foreign
		t.Held += s.Held
		t.InUse += s.InUse
		t.Free += s.Free
		t.FreePrefixes += s.FreePrefixes
		t.PrewarmReserved += s.PrewarmReserved
		t.Headroom += s.Headroom
	}
	if totals {
		row(w, fmt.Sprintf("TOTAL (%d)", len(docs)), "", "", t.Size, t.Reserved, t.Foreign, t.Held, t.InUse, t.Free, t.FreePrefixes,
			t.PrewarmReserved, "", t.Headroom, "", "")
	}
}

func subnetBudgetCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "budget SUBNET",
		ValidArgsFunction: c.completeArgs(completeSubnets),
		Short:             "Cap what the cluster may hold in a subnet (SetSubnetBudget)",
		Long: `
--max-held caps the addresses the cluster holds in the subnet (ENI primaries, leases and
pre-warm); 0 removes the cap. --keep-free keeps that many addresses free for others; 0 keeps
nothing back. A flag left out keeps its current value. The change takes effect at once: nodes get
nothing above the cap and surplus is reclaimed through the release handshake. Prints the
subnet's new budget.`,
	}
	fs := cmd.Flags()
	maxHeld := fs.Uint("max-held", 0, "most addresses the cluster may hold in the subnet (0: no cap)")
	keepFree := fs.Uint("keep-free", 0, "addresses to leave free for others (0: none)")
	return c.leaf(cmd, 1, 1, func(ctx context.Context, args []string) error {
		set := map[string]bool{}
		fs.Visit(func(f *pflag.Flag) { set[f.Name] = true })
		if !set["max-held"] && !set["keep-free"] {
			return usagef("subnet budget", "subnet budget: give --max-held, --keep-free or both")
		}
		for name, v := range map[string]uint{"max-held": *maxHeld, "keep-free": *keepFree} {
			if v > math.MaxUint32 {
				return usagef("subnet budget", "subnet budget: --%s %d is too large", name, v)
			}
		}
		req := &ipledgerv1.SetSubnetBudgetRequest{SubnetId: args[0], MaxHeld: uint32(*maxHeld), KeepFree: uint32(*keepFree)}
		if !set["max-held"] || !set["keep-free"] {
			cur, err := currentBudget(ctx, c, args[0])
			if err != nil {
				return err
			}
			if !set["max-held"] {
				req.MaxHeld = cur.GetMaxHeld()
			}
			if !set["keep-free"] {
				req.KeepFree = cur.GetKeepFree()
			}
		}
		b, err := call(ctx, c, "set subnet budget", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.SubnetBudget, error) {
			return a.SetSubnetBudget(ctx, req)
		})
		if err != nil {
			return err
		}
		doc := subnetDoc(b)
		return c.emit(doc, func(w io.Writer) { subnetTable(w, []Subnet{doc}, false) })
	})
}

// currentBudget reads one subnet's budget (for the flags a budget change leaves out).
func currentBudget(ctx context.Context, c *cli, subnet string) (*ipledgerv1.SubnetBudget, error) {
	resp, err := call(ctx, c, "list subnets", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.ListSubnetsResponse, error) {
		return a.ListSubnets(ctx, &ipledgerv1.ListSubnetsRequest{})
	})
	if err != nil {
		return nil, err
	}
	for _, b := range resp.GetSubnets() {
		if b.GetSubnetId() == subnet {
			return b, nil
		}
	}
	return nil, fmt.Errorf("subnet budget: the cluster does not use subnet %s (see 'ipledgerctl subnets')", subnet)
}

func init() {
	register("", subnetsCmd)
	register("subnet", subnetBudgetCmd)
}
