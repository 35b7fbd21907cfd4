package mtls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// DefaultReloadInterval is how often, at most, a Source looks at its files for changes.
const DefaultReloadInterval = 2 * time.Second

// Files names a certificate, its key and a CA bundle in PEM files.
type Files struct {
	// Cert and Key are this party's certificate (chain) and private key. Both or neither.
	Cert, Key string
	// CA is the bundle that verifies the other side: for the server, the client CA; for a
	// client, the CA of the server's certificate.
	CA string
}

// Validate checks that the files are named consistently.
func (f Files) Validate() error {
	if (f.Cert == "") != (f.Key == "") {
		return errors.New("mtls: a certificate file and its key file go together")
	}
	if f.CA == "" {
		return errors.New("mtls: a CA file is needed to verify the other side")
	}
	return nil
}

// SourceOptions tune a Source.
type SourceOptions struct {
	// Interval between looks at the files (default DefaultReloadInterval). A look costs three
	// stat calls; the files are read again only when one changed.
	Interval time.Duration
	// Logger reports reloads and files that cannot be loaded (nil: discard).
	Logger *slog.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// AllowMissingCert: while the certificate and key files do not exist yet, the source has
	// the CA alone (a client presents no certificate); they are loaded once they appear (an
	// attesting agent writes them).
	AllowMissingCert bool
}

// Source holds a certificate, its key and a CA pool loaded from files, and loads them again when
// the files change: cert-manager (and kubelet's Secret volumes) replace them in place. A change
// that does not load (a half-written file, a key that does not match) keeps the previous
// material and is retried at the next look. Safe for concurrent use.
type Source struct {
	files Files
	opts  SourceOptions
	log   *slog.Logger

	mu        sync.Mutex
	cert      *tls.Certificate // nil when Files has no certificate
	leaf      *x509.Certificate
	pool      *x509.CertPool
	stamps    [3]fileStamp
	lastLook  time.Time
	loadErr   error // the last failed reload, nil after a success
	reloads   int
	listeners []func()
}

type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// NewSource loads the files once; an error names the file that does not load.
func NewSource(files Files, opts SourceOptions) (*Source, error) {
	if err := files.Validate(); err != nil {
		return nil, err
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultReloadInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Source{files: files, opts: opts, log: opts.Logger}
	stamps := s.stat()
	cert, leaf, pool, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cert, s.leaf, s.pool, s.stamps, s.lastLook = cert, leaf, pool, stamps, opts.Now()
	return s, nil
}

// Files are the files the source reads.
func (s *Source) Files() Files { return s.files }

// Certificate is the current certificate (nil when the source has none).
func (s *Source) Certificate() *tls.Certificate {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cert
}

// Leaf is the current certificate, parsed (nil when the source has none).
func (s *Source) Leaf() *x509.Certificate {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leaf
}

// CAs is the current CA pool.
func (s *Source) CAs() *x509.CertPool {
	s.refresh()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pool
}

// Reloads counts successful reloads after the first load.
func (s *Source) Reloads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloads
}

// LastError is the last reload that failed (nil when the last look loaded or found no change).
func (s *Source) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.loadErr
}

// OnReload registers f to run (in the caller of the look that noticed) after each successful reload.
func (s *Source) OnReload(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.listeners = append(s.listeners, f)
}

// refresh looks at the files when the interval has passed and reloads them when one changed.
func (s *Source) refresh() {
	now := s.opts.Now()
	s.mu.Lock()
	if now.Sub(s.lastLook) < s.opts.Interval {
		s.mu.Unlock()
		return
	}
	s.lastLook = now
	old := s.stamps
	s.mu.Unlock()

	stamps := s.stat()
	if stamps == old {
		return
	}
	cert, leaf, pool, err := s.load()
	s.mu.Lock()
	if err != nil {
		// Keep serving the previous material; look again after the interval.
		first := s.loadErr == nil || s.loadErr.Error() != err.Error()
		s.loadErr = err
		s.mu.Unlock()
		if first {
			s.log.Warn("TLS files changed but do not load; keeping the previous certificate", "err", err)
		}
		return
	}
	s.cert, s.leaf, s.pool, s.stamps, s.loadErr = cert, leaf, pool, stamps, nil
	s.reloads++
	listeners := append([]func(){}, s.listeners...)
	s.mu.Unlock()
	attrs := []any{"ca", s.files.CA}
	if leaf != nil {
		attrs = append(attrs, "cert", s.files.Cert, "serial", leaf.SerialNumber.String(), "not_after", leaf.NotAfter)
	}
	s.log.Info("TLS files reloaded", attrs...)
	for _, f := range listeners {
		f()
	}
}

// ReloadNow makes the next use look at the files at once (after the caller replaced them).
func (s *Source) ReloadNow() {
	s.mu.Lock()
	s.lastLook = time.Time{}
	s.mu.Unlock()
	s.refresh()
}

// load is load(files), without the certificate while AllowMissingCert and neither file exists.
func (s *Source) load() (*tls.Certificate, *x509.Certificate, *x509.CertPool, error) {
	f := s.files
	if s.opts.AllowMissingCert && f.Cert != "" {
		_, certErr := os.Stat(f.Cert)
		_, keyErr := os.Stat(f.Key)
		if os.IsNotExist(certErr) && (os.IsNotExist(keyErr) || keyErr == nil) {
			f.Cert, f.Key = "", ""
		}
	}
	return load(f)
}

// stat stamps the three files (a missing file stamps zero, so its return is a change).
func (s *Source) stat() [3]fileStamp {
	var out [3]fileStamp
	for i, p := range []string{s.files.Cert, s.files.Key, s.files.CA} {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		out[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			out[i].ino = st.Ino
		}
	}
	return out
}

// load reads and checks the files: the key matches the certificate, the CA file holds at least
// one certificate.
func load(f Files) (*tls.Certificate, *x509.Certificate, *x509.CertPool, error) {
	var cert *tls.Certificate
	var leaf *x509.Certificate
	if f.Cert != "" {
		c, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("mtls: certificate %s with key %s: %w", f.Cert, f.Key, err)
		}
		leaf, err = x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return nil, nil, nil, fmt.Errorf("mtls: certificate %s: %w", f.Cert, err)
		}
		c.Leaf = leaf
		cert = &c
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("mtls: CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, nil, fmt.Errorf("mtls: CA file %s holds no PEM certificate", f.CA)
	}
	return cert, leaf, pool, nil
}
