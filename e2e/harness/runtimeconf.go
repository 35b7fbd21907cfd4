package harness

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// NewRuntimeConf is NewRuntime with extra JSON members in the plugin's entry of the conflist,
// e.g. `"addTimeout":"5s"` (the plugin then lets the agent wait 2.5 s for an address instead
// of 10 s).
func (n *Node) NewRuntimeConf(version string, extra ...string) *Runtime {
	n.T.Helper()
	if len(extra) == 0 {
		return n.NewRuntime(version)
	}
	CNITool(n.T)
	suffix := make([]byte, 4)
	_, _ = rand.Read(suffix)
	r := &Runtime{n: n, Network: "ipl-e2e-" + hex.EncodeToString(suffix), ConfDir: n.T.TempDir()}
	conflist := fmt.Sprintf(`{"cniVersion":%q,"name":%q,"plugins":[{"type":%q,"agentSocket":%q,"logFile":%q,"logLevel":"debug",%s}]}`,
		version, r.Network, PluginName, n.Socket, n.PluginLog(), strings.Join(extra, ","))
	if err := os.WriteFile(filepath.Join(r.ConfDir, "10-"+r.Network+".conflist"), []byte(conflist), 0o644); err != nil {
		n.T.Fatal(err)
	}
	_, statErr := os.Stat(CNIToolCacheDir)
	n.T.Cleanup(func() {
		matches, _ := filepath.Glob(filepath.Join(CNIToolCacheDir, "results", r.Network+"-*"))
		for _, m := range matches {
			_ = os.Remove(m)
		}
		if os.IsNotExist(statErr) {
			_ = os.Remove(filepath.Join(CNIToolCacheDir, "results"))
			_ = os.Remove(CNIToolCacheDir)
		}
	})
	return r
}
