package api

import (
	"context"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/policy"
)

// LaunchHint implements AdminService (leader only: the first-minute starts are the leader's).
func (s *AdminServer) LaunchHint(ctx context.Context, req *ipledgerv1.LaunchHintRequest) (*ipledgerv1.LaunchHintResponse, error) {
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	r := allocator.LaunchHintRequest{Policy: req.GetPolicy(), InstanceType: req.GetInstanceType()}
	if req.ExpectedPods != nil {
		n := int(req.GetExpectedPods())
		r.ExpectedPods = &n
	}
	h, err := a.LaunchHint(ctx, r)
	if err != nil {
		return nil, Status(err)
	}
	return LaunchHintToProto(h), nil
}

// LaunchHintToProto converts a launch hint to the wire.
func LaunchHintToProto(h policy.LaunchHint) *ipledgerv1.LaunchHintResponse {
	return &ipledgerv1.LaunchHintResponse{
		Policy: h.Policy, InstanceType: h.InstanceType, Mode: ModeToProto(h.Mode),
		SecondaryPrivateIpAddressCount: uint32(h.SecondaryAddresses), Ipv4PrefixCount: uint32(h.Prefixes),
		PodAddresses: uint32(h.PodAddresses), Want: uint32(h.Want), InterfaceLimit: uint32(h.InterfaceLimit),
		Capped: h.Capped, PreferPrefixes: h.PreferPrefixes, FirstMinuteStarts: uint32(h.FirstMinute),
		ObservedNodes: uint32(h.Observed), Reasons: h.Reasons, Warnings: h.Warnings, NodeLabels: h.Labels,
	}
}
