package ctl

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ipledger/ipledger/internal/version"
	"github.com/ipledger/ipledger/server/ctl/ctlconfig"
	"github.com/spf13/pflag"
)

// runFunc runs a command with its positional arguments once its flags are parsed and checked;
// ctx carries the --timeout deadline.
type runFunc func(ctx context.Context, args []string) error

// builder makes one command for an invocation. A command is one file: it declares its
// builder and registers it in an init function with register(parent, builder); parent is the
// path of the command it belongs under ("" for the top level, "prewarm" for "prewarm create").
// A parent that is not itself a command becomes a group (see groups).
type builder func(c *cli) *cobra.Command

type registration struct {
	parent string
	build  builder
}

// registry lists every command in the order help shows them: the order of the register calls
// (files in name order, then the order within a call). Cobra's sorting by name is off.
var registry []registration

func init() { cobra.EnableCommandSorting = false }

func register(parent string, builders ...builder) {
	for _, b := range builders {
		registry = append(registry, registration{parent: parent, build: b})
	}
}

// groups are the commands that only hold subcommands, with their summary.
var groups = map[string]string{
	"subnet":  "Change a subnet's budget",
	"prewarm": "Pre-warm reservations for nodes to come",
	"policy":  "Change node group policies",
}

// newRoot builds the command tree of one invocation; the flags are bound to c.
func (c *cli) newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "ipledgerctl",
		Short:         "ipledgerctl is the admin CLI of ipledger: it asks ipledger-server's AdminService.",
		SilenceErrors: true,
		// Suggest commands within two edits of a mistyped one.
		SuggestionsMinimumDistance: 2,
		SilenceUsage:               true,
		// Without a command, or with an unknown one, the root itself runs and says so.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				writeUsage(c.stderr, cmd)
				return usagef("", "no command given")
			}
			msg := fmt.Sprintf("unknown command %q", args[0])
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf(" (did you mean %q?)", s[0])
			}
			return usagef("", "%s", msg)
		},
		RunE:              func(*cobra.Command, []string) error { return nil },
		ValidArgsFunction: cobra.NoFileCompletions,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			asks := asksServer(cmd)
			if err := c.resolve(cmd); err != nil && asks {
				return err
			}
			return c.g.validate(cmdPath(cmd), asks, extraOutputs(cmd)...)
		},
	}
	// --version: the same line as every binary's (internal/version); 'version' adds the server's.
	root.Version = version.String("ipledgerctl")
	root.SetVersionTemplate("{{.Version}}\n")
	root.SetOut(c.stdout)
	root.SetErr(c.stderr)
	root.SetFlagErrorFunc(flagError)
	root.SetHelpFunc(func(cmd *cobra.Command, _ []string) { writeHelp(cmd.OutOrStdout(), cmd) })
	root.SetHelpCommand(helpCmd(c))
	c.g.register(root.PersistentFlags())
	root.Flags().BoolP("help", "h", false, "show help")
	c.registerFlagCompletions(root)
	// Go's flag package accepted "--o json" and "--f FILE"; the long names are --output and
	// --filename.
	root.SetGlobalNormalizationFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		switch name {
		case "o":
			return "output"
		case "f":
			return "filename"
		}
		return pflag.NormalizedName(name)
	})
	// Parents before children, whatever the order of the files: "node" (a command of nodes.go)
	// exists before "node forget-identity" (identities.go) is added under it.
	regs := slices.Clone(registry)
	slices.SortStableFunc(regs, func(a, b registration) int { return len(strings.Fields(a.parent)) - len(strings.Fields(b.parent)) })
	for _, r := range regs {
		parent := root
		for _, word := range strings.Fields(r.parent) {
			next := child(parent, word)
			if next == nil {
				next = groupCmd(word)
				if localGroups[word] {
					local(next)
				}
				parent.AddCommand(next)
			}
			parent = next
		}
		cmd := r.build(c)
		if cmd.ValidArgsFunction == nil && len(cmd.ValidArgs) == 0 {
			cmd.ValidArgsFunction = cobra.NoFileCompletions
		}
		// A flag's value completes to nothing unless the command says what (names from the
		// server, file names).
		cmd.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
			_, hasFunc := cmd.GetFlagCompletionFunc(f.Name)
			if _, files := f.Annotations[cobra.BashCompFilenameExt]; !hasFunc && !files && f.NoOptDefVal == "" {
				_ = cmd.RegisterFlagCompletionFunc(f.Name, cobra.NoFileCompletions)
			}
		})
		parent.AddCommand(cmd)
	}
	root.InitDefaultHelpCmd() // adds help now (cobra would at Execute), so walks see it
	return root
}

// groupCmd is a command that only holds subcommands: alone or with an unknown subcommand it is
// a usage error listing them.
func groupCmd(name string) *cobra.Command {
	return &cobra.Command{
		Use:         name,
		Short:       groups[name],
		Args:        cobra.ArbitraryArgs,
		Annotations: map[string]string{groupAnnotation: "true"},
		// Suggest subcommands within two edits of a mistyped one.
		SuggestionsMinimumDistance: 2,
		RunE: func(cmd *cobra.Command, args []string) error {
			subs := subNames(cmd)
			if len(args) == 0 {
				return usagef(name, "%s needs a subcommand: %s", name, strings.Join(subs, ", "))
			}
			msg := fmt.Sprintf("unknown %s subcommand %q: want one of %s", name, args[0], strings.Join(subs, ", "))
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf(" (did you mean %q?)", s[0])
			}
			return usagef(name, "%s", msg)
		},
		ValidArgsFunction: cobra.NoFileCompletions,
	}
}

// leaf fills in what every runnable command shares: its argument check (from the words of Use
// after the name: "node NODE" takes one argument; minArgs and maxArgs bound how many, -1 for
// any number) and a RunE that runs run under the --timeout deadline.
func (c *cli) leaf(cmd *cobra.Command, minArgs, maxArgs int, run runFunc) *cobra.Command {
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		path, what := cmdPath(cmd), argsText(cmd)
		switch {
		case len(args) < minArgs:
			return usagef(path, "%s: missing %s", path, what)
		case maxArgs >= 0 && len(args) > maxArgs:
			return usagef(path, "%s: unexpected argument %q", path, strings.Join(args[maxArgs:], " "))
		}
		return nil
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, cancel := context.WithTimeout(cmd.Context(), c.g.timeout)
		defer cancel()
		return run(ctx, args)
	}
	return cmd
}

// localGroups are the groups whose commands ask no server.
var localGroups = map[string]bool{"config": true}

// localAnnotation marks commands that ask no server (help, completion, config, max-pods): the
// server and certificate settings are not checked for them, and a broken context does not
// stop them.
const localAnnotation = "ipledgerctl/local"

func local(cmd *cobra.Command) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[localAnnotation] = "true"
	return cmd
}

// outputsAnnotation lists, comma-separated, the -o formats a command prints besides table,
// json and yaml (launch-hint's snippets).
const outputsAnnotation = "ipledgerctl/outputs"

func extraOutputs(cmd *cobra.Command) []string {
	if v := cmd.Annotations[outputsAnnotation]; v != "" {
		return strings.Split(v, ",")
	}
	return nil
}

// localWithAnnotation names a boolean flag with which the command asks no server (version
// --client).
const localWithAnnotation = "ipledgerctl/local-with"

// asksServer reports whether cmd (or the group it is in) talks to a server.
func asksServer(cmd *cobra.Command) bool {
	if name := cmd.Annotations[localWithAnnotation]; name != "" {
		if f := cmd.Flags().Lookup(name); f != nil && f.Value.String() == "true" {
			return false
		}
	}
	for c := cmd; c != nil; c = c.Parent() {
		if c.Annotations[localAnnotation] != "" {
			return false
		}
	}
	return cmd.HasParent()
}

// noOutput marks commands for which -o does not apply (their help leaves out the global flags).
const noOutputAnnotation = "ipledgerctl/no-output"

func noOutput(cmd *cobra.Command) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[noOutputAnnotation] = "true"
	return cmd
}

// cmdPath is the command's path without the program name: "subnet budget" ("" for the root).
func cmdPath(cmd *cobra.Command) string {
	var words []string
	for c := cmd; c.HasParent(); c = c.Parent() {
		words = append([]string{c.Name()}, words...)
	}
	return strings.Join(words, " ")
}

// argsText is what Use says about the positional arguments: "NODE", "bash|zsh|fish".
func argsText(cmd *cobra.Command) string {
	_, rest, _ := strings.Cut(cmd.Use, " ")
	return rest
}

func child(parent *cobra.Command, name string) *cobra.Command {
	for _, c := range parent.Commands() {
		if c.Name() == name {
			return c
		}
	}
	return nil
}

// findPath finds the command at path ("subnet budget") under root.
func findPath(root *cobra.Command, path string) *cobra.Command {
	cmd := root
	for _, w := range strings.Fields(path) {
		if cmd = child(cmd, w); cmd == nil {
			return nil
		}
	}
	return cmd
}

// isGroup reports whether cmd only holds subcommands.
func isGroup(cmd *cobra.Command) bool { return cmd.Annotations[groupAnnotation] != "" }

const groupAnnotation = "ipledgerctl/group"

func subNames(cmd *cobra.Command) []string {
	var out []string
	for _, s := range visible(cmd) {
		out = append(out, s.Name())
	}
	return out
}

// topOrder is the order of the top-level commands in help: reads first, then changes, then
// the CLI's own. A command not listed comes after these, before help.
var topOrder = []string{
	"subnets", "subnet", "nodes", "node", "identities", "drain", "limiter", "prewarm", "canfit",
	"max-pods", "policies", "policy", "check", "status", "backup", "config", "completion", "version",
}

// visible lists a command's subcommands, without hidden ones (cobra's __complete): top-level
// commands in topOrder, subcommands in registration order.
func visible(cmd *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	for _, s := range cmd.Commands() {
		if !s.Hidden {
			out = append(out, s)
		}
	}
	if !cmd.HasParent() {
		rank := func(c *cobra.Command) int {
			if c.Name() == "help" {
				return len(topOrder) + 1
			}
			if i := slices.Index(topOrder, c.Name()); i >= 0 {
				return i
			}
			return len(topOrder)
		}
		slices.SortStableFunc(out, func(a, b *cobra.Command) int { return rank(a) - rank(b) })
	}
	return out
}

// walk calls f for cmd and every command below it, in help order.
func walk(cmd *cobra.Command, f func(*cobra.Command)) {
	f(cmd)
	for _, s := range visible(cmd) {
		walk(s, f)
	}
}

// leaves lists every runnable command below root in help order (help included).
func leaves(root *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	walk(root, func(cmd *cobra.Command) {
		if cmd != root && !isGroup(cmd) {
			out = append(out, cmd)
		}
	})
	return out
}

// usageLine is "ipledgerctl subnet budget SUBNET [flags]".
func usageLine(cmd *cobra.Command) string {
	line := "ipledgerctl " + cmdPath(cmd)
	if a := argsText(cmd); a != "" {
		line += " " + a
	}
	if len(ownFlags(cmd)) > 0 {
		line += " [flags]"
	}
	return line
}

// ownFlags returns the command's own flags (globals and help excluded), sorted by name.
func ownFlags(cmd *cobra.Command) []*pflag.Flag {
	var out []*pflag.Flag
	cmd.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" {
			out = append(out, f)
		}
	})
	return out
}

// dashed writes a flag as users type it: "-f, --filename", "--max-held".
func dashed(f *pflag.Flag) string {
	if f.Shorthand != "" {
		return "-" + f.Shorthand + ", --" + f.Name
	}
	return "--" + f.Name
}

// valueNames name the values of flags in help ("--nodes N").
var valueNames = map[string]string{
	"server": "ADDR", "output": "FORMAT", "timeout": "DURATION", "tls-cert": "FILE", "tls-key": "FILE", "tls-ca": "FILE", "dev-certs": "DIR", "max-held": "N", "keep-free": "N",
	"subnet": "SUBNET", "az": "AZ", "instance-type": "TYPE", "nodes": "N", "addresses-per-node": "N",
	"pods-per-node": "N", "expiry": "DURATION", "filename": "FILE", "instance": "ID", "context": "NAME", "vcpus": "N",
}

func writeFlags(w io.Writer, flags []*pflag.Flag) {
	tw := newTable(w)
	for _, f := range flags {
		left := "  " + dashed(f)
		if v, ok := valueNames[f.Name]; ok {
			left += " " + v
		} else if f.NoOptDefVal == "" {
			left += " " + strings.ToUpper(f.Value.Type())
		}
		usage := f.Usage
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		row(tw, left, usage)
	}
	tw.Flush()
}

// globalFlags are the root's persistent flags, --server, -o and --timeout first.
func globalFlags(root *cobra.Command) []*pflag.Flag {
	var out []*pflag.Flag
	root.PersistentFlags().VisitAll(func(f *pflag.Flag) { out = append(out, f) })
	first := map[string]int{"server": 0, "output": 1, "timeout": 2}
	rank := func(f *pflag.Flag) int {
		if r, ok := first[f.Name]; ok {
			return r
		}
		return len(first)
	}
	slices.SortStableFunc(out, func(a, b *pflag.Flag) int { return rank(a) - rank(b) })
	return out
}

// writeHelp writes the help of cmd: the command list for the root, the subcommands of a group,
// or a command's usage, description and flags.
func writeHelp(w io.Writer, cmd *cobra.Command) {
	switch {
	case !cmd.HasParent():
		writeUsage(w, cmd)
	case isGroup(cmd):
		writeGroupUsage(w, cmd)
	default:
		writeCommandUsage(w, cmd)
	}
}

func writeUsage(w io.Writer, root *cobra.Command) {
	fmt.Fprintln(w, root.Short)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: ipledgerctl [global flags] COMMAND [flags] [arguments]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	tw := newTable(w)
	for _, c := range leaves(root) {
		left := "  " + cmdPath(c)
		if a := argsText(c); a != "" {
			left += " " + a
		}
		row(tw, left, c.Short)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Global flags (before or after the command):")
	writeFlags(w, globalFlags(root))
	fmt.Fprintf(w, "  The server address defaults to $%s, then the context's server, then %s.\n", EnvServer, DefaultServer)
	fmt.Fprintf(w, "  Mutual TLS: --tls-cert, --tls-key, --tls-ca default to $%s, $%s, $%s; --dev-certs to $%s;\n", EnvTLSCert, EnvTLSKey, EnvTLSCA, EnvDevCerts)
	fmt.Fprintln(w, "  without any of them, to the context's certificates.")
	fmt.Fprintf(w, "  The context is --context, else $%s, else the current-context of $%s or\n", EnvContext, ctlconfig.EnvFile)
	fmt.Fprintln(w, "  ~/.config/ipledger/config.yaml ($XDG_CONFIG_HOME/ipledger): see 'ipledgerctl help config view'.")
	fmt.Fprintln(w)
	writeExitCodes(w)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'ipledgerctl help COMMAND' for a command's flags and output.")
}

func writeExitCodes(w io.Writer) {
	fmt.Fprintln(w, "Exit codes:")
	fmt.Fprintf(w, "  %d  success\n", ExitOK)
	fmt.Fprintf(w, "  %d  the server refused the request or could not be reached\n", ExitError)
	fmt.Fprintf(w, "  %d  usage error: unknown command or flag, bad value, malformed file\n", ExitUsage)
	fmt.Fprintf(w, "  %d  canfit: the nodes do not fit\n", ExitNoFit)
	fmt.Fprintf(w, "  %d  check: inconsistencies found\n", ExitProblems)
}

func writeCommandUsage(w io.Writer, cmd *cobra.Command) {
	fmt.Fprintf(w, "Usage: %s\n\n", usageLine(cmd))
	fmt.Fprintln(w, cmd.Short+".")
	if cmd.Long != "" {
		fmt.Fprintln(w)
		fmt.Fprintln(w, strings.TrimSpace(cmd.Long))
	}
	if subs := visible(cmd); len(subs) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Subcommands:")
		writeCommandList(w, subs)
	}
	if fl := ownFlags(cmd); len(fl) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Flags:")
		writeFlags(w, fl)
	}
	if cmd.Annotations[noOutputAnnotation] == "" {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Global flags: --server ADDR, -o table|json|yaml, --timeout DURATION, --tls-cert/--tls-key/--tls-ca FILE, --dev-certs DIR, --context NAME (see 'ipledgerctl help').")
	}
}

func writeGroupUsage(w io.Writer, group *cobra.Command) {
	fmt.Fprintf(w, "Usage: ipledgerctl %s SUBCOMMAND [flags] [arguments]\n\nSubcommands:\n", cmdPath(group))
	writeCommandList(w, visible(group))
}

func writeCommandList(w io.Writer, cmds []*cobra.Command) {
	tw := newTable(w)
	for _, c := range cmds {
		left := "  " + cmdPath(c)
		if a := argsText(c); a != "" {
			left += " " + a
		}
		row(tw, left, c.Short)
	}
	tw.Flush()
}
