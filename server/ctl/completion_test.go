package ctl

import (
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
	{[]string{"subnets", "-o", ""}, []string{"table", "json", "yaml"}, []string{"subnets"}},
	{[]string{"--server", "127.0.0.1:7400", "subnet", "budget", "subnet-1", "--"}, []string{"--max-held", "--keep-free", "--server", "--timeout"}, []string{"--undo"}},
	{[]string{"check", "--"}, []string{"--no-ec2"}, []string{"--max-held"}},
	{[]string{"completion", ""}, []string{"bash", "zsh", "fish"}, nil},
	{[]string{"prewarm", "create", "--"}, []string{"--subnet", "--az", "--instance-type", "--nodes", "--addresses-per-node", "--expiry"}, nil},
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

func runShell(t *testing.T, shell string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), shell, args...)
	cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH"), "TERM=dumb"}
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

func TestCompletionBash(t *testing.T) {
	bash := needShell(t, "bash")
	script := completionScript(t, "bash")
	runShell(t, bash, "-n", script)
	for _, tc := range completionCases {
		words := append([]string{"ipledgerctl"}, tc.line...)
		prog := `source "$1"; COMP_WORDS=(` + shellWords(words) + `); COMP_CWORD=` + itoa(uint32(len(words)-1)) +
			`; _ipledgerctl; printf '%s\n' "${COMPREPLY[@]}"`
		out := runShell(t, bash, "-c", prog, "bash", script)
		checkOffered(t, "bash", tc.line, strings.Fields(out), tc.want, tc.not)
	}
}

func TestCompletionZsh(t *testing.T) {
	zsh := needShell(t, "zsh")
	script := completionScript(t, "zsh")
	runShell(t, zsh, "-n", script)
	// Outside a completion widget, compadd, _describe and compdef are replaced by functions that
	// print what they are given; compadd's prefix filtering is zsh's, so candidates are checked
	// without the word being typed.
	for _, tc := range completionCases {
		words := append([]string{"ipledgerctl"}, tc.line...)
		prog := `compdef() { :; }
compadd() { [[ "$1" == "--" ]] && shift; printf '%s\n' "$@"; }
_describe() { local -a d; d=("${(@P)2}"); printf '%s\n' "${d[@]%%:*}"; }
_files() { print FILES; }
source "$1"
words=(` + shellWords(words) + `)
CURRENT=` + itoa(uint32(len(words))) + `
_ipledgerctl`
		out := runShell(t, zsh, "-f", "-c", prog, "zsh", script)
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
	fish := needShell(t, "fish")
	script := completionScript(t, "fish")
	runShell(t, fish, "--no-execute", script)
	for _, tc := range completionCases {
		line := "ipledgerctl " + strings.Join(tc.line, " ")
		out := runShell(t, fish, "--no-config", "-c", "source $argv[1]; complete -C '"+line+"'", script)
		var got []string
		for _, l := range strings.Split(out, "\n") {
			if w, _, _ := strings.Cut(l, "\t"); w != "" {
				got = append(got, w)
			}
		}
		checkOffered(t, "fish", tc.line, got, tc.want, tc.not)
	}
}

func TestCompletionDescriptionsAreClean(t *testing.T) {
	for _, shell := range shells {
		out := mustCtl(t, 0, closedAddr(t), "completion", shell).stdout
		if strings.Contains(out, "`") {
			t.Errorf("%s completion has a backquote (flag usage markup) in it", shell)
		}
	}
}
