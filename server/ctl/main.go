package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ipledger/ipledger/server/ctl/ctlconfig"
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
	// EnvContext picks a context of the configuration file (--context overrides it).
	EnvContext = ctlconfig.EnvContext
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
	context  string

	// Set by resolve: the context in use ("" for none), the configuration file, and whether
	// the certificates came from the context.
	ctxName     string
	ctxFile     string
	certsFromCx bool
}

// register adds the global flags to fs with their defaults; the environment and the context
// are applied once the command line is parsed (resolve), so help shows the built-in defaults.
func (g *globals) register(fs *pflag.FlagSet) {
	fs.StringVar(&g.context, "context", "", "context of ipledgerctl's configuration file to use (default: $"+EnvContext+", then the file's current-context)")
	fs.StringVar(&g.server, "server", DefaultServer, "host:port of an ipledger-server replica (any replica; changes go to the leader)")
	fs.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	fs.DurationVar(&g.timeout, "timeout", DefaultTimeout, "deadline for the whole command")
	fs.StringVar(&g.tlsCert, "tls-cert", "", "admin client certificate (URI SAN ipledger://admin/<name>) for mutual TLS")
	fs.StringVar(&g.tlsKey, "tls-key", "", "private key of --tls-cert")
	fs.StringVar(&g.tlsCA, "tls-ca", "", "CA bundle that verifies the server's certificate (URI SAN ipledger://server)")
	fs.StringVar(&g.devCerts, "dev-certs", "", "directory of ipledger-server --dev's certificates (<data-dir>/certs): use its admin.crt, admin.key and ca.crt")
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

// validate checks the global settings a command uses: -o and --timeout always, the server and
// its certificates for commands that ask one (server).
func (g *globals) validate(cmd string, server bool, extraOutputs ...string) error {
	if formats := append(slices.Clone(outputFormats), extraOutputs...); !slices.Contains(formats, g.output) {
		return usagef(cmd, "invalid -o %q: want one of %s", g.output, strings.Join(formats, ", "))
	}
	if g.timeout <= 0 {
		return usagef(cmd, "invalid --timeout %s: must be positive", g.timeout)
	}
	if !server {
		return nil
	}
	if strings.TrimSpace(g.server) == "" {
		return usagef(cmd, "empty --server: want host:port of an ipledger-server replica")
	}
	if err := checkServer(g.server); err != nil {
		return usagef(cmd, "%v", err)
	}
	if cert, key, ca := g.tlsFiles(); (cert != "" || key != "" || ca != "") && (cert == "" || key == "" || ca == "") {
		if g.certsFromCx {
			return usagef(cmd, "context %s of %s names only some of tls-cert, tls-key and tls-ca: mutual TLS needs the three (or dev-certs DIR); fix it with ipledgerctl config set-context %s", g.ctxName, g.ctxFile, g.ctxName)
		}
		return usagef(cmd, "mutual TLS needs --tls-cert, --tls-key and --tls-ca together (or --dev-certs DIR)")
	}
	return nil
}

// checkServer says what is wrong with a --server value: it must be host:port, a port from 1
// to 65535 (ipledger-server's gRPC listens on 7400 by default), without a URL scheme.
func checkServer(s string) error {
	if i := strings.Index(s, "://"); i >= 0 {
		return fmt.Errorf("--server %q: want host:port without a scheme (%s)", s, s[i+3:])
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) && ae.Err == "missing port in address" {
			return fmt.Errorf("--server %q has no port: want host:port, e.g. %s:7400 (ipledger-server's gRPC port, --grpc-listen, is 7400 by default)", s, s)
		}
		return fmt.Errorf("--server %q is not host:port (e.g. 10.0.1.7:7400, [fd00::1]:7400): %v", s, err)
	}
	if port == "" {
		return fmt.Errorf("--server %q has no port: want host:port, e.g. %s7400", s, s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("--server %q: port %q is not a number from 1 to 65535", s, port)
	}
	if host == "" {
		return fmt.Errorf("--server %q has no host: want host:port, e.g. 127.0.0.1%s", s, s)
	}
	return nil
}

// cli is one invocation: its flags, its writers and its connections.
type cli struct {
	g      globals
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
	conns  *connPool
}

// Main runs ipledgerctl with args (without the program name) and returns the exit code.
// Results go to stdout, errors and notes to stderr.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	c := &cli{stdout: stdout, stderr: stderr, getenv: getenv}
	root := c.newRoot()
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
		if want := allowedValues(invalid.GetFlag()); want != "" {
			msg += " (want " + want + ")"
		}
	case errors.As(err, &required):
		msg = fmt.Sprintf("%s needs a value", flagNames(required.GetFlag()))
	}
	if path != "" {
		msg = path + ": " + msg
	}
	return &usageError{cmd: path, msg: msg}
}

// allowedValues says in words what a flag of its type takes ("" when the parse error says it).
func allowedValues(f *pflag.Flag) string {
	switch f.Value.Type() {
	case "duration":
		return "a duration with a unit: 500ms, 30s, 5m, 1h30m"
	case "uint", "uint32", "uint64":
		return "a whole number, 0 or more"
	case "int", "int32", "int64":
		return "a whole number"
	case "bool":
		return "true or false"
	case "float64", "float32":
		return "a number"
	}
	return ""
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
