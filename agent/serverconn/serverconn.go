package serverconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	"github.com/ipledger/ipledger/agent/internal/rpcerr"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Defaults.
const (
	DefaultUsageInterval = 30 * time.Second
	DefaultUsageDebounce = 200 * time.Millisecond
	DefaultBackoffMin    = 200 * time.Millisecond
	DefaultBackoffMax    = 15 * time.Second
	DefaultCallTimeout   = 30 * time.Second
	// DefaultKeepaliveTime and DefaultKeepaliveTimeout: the client pings the server after this
	// long without traffic and drops the connection when the answer takes longer than the
	// timeout, so a stream to a leader that died without closing it (a half-open connection)
	// is noticed. The server allows pings every 10 s, also without streams.
	DefaultKeepaliveTime    = 30 * time.Second
	DefaultKeepaliveTimeout = 10 * time.Second
)

// MaxRequestCount is the most addresses one RequestAddresses may ask for (node.proto).
const MaxRequestCount = 256

// Errors.
var (
	ErrNoServers = errors.New("serverconn: no server address")
	ErrNoHandler = errors.New("serverconn: no handler")
	// ErrProtocol: the server broke the Sync protocol (first message not a pool, ...).
	ErrProtocol = errors.New("serverconn: protocol error")
)

// Identity is what the agent registers: its node and instance as IMDS reported them.
type Identity struct {
	NodeName         string
	InstanceID       string
	InstanceType     string
	AvailabilityZone string
	SubnetID         string
	PrimaryENIID     string
	PrimaryIP        string
	Labels           map[string]string
	AgentVersion     string
}

// Handler is what the connection needs from the agent. Its methods are called from the
// connection's goroutines and must be safe for concurrent use.
type Handler interface {
	// ApplyPool applies a pool the server sent. force: the pool comes from a registration that
	// followed a cold start of this process or UNKNOWN_NODE, and is authoritative whatever its
	// generation.
	ApplyPool(np *ipledgerv1.NodePool, force bool) error
	// RestorePods is called after every successful registration, after ApplyPool of its pool,
	// with the pods the server says the node last reported in use (empty when this leader has
	// no report of the node). The agent restores those its checkpoint lacks.
	RestorePods(pods []*ipledgerv1.PodAddress)
	// AnswerRelease answers a proposal; the returned ack is sent only when the locks it
	// confirms are durable (no error).
	AnswerRelease(p *ipledgerv1.ReleaseProposal) (*ipledgerv1.ReleaseAck, error)
	// StalePods is called with the uids (or namespace/name) of pods the Kubernetes API deleted
	// whose addresses the node still reports; the agent gives back those its own state agrees
	// are gone (the next usage report tells the server).
	StalePods(uids []string)
	// Usage is the current usage report (a full snapshot).
	Usage() *ipledgerv1.UsageReport
	// KnownGeneration is the generation of the pool the agent has applied.
	KnownGeneration() uint64
}

// Config configures a Conn.
type Config struct {
	// Servers are the gRPC addresses of the allocator replicas (host:port). The first is tried
	// first; a NOT_LEADER answer names the leader, which is tried next; the list is the fallback.
	Servers []string
	// Credentials for the connection (nil: insecure, for loopback in dev and tests).
	Credentials credentials.TransportCredentials
	// DialOptions are added to every connection.
	DialOptions []grpc.DialOption
	Identity    Identity
	Handler     Handler
	Logger      *slog.Logger
	// UsageInterval: a usage report is sent at least this often (default 30 s).
	UsageInterval time.Duration
	// UsageDebounce: a change is reported this long after it, together with what follows it
	// (default 200 ms).
	UsageDebounce time.Duration
	// BackoffMin and BackoffMax bound the jittered exponential wait between attempts.
	BackoffMin time.Duration
	BackoffMax time.Duration
	// CallTimeout bounds RegisterNode (default 30 s).
	CallTimeout time.Duration
	// KeepaliveTime and KeepaliveTimeout are the client's keepalive pings (defaults 30 s and
	// 10 s; gRPC never pings more often than every 10 s).
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
}

// State is the connection's state for Status, metrics and introspection.
type State struct {
	// Registered: RegisterNode succeeded (and no UNKNOWN_NODE since).
	Registered bool `json:"registered"`
	// Connected: a Sync stream is up and has delivered the node's pool.
	Connected bool `json:"connected"`
	// Target is the server address in use.
	Target         string    `json:"target"`
	LastError      string    `json:"last_error,omitempty"`
	LastErrorAt    time.Time `json:"last_error_at,omitzero"`
	ConnectedSince time.Time `json:"connected_since,omitzero"`
	// Connects counts Sync streams that delivered a pool.
	Connects uint64 `json:"connects"`
}

// Conn is the agent's connection to the allocator.
type Conn struct {
	cfg       Config
	log       *slog.Logger
	usageKick chan struct{}

	mu        sync.Mutex
	st        State
	next      int  // index in Servers of the fallback in use
	forceNext bool // apply the next registration's pool whatever its generation
	conns     map[string]*grpc.ClientConn
	closed    bool
}

// New checks cfg and returns an unstarted connection.
func New(cfg Config) (*Conn, error) {
	if len(cfg.Servers) == 0 || slices.Contains(cfg.Servers, "") {
		return nil, ErrNoServers
	}
	if cfg.Handler == nil {
		return nil, ErrNoHandler
	}
	if cfg.Identity.NodeName == "" || cfg.Identity.InstanceID == "" {
		return nil, errors.New("serverconn: identity needs a node name and an instance id")
	}
	if cfg.UsageInterval <= 0 {
		cfg.UsageInterval = DefaultUsageInterval
	}
	if cfg.UsageDebounce <= 0 {
		cfg.UsageDebounce = DefaultUsageDebounce
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(DefaultBackoffMax, cfg.BackoffMin)
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.KeepaliveTime <= 0 {
		cfg.KeepaliveTime = DefaultKeepaliveTime
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = DefaultKeepaliveTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Servers = slices.Clone(cfg.Servers)
	return &Conn{
		cfg:       cfg,
		log:       cfg.Logger,
		usageKick: make(chan struct{}, 1),
		st:        State{Target: cfg.Servers[0]},
		forceNext: true,
		conns:     map[string]*grpc.ClientConn{},
	}, nil
}

// State returns the connection's state.
func (c *Conn) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// ServerState says whether the sync stream is up and, when it is not, the last error.
func (c *Conn) ServerState() (connected bool, lastError string) {
	st := c.State()
	if st.Connected {
		return true, ""
	}
	if st.LastError == "" {
		return false, "not connected to the allocator at " + st.Target + " yet"
	}
	return false, st.LastError
}

// NotifyUsage says the usage changed; a report follows after the debounce. It never blocks.
func (c *Conn) NotifyUsage() {
	select {
	case c.usageKick <- struct{}{}:
	default:
	}
}

// Run registers the node and keeps the Sync stream up until ctx ends, reconnecting with a
// jittered exponential backoff. It returns nil when ctx ends and closes its connections.
func (c *Conn) Run(ctx context.Context) error {
	defer c.closeConns()
	bo := newBackoff(c.cfg.BackoffMin, c.cfg.BackoffMax)
	for ctx.Err() == nil {
		if !c.State().Registered {
			if err := c.register(ctx, bo); err != nil {
				break
			}
		}
		err := c.syncOnce(ctx, bo)
		if ctx.Err() != nil {
			break
		}
		redirected := c.noteError("sync", err)
		wait := bo.NextBackOff()
		if redirected {
			wait = c.cfg.BackoffMin
		}
		if !sleep(ctx, wait) {
			break
		}
	}
	return nil
}

// register calls RegisterNode until it succeeds or ctx ends (the only error).
func (c *Conn) register(ctx context.Context, bo *backoff.ExponentialBackOff) error {
	id := c.cfg.Identity
	for {
		target, cl, err := c.client()
		if err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
		resp, err := cl.RegisterNode(cctx, &ipledgerv1.RegisterNodeRequest{
			NodeName: id.NodeName, InstanceId: id.InstanceID, InstanceType: id.InstanceType,
			AvailabilityZone: id.AvailabilityZone, SubnetId: id.SubnetID, PrimaryEniId: id.PrimaryENIID,
			PrimaryIp: id.PrimaryIP, Labels: id.Labels, AgentVersion: id.AgentVersion,
		})
		cancel()
		if err == nil {
			c.mu.Lock()
			force := c.forceNext
			c.forceNext = false
			c.st.Registered = true
			c.mu.Unlock()
			c.log.Info("registered with the server", "server", target, "generation", resp.GetPool().GetGeneration(),
				"policy", resp.GetPolicy().GetName(), "last_reported_pods", len(resp.GetLastReportedInUse()))
			if resp.GetPool() != nil {
				if err := c.cfg.Handler.ApplyPool(resp.GetPool(), force); err != nil {
					c.log.Error("applying the pool from registration failed", "err", err)
				}
			}
			c.cfg.Handler.RestorePods(resp.GetLastReportedInUse())
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := bo.NextBackOff()
		if c.noteError("register", err) {
			wait = c.cfg.BackoffMin
		}
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// syncOnce runs one Sync stream until it fails or ctx ends.
func (c *Conn) syncOnce(ctx context.Context, bo *backoff.ExponentialBackOff) error {
	target, cl, err := c.client()
	if err != nil {
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cl.Sync(sctx)
	if err != nil {
		return fmt.Errorf("open sync stream to %s: %w", target, err)
	}
	id := c.cfg.Identity
	hello := &ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Hello{Hello: &ipledgerv1.SyncHello{
		NodeName: id.NodeName, InstanceId: id.InstanceID, KnownGeneration: c.cfg.Handler.KnownGeneration(),
	}}}
	if err := stream.Send(hello); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("send hello to %s: %w", target, err)
	}
	first, err := stream.Recv()
	if err != nil {
		return streamErr(target, err)
	}
	if first.GetPool() == nil {
		return fmt.Errorf("%w: first message from %s is not the node's pool", ErrProtocol, target)
	}
	if err := c.cfg.Handler.ApplyPool(first.GetPool(), false); err != nil {
		c.log.Error("applying the pool from the server failed", "err", err)
	}
	c.mu.Lock()
	c.st.Connected = true
	c.st.ConnectedSince = time.Now()
	c.st.Connects++
	c.mu.Unlock()
	bo.Reset()
	c.log.Info("sync stream up", "server", target, "generation", first.GetPool().GetGeneration())
	defer func() {
		c.mu.Lock()
		c.st.Connected = false
		c.st.ConnectedSince = time.Time{}
		c.mu.Unlock()
	}()

	acks := make(chan *ipledgerv1.ReleaseAck, 16)
	recvDone := make(chan struct{})
	var recvErr error
	go func() {
		defer close(recvDone)
		recvErr = c.recvLoop(sctx, stream, acks)
	}()
	sendErr := c.sendLoop(sctx, stream, acks, recvDone)
	if sendErr == nil || !errors.Is(sendErr, io.EOF) {
		// io.EOF from Send means the server ended the stream: Recv returns its status.
		cancel()
	}
	<-recvDone
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if recvErr != nil && status.Code(recvErr) != codes.Canceled {
		return streamErr(target, recvErr)
	}
	if sendErr != nil {
		return fmt.Errorf("send to %s: %w", target, sendErr)
	}
	return streamErr(target, recvErr)
}

func streamErr(target string, err error) error {
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("server %s closed the sync stream", target)
	}
	return fmt.Errorf("sync stream with %s: %w", target, err)
}

type syncStream = grpc.BidiStreamingClient[ipledgerv1.SyncRequest, ipledgerv1.SyncResponse]

func (c *Conn) recvLoop(ctx context.Context, stream syncStream, acks chan<- *ipledgerv1.ReleaseAck) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return err
		}
		switch m := msg.GetMsg().(type) {
		case *ipledgerv1.SyncResponse_Pool:
			if err := c.cfg.Handler.ApplyPool(m.Pool, false); err != nil {
				c.log.Error("applying the pool from the server failed", "err", err)
			}
		case *ipledgerv1.SyncResponse_Release:
			ack, err := c.cfg.Handler.AnswerRelease(m.Release)
			if err != nil {
				// No ack: the server keeps the proposal open and asks again.
				c.log.Error("answering a release proposal failed", "proposal", m.Release.GetProposalId(), "err", err)
				continue
			}
			select {
			case acks <- ack:
			case <-ctx.Done():
				return ctx.Err()
			}
		case *ipledgerv1.SyncResponse_StalePods:
			c.cfg.Handler.StalePods(m.StalePods.GetPodUids())
		case *ipledgerv1.SyncResponse_UsageRefused:
			// The server left these out of the node's usage: another node leases them. Pods
			// on them are a bug (or an attack) worth a person's look.
			c.log.Error("the server refused addresses of the usage report", "addresses", m.UsageRefused.GetAddresses(), "reason", m.UsageRefused.GetReason())
		default:
			c.log.Warn("ignoring an unknown sync message", "type", fmt.Sprintf("%T", m))
		}
	}
}

func (c *Conn) sendLoop(ctx context.Context, stream syncStream, acks <-chan *ipledgerv1.ReleaseAck, recvDone <-chan struct{}) error {
	sendUsage := func() error {
		return stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_Usage{Usage: c.cfg.Handler.Usage()}})
	}
	if err := sendUsage(); err != nil {
		return err
	}
	ticker := time.NewTicker(c.cfg.UsageInterval)
	defer ticker.Stop()
	var debounce *time.Timer
	var debounceC <-chan time.Time
	defer func() {
		if debounce != nil {
			debounce.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-recvDone:
			return nil
		case <-c.usageKick:
			if debounceC == nil {
				debounce = time.NewTimer(c.cfg.UsageDebounce)
				debounceC = debounce.C
			}
		case <-debounceC:
			debounceC = nil
			if err := sendUsage(); err != nil {
				return err
			}
			ticker.Reset(c.cfg.UsageInterval)
		case <-ticker.C:
			if err := sendUsage(); err != nil {
				return err
			}
		case ack := <-acks:
			if err := stream.Send(&ipledgerv1.SyncRequest{Msg: &ipledgerv1.SyncRequest_ReleaseAck{ReleaseAck: ack}}); err != nil {
				return err
			}
			c.log.Info("release ack sent", "proposal", ack.GetProposalId(),
				"confirmed", len(ack.GetConfirmed()), "refused", len(ack.GetRefused()))
		}
	}
}

// noteError records a failed call and acts on what the server said: NOT_LEADER moves to the
// leader it names (true: retry at once), UNKNOWN_NODE re-registers, an unreachable server moves
// to the next address of the list.
func (c *Conn) noteError(op string, err error) (redirected bool) {
	if err == nil {
		return false
	}
	reason, meta := rpcerr.Info(err)
	code := rpcerr.Code(err)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.LastError = fmt.Sprintf("%s: %v", op, err)
	c.st.LastErrorAt = time.Now()
	from := c.st.Target
	switch {
	case reason == ipledgerv1.Reason_NOT_LEADER && meta["leader"] != "" && meta["leader"] != from:
		c.st.Target = meta["leader"]
		redirected = true
	case reason == ipledgerv1.Reason_NOT_LEADER:
		c.rotateLocked()
	case reason == ipledgerv1.Reason_UNKNOWN_NODE || (code == codes.NotFound && reason == ipledgerv1.Reason_REASON_UNSPECIFIED):
		c.st.Registered = false
		c.forceNext = true
	case code == codes.Unavailable && reason == ipledgerv1.Reason_REASON_UNSPECIFIED,
		code == codes.DeadlineExceeded, code == codes.Unimplemented:
		c.rotateLocked()
	}
	c.log.Warn("server call failed", "op", op, "server", from, "target", c.st.Target,
		"reason", reason.String(), "code", code.String(), "err", err)
	return redirected
}

// rotateLocked moves to the next address of the configured list.
func (c *Conn) rotateLocked() {
	if i := slices.Index(c.cfg.Servers, c.st.Target); i >= 0 {
		c.next = (i + 1) % len(c.cfg.Servers)
	}
	c.st.Target = c.cfg.Servers[c.next]
}

// client returns the NodeService client for the current target.
func (c *Conn) client() (string, ipledgerv1.NodeServiceClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return "", nil, errors.New("serverconn: closed")
	}
	target := c.st.Target
	cc, ok := c.conns[target]
	if !ok {
		creds := c.cfg.Credentials
		if creds == nil {
			creds = insecure.NewCredentials()
		}
		opts := append([]grpc.DialOption{
			grpc.WithTransportCredentials(creds),
			grpc.WithKeepaliveParams(keepalive.ClientParameters{
				Time: c.cfg.KeepaliveTime, Timeout: c.cfg.KeepaliveTimeout, PermitWithoutStream: true,
			}),
		}, c.cfg.DialOptions...)
		var err error
		if cc, err = grpc.NewClient(target, opts...); err != nil {
			return target, nil, fmt.Errorf("serverconn: client for %s: %w", target, err)
		}
		c.conns[target] = cc
	}
	return target, ipledgerv1.NewNodeServiceClient(cc), nil
}

func (c *Conn) closeConns() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.st.Connected = false
	for addr, cc := range c.conns {
		_ = cc.Close()
		delete(c.conns, addr)
	}
}

// RequestAddresses asks the server, urgently, for count more free addresses and applies the pool
// it answers with. Errors are gRPC statuses with an ipledger ErrorInfo: the server's own reason
// (SUBNET_EXHAUSTED, EC2_THROTTLED, ...), SERVER_UNREACHABLE when the server cannot be reached
// or the node is not registered yet, SUPPLY_TIMEOUT when ctx ends first.
func (c *Conn) RequestAddresses(ctx context.Context, count uint32) error {
	count = min(max(count, 1), MaxRequestCount)
	st := c.State()
	if !st.Registered {
		msg := "not registered with the allocator yet"
		if st.LastError != "" {
			msg += " (last error: " + st.LastError + ")"
		}
		return rpcerr.New(codes.Unavailable, ipledgerv1.Reason_SERVER_UNREACHABLE, msg, map[string]string{"server": st.Target})
	}
	req := &ipledgerv1.RequestAddressesRequest{
		NodeName: c.cfg.Identity.NodeName, Count: count, KnownGeneration: c.cfg.Handler.KnownGeneration(),
	}
	var err error
	for range 3 {
		var (
			target string
			cl     ipledgerv1.NodeServiceClient
			resp   *ipledgerv1.RequestAddressesResponse
		)
		target, cl, err = c.client()
		if err != nil {
			break
		}
		resp, err = cl.RequestAddresses(ctx, req)
		if err == nil {
			if err := c.cfg.Handler.ApplyPool(resp.GetPool(), false); err != nil {
				return status.Errorf(codes.Internal, "apply the pool from %s: %v", target, err)
			}
			return nil
		}
		if ctx.Err() != nil {
			return rpcerr.New(codes.DeadlineExceeded, ipledgerv1.Reason_SUPPLY_TIMEOUT,
				fmt.Sprintf("the allocator at %s did not supply addresses in time", target), nil)
		}
		if !c.noteError("request addresses", err) {
			break
		}
	}
	if reason, _ := rpcerr.Info(err); reason != ipledgerv1.Reason_REASON_UNSPECIFIED && reason != ipledgerv1.Reason_NOT_LEADER {
		return err
	}
	return rpcerr.New(codes.Unavailable, ipledgerv1.Reason_SERVER_UNREACHABLE,
		fmt.Sprintf("cannot reach the allocator: %v", err), map[string]string{"server": c.State().Target})
}

// newBackoff is a jittered exponential backoff ("equal jitter": half fixed, half random): the
// n-th wait lies in [cur/2, cur], cur doubling from lo up to hi. In cenkalti/backoff's terms
// the interval is 3/4 cur with a randomization factor of 1/3.
func newBackoff(lo, hi time.Duration) *backoff.ExponentialBackOff {
	return &backoff.ExponentialBackOff{
		InitialInterval:     lo * 3 / 4,
		RandomizationFactor: 1.0 / 3,
		Multiplier:          2,
		MaxInterval:         hi * 3 / 4,
	}
}

// sleep waits d or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
