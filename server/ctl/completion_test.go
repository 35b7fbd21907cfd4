package ctl

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// completionCases are command lines being typed (the last word is the one completed) and
// words the completion must offer.
var completionCases = []struct {
	line []string
	want []string
	not  []string
}{
	{[]string{""}, []string{"subnets", "subnet", "nodes", "node", "prewarm", "policy", "policies", "check", "completion"}, []string{"create"}},
	{[]string{"pre"}, []string{"prewarm"}, []string{"subnets"}},
	{[]string{"prewarm", ""}, []string{"create", "list", "cancel"}, []string{"subnets"}},
	{[]string{"subnets", "-o", ""}, []string{"table", "json", "yaml"}, []string{"subnets", "terraform"}},
	{[]string{"launch-hint", "-o", ""}, []string{"table", "json", "launch-template", "cli", "eksctl", "terraform"}, nil},
	{[]string{"launch-hint", "--"}, []string{"--policy", "--instance-type", "--expected-pods", "--security-group"}, nil},
	// A global flag with its value before the command is skipped (cobra does not offer a flag
	// again once it is given, so the one given here is --dev-certs).
	{[]string{"--dev-certs", "/nonexistent", "subnet", "budget", "subnet-1", "--"}, []string{"--max-held", "--keep-free", "--server", "--timeout"}, []string{"--undo", "--dev-certs"}},
	{[]string{"subnet", "budget", "subnet-1", "--max-held", "4", "--"}, []string{"--keep-free", "--server"}, []string{"--max-held"}},
	{[]string{"policy", "set", "-"}, []string{"-f", "--filename"}, []string{"--undo"}},
	{[]string{"help", ""}, []string{"subnets", "prewarm", "completion"}, nil},
	{[]string{"help", "prewarm", ""}, []string{"create", "list", "cancel"}, []string{"subnets"}},
	{[]string{"check", "--"}, []string{"--no-ec2"}, []string{"--max-held"}},
	{[]string{"completion", ""}, []string{"bash", "zsh", "fish"}, nil},
	{[]string{"prewarm", "create", "--"}, []string{"--subnet", "--az", "--instance-type", "--nodes", "--addresses-per-node", "--expiry"}, nil},
}

// TestMain lets the test binary stand in for ipledgerctl: the completion scripts run
// "ipledgerctl __complete ..." from $PATH, which is a link to this binary (see ctlOnPath).
func TestMain(m *testing.M) {
	if os.Getenv(asMainEnv) == "1" {
		os.Exit(Main(context.Background(), os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
	}
	os.Exit(m.Run())
}

const asMainEnv = "IPLEDGERCTL_TEST_AS_MAIN"

// ctlOnPath returns a directory whose ipledgerctl is the one `make test` built into
// $IPLEDGER_BIN_DIR (from this tree, just before the tests), else this test binary running Main
// (as correct, but a race-instrumented test binary takes a second to start).
func ctlOnPath(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if bin := os.Getenv("IPLEDGER_BIN_DIR"); bin != "" {
		if fi, err := os.Stat(filepath.Join(bin, "ipledgerctl")); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			self = filepath.Join(bin, "ipledgerctl")
		}
	}
	dir := t.TempDir()
	if err := os.Symlink(self, filepath.Join(dir, "ipledgerctl")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// shellEnv is the environment the shells run in: ipledgerctl on PATH, a server address where
// nothing listens (names from the server complete to nothing, at once).
func shellEnv(t *testing.T, server string) []string {
	return []string{"HOME=" + t.TempDir(), "PATH=" + ctlOnPath(t) + ":" + os.Getenv("PATH"), "TERM=dumb",
		asMainEnv + "=1", EnvServer + "=" + server}
}

func completionScript(t *testing.T, shell string) string {
	t.Helper()
	r := mustCtl(t, 0, closedAddr(t), "completion", shell)
	if !strings.Contains(r.stdout, "ipledgerctl") || r.stderr != "" {
		t.Fatalf("completion %s: %s", shell, r)
	}
	p := filepath.Join(t.TempDir(), "ipledgerctl."+shell)
	if err := os.WriteFile(p, []byte(r.stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func needShell(t *testing.T, shell string) string {
	t.Helper()
	p, err := exec.LookPath(shell)
	if err != nil {
		t.Skipf("%s is not installed; its completion script is not checked", shell)
	}
	return p
}

func runShell(t *testing.T, env []string, shell string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), shell, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", shell, args, err, out)
	}
	return string(out)
}

func checkOffered(t *testing.T, shell string, line, got, want, not []string) {
	t.Helper()
	set := map[string]bool{}
	for _, g := range got {
		set[g] = true
	}
	for _, w := range want {
		if !set[w] {
			t.Errorf("%s: 'ipledgerctl %s' does not offer %q (offers %v)", shell, strings.Join(line, " "), w, got)
		}
	}
	for _, n := range not {
		if set[n] {
			t.Errorf("%s: 'ipledgerctl %s' offers %q", shell, strings.Join(line, " "), n)
		}
	}
}

func shellWords(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = "'" + w + "'"
	}
	return strings.Join(q, " ")
}

// bashCompletion is bash-completion's library, which cobra's bash script uses as bash users
// have it (.ci/install-deps installs it).
const bashCompletion = "/usr/share/bash-completion/bash_completion"

func TestCompletionBash(t *testing.T) {
	t.Parallel()
	bash := needShell(t, "bash")
	if _, err := os.Stat(bashCompletion); err != nil {
		t.Skipf("the bash-completion package is not installed (%v); its completion is not checked", err)
	}
	script := completionScript(t, "bash")
	env := shellEnv(t, closedAddr(t))
	runShell(t, env, bash, "-n", script)
	for _, tc := range completionCases {
		words := append([]string{"ipledgerctl"}, tc.line...)
		line := strings.Join(words, " ")
		prog := `source ` + bashCompletion + `; source "$1"; COMP_WORDS=(` + shellWords(words) + `); COMP_CWORD=` + itoa(uint32(len(words)-1)) +
			`; COMP_LINE='` + line + `'; COMP_POINT=${#COMP_LINE}; __start_ipledgerctl; printf '%s\n' "${COMPREPLY[@]}"`
		out := runShell(t, env, bash, "-c", prog, "bash", script)
		// With several candidates cobra's script shows each with its description: "word  (...)".
		var got []string
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				got = append(got, f[0])
			}
		}
		checkOffered(t, "bash", tc.line, got, tc.want, tc.not)
	}
}

func TestCompletionZsh(t *testing.T) {
	t.Parallel()
	zsh := needShell(t, "zsh")
	script := completionScript(t, "zsh")
	env := shellEnv(t, closedAddr(t))
	runShell(t, env, zsh, "-n", script)
	// Outside a completion widget, _describe, compadd, _arguments and compdef are replaced by
	// functions that print what they are given; _describe's prefix filtering is zsh's, so
	// candidates are checked without the word being typed.
	for _, tc := range completionCases {
		words := append([]string{"ipledgerctl"}, tc.line...)
		prog := `compdef() { :; }
compadd() { :; }
_describe() { [[ "$1" == -V ]] && shift; local -a d; d=("${(@P)2}"); printf '%s\n' "${d[@]%%:*}"; }
_arguments() { print FILES; }
source "$1"
words=(` + shellWords(words) + `)
CURRENT=` + itoa(uint32(len(words))) + `
_ipledgerctl`
		out := runShell(t, env, zsh, "-f", "-c", prog, "zsh", script)
		var got []string
		prefix := tc.line[len(tc.line)-1]
		for _, w := range strings.Fields(out) {
			if strings.HasPrefix(w, prefix) {
				got = append(got, w)
			}
		}
		checkOffered(t, "zsh", tc.line, got, tc.want, tc.not)
	}
}

func TestCompletionFish(t *testing.T) {
	t.Parallel()
	fish := needShell(t, "fish")
	script := completionScript(t, "fish")
	env := shellEnv(t, closedAddr(t))
	runShell(t, env, fish, "--no-execute", script)
	for _, tc := range completionCases {
		line := "ipledgerctl " + strings.Join(tc.line, " ")
		out := runShell(t, env, fish, "--no-config", "-c", "source $argv[1]; complete -C '"+line+"'", script)
		var got []string
		for _, l := range strings.Split(out, "\n") {
			if w, _, _ := strings.Cut(l, "\t"); w != "" {
				got = append(got, w)
			}
		}
		checkOffered(t, "fish", tc.line, got, tc.want, tc.not)
	}
}

// Neither the scripts nor the descriptions ipledgerctl gives them carry flag usage markup.
func TestCompletionDescriptionsAreClean(t *testing.T) {
	for _, shell := range shells {
		out := mustCtl(t, 0, closedAddr(t), "completion", shell).stdout
		if strings.Contains(out, "`") {
			t.Errorf("%s completion has a backquote (flag usage markup) in it", shell)
		}
	}
	for _, line := range [][]string{{""}, {"prewarm", "create", "--"}, {"subnets", "-"}, {"check", "--"}} {
		r := mustCtl(t, 0, closedAddr(t), append([]string{"__complete"}, line...)...)
		if strings.Contains(r.stdout, "`") || !strings.Contains(r.stdout, "\t") {
			t.Errorf("__complete %v: descriptions missing or with markup:\n%s", line, r.stdout)
		}
	}
}
