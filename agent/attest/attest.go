// Package attest obtains and renews the node agent's certificate without anyone provisioning
// it: it keeps the node's private key in a directory on the node's disk (made once, mode 0600,
// reused across restarts and reboots; it never leaves the node), proves the node's EC2 instance
// to the server with the instance identity document and its signature from IMDSv2
// (IdentityService.Attest, over TLS that verifies the server with the CA bundle the agent is
// given, without a client certificate), writes the certificate it gets next to the key, and
// renews it over the node's own mutual TLS identity before it expires (IdentityService.Renew).
// The files are the agent's TLS source: new connections use the renewed certificate, streams
// already open keep going.
//
// It owns the key and certificate files in its directory and nothing else; it never calls
// anything but IMDS and the server, and never sends the private key anywhere.
package attest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/ipledger/ipledger/agent/internal/rpcerr"
	"github.com/ipledger/ipledger/internal/mtls"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Defaults.
const (
	DefaultDir = "/var/lib/ipledger/identity"
	// DefaultRenewFraction: renew once this share of the certificate's lifetime has passed.
	DefaultRenewFraction = 2.0 / 3
	keyFile              = "node.key"
	certFile             = "node.crt"
	callTimeout          = 15 * time.Second
)

// Formats of the document's signature the agent sends.
const (
	FormatRSA2048   = "rsa2048"
	FormatSignature = "signature"
)

// ErrRefused wraps a refusal by the server that retrying will not change (the reason says why).
var ErrRefused = errors.New("attest: the server refused the attestation")

// Config of a Client.
type Config struct {
	// Dir holds node.key and node.crt (created 0700).
	Dir string
	// CAFile verifies the server's certificate (ipledger://server).
	CAFile string
	// Servers are the allocator replicas; a standby's NOT_LEADER answer names the leader.
	Servers []string
	// IMDSEndpoint ("" = the instance's IMDS).
	IMDSEndpoint string
	// Format of the signature sent: FormatRSA2048 (default) or FormatSignature.
	Format string
	// RenewFraction of the lifetime after which the certificate is renewed (default 2/3).
	RenewFraction float64
	Logger        *slog.Logger
	Now           func() time.Time
}

// Client holds the node's key and certificate files and keeps the certificate current.
type Client struct {
	cfg Config
	log *slog.Logger
	key crypto.Signer
	src *mtls.Source

	mu      sync.Mutex
	leader  string // the last leader a standby named
	renewed int
}

// New loads the node's key from Dir or makes one, and opens the TLS source over Dir's files
// (without a certificate until the first attestation).
func New(cfg Config) (*Client, error) {
	if cfg.Dir == "" {
		cfg.Dir = DefaultDir
	}
	if cfg.Format == "" {
		cfg.Format = FormatRSA2048
	}
	if cfg.Format != FormatRSA2048 && cfg.Format != FormatSignature {
		return nil, fmt.Errorf("attest: signature format %q: want rsa2048 or signature", cfg.Format)
	}
	if cfg.RenewFraction <= 0 || cfg.RenewFraction >= 1 {
		cfg.RenewFraction = DefaultRenewFraction
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if len(cfg.Servers) == 0 {
		return nil, errors.New("attest: no server")
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("attest: key directory: %w", err)
	}
	key, err := loadOrCreateKey(filepath.Join(cfg.Dir, keyFile), cfg.Logger)
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg, log: cfg.Logger, key: key}
	// A certificate on disk for another key (the key was replaced by hand) is useless: drop it.
	if leaf := c.diskLeaf(); leaf != nil && !c.forOurKey(leaf) {
		c.log.Warn("the node certificate on disk is for another key; attesting again", "cert", c.Files().Cert)
		_ = os.Remove(c.Files().Cert)
	}
	src, err := mtls.NewSource(c.Files(), mtls.SourceOptions{AllowMissingCert: true, Logger: cfg.Logger, Now: cfg.Now})
	if err != nil {
		return nil, fmt.Errorf("attest: %w", err)
	}
	c.src = src
	return c, nil
}

// Files are the key, the certificate and the CA the agent's TLS uses.
func (c *Client) Files() mtls.Files {
	return mtls.Files{Cert: filepath.Join(c.cfg.Dir, certFile), Key: filepath.Join(c.cfg.Dir, keyFile), CA: c.cfg.CAFile}
}

// Source is the TLS source over Files (the agent's connection uses it).
func (c *Client) Source() *mtls.Source { return c.src }

// Renewals counts certificates obtained by Renew since New.
func (c *Client) Renewals() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.renewed
}

func loadOrCreateKey(path string, log *slog.Logger) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("attest: node key %s is not PEM (remove it to make a new one; an admin must then forget the node's identity)", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("attest: node key %s: %w", path, err)
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("attest: node key %s is not a signing key", path)
		}
		return s, nil
	}
	if !os.IsNotExist(err) {
		return nil, fmt.Errorf("attest: node key: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("attest: make node key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	log.Info("node key made; it stays on this node", "key", path)
	return key, nil
}

// writeAtomic writes data to path through a temporary file, fsync and rename.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("attest: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("attest: write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("attest: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("attest: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("attest: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("attest: write %s: %w", path, err)
	}
	return nil
}

// diskLeaf is the certificate in the directory (nil when there is none or it does not parse).
func (c *Client) diskLeaf() *x509.Certificate {
	b, err := os.ReadFile(c.Files().Cert)
	if err != nil {
		return nil
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil
	}
	return leaf
}

func (c *Client) forOurKey(leaf *x509.Certificate) bool {
	a, err1 := mtls.KeyFingerprint(leaf.PublicKey)
	b, err2 := mtls.KeyFingerprint(c.key.Public())
	return err1 == nil && err2 == nil && a == b
}

// current is the usable certificate on disk: for our key, valid now, not in its last minute.
func (c *Client) current() *x509.Certificate {
	leaf := c.diskLeaf()
	now := c.cfg.Now()
	if leaf == nil || !c.forOurKey(leaf) || now.Before(leaf.NotBefore) || now.Add(time.Minute).After(leaf.NotAfter) {
		return nil
	}
	return leaf
}

// Ensure returns the node name of a usable certificate, attesting first when there is none
// (retrying until ctx ends on errors that may pass; ErrRefused for a refusal with a reason that
// will not change by retrying).
func (c *Client) Ensure(ctx context.Context) (string, error) {
	if leaf := c.current(); leaf != nil {
		if id, err := mtls.IdentityOf(leaf); err == nil && id.Kind == mtls.KindNode {
			c.log.Info("node certificate on disk is valid; no attestation needed", "node", id.Name, "not_after", leaf.NotAfter)
			return id.Name, nil
		}
	}
	wait := 500 * time.Millisecond
	for {
		name, err := c.attest(ctx)
		if err == nil {
			return name, nil
		}
		if errors.Is(err, ErrRefused) || ctx.Err() != nil {
			return "", err
		}
		c.log.Warn("attestation failed; retrying", "err", err, "in", wait)
		if err := sleep(ctx, wait); err != nil {
			return "", fmt.Errorf("attest: gave up: %w", err)
		}
		wait = min(2*wait, 30*time.Second)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Document reads the instance identity document and its signature in format from IMDSv2.
func Document(ctx context.Context, endpoint, format string) (doc []byte, signature string, err error) {
	client := imds.New(imds.Options{Endpoint: endpoint})
	get := func(path string) ([]byte, error) {
		out, err := client.GetDynamicData(ctx, &imds.GetDynamicDataInput{Path: "instance-identity/" + path})
		if err != nil {
			return nil, fmt.Errorf("attest: read instance-identity/%s from IMDS: %w", path, err)
		}
		defer out.Content.Close()
		return io.ReadAll(io.LimitReader(out.Content, 64<<10))
	}
	if doc, err = get("document"); err != nil {
		return nil, "", err
	}
	sig, err := get(format)
	if err != nil {
		return nil, "", err
	}
	return doc, strings.TrimSpace(string(sig)), nil
}

func (c *Client) attest(ctx context.Context) (string, error) {
	doc, sig, err := Document(ctx, c.cfg.IMDSEndpoint, c.cfg.Format)
	if err != nil {
		return "", err
	}
	csr, err := mtls.NewCSR(c.key)
	if err != nil {
		return "", err
	}
	f := ipledgerv1.SignatureFormat_SIGNATURE_FORMAT_RSA2048
	if c.cfg.Format == FormatSignature {
		f = ipledgerv1.SignatureFormat_SIGNATURE_FORMAT_SIGNATURE
	}
	req := &ipledgerv1.AttestRequest{Document: doc, Signature: sig, SignatureFormat: f, Csr: csr}
	nc, err := c.call(ctx, func(ctx context.Context, cli ipledgerv1.IdentityServiceClient) (*ipledgerv1.NodeCertificate, error) {
		return cli.Attest(ctx, req)
	})
	if err != nil {
		return "", err
	}
	if err := c.store(nc); err != nil {
		return "", err
	}
	c.log.Info("node attested: certificate issued", "node", nc.GetNodeName(), "not_after", nc.GetNotAfter().AsTime(), "method", nc.GetMethod())
	return nc.GetNodeName(), nil
}

// store checks an issued certificate (for our key, naming the node) and writes it.
func (c *Client) store(nc *ipledgerv1.NodeCertificate) error {
	blk, _ := pem.Decode(nc.GetCertificateChain())
	if blk == nil {
		return errors.New("attest: the server sent no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return fmt.Errorf("attest: the server's certificate: %w", err)
	}
	if !c.forOurKey(leaf) {
		return errors.New("attest: the server's certificate is for another key")
	}
	if id, err := mtls.IdentityOf(leaf); err != nil || id != mtls.NodeIdentity(nc.GetNodeName()) {
		return fmt.Errorf("attest: the server's certificate names %v, not node %s (%v)", id, nc.GetNodeName(), err)
	}
	if err := writeAtomic(c.Files().Cert, nc.GetCertificateChain(), 0o644); err != nil {
		return err
	}
	c.src.ReloadNow()
	return nil
}

// call runs f against the servers: a standby's NOT_LEADER names the leader (tried next), other
// failures move to the next server; a refusal with a reason is returned as ErrRefused.
func (c *Client) call(ctx context.Context, f func(context.Context, ipledgerv1.IdentityServiceClient) (*ipledgerv1.NodeCertificate, error)) (*ipledgerv1.NodeCertificate, error) {
	c.mu.Lock()
	targets := append([]string(nil), c.cfg.Servers...)
	if c.leader != "" {
		targets = append([]string{c.leader}, targets...)
	}
	c.mu.Unlock()
	var last error
	for i := 0; i < len(targets) && i < 8; i++ {
		conn, err := grpc.NewClient(targets[i], grpc.WithTransportCredentials(mtls.ClientCredentials(c.src)))
		if err != nil {
			last = err
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		nc, err := f(cctx, ipledgerv1.NewIdentityServiceClient(conn))
		cancel()
		_ = conn.Close()
		if err == nil {
			return nc, nil
		}
		reason, meta := rpcerr.Info(err)
		switch {
		case reason == ipledgerv1.Reason_NOT_LEADER:
			if l := meta["leader"]; l != "" {
				c.mu.Lock()
				c.leader = l
				c.mu.Unlock()
				targets = append(targets[:i+1], append([]string{l}, targets[i+1:]...)...)
			}
			last = err
		case reason == ipledgerv1.Reason_RATE_LIMITED, reason == ipledgerv1.Reason_STORE_UNAVAILABLE,
			reason == ipledgerv1.Reason_EC2_THROTTLED, reason == ipledgerv1.Reason_EC2_ERROR:
			return nil, fmt.Errorf("attest: %s: %w", targets[i], err) // retried by the caller
		case reason != ipledgerv1.Reason_REASON_UNSPECIFIED, rpcerr.Code(err) == codes.PermissionDenied:
			return nil, fmt.Errorf("%w (%s): %w", ErrRefused, reason, err)
		default:
			last = fmt.Errorf("attest: %s: %w", targets[i], err)
		}
	}
	return nil, last
}

// renewAt is when leaf should be renewed.
func (c *Client) renewAt(leaf *x509.Certificate) time.Time {
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return leaf.NotBefore.Add(time.Duration(float64(life) * c.cfg.RenewFraction))
}

// Run renews the certificate before it expires until ctx ends: at RenewFraction of its
// lifetime over the node's current identity, retried with back-off; a certificate that expired
// anyway (the server was unreachable for a third of its lifetime) is replaced by attesting again.
func (c *Client) Run(ctx context.Context) error {
	wait := time.Second
	for {
		leaf := c.diskLeaf()
		if leaf == nil {
			if _, err := c.Ensure(ctx); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				c.log.Error("no node certificate and attestation refused", "err", err)
				if err := sleep(ctx, time.Minute); err != nil {
					return nil
				}
			}
			continue
		}
		if d := c.renewAt(leaf).Sub(c.cfg.Now()); d > 0 {
			if err := sleep(ctx, d); err != nil {
				return nil
			}
			continue
		}
		err := c.renew(ctx, leaf)
		if err == nil {
			wait = time.Second
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		if c.cfg.Now().Add(time.Minute).After(leaf.NotAfter) {
			c.log.Warn("node certificate expires before it could be renewed; attesting again", "err", err, "not_after", leaf.NotAfter)
			if _, aerr := c.attest(ctx); aerr == nil {
				continue
			} else {
				err = aerr
			}
		}
		c.log.Warn("renewing the node certificate failed; retrying", "err", err, "in", wait, "not_after", leaf.NotAfter)
		if err := sleep(ctx, wait); err != nil {
			return nil
		}
		wait = min(2*wait, time.Minute)
	}
}

func (c *Client) renew(ctx context.Context, leaf *x509.Certificate) error {
	csr, err := mtls.NewCSR(c.key)
	if err != nil {
		return err
	}
	nc, err := c.call(ctx, func(ctx context.Context, cli ipledgerv1.IdentityServiceClient) (*ipledgerv1.NodeCertificate, error) {
		return cli.Renew(ctx, &ipledgerv1.RenewRequest{Csr: csr})
	})
	if err != nil {
		return err
	}
	if id, _ := mtls.IdentityOf(leaf); nc.GetNodeName() != id.Name {
		return fmt.Errorf("attest: renewal names %s, not %s", nc.GetNodeName(), id.Name)
	}
	if err := c.store(nc); err != nil {
		return err
	}
	c.mu.Lock()
	c.renewed++
	c.mu.Unlock()
	c.log.Info("node certificate renewed", "node", nc.GetNodeName(), "not_after", nc.GetNotAfter().AsTime())
	return nil
}
