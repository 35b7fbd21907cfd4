package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// BinDirEnv names the directory of prebuilt binaries (`make test` sets it to bin/).
const BinDirEnv = "IPLEDGER_BIN_DIR"

// PluginName is the name the plugin is installed under in the CNI bin directory.
const PluginName = "ipledger"

// packages of the binaries the harness can build.
var packages = map[string]string{
	"ipledger-agent":  "github.com/ipledger/ipledger/agent/cmd/ipledger-agent",
	PluginName:        "github.com/ipledger/ipledger/cni/cmd/ipledger-cni",
	"ipledger-server": "github.com/ipledger/ipledger/server/cmd/ipledger-server",
}

var (
	buildMu   sync.Mutex
	buildDir  string
	built     = map[string]string{}
	buildErrs = map[string]error{}

	cnitoolOnce sync.Once
	cnitoolPath string
	cnitoolErr  error
)

// Main runs the tests and removes what the harness built; use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(harness.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	buildMu.Lock()
	defer buildMu.Unlock()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
		buildDir = ""
	}
	return code
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// Binary returns the path of an ipledger binary ("ipledger-agent", "ipledger" (the plugin),
// "ipledger-server"): from $IPLEDGER_BIN_DIR when it holds it, else built once for this test
// binary.
func Binary(t testing.TB, name string) string {
	t.Helper()
	pkg, ok := packages[name]
	if !ok {
		t.Fatalf("harness: no package for binary %q", name)
	}
	if dir := os.Getenv(BinDirEnv); dir != "" {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := built[name]; ok {
		return p
	}
	if err, ok := buildErrs[name]; ok {
		t.Fatal(err)
	}
	if buildDir == "" {
		dir, err := os.MkdirTemp("", "ipledger-e2e-bin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = dir
	}
	p := filepath.Join(buildDir, name)
	out, err := exec.Command(goTool(), "build", "-o", p, pkg).CombinedOutput()
	if err != nil {
		err = fmt.Errorf("harness: go build %s: %v\n%s", pkg, err, out)
		buildErrs[name] = err
		t.Fatal(err)
	}
	built[name] = p
	return p
}

// PluginDir returns a directory holding the plugin as "ipledger", for CNI_PATH.
func PluginDir(t testing.TB) string {
	t.Helper()
	return filepath.Dir(Binary(t, PluginName))
}

// CNITool returns the path of cnitool (the reference CNI runtime, a Go tool of this module).
func CNITool(t testing.TB) string {
	t.Helper()
	cnitoolOnce.Do(func() {
		out, err := exec.Command(goTool(), "tool", "-n", "cnitool").Output()
		if err != nil {
			cnitoolErr = fmt.Errorf("harness: go tool -n cnitool: %v", err)
			return
		}
		cnitoolPath = strings.TrimSpace(string(out))
	})
	if cnitoolErr != nil {
		t.Fatal(cnitoolErr)
	}
	return cnitoolPath
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
