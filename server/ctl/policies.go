package ctl

import (
	"context"
	"fmt"
	"github.com/spf13/cobra"
	"io"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func policiesCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policies",
		Short: "List node group policies (the built-in default included)",
		Long: `
A node takes the first policy (by ascending order, then name) whose selector matches it. With
-o yaml or -o json, each element is a document 'policy set -f' accepts.`,
	}
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		resp, err := call(ctx, c, "list policies", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.ListPoliciesResponse, error) {
			return a.ListPolicies(ctx, &ipledgerv1.ListPoliciesRequest{})
		})
		if err != nil {
			return err
		}
		docs := policyDocs(resp.GetPolicies())
		return c.emit(docs, func(w io.Writer) {
			row(w, "NAME", "ORDER", "SELECTOR", "MODE", "TARGETS")
			for _, p := range docs {
				row(w, p.Name, p.Order, p.Selector.text(), orDash(p.Mode), p.targets())
			}
		})
	})
}

func policySetCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "set",
		Short: "Create or replace a node group policy from a YAML or JSON file; nodes are matched again",
		Long: `
The file holds one policy with the fields 'policies -o yaml' prints, for example:

  name: batch
  order: 10
  selector:
    labels: {node.kubernetes.io/pool: batch}
    instance_types: [m5.large, m5.xlarge]
  mode: secondary_ip
  warm_ip_target: 4
  minimum_ip_target: 10

A file that cannot be parsed is a usage error (exit 2); a policy the server finds invalid is
refused with its INVALID_ARGUMENT message (exit 1). Prints the stored policy.`,
	}
	fs := cmd.Flags()
	file := fs.StringP("filename", "f", "", "policy file, YAML or JSON (required)")
	_ = cmd.MarkFlagFilename("filename", "yaml", "yml", "json")
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		if *file == "" {
			return usagef("policy set", "policy set: -f FILE is required (--filename)")
		}
		p, err := readPolicyFile(*file)
		if err != nil {
			return err
		}
		stored, err := call(ctx, c, "set policy "+p.GetName(), func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.NodePolicy, error) {
			return a.SetPolicy(ctx, &ipledgerv1.SetPolicyRequest{Policy: p})
		})
		if err != nil {
			return err
		}
		doc := policyDoc(stored)
		return c.emit(doc, func(w io.Writer) {
			fmt.Fprintf(w, "policy %s set (order %d, %s): %s\n", cell(doc.Name), doc.Order, escapeText(doc.Selector.text()), escapeText(doc.targets()))
		})
	})
}

// Deleted is the output of policy delete.
type Deleted struct {
	Deleted string `json:"deleted"`
}

func policyDeleteCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "delete NAME",
		ValidArgsFunction: c.completeArgs(completePolicies),
		Short:             "Delete a node group policy; its nodes fall to the next matching one",
	}
	return c.leaf(cmd, 1, 1, func(ctx context.Context, args []string) error {
		_, err := call(ctx, c, "delete policy "+args[0], func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.DeletePolicyResponse, error) {
			return a.DeletePolicy(ctx, &ipledgerv1.DeletePolicyRequest{Name: args[0]})
		})
		if err != nil {
			return err
		}
		return c.emit(Deleted{Deleted: args[0]}, func(w io.Writer) { fmt.Fprintf(w, "policy %s deleted\n", cell(args[0])) })
	})
}

func init() {
	register("", policiesCmd)
	register("policy", policySetCmd, policyDeleteCmd)
}
