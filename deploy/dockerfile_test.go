package deploy

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// This file reads the Dockerfiles in docker/ (no daemon runs here, so nothing is built) into
// what the tests need: the builder, the packages it builds, the final image's files, user and
// entrypoint.

const dockerDir = "docker"

// dockerImage is what a Dockerfile produces.
type dockerImage struct {
	path string
	// builderImage is the first stage's base with build arguments substituted.
	builderImage string
	// buildRuns are the RUN lines of the build stage that call `go build`.
	buildRuns []string
	// packages are the ./paths given to go build; outputs maps each built file to its package.
	packages []string
	outputs  map[string]string
	// finalImage is the last stage's base.
	finalImage string
	// files are what the final stage copies: destination -> "build:<package>" or "context:<path>".
	files map[string]string
	// user is the final stage's USER ("" when unset).
	user string
	// entrypoint is the final stage's ENTRYPOINT in exec form.
	entrypoint []string
	// ldflagsX are the -X symbol targets of the build.
	ldflagsX []string
}

type instruction struct {
	op, args string
	line     int
}

// parseInstructions joins continuation lines and drops comments.
func parseInstructions(b []byte) []instruction {
	var out []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(trimmed, "#") {
			continue // comment inside a continued instruction
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		op, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, instruction{strings.ToUpper(op), strings.TrimSpace(args), start})
		cur.Reset()
	}
	return out
}

var argRef = regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?`)

func substitute(s string, args map[string]string) string {
	return argRef.ReplaceAllStringFunc(s, func(m string) string {
		name := argRef.FindStringSubmatch(m)[1]
		if v, ok := args[name]; ok {
			return v
		}
		return m
	})
}

// parseDockerfile reads one Dockerfile. Errors name the line.
func parseDockerfile(path string) (*dockerImage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	img := &dockerImage{path: path, outputs: map[string]string{}, files: map[string]string{}}
	global := map[string]string{}
	stage := -1
	stageNames := map[string]int{}
	var stages []string
	fail := func(in instruction, format string, a ...any) error {
		return fmt.Errorf("%s:%d: %s", path, in.line, fmt.Sprintf(format, a...))
	}
	ins := parseInstructions(b)
	// The last FROM starts the final stage.
	last := -1
	for i, in := range ins {
		if in.op == "FROM" {
			last = i
		}
	}
	if last < 0 {
		return nil, fmt.Errorf("%s: no FROM", path)
	}
	for i, in := range ins {
		switch in.op {
		case "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			if stage < 0 {
				global[k] = v
			}
		case "FROM":
			stage++
			fields := strings.Fields(in.args)
			var base string
			for j := 0; j < len(fields); j++ {
				switch {
				case strings.HasPrefix(fields[j], "--"):
				case strings.EqualFold(fields[j], "AS") && j+1 < len(fields):
					stageNames[fields[j+1]] = stage
					j++
				default:
					base = substitute(fields[j], global)
				}
			}
			stages = append(stages, base)
			if stage == 0 {
				img.builderImage = base
			}
			if i == last {
				img.finalImage = base
			}
		case "RUN":
			if stage != 0 || !strings.Contains(in.args, "go build") {
				continue
			}
			img.buildRuns = append(img.buildRuns, in.args)
			if err := img.readGoBuild(in.args); err != nil {
				return nil, fail(in, "%v", err)
			}
		case "COPY":
			if i < last {
				continue
			}
			fields := strings.Fields(in.args)
			from := ""
			var rest []string
			for _, f := range fields {
				if v, ok := strings.CutPrefix(f, "--from="); ok {
					from = v
				} else if !strings.HasPrefix(f, "--") {
					rest = append(rest, f)
				}
			}
			if len(rest) != 2 {
				return nil, fail(in, "COPY with %d paths; the test reads single-source COPYs", len(rest))
			}
			src, dst := rest[0], rest[1]
			if from == "" {
				img.files[dst] = "context:" + src
				continue
			}
			if _, ok := stageNames[from]; !ok {
				return nil, fail(in, "COPY --from=%s names no stage", from)
			}
			pkg, ok := img.outputs[src]
			if !ok {
				return nil, fail(in, "COPY --from=%s %s: the build stage makes no such file (outputs %v)", from, src, img.outputs)
			}
			img.files[dst] = "build:" + pkg
		case "USER":
			if i > last {
				img.user = in.args
			}
		case "ENTRYPOINT":
			if i > last {
				if err := json.Unmarshal([]byte(in.args), &img.entrypoint); err != nil {
					return nil, fail(in, "ENTRYPOINT must be in exec (JSON) form: %v", err)
				}
			}
		}
	}
	return img, nil
}

var ldflagX = regexp.MustCompile(`-X[ =]([^=\s"']+)=`)

// readGoBuild records the packages and outputs of a `go build` command line.
func (img *dockerImage) readGoBuild(run string) error {
	_, cmd, _ := strings.Cut(run, "go build")
	fields := strings.Fields(cmd)
	out := ""
	var pkgs []string
	for j := 0; j < len(fields); j++ {
		f := fields[j]
		switch {
		case f == "-o" && j+1 < len(fields):
			out = fields[j+1]
			j++
		case strings.HasPrefix(f, "./"):
			pkgs = append(pkgs, strings.TrimPrefix(f, "./"))
		case f == "&&" || f == ";":
			j = len(fields)
		}
	}
	if out == "" || len(pkgs) == 0 {
		return fmt.Errorf("go build needs -o and ./package arguments: %q", cmd)
	}
	if len(pkgs) > 1 && !strings.HasSuffix(out, "/") {
		return fmt.Errorf("go build of %d packages needs -o <dir>/", len(pkgs))
	}
	for _, p := range pkgs {
		if strings.HasSuffix(out, "/") {
			img.outputs[out+filepath.Base(p)] = p
		} else {
			img.outputs[out] = p
		}
	}
	img.packages = append(img.packages, pkgs...)
	for _, m := range ldflagX.FindAllStringSubmatch(cmd, -1) {
		img.ldflagsX = append(img.ldflagsX, m[1])
	}
	return nil
}

var (
	dockerOnce   sync.Once
	dockerImages map[string]*dockerImage
	dockerErr    error
)

// dockerfileFor returns the image docker/<name>.Dockerfile builds.
func dockerfileFor(t *testing.T, name string) *dockerImage {
	t.Helper()
	dockerOnce.Do(func() {
		dockerImages = map[string]*dockerImage{}
		paths, err := filepath.Glob(filepath.Join(dockerDir, "*.Dockerfile"))
		if err != nil || len(paths) == 0 {
			dockerErr = fmt.Errorf("no Dockerfiles in %s: %v", dockerDir, err)
			return
		}
		for _, p := range paths {
			img, err := parseDockerfile(p)
			if err != nil {
				dockerErr = err
				return
			}
			dockerImages[strings.TrimSuffix(filepath.Base(p), ".Dockerfile")] = img
		}
	})
	if dockerErr != nil {
		t.Fatal(dockerErr)
	}
	img, ok := dockerImages[name]
	if !ok {
		t.Fatalf("image %q has no Dockerfile %s/%s.Dockerfile", name, dockerDir, name)
	}
	return img
}

// goModVersion is the go directive of go.mod.
func goModVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+(?:\.\d+)?)\s*$`).FindSubmatch(b)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	return string(m[1])
}

// versionAtLeast compares dotted versions numerically.
func versionAtLeast(have, want string) bool {
	h, w := strings.Split(have, "."), strings.Split(want, ".")
	for i := range max(len(h), len(w)) {
		var hv, wv int
		if i < len(h) {
			hv, _ = strconv.Atoi(h[i])
		}
		if i < len(w) {
			wv, _ = strconv.Atoi(w[i])
		}
		if hv != wv {
			return hv > wv
		}
	}
	return true
}

// mainPackage reports whether dir (relative to the repository) holds a Go main package.
func mainPackage(dir string) (bool, error) {
	pkgs, err := parser.ParseDir(token.NewFileSet(), filepath.Join(repoRoot, dir), func(fi os.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.PackageClauseOnly)
	if err != nil {
		return false, err
	}
	_, ok := pkgs["main"]
	return ok && len(pkgs) == 1, nil
}

// declaresStringVar reports whether the package in dir declares a package-level variable name
// that -X can set (a string variable without a function-call initializer).
func declaresStringVar(dir, name string) (bool, error) {
	pkgs, err := parser.ParseDir(token.NewFileSet(), filepath.Join(repoRoot, dir), func(fi os.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, 0)
	if err != nil {
		return false, err
	}
	for _, p := range pkgs {
		for _, f := range p.Files {
			for _, d := range f.Decls {
				gd, ok := d.(*ast.GenDecl)
				if !ok || gd.Tok != token.VAR {
					continue
				}
				for _, s := range gd.Specs {
					vs := s.(*ast.ValueSpec)
					for i, n := range vs.Names {
						if n.Name != name {
							continue
						}
						if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "string" {
							return true, nil
						}
						if vs.Type == nil && i < len(vs.Values) {
							if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
								return true, nil
							}
						}
					}
				}
			}
		}
	}
	return false, nil
}

// dockerignoreExcludes reports whether a .dockerignore pattern would drop something the build
// needs from the context.
func dockerignoreExcludes(pattern string) bool {
	p := strings.TrimPrefix(strings.TrimSpace(pattern), "/")
	if p == "" || strings.HasPrefix(p, "#") || strings.HasPrefix(p, "!") {
		return false
	}
	needed := []string{"go.mod", "go.sum", "server/server.go", "agent/agent.go", "cni/plugin.go", "proto/ipledger/v1/common.pb.go",
		"deploy/cniinstall/cniinstall.go", "deploy/cni/10-ipledger.conflist", "server/instancetypes"}
	for _, n := range needed {
		if ok, _ := filepath.Match(p, n); ok {
			return true
		}
		for dir := n; dir != "."; dir = filepath.Dir(dir) {
			if ok, _ := filepath.Match(strings.TrimSuffix(p, "/"), dir); ok {
				return true
			}
		}
		if strings.HasPrefix(p, "**/") {
			if ok, _ := filepath.Match(strings.TrimPrefix(p, "**/"), filepath.Base(n)); ok {
				return true
			}
		}
	}
	return slices.Contains([]string{"*", "**", "*.go", "**/*.go"}, p)
}
