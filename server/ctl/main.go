package ctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"
)

// Version is ipledgerctl's version string (set at build time with -ldflags).
var Version = "dev"

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

// globals are the flags every command accepts, before or after the command name.
type globals struct {
	server   string
	output   string
	timeout  time.Duration
	tlsCert  string
	tlsKey   string
	tlsCA    string
	devCerts string
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.server, "server", g.server, "host:port of an ipledger-server replica (any replica; changes go to the leader)")
	fs.StringVar(&g.output, "o", g.output, "output format: table, json or yaml")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "deadline for the whole command")
	fs.StringVar(&g.tlsCert, "tls-cert", g.tlsCert, "admin client certificate (URI SAN ipledger://admin/<name>) for mutual TLS")
	fs.StringVar(&g.tlsKey, "tls-key", g.tlsKey, "private key of --tls-cert")
	fs.StringVar(&g.tlsCA, "tls-ca", g.tlsCA, "CA bundle that verifies the server's certificate (URI SAN ipledger://server)")
	fs.StringVar(&g.devCerts, "dev-certs", g.devCerts, "directory of ipledger-server --dev's certificates (<data-dir>/certs): use its admin.crt, admin.key and ca.crt")
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

func (g *globals) validate() error {
	if !contains(outputFormats, g.output) {
		return usagef("", "invalid -o %q: want one of %s", g.output, strings.Join(outputFormats, ", "))
	}
	if g.timeout <= 0 {
		return usagef("", "invalid --timeout %s: must be positive", g.timeout)
	}
	if strings.TrimSpace(g.server) == "" {
		return usagef("", "empty --server: want host:port of an ipledger-server replica")
	}
	if cert, key, ca := g.tlsFiles(); (cert != "" || key != "" || ca != "") && (cert == "" || key == "" || ca == "") {
		return usagef("", "mutual TLS needs --tls-cert, --tls-key and --tls-ca together (or --dev-certs DIR)")
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
	c.g = globals{server: DefaultServer, output: "table", timeout: DefaultTimeout}
	if s := getenv(EnvServer); s != "" {
		c.g.server = s
	}
	c.g.tlsCert, c.g.tlsKey, c.g.tlsCA, c.g.devCerts = getenv(EnvTLSCert), getenv(EnvTLSKey), getenv(EnvTLSCA), getenv(EnvDevCerts)
	c.conns = newConnPool(c.dialOptions)
	defer c.conns.close()
	err := c.run(ctx, args)
	return c.report(err)
}

// report prints err and returns its exit code.
func (c *cli) report(err error) int {
	if err == nil {
		return ExitOK
	}
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(c.stderr, "ipledgerctl: %s\n", ue.msg)
		if ue.cmd != "" {
			if cmd := findCommand(ue.cmd); cmd != nil {
				fmt.Fprintf(c.stderr, "Usage: %s\n", cmd.usageLine())
			} else if subs, ok := groups()[ue.cmd]; ok {
				fmt.Fprintf(c.stderr, "Usage: ipledgerctl %s %s ...\n", ue.cmd, strings.Join(subs, "|"))
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
	fmt.Fprintf(c.stderr, "ipledgerctl: %v\n", err)
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

func (c *cli) run(ctx context.Context, args []string) error {
	top := flag.NewFlagSet("ipledgerctl", flag.ContinueOnError)
	top.SetOutput(io.Discard)
	c.g.register(top)
	help := top.Bool("h", false, "show help")
	top.BoolVar(help, "help", false, "show help")
	if err := top.Parse(args); err != nil {
		return usagef("", "%s", flagErr(err))
	}
	rest := top.Args()
	if *help {
		writeUsage(c.stdout)
		return nil
	}
	if len(rest) == 0 {
		writeUsage(c.stderr)
		return usagef("", "no command given")
	}
	cmd, n, err := lookup(rest)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("ipledgerctl "+cmd.path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	runner := cmd.setup(fs)
	c.g.register(fs)
	pos, err := parseInterleaved(fs, rest[n:])
	if errors.Is(err, flag.ErrHelp) {
		writeCommandUsage(c.stdout, cmd)
		return nil
	}
	if err != nil {
		return usagef(cmd.path, "%s: %s", cmd.path, flagErr(err))
	}
	if err := c.g.validate(); err != nil {
		err.(*usageError).cmd = cmd.path
		return err
	}
	if err := cmd.checkArgs(pos); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.g.timeout)
	defer cancel()
	return runner(ctx, c, pos)
}

// flagErr turns the flag package's messages into ours.
func flagErr(err error) string {
	const undefined = "flag provided but not defined: "
	if msg := err.Error(); strings.HasPrefix(msg, undefined) {
		return "unknown flag " + strings.TrimPrefix(msg, undefined)
	}
	return err.Error()
}

// parseInterleaved parses flags anywhere among the positional arguments ("node NAME -o json");
// everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		consumed := args[:len(args)-len(rest)]
		if len(consumed) > 0 && consumed[len(consumed)-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
