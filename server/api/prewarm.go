package api

import (
	"context"
	"fmt"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ledger"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Prewarm implements AdminService.
func (s *AdminServer) Prewarm(ctx context.Context, req *ipledgerv1.PrewarmRequest) (*ipledgerv1.PrewarmReservation, error) {
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	var expiry time.Duration
	if req.GetExpiry() != nil {
		if err := req.GetExpiry().CheckValid(); err != nil {
			return nil, invalidArg("expiry", err.Error())
		}
		expiry = req.GetExpiry().AsDuration()
	}
	rec, err := a.Prewarm(ctx, allocator.PrewarmRequest{
		SubnetID: req.GetSubnetId(), AvailabilityZone: req.GetAvailabilityZone(), InstanceType: req.GetInstanceType(),
		NodeCount: int(req.GetNodeCount()), AddressesPerNode: int(req.GetAddressesPerNode()), Expiry: expiry,
	})
	if err != nil {
		return nil, Status(err)
	}
	return reservation(rec), nil
}

// ListPrewarms implements AdminService.
func (s *AdminServer) ListPrewarms(ctx context.Context, _ *ipledgerv1.ListPrewarmsRequest) (*ipledgerv1.ListPrewarmsResponse, error) {
	out := &ipledgerv1.ListPrewarmsResponse{}
	for _, rec := range s.replica.Ledger().Prewarms() {
		out.Reservations = append(out.Reservations, reservation(rec))
	}
	return out, nil
}

// CancelPrewarm implements AdminService.
func (s *AdminServer) CancelPrewarm(ctx context.Context, req *ipledgerv1.CancelPrewarmRequest) (*ipledgerv1.PrewarmReservation, error) {
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	rec, err := a.CancelPrewarm(ctx, req.GetId())
	if err != nil {
		return nil, Status(err)
	}
	return reservation(rec), nil
}

// CanFit implements AdminService (any replica answers from its copy of the ledger).
func (s *AdminServer) CanFit(ctx context.Context, req *ipledgerv1.CanFitRequest) (*ipledgerv1.CanFitResponse, error) {
	led := s.replica.Ledger()
	var pol policy.Policy
	if name := req.GetPolicy(); name != "" {
		found := false
		for _, p := range s.policies() {
			if p.Name == name {
				pol, found = p, true
			}
		}
		if !found {
			return nil, Status(fmt.Errorf("%w: policy %q", allocator.ErrNotFound, name))
		}
	}
	res, err := allocator.CanFitPolicy(led, allocator.CanFitRequest{
		SubnetID: req.GetSubnetId(), AvailabilityZone: req.GetAvailabilityZone(), NodeCount: int(req.GetNodeCount()),
		PodsPerNode: int(req.GetPodsPerNode()), InstanceType: req.GetInstanceType(),
	}, pol, s.now())
	if err != nil {
		return nil, Status(err)
	}
	out := &ipledgerv1.CanFitResponse{Fits: res.Fits, Needed: uint32(res.Needed), Available: uint32(res.Available), Reasons: res.Reasons}
	for _, b := range res.Budgets {
		out.Subnets = append(out.Subnets, s.subnetBudget(led, b))
	}
	if pol.HasPodSubnets() {
		nodeSubnets := len(res.Budgets) - len(res.PodSubnetENIs)
		for i, n := range res.PodSubnetENIs {
			out.PodSubnetIds = append(out.PodSubnetIds, res.Budgets[nodeSubnets+i].SubnetID)
			out.PodSubnetEnis = append(out.PodSubnetEnis, uint32(n))
		}
	}
	return out, nil
}

// reservation converts a pre-warm record.
func reservation(rec ledger.PrewarmRecord) *ipledgerv1.PrewarmReservation {
	out := &ipledgerv1.PrewarmReservation{
		Id: rec.ID, SubnetId: rec.SubnetID, AvailabilityZone: rec.AvailabilityZone, InstanceType: rec.InstanceType,
		NodeCount: uint32(rec.NodeCount), AddressesPerNode: uint32(rec.AddressesPerNode),
		CreatedAt: timestamppb.New(rec.CreatedAt), ExpiresAt: timestamppb.New(rec.ExpiresAt), State: rec.State,
	}
	per := 1 + rec.AddressesPerNode
	for _, e := range rec.ENIs {
		pe := &ipledgerv1.PrewarmEni{EniId: e.ID, State: e.State, NodeName: e.NodeName}
		for _, ip := range e.Addresses {
			pe.Addresses = append(pe.Addresses, ip.String())
		}
		out.Enis = append(out.Enis, pe)
		if e.State != ledger.PrewarmENIAttached && (rec.State == ledger.PrewarmPending || rec.State == ledger.PrewarmReady) {
			out.ReservedAddresses += uint32(per)
		}
	}
	return out
}
