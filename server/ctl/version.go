package ctl

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func init() { register("", versionCmd) }

func versionCmd(c *cli) *cobra.Command {
	return c.leaf(&cobra.Command{
		Use:   "version",
		Short: "Print ipledgerctl's version (the server's is in 'status')",
	}, 0, 0, func(ctx context.Context, args []string) error {
		doc := VersionInfo{Version: Version}
		return c.emit(doc, func(w io.Writer) { fmt.Fprintf(w, "ipledgerctl %s\n", Version) })
	})
}

// VersionInfo is the output of version.
type VersionInfo struct {
	Version string `json:"version"`
}
