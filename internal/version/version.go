// Package version owns what a binary says about its build: the release version, the commit and
// the date, stamped at link time by `make build` and the Dockerfiles:
//
//	go build -ldflags "-X github.com/ipledger/ipledger/internal/version.Version=v0.1.0 \
//	  -X github.com/ipledger/ipledger/internal/version.Commit=117a7bd... \
//	  -X github.com/ipledger/ipledger/internal/version.Date=2026-12-07T10:00:00Z"
//
// When a value is not stamped (go run, go test, a plain go build), it comes from the build
// information the Go toolchain records from git (the module version Go derives from tags, the
// revision, its time and whether the tree was modified), and is "dev" or "unknown" when there is
// none. It never runs git or reads files at run time.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
)

// Stamped at link time with -ldflags -X (string variables only; the linker cannot set
// constants). Empty means "not stamped".
var (
	// Version is the release: `git describe --tags --always --dirty` (v0.1.0,
	// v0.1.0-3-g117a7bd-dirty, or the short commit when there is no tag).
	Version string
	// Commit is the full commit hash the binary was built from.
	Commit string
	// Date is the commit's date (RFC 3339, UTC): reproducible, unlike the wall clock at build.
	Date string
)

// Info is a binary's build, resolved.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

var (
	once     sync.Once
	resolved Info
)

// Get returns the build's version, commit and date: the stamped values, else what the Go
// toolchain recorded, else "dev" / "unknown".
func Get() Info {
	once.Do(func() {
		bi, _ := debug.ReadBuildInfo()
		resolved = resolve(Version, Commit, Date, bi)
	})
	return resolved
}

// resolve fills unstamped values from the toolchain's build information (nil: none).
func resolve(version, commit, date string, bi *debug.BuildInfo) Info {
	info := Info{Version: version, Commit: commit, Date: date, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	var revision, vcsTime string
	modified := false
	if bi != nil {
		info.GoVersion = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.time":
				vcsTime = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
	}
	if info.Commit == "" {
		info.Commit = revision
	}
	if info.Date == "" {
		info.Date = vcsTime
	}
	if info.Version == "" {
		switch {
		case bi != nil && bi.Main.Version != "" && bi.Main.Version != "(devel)":
			// Go 1.24+ derives the main module's version from git: v0.1.0, or a
			// pseudo-version with the commit, "+dirty" when the tree was modified.
			info.Version = bi.Main.Version
		case revision != "":
			// What `git describe --always --dirty` prints without tags.
			info.Version = short(revision)
			if modified {
				info.Version += "-dirty"
			}
		default:
			info.Version = "dev"
		}
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	if info.Date == "" {
		info.Date = "unknown"
	}
	return info
}

func short(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

// String is the `--version` line of a binary:
//
//	ipledger-ec2sim v0.1.0 (commit 117a7bd2c4e1, 2026-12-07T10:00:00Z, go1.26.8 linux/amd64)
func String(binary string) string {
	return Get().String(binary)
}

// String formats the Info as the `--version` line of binary.
func (i Info) String(binary string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s (commit %s, %s, %s %s)", binary, i.Version, short(i.Commit), i.Date, i.GoVersion, i.Platform)
	return b.String()
}
