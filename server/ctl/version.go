package ctl

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/ipledger/ipledger/internal/version"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func init() { register("", versionCmd) }

func versionCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print ipledgerctl's version and commit, and the server's when one answers",
		Long: `
The first line is ipledgerctl's build (version, commit, commit date, Go, platform: what make
build or the image stamped); the second is the version and commit of the replica --server names,
from GetClusterStatus. When no server answers, the client's line is printed, the reason goes to
stderr and the exit code is 1 (as kubectl version does); --client asks no server.`,
		Annotations: map[string]string{localWithAnnotation: "client"},
	}
	clientOnly := cmd.Flags().Bool("client", false, "print ipledgerctl's version only; ask no server")
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		doc := VersionInfo{Client: buildInfo(version.Get())}
		doc.Version = doc.Client.Version
		var serr error
		if !*clientOnly {
			st, err := call(ctx, c, "get the server's version", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.ClusterStatus, error) {
				return a.GetClusterStatus(ctx, &ipledgerv1.GetClusterStatusRequest{})
			})
			if err != nil {
				serr = err
			} else {
				doc.Server = &ServerVersion{Address: c.g.server, Replica: st.GetReplica(), Version: st.GetVersion(), Commit: st.GetCommit()}
			}
		}
		if err := c.emit(doc, func(w io.Writer) {
			fmt.Fprintln(w, version.String("ipledgerctl"))
			if s := doc.Server; s != nil {
				commit := ""
				if s.Commit != "" {
					commit = " (commit " + escapeText(shortCommit(s.Commit)) + ")"
				}
				fmt.Fprintf(w, "ipledger-server %s%s at %s\n", escapeText(orDash(s.Version)), commit, escapeText(s.Replica))
			}
		}); err != nil {
			return err
		}
		return serr
	})
}

// shortCommit is the first 12 hex digits of a commit, as --version lines show it.
func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}

// VersionInfo is the output of version.
type VersionInfo struct {
	// Version is ipledgerctl's version (client.version; kept for scripts that read it).
	Version string    `json:"version"`
	Client  BuildInfo `json:"client"`
	// Server is the answering replica's; null with --client or when no server answered.
	Server *ServerVersion `json:"server"`
}

// BuildInfo is a binary's build, as its --version line says it.
type BuildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
}

func buildInfo(i version.Info) BuildInfo {
	return BuildInfo{Version: i.Version, Commit: i.Commit, Date: i.Date, GoVersion: i.GoVersion, Platform: i.Platform}
}

// ServerVersion is the build of the replica that answered.
type ServerVersion struct {
	// Address is what ipledgerctl asked (--server); Replica the answering replica's advertised
	// address.
	Address string `json:"address"`
	Replica string `json:"replica"`
	Version string `json:"version"`
	Commit  string `json:"commit"`
}
