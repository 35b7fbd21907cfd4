package ctl

import (
	"bytes"
	"context"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestUsageErrorsExit2AndSendNothing(t *testing.T) {
	// Nothing listens: a usage error must be found before any call is made.
	addr := closedAddr(t)
	policyDir := t.TempDir()
	tests := []struct {
		args []string
		want string // in stderr
	}{
		{nil, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"subnte"}, `unknown command "subnte" (did you mean "subnets"?)`},
		{[]string{"prewarm", "craete"}, `(did you mean "create"?)`},
		{[]string{"--bogus", "subnets"}, "unknown flag --bogus"},
		{[]string{"subnets", "--bogus"}, "subnets: unknown flag --bogus"},
		{[]string{"subnets", "-x"}, "subnets: unknown flag -x"},
		{[]string{"subnets", "extra"}, `unexpected argument "extra"`},
		{[]string{"subnets", "-o", "xml"}, `invalid -o "xml"`},
		{[]string{"-o", "xml", "nodes"}, `invalid -o "xml"`},
		{[]string{"status", "--timeout", "0s"}, "invalid --timeout"},
		{[]string{"status", "--timeout", "soon"}, "invalid value"},
		{[]string{"status", "--server", ""}, "empty --server"},
		// A --server without a port, with a scheme, with a bad port or no host says so.
		{[]string{"status", "--server", "ipledger-server.kube-system.svc"}, `--server "ipledger-server.kube-system.svc" has no port: want host:port, e.g. ipledger-server.kube-system.svc:7400`},
		{[]string{"status", "--server", "10.0.1.7:"}, `--server "10.0.1.7:" has no port`},
		{[]string{"status", "--server", "https://10.0.1.7:7400"}, `want host:port without a scheme (10.0.1.7:7400)`},
		{[]string{"status", "--server", "10.0.1.7:http"}, `port "http" is not a number from 1 to 65535`},
		{[]string{"status", "--server", "10.0.1.7:70000"}, `port "70000" is not a number from 1 to 65535`},
		{[]string{"status", "--server", ":7400"}, `has no host`},
		// Bad flag values say what is allowed.
		{[]string{"status", "--timeout", "10"}, `invalid value "10" for --timeout: time: missing unit in duration "10" (want a duration with a unit: 500ms, 30s, 5m, 1h30m)`},
		{[]string{"canfit", "--az", "a", "--nodes", "-3"}, `for --nodes: strconv.ParseUint: parsing "-3": invalid syntax (want a whole number, 0 or more)`},
		{[]string{"drain", "n", "--undo=maybe"}, `(want true or false)`},
		{[]string{"node"}, "node: missing NODE"},
		{[]string{"node", "a", "b"}, `unexpected argument "b"`},
		{[]string{"drain"}, "drain: missing NODE"},
		{[]string{"node", "forget-identity"}, "node forget-identity: give NODE or --instance i-..."},
		{[]string{"node", "forget-identity", "n", "--instance", "i-0123456789abcdef0"}, "give NODE or --instance, not both"},
		{[]string{"node", "forget-identity", "--instance", "n1"}, `--instance "n1" is not an instance id`},
		{[]string{"node", "forget-identity", "a", "b"}, `unexpected argument "b"`},
		{[]string{"subnet"}, "subnet needs a subcommand: budget"},
		{[]string{"subnet", "grow"}, `unknown subnet subcommand "grow"`},
		{[]string{"subnet", "budget"}, "missing SUBNET"},
		{[]string{"subnet", "budget", "subnet-1"}, "give --max-held, --keep-free or both"},
		{[]string{"subnet", "budget", "subnet-1", "--max-held", "-1"}, "invalid value"},
		{[]string{"subnet", "budget", "subnet-1", "--max-held", "lots"}, "invalid value"},
		{[]string{"subnet", "budget", "subnet-1", "--max-held", "99999999999"}, "too large"},
		{[]string{"prewarm"}, "prewarm needs a subcommand: create, list, cancel"},
		{[]string{"prewarm", "create", "--instance-type", "m5.large", "--nodes", "1", "--addresses-per-node", "1"}, "give --subnet or --az"},
		{[]string{"prewarm", "create", "--subnet", "s", "--az", "a", "--instance-type", "m5.large", "--nodes", "1", "--addresses-per-node", "1"}, "not both"},
		{[]string{"prewarm", "create", "--subnet", "s", "--nodes", "1", "--addresses-per-node", "1"}, "--instance-type is required"},
		{[]string{"prewarm", "create", "--subnet", "s", "--instance-type", "m5.large", "--addresses-per-node", "1"}, "--nodes is required"},
		{[]string{"prewarm", "create", "--subnet", "s", "--instance-type", "m5.large", "--nodes", "1"}, "--addresses-per-node is required"},
		{[]string{"prewarm", "create", "--subnet", "s", "--instance-type", "m5.large", "--nodes", "1", "--addresses-per-node", "1", "--expiry", "-5m"}, "must be positive"},
		{[]string{"prewarm", "cancel"}, "missing ID"},
		{[]string{"canfit", "--nodes", "2"}, "give --subnet or --az"},
		{[]string{"canfit", "--az", "eu-west-1a"}, "--nodes is required"},
		{[]string{"policy", "set"}, "-f FILE is required"},
		{[]string{"policy", "set", "-f", policyDir + "/missing.yaml"}, "missing.yaml"},
		{[]string{"policy", "delete"}, "missing NAME"},
		{[]string{"check", "--ec2"}, "unknown flag --ec2"},
		{[]string{"check", "-ec2"}, "unknown flag -ec2"},
		{[]string{"completion"}, "missing bash|zsh|fish"},
		{[]string{"completion", "tcsh"}, `unknown shell "tcsh"`},
		{[]string{"help", "frobnicate"}, `unknown command "frobnicate"`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := ctl(t, addr, tc.args...)
			if r.code != ExitUsage || !strings.Contains(r.stderr, tc.want) || !strings.Contains(r.stderr, "Run 'ipledgerctl help") || r.stdout != "" {
				t.Fatalf("want exit 2 with %q, got %s", tc.want, r)
			}
			if strings.Contains(r.stderr, "cannot reach") {
				t.Fatalf("a usage error reached for the server: %s", r)
			}
		})
	}
	// The hint names the command whose help explains the mistake.
	if r := ctl(t, addr, "subnet", "budget", "x"); !strings.Contains(r.stderr, "Usage: ipledgerctl subnet budget SUBNET [flags]\nRun 'ipledgerctl help subnet budget' for usage.") {
		t.Fatalf("hint: %s", r.stderr)
	}
	if r := ctl(t, addr, "prewarm"); !strings.Contains(r.stderr, "Usage: ipledgerctl prewarm create|list|cancel ...") {
		t.Fatalf("group hint: %s", r.stderr)
	}
}

func TestConnectionRefusedSaysWhere(t *testing.T) {
	addr := closedAddr(t)
	for _, args := range [][]string{{"subnets"}, {"drain", "n"}, {"status", "-o", "json"}} {
		r := ctl(t, addr, args...)
		if r.code != ExitError || r.stdout != "" || !strings.Contains(r.stderr, "cannot reach ipledger-server at "+addr+": connection refused") ||
			!strings.Contains(r.stderr, "--server or IPLEDGER_SERVER") {
			t.Fatalf("%v: %s", args, r)
		}
	}
	// --server overrides the environment.
	var out, errOut bytes.Buffer
	code := Main(t.Context(), []string{"--server", addr, "subnets"}, &out, &errOut, func(k string) string {
		if k == EnvServer {
			return "127.0.0.1:1"
		}
		return ""
	})
	if code != ExitError || !strings.Contains(errOut.String(), addr) {
		t.Fatalf("--server did not win over %s: %d %s", EnvServer, code, errOut.String())
	}
	// Without either, the default address is used (whether or not something answers there:
	// status prints the address it asked).
	out.Reset()
	errOut.Reset()
	Main(t.Context(), []string{"status", "--timeout", "2s"}, &out, &errOut, func(string) string { return "" })
	if !strings.Contains(out.String()+errOut.String(), DefaultServer) {
		t.Fatalf("default server: %s %s", out.String(), errOut.String())
	}
}

func TestHelp(t *testing.T) {
	addr := closedAddr(t)
	commands := leaves(testRoot())
	if len(commands) < 18 {
		t.Fatalf("only %d commands in the tree", len(commands))
	}
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}, {"-help"}} {
		r := mustCtl(t, 0, addr, args...)
		for _, c := range commands {
			if !strings.Contains(r.stdout, "  "+cmdPath(c)) {
				t.Fatalf("%v does not list %q:\n%s", args, cmdPath(c), r.stdout)
			}
		}
		if !strings.Contains(r.stdout, "Exit codes:") || !strings.Contains(r.stdout, "--server ADDR") {
			t.Fatalf("%v:\n%s", args, r.stdout)
		}
	}
	for _, c := range commands {
		path := cmdPath(c)
		words := strings.Fields(path)
		r := mustCtl(t, 0, addr, append([]string{"help"}, words...)...)
		if !strings.HasPrefix(r.stdout, "Usage: ipledgerctl "+path) {
			t.Fatalf("help %s:\n%s", path, r.stdout)
		}
		for _, f := range ownFlags(c) {
			if !strings.Contains(r.stdout, dashed(f)) {
				t.Fatalf("help %s does not show %s", path, dashed(f))
			}
		}
		// COMMAND -h is the same help.
		if h := mustCtl(t, 0, addr, append(words, "-h")...); h.stdout != r.stdout {
			t.Fatalf("%s -h differs from help %s", path, path)
		}
	}
	if r := mustCtl(t, 0, addr, "help", "prewarm"); !strings.Contains(r.stdout, "prewarm create") || !strings.Contains(r.stdout, "prewarm cancel ID") {
		t.Fatalf("help prewarm:\n%s", r.stdout)
	}
}

// Flags may come anywhere among the positional arguments; everything after "--" is positional.
func TestParseInterleaved(t *testing.T) {
	tests := []struct {
		args []string
		pos  []string
		o    string
		undo bool
	}{
		{[]string{"node-a"}, []string{"node-a"}, "table", false},
		{[]string{"node-a", "-o", "json"}, []string{"node-a"}, "json", false},
		{[]string{"-o", "yaml", "node-a", "--undo"}, []string{"node-a"}, "yaml", true},
		{[]string{"--undo", "--", "-o"}, []string{"-o"}, "table", true},
		{[]string{"a", "b", "--undo", "c"}, []string{"a", "b", "c"}, "table", true},
		// The spellings of Go's flag package keep working.
		{[]string{"-undo", "node-a", "--o=json"}, []string{"node-a"}, "json", true},
		{[]string{"node-a", "--o", "yaml", "-undo=false"}, []string{"node-a"}, "yaml", false},
	}
	for _, tc := range tests {
		c := &cli{stdout: io.Discard, stderr: io.Discard}
		root := c.newRoot()
		var pos []string
		var undo bool
		cmd := c.leaf(&cobra.Command{Use: "t ARGS"}, 0, -1, func(_ context.Context, args []string) error { pos = args; return nil })
		cmd.Flags().BoolVar(&undo, "undo", false, "")
		root.AddCommand(cmd)
		root.SetArgs(normalizeArgs(root, append([]string{"t"}, tc.args...)))
		if err := root.Execute(); err != nil || !reflect.DeepEqual(pos, tc.pos) || c.g.output != tc.o || undo != tc.undo {
			t.Fatalf("%v: pos %v o %s undo %v err %v", tc.args, pos, c.g.output, undo, err)
		}
	}
}

func TestHumanUnits(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 45 * time.Second: "45s", 90 * time.Second: "1m30s", 12 * time.Minute: "12m",
		3*time.Hour + 20*time.Minute: "3h20m", 5 * time.Hour: "5h", 50 * time.Hour: "2d2h", 72 * time.Hour: "3d",
	} {
		if got := human(d); got != want {
			t.Errorf("human(%s) = %q, want %q", d, got, want)
		}
	}
}

func TestForecastColumn(t *testing.T) {
	ttl := 3*time.Hour + 20*time.Minute
	tests := []struct {
		name   string
		in     *ipledgerv1.Forecast
		status string
		text   string
	}{
		{"no forecast", nil, "unknown", "n/a"},
		{"too little history", &ipledgerv1.Forecast{Window: durationpb.New(30 * time.Second)}, "unknown", "n/a"},
		{"flat", &ipledgerv1.Forecast{Window: durationpb.New(time.Hour)}, "never", "never"},
		{"shrinking", &ipledgerv1.Forecast{HeldPerHour: -4, Window: durationpb.New(time.Hour)}, "never", "never"},
		{"growing", &ipledgerv1.Forecast{HeldPerHour: 30, Window: durationpb.New(time.Hour), TimeToExhaustion: durationpb.New(ttl)}, "exhausts", "in 3h20m"},
	}
	for _, tc := range tests {
		s := subnetDoc(&ipledgerv1.SubnetBudget{Forecast: tc.in})
		if s.Forecast.Status != tc.status || s.Forecast.text() != tc.text {
			t.Errorf("%s: status %q text %q, want %q %q", tc.name, s.Forecast.Status, s.Forecast.text(), tc.status, tc.text)
		}
		if (s.Forecast.ExhaustionInSeconds != nil) != (tc.status == "exhausts") {
			t.Errorf("%s: exhaustion_in_seconds %v", tc.name, s.Forecast.ExhaustionInSeconds)
		}
	}
}
