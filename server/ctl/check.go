package ctl

import (
	"context"
	"fmt"
	"github.com/spf13/cobra"
	"io"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func checkCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Compare etcd, the agents' reports and EC2; exit 4 when anything is wrong",
		Long: `
Lists every inconsistency: addresses with two owners (double_owner), leased but not on EC2
(leased_not_on_ec2), on a managed ENI but not leased (on_ec2_not_leased), ENIs tagged for the
cluster that nobody owns (leaked_eni), pods using addresses their node does not lease
(in_use_not_leased), one address used twice (double_use), leased ENIs missing or attached
elsewhere (eni_mismatch). Asking EC2 runs paginated describes at the lowest priority;
--no-ec2 compares only etcd and the agents' reports. Runs on the leader (a standby sends it
there). Exits 0 when clean and 4 when anything is wrong.`,
	}
	fs := cmd.Flags()
	noEC2 := fs.Bool("no-ec2", false, "do not ask EC2; compare only etcd and the agents' reports")
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		rep, err := call(ctx, c, "check", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.CheckReport, error) {
			return a.Check(ctx, &ipledgerv1.CheckRequest{IncludeEc2: !*noEC2})
		})
		if err != nil {
			return err
		}
		doc := reportDoc(rep, !*noEC2)
		if err := c.emit(doc, func(w io.Writer) { checkTable(w, doc) }); err != nil {
			return err
		}
		if !doc.OK {
			fmt.Fprintf(c.stderr, "ipledgerctl: check found %d problem(s)\n", len(doc.Findings))
			return errProblems
		}
		return nil
	})
}

func checkTable(w io.Writer, r Report) {
	scope := "etcd, agents and EC2"
	if !r.IncludedEC2 {
		scope = "etcd and agents"
	}
	counts := fmt.Sprintf("%d nodes, %d ENIs, %d addresses", r.NodesChecked, r.ENIsChecked, r.AddressesChecked)
	if r.OK {
		fmt.Fprintf(w, "OK: %s agree (%s checked)\n", scope, counts)
		return
	}
	fmt.Fprintf(w, "PROBLEMS: %d finding(s) comparing %s (%s checked)\n\n", len(r.Findings), scope, counts)
	row(w, "KIND", "SUBNET", "NODE", "ENI", "ADDRESS", "DETAIL")
	for _, f := range r.Findings {
		row(w, f.Kind, orDash(f.SubnetID), orDash(f.NodeName), orDash(f.ENIID), orDash(f.Address), f.Detail)
	}
}

func statusCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show which replica answered, the leader, store health and revision",
	}
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		st, err := call(ctx, c, "get cluster status", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.ClusterStatus, error) {
			return a.GetClusterStatus(ctx, &ipledgerv1.GetClusterStatusRequest{})
		})
		if err != nil {
			return err
		}
		doc := statusDoc(c.g.server, st)
		return c.emit(doc, func(w io.Writer) {
			role := "standby"
			if doc.IsLeader {
				role = "leader"
			}
			store := "healthy"
			if !doc.StoreHealthy {
				store = "UNHEALTHY"
			}
			row(w, "Asked:", doc.Server)
			row(w, "Answered by:", fmt.Sprintf("%s (%s)", doc.Replica, role))
			row(w, "Leader:", orDash(doc.Leader))
			row(w, "Cluster:", doc.ClusterName)
			row(w, "Store:", fmt.Sprintf("%s (%s)", store, doc.StoreMessage))
			row(w, "Revision:", doc.Revision)
			row(w, "Nodes:", doc.Nodes)
			row(w, "Subnets:", doc.Subnets)
			sv := doc.ServerVersion
			if doc.ServerCommit != "" {
				sv += " (commit " + shortCommit(doc.ServerCommit) + ")"
			}
			row(w, "Server version:", sv)
		})
	})
}

func init() { register("", checkCmd, statusCmd) }
