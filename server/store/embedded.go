package store

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
)

// embeddedStartTimeout bounds the wait for an embedded etcd to become ready when ctx has no
// earlier deadline.
const embeddedStartTimeout = 60 * time.Second

// EmbeddedConfig configures a single-member etcd inside the process (dev mode and tests).
type EmbeddedConfig struct {
	// Dir is the data directory (required); reusing it keeps the data across restarts.
	Dir string
	// Name of the member (default "ipledger").
	Name string
	// ClientAddr is the loopback address clients connect to (default 127.0.0.1 with a free
	// port). The peer listener is on the same loopback address with a free port.
	ClientAddr string
	// Logger receives etcd's warnings and errors (default: discarded).
	Logger *slog.Logger
}

// Embedded is a running embedded etcd.
type Embedded struct {
	etcd      *embed.Etcd
	endpoints []string
	closing   atomic.Bool
	closeOnce sync.Once
}

// StartEmbedded starts a single-member etcd listening on loopback only and waits until it is
// ready (or ctx ends, or 60 s pass).
func StartEmbedded(ctx context.Context, cfg EmbeddedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("store: embedded etcd: %w: no data directory", ErrInvalid)
	}
	if cfg.Name == "" {
		cfg.Name = "ipledger"
	}
	if cfg.ClientAddr == "" {
		cfg.ClientAddr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	host, _, err := net.SplitHostPort(cfg.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("store: embedded etcd: %w: client address %q: %w", ErrInvalid, cfg.ClientAddr, err)
	}
	if ip, err := netip.ParseAddr(host); err != nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("store: embedded etcd: %w: client address %q: want a loopback IP address", ErrInvalid, cfg.ClientAddr)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: embedded etcd: %w", err)
	}

	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.Dir
	curl := url.URL{Scheme: "http", Host: cfg.ClientAddr}
	purl := url.URL{Scheme: "http", Host: net.JoinHostPort(host, "0")}
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{purl}, []url.URL{purl}
	ec.InitialCluster = ec.InitialClusterFromName(cfg.Name)
	ec.InitialClusterToken = "ipledger-embedded"
	ec.LogLevel = "warn"
	em := &Embedded{}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(newZapLogger(ctx, cfg.Logger.With("component", "etcd"), zapcore.WarnLevel, em.closing.Load))
	ec.EnableGRPCGateway = false
	// Dev mode runs for days: keep an hour of history (enough for standbys to resume watches).
	ec.AutoCompactionMode = embed.CompactorModePeriodic
	ec.AutoCompactionRetention = "1h"

	e, err := embed.StartEtcd(ec)
	if err != nil {
		em.closing.Store(true)
		return nil, fmt.Errorf("store: start embedded etcd in %s: %w", cfg.Dir, err)
	}
	timer := time.NewTimer(embeddedStartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		em.closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("store: start embedded etcd in %s: %w", cfg.Dir, err)
	case <-ctx.Done():
		em.closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("store: start embedded etcd in %s: %w", cfg.Dir, ctx.Err())
	case <-timer.C:
		em.closing.Store(true)
		e.Close()
		return nil, fmt.Errorf("store: start embedded etcd in %s: %w: not ready after %s", cfg.Dir, ErrUnavailable, embeddedStartTimeout)
	}
	em.etcd = e
	for _, l := range e.Clients {
		em.endpoints = append(em.endpoints, "http://"+l.Addr().String())
	}
	return em, nil
}

// Endpoints are the client URLs of the embedded member ("http://127.0.0.1:<port>").
func (e *Embedded) Endpoints() []string { return append([]string(nil), e.endpoints...) }

// Close stops the member and waits until it has stopped. Safe to call more than once.
func (e *Embedded) Close() error {
	e.closeOnce.Do(func() {
		e.closing.Store(true)
		e.etcd.Close()
	})
	return nil
}
