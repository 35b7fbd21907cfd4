package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes of Main.
const (
	ExitOK       = 0 // success
	ExitError    = 1 // the server refused or could not be reached
	ExitUsage    = 2 // unknown command or flag, bad value, malformed file
	ExitNoFit    = 3 // canfit: the budget does not hold the nodes
	ExitProblems = 4 // check: inconsistencies found
)

// Defaults of the global flags.
const (
	DefaultServer  = "127.0.0.1:7400"
	DefaultTimeout = 10 * time.Second
	// EnvServer overrides DefaultServer (the --server flag overrides both).
	EnvServer = "IPLEDGER_SERVER"
	// EnvTLSCert, EnvTLSKey, EnvTLSCA and EnvDevCerts set --tls-cert, --tls-key, --tls-ca and
	// --dev-certs (the flags override them).
	EnvTLSCert  = "IPLEDGER_TLS_CERT"
	EnvTLSKey   = "IPLEDGER_TLS_KEY"
	EnvTLSCA    = "IPLEDGER_TLS_CA"
	EnvDevCerts = "IPLEDGER_DEV_CERTS"
)

// Output formats of -o.
var outputFormats = []string{"table", "json", "yaml"}

// globals are the flags every command accepts, before or after the command name (persistent
// flags of the root command).
type globals struct {
	server   string
	output   string
	timeout  time.Duration
	tlsCert  string
	tlsKey   string
	tlsCA    string
	devCerts string
}

// register adds the global flags to fs with their defaults; the environment is applied by Main
// after registration, so help shows the built-in defaults.
func (g *globals) register(fs *pflag.FlagSet) {
	fs.StringVar(&g.server, "server", DefaultServer, "host:port of an ipledger-server replica (any replica; changes go to the leader)")
	fs.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	fs.DurationVar(&g.timeout, "timeout", DefaultTimeout, "deadline for the whole command")
	fs.StringVar(&g.tlsCert, "tls-cert", "", "admin client certificate (URI SAN ipledger://admin/<name>) for mutual TLS")
	fs.StringVar(&g.tlsKey, "tls-key", "", "private key of --tls-cert")
	fs.StringVar(&g.tlsCA, "tls-ca", "", "CA bundle that verifies the server's certificate (URI SAN ipledger://server)")
	fs.StringVar(&g.devCerts, "dev-certs", "", "directory of ipledger-server --dev's certificates (<data-dir>/certs): use its admin.crt, admin.key and ca.crt")
}

// fromEnv applies the environment variables of the global flags (flags parsed later win).
func (g *globals) fromEnv(getenv func(string) string) {
	if s := getenv(EnvServer); s != "" {
		g.server = s
	}
	g.tlsCert, g.tlsKey, g.tlsCA, g.devCerts = getenv(EnvTLSCert), getenv(EnvTLSKey), getenv(EnvTLSCA), getenv(EnvDevCerts)
}

// tlsFiles are the certificate files the command uses: --tls-cert, --tls-key and --tls-ca,
// each defaulting to the admin's file of --dev-certs; all empty means plaintext.
func (g *globals) tlsFiles() (cert, key, ca string) {
	cert, key, ca = g.tlsCert, g.tlsKey, g.tlsCA
	if g.devCerts != "" {
		if cert == "" {
			cert = filepath.Join(g.devCerts, "admin.crt")
		}
		if key == "" {
			key = filepath.Join(g.devCerts, "admin.key")
		}
		if ca == "" {
			ca = filepath.Join(g.devCerts, "ca.crt")
		}
	}
	return cert, key, ca
}

func (g *globals) validate(cmd string) error {
	if !slices.Contains(outputFormats, g.output) {
		return usagef(cmd, "invalid -o %q: want one of %s", g.output, strings.Join(outputFormats, ", "))
	}
	if g.timeout <= 0 {
		return usagef(cmd, "invalid --timeout %s: must be positive", g.timeout)
	}
	if strings.TrimSpace(g.server) == "" {
		return usagef(cmd, "empty --server: want host:port of an ipledger-server replica")
	}
	if cert, key, ca := g.tlsFiles(); (cert != "" || key != "" || ca != "") && (cert == "" || key == "" || ca == "") {
		return usagef(cmd, "mutual TLS needs --tls-cert, --tls-key and --tls-ca together (or --dev-certs DIR)")
	}
	return nil
}

// cli is one invocation: its flags, its writers and its connections.
type cli struct {
	g      globals
	stdout io.Writer
	stderr io.Writer
	conns  *connPool
}

// Main runs ipledgerctl with args (without the program name) and returns the exit code.
// Results go to stdout, errors and notes to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &cli{stdout: stdout, stderr: stderr}
	root := c.newRoot()
	c.g.fromEnv(getenv)
	c.conns = newConnPool(c.dialOptions)
	defer c.conns.close()
	root.SetArgs(normalizeArgs(root, args))
	return c.report(root, root.ExecuteContext(ctx))
}

// report prints err and returns its exit code.
func (c *cli) report(root *cobra.Command, err error) int {
	if err == nil {
		return ExitOK
	}
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(c.stderr, "ipledgerctl: %s\n", escapeText(ue.msg))
		if ue.cmd != "" {
			if cmd := findPath(root, ue.cmd); cmd != nil {
				if isGroup(cmd) {
					fmt.Fprintf(c.stderr, "Usage: ipledgerctl %s %s ...\n", ue.cmd, strings.Join(subNames(cmd), "|"))
				} else {
					fmt.Fprintf(c.stderr, "Usage: %s\n", usageLine(cmd))
				}
			}
			fmt.Fprintf(c.stderr, "Run 'ipledgerctl help %s' for usage.\n", ue.cmd)
		} else {
			fmt.Fprintln(c.stderr, "Run 'ipledgerctl help' for usage.")
		}
		return ExitUsage
	case errors.Is(err, errNoFit):
		return ExitNoFit
	case errors.Is(err, errProblems):
		return ExitProblems
	}
	// The message carries the server's words (and names from it): escaped, as table cells are.
	fmt.Fprintf(c.stderr, "ipledgerctl: %s\n", escapeText(err.Error()))
	return ExitError
}

// Errors that set an exit code of their own after the result has been printed.
var (
	errNoFit    = errors.New("ctl: does not fit")
	errProblems = errors.New("ctl: check found problems")
)

// usageError is a mistake on the command line (exit 2). cmd names the command whose help
// explains it ("" for the top level).
type usageError struct {
	cmd string
	msg string
}

func (e *usageError) Error() string { return "usage: " + e.msg }

func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, args...)}
}

// flagError turns pflag's parse errors into usage errors naming the flag, in the words of
// ipledgerctl ("subnets: unknown flag --bogus", "invalid value "x" for --max-held: ...").
func flagError(cmd *cobra.Command, err error) error {
	path := cmdPath(cmd)
	msg := err.Error()
	var (
		notExist *pflag.NotExistError
		invalid  *pflag.InvalidValueError
		required *pflag.ValueRequiredError
	)
	switch {
	case errors.As(err, &notExist) && notExist.GetSpecifiedShortnames() != "":
		msg = "unknown flag -" + notExist.GetSpecifiedShortnames()
	case errors.As(err, &notExist):
		msg = "unknown flag --" + notExist.GetSpecifiedName()
	case errors.As(err, &invalid):
		msg = fmt.Sprintf("invalid value %q for %s: %v", invalid.GetValue(), flagNames(invalid.GetFlag()), errors.Unwrap(invalid))
	case errors.As(err, &required):
		msg = fmt.Sprintf("%s needs a value", flagNames(required.GetFlag()))
	}
	if path != "" {
		msg = path + ": " + msg
	}
	return &usageError{cmd: path, msg: msg}
}

// flagNames writes a flag as users type it: "--max-held", "-o/--output".
func flagNames(f *pflag.Flag) string {
	if f.Shorthand != "" {
		return "-" + f.Shorthand + "/--" + f.Name
	}
	return "--" + f.Name
}

// normalizeArgs keeps the flag spellings of Go's flag package that ipledgerctl accepted before
// it moved to cobra: a long flag with one dash ("-server X", "-timeout=5s", "-help") gets its
// second dash. "--o" and "--f" are mapped by the flag sets' normalization (see newRoot).
// Everything after "--" is left alone, and so are the arguments of cobra's completion request.
func normalizeArgs(root *cobra.Command, args []string) []string {
	if len(args) > 0 && strings.HasPrefix(args[0], "__complete") {
		return args
	}
	long := map[string]bool{"help": true}
	walk(root, func(cmd *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{cmd.LocalFlags(), cmd.PersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) { long[f.Name] = true })
		}
	})
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if name, _, _ := strings.Cut(strings.TrimPrefix(a, "-"), "="); len(a) > 2 && a[0] == '-' && a[1] != '-' && len(name) > 1 && long[name] {
			a = "-" + a
		}
		out = append(out, a)
	}
	return out
}
