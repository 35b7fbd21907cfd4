// Package ctlconfig owns ipledgerctl's configuration file: named contexts, each a server
// address and the certificates to reach it with, and the current one, as kubectl's kubeconfig
// and etcdctl's environment give their users. The file is YAML:
//
//	current-context: prod
//	contexts:
//	  - name: prod
//	    server: 10.0.1.7:7400
//	    tls-cert: /home/ops/.ipledger/admin.crt
//	    tls-key: /home/ops/.ipledger/admin.key
//	    tls-ca: /home/ops/.ipledger/ca.crt
//	  - name: ipledger-demo
//	    server: 127.0.0.1:7400
//	    dev-certs: /tmp/ipledger-demo-123/server/certs
//	    owner: ipledger-demo
//
// It lives at $IPLEDGERCTL_CONFIG, else $XDG_CONFIG_HOME/ipledger/config.yaml, else
// ~/.config/ipledger/config.yaml; a missing file is an empty one. Changes are written
// atomically (internal/atomicfile) under an exclusive lock, mode 0600: the file names private
// keys. It owns only the file; which value wins over flags and the environment is ipledgerctl's
// to decide, and it never opens the certificates it names.
package ctlconfig

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"

	"sigs.k8s.io/yaml"

	"github.com/ipledger/ipledger/internal/atomicfile"
)

// Environment variables.
const (
	// EnvFile names the file, overriding the default path.
	EnvFile = "IPLEDGERCTL_CONFIG"
	// EnvContext picks a context instead of the file's current-context (--context wins).
	EnvContext = "IPLEDGER_CONTEXT"
)

// Context is one named way to reach a cluster. Empty fields are not set by the context.
type Context struct {
	Name     string `json:"name"`
	Server   string `json:"server,omitempty"`
	TLSCert  string `json:"tls-cert,omitempty"`
	TLSKey   string `json:"tls-key,omitempty"`
	TLSCA    string `json:"tls-ca,omitempty"`
	DevCerts string `json:"dev-certs,omitempty"`
	// Owner marks a context a program wrote for itself and removes when it stops
	// ("ipledger-demo"); "" for the user's own.
	Owner string `json:"owner,omitempty"`
	// PreviousContext is the current-context the owner replaced when it made this one
	// current; removing the context restores it.
	PreviousContext string `json:"previous-context,omitempty"`
}

// File is the whole configuration.
type File struct {
	CurrentContext string    `json:"current-context,omitempty"`
	Contexts       []Context `json:"contexts"`
}

// Sentinel errors.
var (
	// ErrNoContext: the named context is not in the file.
	ErrNoContext = errors.New("ctlconfig: no such context")
	// ErrInvalid: the file cannot be read as a configuration, or a context is malformed.
	ErrInvalid = errors.New("ctlconfig: invalid configuration")
)

// Path is where the file is, from the environment (getenv): "" when there is no home to put
// it in.
func Path(getenv func(string) string) string {
	if p := getenv(EnvFile); p != "" {
		return p
	}
	if d := getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "ipledger", "config.yaml")
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "ipledger", "config.yaml")
	}
	return ""
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][-A-Za-z0-9_.@]{0,62}$`)

// ValidName checks a context's name: 1 to 63 letters, digits, '-', '_', '.', '@', starting
// with a letter or digit.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: context name %q: want 1 to 63 letters, digits, '-', '_', '.' or '@', starting with a letter or digit", ErrInvalid, name)
	}
	return nil
}

// Load reads the file at path ("" or missing: an empty configuration).
func Load(path string) (*File, error) {
	f := &File{Contexts: []Context{}}
	if path == "" {
		return f, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ipledgerctl configuration: %w", err)
	}
	if err := yaml.UnmarshalStrict(b, f); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, path, err)
	}
	if f.Contexts == nil {
		f.Contexts = []Context{}
	}
	seen := map[string]bool{}
	for i, c := range f.Contexts {
		if err := ValidName(c.Name); err != nil {
			return nil, fmt.Errorf("%s: contexts[%d]: %w", path, i, err)
		}
		if seen[c.Name] {
			return nil, fmt.Errorf("%w: %s: context %q appears twice", ErrInvalid, path, c.Name)
		}
		seen[c.Name] = true
	}
	return f, nil
}

// Get returns the named context.
func (f *File) Get(name string) (Context, bool) {
	for _, c := range f.Contexts {
		if c.Name == name {
			return c, true
		}
	}
	return Context{}, false
}

// Names lists the contexts' names in the file's order.
func (f *File) Names() []string {
	out := make([]string, 0, len(f.Contexts))
	for _, c := range f.Contexts {
		out = append(out, c.Name)
	}
	return out
}

// Set adds c, or replaces the context of the same name in place.
func (f *File) Set(c Context) {
	for i := range f.Contexts {
		if f.Contexts[i].Name == c.Name {
			f.Contexts[i] = c
			return
		}
	}
	f.Contexts = append(f.Contexts, c)
}

// Delete removes the named context and reports whether it was there. When it was the current
// one, its PreviousContext (if still there) becomes current, else none is.
func (f *File) Delete(name string) bool {
	i := slices.IndexFunc(f.Contexts, func(c Context) bool { return c.Name == name })
	if i < 0 {
		return false
	}
	gone := f.Contexts[i]
	f.Contexts = slices.Delete(f.Contexts, i, i+1)
	if f.CurrentContext == name {
		f.CurrentContext = ""
		if _, ok := f.Get(gone.PreviousContext); ok {
			f.CurrentContext = gone.PreviousContext
		}
	}
	return true
}

// Update changes the file at path under an exclusive lock (path + ".lock"): it loads the
// file, calls change, and writes the result atomically with mode 0600 (the directory is made
// 0700 when missing). change's error leaves the file as it was.
func Update(path string, change func(*File) error) error {
	if path == "" {
		return fmt.Errorf("%w: no configuration file: set $%s or $HOME", ErrInvalid, EnvFile)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("ipledgerctl configuration: %w", err)
	}
	lock, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("ipledgerctl configuration: lock: %w", err)
	}
	defer func() { _ = lock.Close() }()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("ipledgerctl configuration: lock %s: %w", lock.Name(), err)
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()
	f, err := Load(path)
	if err != nil {
		return err
	}
	if err := change(f); err != nil {
		return err
	}
	b, err := yaml.Marshal(f)
	if err != nil {
		return fmt.Errorf("ipledgerctl configuration: %w", err)
	}
	header := "# ipledgerctl's contexts (ipledgerctl config view | use-context | set-context | delete-context).\n"
	if err := atomicfile.Write(path, append([]byte(header), b...), 0o600); err != nil {
		return fmt.Errorf("ipledgerctl configuration: %w", err)
	}
	return nil
}

// Describe is a one-line account of a context for messages: "ipledger-demo (server
// 127.0.0.1:7400, dev-certs /tmp/...)".
func (c Context) Describe() string {
	var parts []string
	for _, kv := range [][2]string{{"server", c.Server}, {"tls-cert", c.TLSCert}, {"tls-key", c.TLSKey}, {"tls-ca", c.TLSCA}, {"dev-certs", c.DevCerts}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+" "+kv[1])
		}
	}
	if len(parts) == 0 {
		return c.Name
	}
	return c.Name + " (" + strings.Join(parts, ", ") + ")"
}
