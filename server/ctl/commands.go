package ctl

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// runFunc runs a command with its positional arguments once its flags are parsed.
type runFunc func(ctx context.Context, c *cli, args []string) error

// command is one ipledgerctl command. setup adds the command's own flags to fs and returns the
// function that runs it with their values.
type command struct {
	path    string // "subnets", "prewarm create"
	args    string // positional arguments for the usage line, e.g. "NODE"
	minArgs int
	maxArgs int // -1: any number
	summary string
	long    string
	setup   func(fs *flag.FlagSet) runFunc
	// argValues completes the positional arguments (flag values: see completionSpec).
	argValues func() []string
	// noOutput marks commands for which -o does not apply.
	noOutput bool
}

// commands lists every command in the order help shows them. Filled in init because help and
// completion read it.
var commands []*command

func init() {
	commands = []*command{
		subnetsCmd(), subnetBudgetCmd(),
		nodesCmd(), nodeCmd(), drainCmd(),
		limiterCmd(),
		prewarmCreateCmd(), prewarmListCmd(), prewarmCancelCmd(), canfitCmd(),
		policiesCmd(), policySetCmd(), policyDeleteCmd(),
		checkCmd(), statusCmd(),
		completionCmd(), versionCmd(), helpCmd(),
	}
}

// groups are the first words of two-word commands ("prewarm" of "prewarm create").
func groups() map[string][]string {
	out := map[string][]string{}
	for _, c := range commands {
		if g, sub, ok := strings.Cut(c.path, " "); ok {
			out[g] = append(out[g], sub)
		}
	}
	return out
}

// topLevel lists what may follow "ipledgerctl": single-word commands and groups, in help order.
func topLevel() []string {
	var out []string
	seen := map[string]bool{}
	for _, c := range commands {
		w, _, _ := strings.Cut(c.path, " ")
		if !seen[w] {
			seen[w] = true
			out = append(out, w)
		}
	}
	return out
}

func findCommand(path string) *command {
	for _, c := range commands {
		if c.path == path {
			return c
		}
	}
	return nil
}

// lookup finds the command named by the first words of args and how many words it took.
func lookup(args []string) (*command, int, error) {
	if len(args) >= 2 {
		if c := findCommand(args[0] + " " + args[1]); c != nil {
			return c, 2, nil
		}
	}
	if c := findCommand(args[0]); c != nil {
		return c, 1, nil
	}
	if subs, ok := groups()[args[0]]; ok {
		if len(args) < 2 || strings.HasPrefix(args[1], "-") {
			return nil, 0, usagef(args[0], "%s needs a subcommand: %s", args[0], strings.Join(subs, ", "))
		}
		return nil, 0, usagef(args[0], "unknown %s subcommand %q: want one of %s", args[0], args[1], strings.Join(subs, ", "))
	}
	return nil, 0, usagef("", "unknown command %q", args[0])
}

func (cmd *command) checkArgs(pos []string) error {
	switch {
	case len(pos) < cmd.minArgs:
		return usagef(cmd.path, "%s: missing %s", cmd.path, cmd.args)
	case cmd.maxArgs >= 0 && len(pos) > cmd.maxArgs:
		extra := pos[cmd.maxArgs:]
		return usagef(cmd.path, "%s: unexpected argument %q", cmd.path, strings.Join(extra, " "))
	}
	return nil
}

// usageLine is "ipledgerctl subnet budget SUBNET [flags]".
func (cmd *command) usageLine() string {
	line := "ipledgerctl " + cmd.path
	if cmd.args != "" {
		line += " " + cmd.args
	}
	if len(cmd.flagList()) > 0 {
		line += " [flags]"
	}
	return line
}

// flagList returns the command's own flags (globals excluded), sorted by name.
func (cmd *command) flagList() []*flag.Flag {
	fs := flag.NewFlagSet(cmd.path, flag.ContinueOnError)
	cmd.setup(fs)
	var out []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { out = append(out, f) })
	return out
}

// dashed writes a flag as users type it: "-o", "--max-held".
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// isBoolFlag reports whether a flag takes no value.
func isBoolFlag(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

func writeFlags(w io.Writer, flags []*flag.Flag) {
	tw := newTable(w)
	for _, f := range flags {
		name, usage := flag.UnquoteUsage(f)
		if v, ok := valueNames[f.Name]; ok {
			name = v
		}
		left := "  " + dashed(f.Name)
		if name != "" {
			left += " " + strings.ToUpper(name)
		}
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "0s" {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		row(tw, left, usage)
	}
	tw.Flush()
}

// valueNames name the values of flags in help ("--nodes N").
var valueNames = map[string]string{
	"server": "ADDR", "o": "FORMAT", "timeout": "DURATION", "tls-cert": "FILE", "tls-key": "FILE", "tls-ca": "FILE", "dev-certs": "DIR", "max-held": "N", "keep-free": "N",
	"subnet": "SUBNET", "az": "AZ", "instance-type": "TYPE", "nodes": "N", "addresses-per-node": "N",
	"pods-per-node": "N", "expiry": "DURATION", "f": "FILE",
}

func globalFlags() []*flag.Flag {
	fs := flag.NewFlagSet("globals", flag.ContinueOnError)
	g := globals{server: DefaultServer, output: "table", timeout: DefaultTimeout}
	g.register(fs)
	var out []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { out = append(out, f) })
	sort.Slice(out, func(i, j int) bool { return globalOrder(out[i].Name) < globalOrder(out[j].Name) })
	return out
}

func globalOrder(name string) int {
	return map[string]int{"server": 0, "o": 1, "timeout": 2}[name]
}

func writeUsage(w io.Writer) {
	fmt.Fprintln(w, "ipledgerctl is the admin CLI of ipledger: it asks ipledger-server's AdminService.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: ipledgerctl [global flags] COMMAND [flags] [arguments]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	tw := newTable(w)
	for _, c := range commands {
		left := "  " + c.path
		if c.args != "" {
			left += " " + c.args
		}
		row(tw, left, c.summary)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Global flags (before or after the command):")
	writeFlags(w, globalFlags())
	fmt.Fprintf(w, "  The server address defaults to $%s, then %s.\n", EnvServer, DefaultServer)
	fmt.Fprintf(w, "  Mutual TLS: --tls-cert, --tls-key, --tls-ca default to $%s, $%s, $%s; --dev-certs to $%s.\n", EnvTLSCert, EnvTLSKey, EnvTLSCA, EnvDevCerts)
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

func writeCommandUsage(w io.Writer, cmd *command) {
	fmt.Fprintf(w, "Usage: %s\n\n", cmd.usageLine())
	fmt.Fprintln(w, cmd.summary+".")
	if cmd.long != "" {
		fmt.Fprintln(w)
		fmt.Fprintln(w, strings.TrimSpace(cmd.long))
	}
	if fl := cmd.flagList(); len(fl) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Flags:")
		writeFlags(w, fl)
	}
	if !cmd.noOutput {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Global flags: --server ADDR, -o table|json|yaml, --timeout DURATION, --tls-cert/--tls-key/--tls-ca FILE, --dev-certs DIR (see 'ipledgerctl help').")
	}
}

func writeGroupUsage(w io.Writer, group string, subs []string) {
	fmt.Fprintf(w, "Usage: ipledgerctl %s SUBCOMMAND [flags] [arguments]\n\nSubcommands:\n", group)
	tw := newTable(w)
	for _, s := range subs {
		c := findCommand(group + " " + s)
		left := "  " + c.path
		if c.args != "" {
			left += " " + c.args
		}
		row(tw, left, c.summary)
	}
	tw.Flush()
}

func helpCmd() *command {
	return &command{
		path: "help", args: "[COMMAND]", maxArgs: 2, noOutput: true,
		summary:   "Show help for ipledgerctl or one command",
		argValues: topLevel,
		setup: func(fs *flag.FlagSet) runFunc {
			return func(ctx context.Context, c *cli, args []string) error {
				if len(args) == 0 {
					writeUsage(c.stdout)
					return nil
				}
				if len(args) == 2 {
					if cmd := findCommand(args[0] + " " + args[1]); cmd != nil {
						writeCommandUsage(c.stdout, cmd)
						return nil
					}
				}
				if len(args) == 1 {
					if cmd := findCommand(args[0]); cmd != nil {
						writeCommandUsage(c.stdout, cmd)
						return nil
					}
					if subs, ok := groups()[args[0]]; ok {
						writeGroupUsage(c.stdout, args[0], subs)
						return nil
					}
				}
				return usagef("", "help: unknown command %q", strings.Join(args, " "))
			}
		},
	}
}

func versionCmd() *command {
	return &command{
		path: "version", maxArgs: 0,
		summary: "Print ipledgerctl's version (the server's is in 'status')",
		setup: func(fs *flag.FlagSet) runFunc {
			return func(ctx context.Context, c *cli, args []string) error {
				doc := VersionInfo{Version: Version}
				return c.emit(doc, func(w io.Writer) { fmt.Fprintf(w, "ipledgerctl %s\n", Version) })
			}
		},
	}
}

// VersionInfo is the output of version.
type VersionInfo struct {
	Version string `json:"version"`
}
