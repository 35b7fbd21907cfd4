package store

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"time"
)

// Defaults of Config.
const (
	DefaultDialTimeout = 5 * time.Second
	DefaultSessionTTL  = 5 * time.Second
	// DefaultCommitAttemptTimeout bounds one attempt of a commit: etcd answers a write in
	// milliseconds, but one sent while its raft leader dies waits for etcd's request timeout
	// (7 s with its defaults). Commit re-reads and tries again instead.
	DefaultCommitAttemptTimeout = time.Second
)

// Config configures a connection to an etcd cluster. Zero DialTimeout and SessionTTL take their
// defaults.
type Config struct {
	// Endpoints of the etcd members: "host:port" or "http(s)://host:port".
	Endpoints []string
	// ClusterName selects the key prefix /ipledger/<ClusterName>/; a DNS-1123 label.
	ClusterName string
	// DialTimeout bounds connecting at Open (default 5 s).
	DialTimeout time.Duration
	// SessionTTL is the election session's lease TTL, whole seconds, at least 1 s (default 5 s).
	// A leader that cannot reach etcd for this long loses leadership.
	SessionTTL time.Duration
	// CommitAttemptTimeout bounds each attempt of Leadership.Commit (default 1 s); an attempt
	// that times out is checked by a read and retried until the caller's context ends.
	CommitAttemptTimeout time.Duration
	// TLS is used for https endpoints (optional).
	TLS *tls.Config
	// Username and Password for etcd authentication (optional).
	Username, Password string
	// Logger receives the store's and the etcd client's warnings (default: discarded).
	Logger *slog.Logger
}

// Validate checks the configuration and says which setting is wrong.
func (c Config) Validate() error {
	var errs []error
	if len(c.Endpoints) == 0 {
		errs = append(errs, errors.New("etcd endpoints: at least one is required"))
	}
	for _, ep := range c.Endpoints {
		if err := validEndpoint(ep); err != nil {
			errs = append(errs, fmt.Errorf("etcd endpoint %q: %w", ep, err))
		}
	}
	if err := validClusterName(c.ClusterName); err != nil {
		errs = append(errs, err)
	}
	if c.DialTimeout < 0 {
		errs = append(errs, fmt.Errorf("etcd dial timeout %s: must not be negative", c.DialTimeout))
	}
	switch {
	case c.SessionTTL == 0:
	case c.SessionTTL < time.Second:
		errs = append(errs, fmt.Errorf("session TTL %s: must be at least 1s", c.SessionTTL))
	case c.SessionTTL%time.Second != 0:
		errs = append(errs, fmt.Errorf("session TTL %s: must be a whole number of seconds (etcd lease TTLs are seconds)", c.SessionTTL))
	}
	if c.Password != "" && c.Username == "" {
		errs = append(errs, errors.New("etcd password: set without a username"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: store config: %w", ErrInvalid, err)
	}
	return nil
}

func validEndpoint(ep string) error {
	hostport := ep
	if strings.Contains(ep, "://") {
		u, err := url.Parse(ep)
		if err != nil {
			return err
		}
		switch u.Scheme {
		case "http", "https", "unix", "unixs":
		default:
			return fmt.Errorf("scheme %q: want http or https", u.Scheme)
		}
		if u.Scheme == "unix" || u.Scheme == "unixs" {
			return nil
		}
		if u.Path != "" && u.Path != "/" {
			return fmt.Errorf("unexpected path %q", u.Path)
		}
		hostport = u.Host
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if host == "" || port == "" {
		return errors.New("want host:port")
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.SessionTTL == 0 {
		c.SessionTTL = DefaultSessionTTL
	}
	if c.CommitAttemptTimeout <= 0 {
		c.CommitAttemptTimeout = DefaultCommitAttemptTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
