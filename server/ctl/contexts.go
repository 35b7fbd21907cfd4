package ctl

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ipledger/ipledger/server/ctl/ctlconfig"
)

// resolve settles the global settings once the command line is parsed, each from, highest
// first: its flag, its IPLEDGER_* variable, the context, the default. The context is --context,
// else $IPLEDGER_CONTEXT, else the configuration file's current-context. The certificates are
// one setting: a context's are used only when no --tls-cert, --tls-key, --tls-ca or --dev-certs
// flag or variable is given, so that it never mixes with them.
func (c *cli) resolve(cmd *cobra.Command) error {
	g := &c.g
	getenv := c.getenv
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	changed := func(name string) bool {
		f := cmd.Flags().Lookup(name)
		return f != nil && f.Changed
	}
	given := func(flag, env string) bool { return changed(flag) || getenv(env) != "" }
	// The environment under the flags.
	for _, s := range []struct {
		flag, env string
		dst       *string
	}{{"server", EnvServer, &g.server}, {"tls-cert", EnvTLSCert, &g.tlsCert}, {"tls-key", EnvTLSKey, &g.tlsKey},
		{"tls-ca", EnvTLSCA, &g.tlsCA}, {"dev-certs", EnvDevCerts, &g.devCerts}} {
		if !changed(s.flag) && getenv(s.env) != "" {
			*s.dst = getenv(s.env)
		}
	}

	g.ctxFile = ctlconfig.Path(getenv)
	name, from := g.context, "--context"
	if !changed("context") {
		name, from = getenv(EnvContext), "$"+EnvContext
	}
	file, err := ctlconfig.Load(g.ctxFile)
	if err != nil {
		if name == "" && errors.Is(err, ctlconfig.ErrInvalid) {
			return usagef("", "%v (fix or remove it; $%s names another file)", err, ctlconfig.EnvFile)
		}
		return usagef("", "%v", err)
	}
	if name == "" {
		name, from = file.CurrentContext, "current-context"
	}
	if name == "" {
		return nil
	}
	cx, ok := file.Get(name)
	if !ok {
		known := "none"
		if n := file.Names(); len(n) > 0 {
			known = strings.Join(n, ", ")
		}
		if from == "current-context" {
			return usagef("", "the current-context %q of %s is not one of its contexts (%s): ipledgerctl config use-context NAME", name, g.ctxFile, known)
		}
		return usagef("", "%s %q: no such context in %s (contexts: %s; ipledgerctl config set-context makes one)", from, name, orDash(g.ctxFile), known)
	}
	g.ctxName = name
	if !given("server", EnvServer) && cx.Server != "" {
		g.server = cx.Server
	}
	if !given("tls-cert", EnvTLSCert) && !given("tls-key", EnvTLSKey) && !given("tls-ca", EnvTLSCA) && !given("dev-certs", EnvDevCerts) &&
		(cx.TLSCert != "" || cx.TLSKey != "" || cx.TLSCA != "" || cx.DevCerts != "") {
		g.tlsCert, g.tlsKey, g.tlsCA, g.devCerts = cx.TLSCert, cx.TLSKey, cx.TLSCA, cx.DevCerts
		g.certsFromCx = true
	}
	return nil
}

// certSource names where the certificates of this invocation came from.
func (c *cli) certSource() string {
	if c.g.certsFromCx {
		return fmt.Sprintf("they come from context %s of %s: --context another one, or ipledgerctl config set-context %s", c.g.ctxName, c.g.ctxFile, c.g.ctxName)
	}
	return "--tls-cert, --tls-key, --tls-ca and --dev-certs, and $" + EnvTLSCert + ", $" + EnvTLSKey + ", $" + EnvTLSCA + ", $" + EnvDevCerts
}
