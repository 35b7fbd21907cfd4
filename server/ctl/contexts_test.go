package ctl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipledger/ipledger/server/ctl/ctlconfig"
)

// A context names the server and the certificates, as kubectl's and etcdctl's users expect:
// ipledgerctl finds a mutual-TLS server without flags; flags and IPLEDGER_* variables override
// the context; --context and $IPLEDGER_CONTEXT pick another; mistakes are exit 2 naming the
// file and the context.
func TestContexts(t *testing.T) {
	cfg := devConfig(t)
	cfg.Insecure = false
	s := startServer(t, cfg)
	dev := s.DevCerts()
	addr := s.GRPCAddr()
	plain := startDev(t)
	file := filepath.Join(t.TempDir(), "ipledger", "config.yaml")
	env := map[string]string{ctlconfig.EnvFile: file}
	run := func(want int, extra map[string]string, args ...string) result {
		t.Helper()
		e := map[string]string{}
		for k, v := range env {
			e[k] = v
		}
		for k, v := range extra {
			e[k] = v
		}
		r := ctlEnv(t, e, args...)
		if r.code != want {
			t.Fatalf("ipledgerctl %s: want exit %d, got %s", strings.Join(args, " "), want, r)
		}
		return r
	}

	// No file yet: no context, the default server, and config commands say so.
	if r := run(ExitError, nil, "config", "current-context"); !strings.Contains(r.stderr, "no current context in "+file) {
		t.Fatalf("current-context without a file: %s", r)
	}
	var view ContextsDoc
	decode(t, run(0, nil, "config", "view", "-o", "json"), &view)
	if view.File != file || view.CurrentContext != "" || len(view.Contexts) != 0 {
		t.Fatalf("view of no file: %+v", view)
	}

	// set-context takes the global flags given; --use makes it current; the file is 0600.
	run(0, nil, "config", "set-context", "dev", "--server", addr, "--dev-certs", dev.Dir, "--use")
	run(0, nil, "config", "set-context", "plain", "--server", plain.GRPCAddr())
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the configuration file: %v %v", st, err)
	}
	if r := run(0, nil, "config", "current-context"); r.stdout != "dev\n" {
		t.Fatalf("current-context: %q", r.stdout)
	}
	decode(t, run(0, nil, "config", "view", "-o", "json"), &view)
	if view.CurrentContext != "dev" || len(view.Contexts) != 2 || view.Contexts[0] != (ContextDoc{Name: "dev", Current: true, Server: addr, DevCerts: dev.Dir}) ||
		view.Contexts[1] != (ContextDoc{Name: "plain", Server: plain.GRPCAddr()}) {
		t.Fatalf("view: %+v", view)
	}
	if rows := tableRows(t, run(0, nil, "config", "view").stdout, "CURRENT", "NAME", "SERVER"); len(rows) != 2 || rows[0][0] != "*" || rows[0][1] != "dev" || rows[1][0] != "plain" {
		t.Fatalf("view table: %v", rows)
	}

	// Without flags: the current context's server and certificates.
	if r := run(0, nil, "status"); !strings.Contains(r.stdout, addr+" (leader)") {
		t.Fatalf("status through the context: %s", r)
	}
	// --context and $IPLEDGER_CONTEXT pick another (the plaintext one: no certificates).
	if r := run(0, nil, "--context", "plain", "status"); !strings.Contains(r.stdout, plain.GRPCAddr()+" (leader)") {
		t.Fatalf("--context plain: %s", r)
	}
	if r := run(0, map[string]string{EnvContext: "plain"}, "status"); !strings.Contains(r.stdout, plain.GRPCAddr()+" (leader)") {
		t.Fatalf("$IPLEDGER_CONTEXT: %s", r)
	}
	// A flag and a variable win over the context's server, keeping its certificates.
	closed := closedAddr(t)
	if r := run(ExitError, nil, "--server", closed, "status"); !strings.Contains(r.stderr, "cannot reach ipledger-server at "+closed) {
		t.Fatalf("--server over the context: %s", r)
	}
	if r := run(ExitError, map[string]string{EnvServer: closed}, "status"); !strings.Contains(r.stderr, closed) {
		t.Fatalf("$IPLEDGER_SERVER over the context: %s", r)
	}
	// Any TLS flag or variable replaces the context's certificates as a whole: the context
	// "plain" with the dev server's certificates from the environment works, and the dev
	// context with --tls-cert alone is not completed from its dev-certs.
	if r := run(0, map[string]string{EnvDevCerts: dev.Dir}, "--context", "plain", "--server", addr, "status"); !strings.Contains(r.stdout, "(leader)") {
		t.Fatalf("certificates from the environment: %s", r)
	}
	if r := run(ExitUsage, nil, "--tls-cert", dev.Admin().Cert, "status"); !strings.Contains(r.stderr, "mutual TLS needs --tls-cert, --tls-key and --tls-ca together") {
		t.Fatalf("a TLS flag with a context's dev-certs: %s", r)
	}

	// Mistakes: an unknown context, a current-context that is gone, a malformed file; a
	// context's certificates that are gone (the demo stopped) name the context.
	if r := run(ExitUsage, nil, "--context", "prod", "status"); !strings.Contains(r.stderr, `--context "prod": no such context in `+file+" (contexts: dev, plain;") {
		t.Fatalf("unknown --context: %s", r)
	}
	if r := run(ExitUsage, map[string]string{EnvContext: "prod"}, "nodes"); !strings.Contains(r.stderr, `$IPLEDGER_CONTEXT "prod": no such context`) {
		t.Fatalf("unknown $IPLEDGER_CONTEXT: %s", r)
	}
	run(0, nil, "config", "set-context", "gone", "--server", addr, "--dev-certs", filepath.Join(t.TempDir(), "certs"))
	if r := run(ExitUsage, nil, "--context", "gone", "status"); !strings.Contains(r.stderr, "the certificates of context gone ("+file+")") || !strings.Contains(r.stderr, "config delete-context gone") {
		t.Fatalf("a context whose certificates are gone: %s", r)
	}
	if r := run(ExitUsage, nil, "config", "use-context", "prod"); !strings.Contains(r.stderr, `no such context: "prod" in `+file) {
		t.Fatalf("use-context of an unknown context: %s", r)
	}
	if r := run(ExitUsage, nil, "config", "set-context", "half", "--tls-cert", dev.Admin().Cert); !strings.Contains(r.stderr, "only some of tls-cert, tls-key and tls-ca") {
		t.Fatalf("set-context with a certificate alone: %s", r)
	}
	if r := run(ExitUsage, nil, "config", "set-context", "bad", "--server", "10.0.0.1"); !strings.Contains(r.stderr, "has no port") {
		t.Fatalf("set-context with a server without a port: %s", r)
	}
	run(0, nil, "config", "use-context", "plain")
	if r := run(0, nil, "status"); !strings.Contains(r.stdout, plain.GRPCAddr()) {
		t.Fatalf("after use-context plain: %s", r)
	}
	// Deleting the current context leaves none current (the user's contexts remember none).
	if r := run(0, nil, "config", "delete-context", "plain"); !strings.Contains(r.stdout, "context plain deleted; current context: -") {
		t.Fatalf("delete-context: %s", r)
	}
	if r := run(ExitUsage, nil, "config", "delete-context", "plain"); !strings.Contains(r.stderr, "no such context") {
		t.Fatalf("delete-context twice: %s", r)
	}
	if err := os.WriteFile(file, []byte("current-context: dev\ncontexts: [{name: dev, sever: x}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := run(ExitUsage, nil, "status"); !strings.Contains(r.stderr, file) || !strings.Contains(r.stderr, `unknown field "sever"`) {
		t.Fatalf("a malformed file: %s", r)
	}
	// Commands that ask no server still run.
	run(0, nil, "help")
	run(0, nil, "version", "--client")
}
