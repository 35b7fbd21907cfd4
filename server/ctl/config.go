package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ipledger/ipledger/server/ctl/ctlconfig"
)

func init() {
	groups["config"] = "Contexts: which server and certificates ipledgerctl uses (as kubectl config)"
	register("config", configViewCmd, configCurrentCmd, configUseCmd, configSetCmd, configDeleteCmd)
}

// ContextsDoc is the output of config view.
type ContextsDoc struct {
	// File is the configuration file ("" when there is no home to keep one in).
	File           string       `json:"file"`
	CurrentContext string       `json:"current_context"`
	Contexts       []ContextDoc `json:"contexts"`
}

// ContextDoc is one context.
type ContextDoc struct {
	Name     string `json:"name"`
	Current  bool   `json:"current"`
	Server   string `json:"server"`
	TLSCert  string `json:"tls_cert"`
	TLSKey   string `json:"tls_key"`
	TLSCA    string `json:"tls_ca"`
	DevCerts string `json:"dev_certs"`
	// Owner is the program that wrote the context for itself and removes it ("ipledger-demo"),
	// "" for the user's.
	Owner string `json:"owner"`
}

func contextDoc(cx ctlconfig.Context, current string) ContextDoc {
	return ContextDoc{Name: cx.Name, Current: cx.Name == current, Server: cx.Server, TLSCert: cx.TLSCert, TLSKey: cx.TLSKey,
		TLSCA: cx.TLSCA, DevCerts: cx.DevCerts, Owner: cx.Owner}
}

// certText is what a context's certificates are, in a table.
func (d ContextDoc) certText() string {
	switch {
	case d.DevCerts != "":
		return "dev-certs " + d.DevCerts
	case d.TLSCert != "":
		return "tls-cert " + d.TLSCert
	}
	return "-"
}

func (c *cli) loadContexts() (*ctlconfig.File, string, error) {
	path := ctlconfig.Path(c.getenv)
	f, err := ctlconfig.Load(path)
	if err != nil {
		return nil, path, usagef("", "%v", err)
	}
	return f, path, nil
}

func (c *cli) completeContexts(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	f, _, err := c.loadContexts()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return f.Names(), cobra.ShellCompDirectiveNoFileComp
}

func configViewCmd(c *cli) *cobra.Command {
	cmd := local(&cobra.Command{
		Use:   "view",
		Short: "Show the contexts of ipledgerctl's configuration file and which one is current",
		Long: `
The file is $IPLEDGERCTL_CONFIG, else $XDG_CONFIG_HOME/ipledger/config.yaml, else
~/.config/ipledger/config.yaml. A context names a server and the certificates to reach it with;
ipledgerctl uses --context, else $IPLEDGER_CONTEXT, else the current-context. A flag or an
IPLEDGER_* variable overrides the context's value (its certificates are used only when no TLS
flag or variable is given). The demo (make demo) adds its context ipledger-demo, owner
ipledger-demo, while it runs.`,
	})
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		f, path, err := c.loadContexts()
		if err != nil {
			return err
		}
		doc := ContextsDoc{File: path, CurrentContext: f.CurrentContext, Contexts: []ContextDoc{}}
		for _, cx := range f.Contexts {
			doc.Contexts = append(doc.Contexts, contextDoc(cx, f.CurrentContext))
		}
		return c.emit(doc, func(w io.Writer) {
			row(w, "File:", orDash(doc.File))
			row(w)
			row(w, "CURRENT", "NAME", "SERVER", "CERTIFICATES", "OWNER")
			for _, d := range doc.Contexts {
				cur := ""
				if d.Current {
					cur = "*"
				}
				row(w, cur, d.Name, orDash(d.Server), d.certText(), orDash(d.Owner))
			}
			if len(doc.Contexts) == 0 {
				row(w, "(no contexts: ipledgerctl config set-context NAME --server HOST:PORT ...)")
			}
		})
	})
}

// CurrentContextDoc is the output of config current-context.
type CurrentContextDoc struct {
	Name string `json:"name"`
	File string `json:"file"`
}

func configCurrentCmd(c *cli) *cobra.Command {
	cmd := local(&cobra.Command{
		Use:   "current-context",
		Short: "Print the name of the current context (exit 1 when there is none)",
	})
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		f, path, err := c.loadContexts()
		if err != nil {
			return err
		}
		if f.CurrentContext == "" {
			return fmt.Errorf("no current context in %s (ipledgerctl config use-context NAME)", orDash(path))
		}
		doc := CurrentContextDoc{Name: f.CurrentContext, File: path}
		return c.emit(doc, func(w io.Writer) { row(w, doc.Name) })
	})
}

func configUseCmd(c *cli) *cobra.Command {
	cmd := local(&cobra.Command{
		Use:               "use-context NAME",
		ValidArgsFunction: c.completeContexts,
		Short:             "Make a context the current one",
	})
	return c.leaf(cmd, 1, 1, func(ctx context.Context, args []string) error {
		path := ctlconfig.Path(c.getenv)
		var cx ctlconfig.Context
		err := ctlconfig.Update(path, func(f *ctlconfig.File) error {
			var ok bool
			if cx, ok = f.Get(args[0]); !ok {
				return fmt.Errorf("%w: %q in %s (contexts: %s)", ctlconfig.ErrNoContext, args[0], path, orDash(strings.Join(f.Names(), ", ")))
			}
			f.CurrentContext = args[0]
			return nil
		})
		if err != nil {
			return configError("config use-context", err)
		}
		doc := contextDoc(cx, cx.Name)
		return c.emit(doc, func(w io.Writer) { row(w, fmt.Sprintf("switched to context %s", cx.Describe())) })
	})
}

func configSetCmd(c *cli) *cobra.Command {
	cmd := local(&cobra.Command{
		Use:   "set-context NAME",
		Short: "Create or change a context from the global flags given (--server, --tls-cert, --tls-key, --tls-ca, --dev-certs)",
		Long: `
Each of the global flags --server, --tls-cert, --tls-key, --tls-ca and --dev-certs given on the
command line sets that value of the context (an empty value removes it); values not given are
kept. Certificate paths are stored as given: give absolute paths. --use makes it the current
context. Example:

  ipledgerctl config set-context prod --server 10.0.1.7:7400 \
    --tls-cert ~/.ipledger/admin.crt --tls-key ~/.ipledger/admin.key --tls-ca ~/.ipledger/ca.crt --use`,
	})
	use := cmd.Flags().Bool("use", false, "make it the current context")
	return c.leaf(cmd, 1, 1, func(ctx context.Context, args []string) error {
		const path = "config set-context"
		if err := ctlconfig.ValidName(args[0]); err != nil {
			return usagef(path, "%s: %v", path, err)
		}
		changed := func(name string) bool {
			f := cmd.Flags().Lookup(name)
			return f != nil && f.Changed
		}
		if changed("server") && c.g.server != "" {
			if err := checkServer(c.g.server); err != nil {
				return usagef(path, "%s: %v", path, err)
			}
		}
		file := ctlconfig.Path(c.getenv)
		var cx ctlconfig.Context
		err := ctlconfig.Update(file, func(f *ctlconfig.File) error {
			cx, _ = f.Get(args[0])
			cx.Name = args[0]
			for _, s := range []struct {
				flag string
				dst  *string
				v    string
			}{{"server", &cx.Server, c.g.server}, {"tls-cert", &cx.TLSCert, c.g.tlsCert}, {"tls-key", &cx.TLSKey, c.g.tlsKey},
				{"tls-ca", &cx.TLSCA, c.g.tlsCA}, {"dev-certs", &cx.DevCerts, c.g.devCerts}} {
				if changed(s.flag) {
					*s.dst = s.v
				}
			}
			if tls := []string{cx.TLSCert, cx.TLSKey, cx.TLSCA}; strings.Join(tls, "") != "" && (cx.TLSCert == "" || cx.TLSKey == "" || cx.TLSCA == "") {
				return usagef(path, "%s: context %s would name only some of tls-cert, tls-key and tls-ca; mutual TLS needs the three (or --dev-certs DIR)", path, cx.Name)
			}
			if cx.DevCerts != "" && cx.TLSCert != "" {
				return usagef(path, "%s: context %s would name both tls-cert and dev-certs; give one (--tls-cert= removes it)", path, cx.Name)
			}
			cx.Owner, cx.PreviousContext = "", "" // the user's now
			f.Set(cx)
			if *use {
				f.CurrentContext = cx.Name
			}
			return nil
		})
		if err != nil {
			return configError(path, err)
		}
		doc := contextDoc(cx, map[bool]string{true: cx.Name}[*use])
		return c.emit(doc, func(w io.Writer) {
			what := "set"
			if *use {
				what += ", and current"
			}
			row(w, fmt.Sprintf("context %s %s (%s)", cx.Describe(), what, file))
		})
	})
}

func configDeleteCmd(c *cli) *cobra.Command {
	cmd := local(&cobra.Command{
		Use:               "delete-context NAME",
		ValidArgsFunction: c.completeContexts,
		Short:             "Remove a context (when it was current, the one it replaced becomes current again, if any)",
	})
	return c.leaf(cmd, 1, 1, func(ctx context.Context, args []string) error {
		path := ctlconfig.Path(c.getenv)
		var cur string
		err := ctlconfig.Update(path, func(f *ctlconfig.File) error {
			if !f.Delete(args[0]) {
				return fmt.Errorf("%w: %q in %s (contexts: %s)", ctlconfig.ErrNoContext, args[0], path, orDash(strings.Join(f.Names(), ", ")))
			}
			cur = f.CurrentContext
			return nil
		})
		if err != nil {
			return configError("config delete-context", err)
		}
		doc := CurrentContextDoc{Name: cur, File: path}
		return c.emit(doc, func(w io.Writer) {
			row(w, fmt.Sprintf("context %s deleted; current context: %s", args[0], orDash(cur)))
		})
	})
}

// configError: an unknown context or a malformed file is a usage error (exit 2), as a bad flag
// value is; the rest (the file cannot be written) exit 1.
func configError(path string, err error) error {
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		return err
	case errors.Is(err, ctlconfig.ErrNoContext), errors.Is(err, ctlconfig.ErrInvalid):
		return usagef(path, "%s: %v", path, err)
	}
	return err
}
