package ctl

import (
	"context"
	"strings"

	"github.com/spf13/cobra"
)

// helpCmd replaces cobra's help command: an unknown command is a usage error (exit 2), not a
// note.
func helpCmd(c *cli) *cobra.Command {
	cmd := local(noOutput(&cobra.Command{
		Use:   "help [COMMAND]",
		Short: "Show help for ipledgerctl or one command",
		ValidArgsFunction: func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			at := findPath(cmd.Root(), strings.Join(args, " "))
			if at == nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []cobra.Completion
			for _, s := range visible(at) {
				if s.Name() != "help" {
					out = append(out, cobra.CompletionWithDesc(s.Name(), s.Short))
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
	}))
	return c.leaf(cmd, 0, 2, func(ctx context.Context, args []string) error {
		root := cmd.Root()
		target := findPath(root, strings.Join(args, " "))
		if target == nil {
			return usagef("", "help: unknown command %q", strings.Join(args, " "))
		}
		writeHelp(c.stdout, target)
		return nil
	})
}
