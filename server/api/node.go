package api

import (
	"context"
	"fmt"
	"io"

	"github.com/ipledger/ipledger/internal/clock"
	"github.com/ipledger/ipledger/internal/validate"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/identity"
	"github.com/ipledger/ipledger/server/ledger"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Replica is what the services need from the server process.
type Replica interface {
	// Allocator is nil unless this replica leads and its allocator runs.
	Allocator() *allocator.Allocator
	// Ledger is this replica's in-memory copy of the state.
	Ledger() *ledger.Ledger
	// LeaderAddress is the advertised gRPC address of the leader ("" when unknown).
	LeaderAddress() string
	// Policies are the node group policies as this replica knows them, the default included.
	Policies() []policy.Policy
	Forecaster() *allocator.Forecaster
	ClusterStatus(ctx context.Context) *ipledgerv1.ClusterStatus
	// LimiterState is the EC2 limiter's state (meaningful on the leader only: only it calls EC2).
	LimiterState() ec2gw.LimiterState
	// Clock is the replica's one clock (reads that depend on time, such as cooling addresses,
	// use it as the allocator does).
	Clock() clock.Clock
}

// NodeAuthorizer decides whether the caller may act for a node (mTLS identity). nil allows all.
type NodeAuthorizer func(ctx context.Context, node string) error

// Bounds of repeated fields in NodeService requests, beyond the 4 MiB message size limit. No
// node runs more pods than an instance type has addresses (a few thousand at most).
const (
	// MaxUsagePods bounds UsageReport.in_use.
	MaxUsagePods = 10000
	// MaxAckItems bounds ReleaseAck.confirmed + refused (the allocator also checks them against
	// the proposal they answer).
	MaxAckItems = 10000
	// maxIDLength bounds identifiers agents send back (proposal ids, container ids, pod names).
	maxIDLength = 256
)

// NodeOptions are a NodeServer's guards.
type NodeOptions struct {
	// Authorize checks the caller may act for the node a request names (nil: anyone may).
	Authorize NodeAuthorizer
	// Identity, when set, holds nodes with attested certificates to their own instance and
	// remembers the certificate each node presents (for node listings).
	Identity *identity.Service
	// SyncLimiter is the per-node rate limit of Sync streams and their messages (nil: none).
	// Unary calls have their own buckets (a NodeLimiter's interceptor), so a node's usage
	// reports never take the tokens of its urgent requests for addresses.
	SyncLimiter *NodeLimiter
	// Streams bounds Sync streams per caller, the wait for their hello and floods (nil: the
	// hello still waits at most DefaultHelloTimeout; no stream count limit).
	Streams *StreamGuard
}

// NodeServer implements NodeService.
type NodeServer struct {
	ipledgerv1.UnimplementedNodeServiceServer
	replica   Replica
	authorize NodeAuthorizer
	limiter   *NodeLimiter
	streams   *StreamGuard
	identity  *identity.Service
}

var _ ipledgerv1.NodeServiceServer = (*NodeServer)(nil)

// NewNodeServer serves NodeService for a replica.
func NewNodeServer(r Replica, opts NodeOptions) *NodeServer {
	return &NodeServer{replica: r, authorize: opts.Authorize, limiter: opts.SyncLimiter, streams: opts.Streams, identity: opts.Identity}
}

// allow takes a token of node's Sync bucket.
func (s *NodeServer) allow(node string) bool {
	return s.limiter == nil || s.limiter.Allow(node)
}

func (s *NodeServer) leader() (*allocator.Allocator, error) {
	if a := s.replica.Allocator(); a != nil {
		return a, nil
	}
	return nil, NotLeader(s.replica.LeaderAddress())
}

func (s *NodeServer) check(ctx context.Context, node string) error {
	if err := allocator.ValidateNodeName("node_name", node); err != nil {
		return Status(err)
	}
	if s.authorize != nil {
		if err := s.authorize(ctx, node); err != nil {
			return err
		}
	}
	return nil
}

// RegisterNode implements NodeService.
func (s *NodeServer) RegisterNode(ctx context.Context, req *ipledgerv1.RegisterNodeRequest) (*ipledgerv1.RegisterNodeResponse, error) {
	if err := s.check(ctx, req.GetNodeName()); err != nil {
		return nil, err
	}
	if err := bindInstance(ctx, s.identity, req.GetNodeName(), req.GetInstanceId()); err != nil {
		return nil, err
	}
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	reg, err := registrationFromProto(req)
	if err != nil {
		return nil, err
	}
	pool, pol, err := a.RegisterNode(ctx, reg)
	if err != nil {
		return nil, Status(err)
	}
	resp := &ipledgerv1.RegisterNodeResponse{Pool: PoolToProto(pool), Policy: PolicyToProto(pol)}
	if rt, ok := a.Runtime(req.GetNodeName()); ok && rt.Usage != nil {
		resp.LastReportedInUse = podsToProto(rt.Usage)
	}
	return resp, nil
}

// RequestAddresses implements NodeService.
func (s *NodeServer) RequestAddresses(ctx context.Context, req *ipledgerv1.RequestAddressesRequest) (*ipledgerv1.RequestAddressesResponse, error) {
	if err := s.check(ctx, req.GetNodeName()); err != nil {
		return nil, err
	}
	if req.GetCount() < 1 || req.GetCount() > 256 {
		return nil, invalidArg("count", fmt.Sprintf("%d is outside 1..256", req.GetCount()))
	}
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	pool, err := a.RequestAddresses(ctx, req.GetNodeName(), int(req.GetCount()), req.GetKnownGeneration())
	if err != nil {
		return nil, Status(err)
	}
	return &ipledgerv1.RequestAddressesResponse{Pool: PoolToProto(pool)}, nil
}

// Sync implements NodeService: the first request is a SyncHello, then usage reports and release
// acks flow in while pools and proposals flow out.
func (s *NodeServer) Sync(stream ipledgerv1.NodeService_SyncServer) error {
	ctx := stream.Context()
	release, err := s.streams.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	first, err := s.streams.recvHello(stream)
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil {
		return invalidArg("hello", "the first message of a Sync stream must be a SyncHello")
	}
	node := hello.GetNodeName()
	if err := s.check(ctx, node); err != nil {
		return err
	}
	if err := bindInstance(ctx, s.identity, node, hello.GetInstanceId()); err != nil {
		return err
	}
	if !s.allow(node) {
		return s.limiter.Refuse(node, "Sync")
	}
	a, err := s.leader()
	if err != nil {
		return err
	}
	if p, err := a.Pool(node); err == nil && hello.GetInstanceId() != "" && p.Node.InstanceID != hello.GetInstanceId() {
		return Status(fmt.Errorf("%w: node %s is registered for instance %s, not %s", allocator.ErrInstanceMismatch, node, p.Node.InstanceID, hello.GetInstanceId()))
	}
	sub, err := a.Subscribe(node)
	if err != nil {
		return Status(err)
	}
	defer a.Unsubscribe(sub)

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		flood := s.streams.floodLimiter()
		for {
			msg, err := stream.Recv()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			// A message over the node's limit is dropped: a usage report is a full snapshot, so
			// the next one carries everything; a dropped release ack leaves its proposal to time
			// out, which releases nothing. Only a flood (drops faster than the guard's flood
			// rate, ~1,000 per second) ends the stream: dropping costs less than the agent's
			// reconnect, and a steady excess below it is only dropped.
			if !s.allow(node) {
				s.limiter.Dropped("Sync")
				if !flood.Allow() {
					return s.limiter.Refuse(node, "Sync")
				}
				continue
			}
			switch m := msg.GetMsg().(type) {
			case *ipledgerv1.SyncRequest_Usage:
				if err := validateUsage(m.Usage); err != nil {
					return err
				}
				u, err := usageFromProto(m.Usage)
				if err != nil {
					return err
				}
				if err := a.ReportUsage(node, u); err != nil {
					return Status(err)
				}
			case *ipledgerv1.SyncRequest_ReleaseAck:
				if err := validateAck(m.ReleaseAck); err != nil {
					return err
				}
				if err := a.AckRelease(gctx, node, ackFromProto(m.ReleaseAck)); err != nil {
					return Status(err)
				}
			case *ipledgerv1.SyncRequest_Hello:
				return invalidArg("hello", "SyncHello is only allowed as the first message")
			default:
				return invalidArg("msg", "empty SyncRequest")
			}
		}
	})
	g.Go(func() error {
		for {
			msg, err := sub.Next(gctx)
			if err != nil {
				if gctx.Err() != nil {
					return nil
				}
				return Status(err)
			}
			if msg.Empty() {
				return nil // the subscription was closed
			}
			if err := stream.Send(syncToProto(msg)); err != nil {
				return err
			}
		}
	})
	err = g.Wait()
	if err == nil && ctx.Err() == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok || err == nil {
		return err
	}
	return status.Error(codes.Unavailable, err.Error())
}

// validateUsage bounds a usage report before the allocator sees it.
func validateUsage(u *ipledgerv1.UsageReport) error {
	if n := len(u.GetInUse()); n > MaxUsagePods {
		return invalidArg("usage.in_use", fmt.Sprintf("%d pods; at most %d", n, MaxUsagePods))
	}
	for i, p := range u.GetInUse() {
		for _, f := range [...]struct{ name, v string }{
			{"container_id", p.GetContainerId()}, {"ifname", p.GetIfname()},
		} {
			if len(f.v) > maxIDLength {
				return invalidArg(fmt.Sprintf("usage.in_use[%d].%s", i, f.name), fmt.Sprintf("longer than %d characters", maxIDLength))
			}
			if err := validate.NoControl(f.v); err != nil {
				return invalidArg(fmt.Sprintf("usage.in_use[%d].%s", i, f.name), err.Error())
			}
		}
		// The agent refuses such pod fields at CNI ADD; a report carrying them is forged or
		// broken, and would reach terminals through ipledgerctl.
		for _, f := range [...]struct{ name, v string }{
			{"pod_namespace", p.GetPodNamespace()}, {"pod_name", p.GetPodName()}, {"pod_uid", p.GetPodUid()},
		} {
			if err := validate.PodField(f.v); err != nil {
				return invalidArg(fmt.Sprintf("usage.in_use[%d].%s", i, f.name), err.Error())
			}
		}
	}
	return nil
}

// validateAck bounds a release ack before the allocator sees it.
func validateAck(ack *ipledgerv1.ReleaseAck) error {
	if len(ack.GetProposalId()) > maxIDLength {
		return invalidArg("release_ack.proposal_id", fmt.Sprintf("longer than %d characters", maxIDLength))
	}
	if n := len(ack.GetConfirmed()) + len(ack.GetRefused()); n > MaxAckItems {
		return invalidArg("release_ack", fmt.Sprintf("%d items; at most %d", n, MaxAckItems))
	}
	return nil
}
