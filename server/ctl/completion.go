package ctl

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

var shells = []string{"bash", "zsh", "fish"}

func init() { register("", completionCmd) }

// completionCmd prints cobra's completion script for a shell. The scripts ask ipledgerctl
// itself (its hidden __complete command) what to offer, so they know every command and flag,
// the values of -o, and the names the server knows (nodes, subnets, policies, reservations).
func completionCmd(c *cli) *cobra.Command {
	cmd := local(noOutput(&cobra.Command{
		Use:       "completion bash|zsh|fish",
		Short:     "Print a shell completion script (commands, flags, -o values, names the server knows)",
		ValidArgs: shells,
		Long: `
bash:  source <(ipledgerctl completion bash)      (or save it in /etc/bash_completion.d/; needs the bash-completion package)
zsh:   source <(ipledgerctl completion zsh)       (after compinit; or save it as _ipledgerctl in $fpath)
fish:  ipledgerctl completion fish | source       (or save it in ~/.config/fish/completions/)

Node names, subnet ids, policy names and reservation ids are asked from the server named by
--server (or $IPLEDGER_SERVER, or the context) as you type, within 2 s; without an answer nothing
is offered.`,
	}))
	return c.leaf(cmd, 1, 1, func(ctx context.Context, args []string) error {
		root := cmd.Root()
		switch args[0] {
		case "bash":
			return root.GenBashCompletionV2(c.stdout, true)
		case "zsh":
			return root.GenZshCompletion(c.stdout)
		case "fish":
			return root.GenFishCompletion(c.stdout, true)
		}
		return usagef("completion", "completion: unknown shell %q: want one of %s", args[0], strings.Join(shells, ", "))
	})
}

// completionTimeout bounds what completion asks the server: a shell waits for the answer.
const completionTimeout = 2 * time.Second

// registerFlagCompletions completes the global flags' values: -o's formats, file names for the
// certificate flags, nothing for the others.
func (c *cli) registerFlagCompletions(root *cobra.Command) {
	_ = root.RegisterFlagCompletionFunc("output", func(cmd *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		// A command's own formats too (launch-hint's snippets).
		return append(slices.Clone(outputFormats), extraOutputs(cmd)...), cobra.ShellCompDirectiveNoFileComp
	})
	for _, name := range []string{"server", "timeout"} {
		_ = root.RegisterFlagCompletionFunc(name, cobra.NoFileCompletions)
	}
	_ = root.MarkPersistentFlagDirname("dev-certs")
	_ = root.RegisterFlagCompletionFunc("context", c.completeContexts)
	// --tls-cert, --tls-key and --tls-ca complete file names (cobra's default).
}

// completer completes one kind of name from the server's answers.
type completer func(ctx context.Context, a ipledgerv1.AdminServiceClient) ([]cobra.Completion, error)

// completeArgs completes the first positional argument with names from the server (nothing
// once it is given).
func (c *cli) completeArgs(f completer) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return c.askServer(cmd, f)
	}
}

// completeFlag completes a flag's value with names from the server.
func (c *cli) completeFlag(f completer) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		return c.askServer(cmd, f)
	}
}

func (c *cli) askServer(cmd *cobra.Command, f completer) ([]cobra.Completion, cobra.ShellCompDirective) {
	// Completion runs without the commands' pre-run: settle the server and certificates here.
	if err := c.resolve(cmd); err != nil || c.g.validate(cmdPath(cmd), true, extraOutputs(cmd)...) != nil {
		cobra.CompDebugln(fmt.Sprintf("settings: %v", err), true)
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), min(completionTimeout, c.g.timeout))
	defer cancel()
	out, err := callAt(ctx, c, c.g.server, f)
	if err != nil {
		cobra.CompDebugln(fmt.Sprintf("ask %s: %v", c.g.server, err), true)
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	slices.Sort(out)
	return slices.Compact(out), cobra.ShellCompDirectiveNoFileComp
}

// The names completion asks the server for.

func completeNodes(ctx context.Context, a ipledgerv1.AdminServiceClient) ([]cobra.Completion, error) {
	resp, err := a.ListNodes(ctx, &ipledgerv1.ListNodesRequest{})
	var out []cobra.Completion
	for _, n := range resp.GetNodes() {
		out = append(out, cobra.CompletionWithDesc(n.GetNodeName(), n.GetInstanceId()+" "+n.GetSubnetId()))
	}
	return out, err
}

func completeSubnets(ctx context.Context, a ipledgerv1.AdminServiceClient) ([]cobra.Completion, error) {
	resp, err := a.ListSubnets(ctx, &ipledgerv1.ListSubnetsRequest{})
	var out []cobra.Completion
	for _, s := range resp.GetSubnets() {
		out = append(out, cobra.CompletionWithDesc(s.GetSubnetId(), s.GetAvailabilityZone()+" "+s.GetCidr()))
	}
	return out, err
}

func completeZones(ctx context.Context, a ipledgerv1.AdminServiceClient) ([]cobra.Completion, error) {
	resp, err := a.ListSubnets(ctx, &ipledgerv1.ListSubnetsRequest{})
	var out []cobra.Completion
	for _, s := range resp.GetSubnets() {
		out = append(out, s.GetAvailabilityZone())
	}
	return out, err
}

func completePolicies(ctx context.Context, a ipledgerv1.AdminServiceClient) ([]cobra.Completion, error) {
	resp, err := a.ListPolicies(ctx, &ipledgerv1.ListPoliciesRequest{})
	var out []cobra.Completion
	for _, p := range resp.GetPolicies() {
		out = append(out, p.GetName())
	}
	return out, err
}

func completeReservations(ctx context.Context, a ipledgerv1.AdminServiceClient) ([]cobra.Completion, error) {
	resp, err := a.ListPrewarms(ctx, &ipledgerv1.ListPrewarmsRequest{})
	var out []cobra.Completion
	for _, r := range resp.GetReservations() {
		out = append(out, cobra.CompletionWithDesc(r.GetId(), r.GetSubnetId()+" "+r.GetInstanceType()))
	}
	return out, err
}
