package api

import (
	"fmt"
	"net/netip"
	"sort"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ledger"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Conversions between the wire (ipledgerv1) and the allocator's own types. Every message the
// services receive or send passes here; the allocator sees none of them.

// ModeToProto converts an address mode.
func ModeToProto(m ledger.AddressMode) ipledgerv1.AddressMode {
	if m == ledger.ModePrefix {
		return ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX
	}
	return ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP
}

// StateToProto converts a lease state.
func StateToProto(s ledger.LeaseState) ipledgerv1.LeaseState {
	switch s {
	case ledger.LeaseActive:
		return ipledgerv1.LeaseState_LEASE_STATE_ACTIVE
	case ledger.LeaseReleaseProposed:
		return ipledgerv1.LeaseState_LEASE_STATE_RELEASE_PROPOSED
	case ledger.LeaseReleasing:
		return ipledgerv1.LeaseState_LEASE_STATE_RELEASING
	}
	return ipledgerv1.LeaseState_LEASE_STATE_UNSPECIFIED
}

// PolicyFromProto converts a policy (an unknown mode is an invalid policy).
func PolicyFromProto(p *ipledgerv1.NodePolicy) (policy.Policy, error) {
	if p == nil {
		return policy.Policy{}, policy.Invalid("policy", "missing")
	}
	out := policy.Policy{
		Name: p.GetName(), Order: p.GetOrder(),
		Selector:     policy.Selector{Labels: p.GetSelector().GetLabels(), InstanceTypes: p.GetSelector().GetInstanceTypes()},
		WarmIPTarget: p.WarmIpTarget, MinimumIPTarget: p.MinimumIpTarget, WarmENITarget: p.WarmEniTarget,
		WarmPrefixTarget: p.WarmPrefixTarget, MaxAddresses: p.MaxAddresses,
		AdaptiveFloor: p.AdaptiveFloor, AdaptiveCap: p.AdaptiveCap, AdaptiveWindowSeconds: p.AdaptiveWindowSeconds,
		AdaptiveHeadroomPercent: p.AdaptiveHeadroomPercent, ReleaseDelaySeconds: p.ReleaseDelaySeconds,
		PodSubnets: podSubnetsFromProto(p.GetPodSubnets()),
	}
	switch p.GetMode() {
	case ipledgerv1.AddressMode_ADDRESS_MODE_UNSPECIFIED:
	case ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP:
		out.Mode = ledger.ModeSecondaryIP
	case ipledgerv1.AddressMode_ADDRESS_MODE_PREFIX:
		out.Mode = ledger.ModePrefix
	default:
		return policy.Policy{}, policy.Invalid("mode", "unknown mode %d", p.GetMode())
	}
	return out.Normalized(), nil
}

// PolicyToProto converts a policy.
func PolicyToProto(p policy.Policy) *ipledgerv1.NodePolicy {
	out := &ipledgerv1.NodePolicy{
		Name: p.Name, Order: p.Order, Mode: ModeToProto(p.Mode),
		Selector:     &ipledgerv1.NodeSelector{Labels: p.Selector.Labels, InstanceTypes: p.Selector.InstanceTypes},
		WarmIpTarget: p.WarmIPTarget, MinimumIpTarget: p.MinimumIPTarget, WarmEniTarget: p.WarmENITarget,
		WarmPrefixTarget: p.WarmPrefixTarget, MaxAddresses: p.MaxAddresses,
		AdaptiveFloor: p.AdaptiveFloor, AdaptiveCap: p.AdaptiveCap, AdaptiveWindowSeconds: p.AdaptiveWindowSeconds,
		AdaptiveHeadroomPercent: p.AdaptiveHeadroomPercent, ReleaseDelaySeconds: p.ReleaseDelaySeconds,
		PodSubnets: podSubnetsToProto(p.PodSubnets),
	}
	if p.Mode == "" {
		out.Mode = ipledgerv1.AddressMode_ADDRESS_MODE_UNSPECIFIED
	}
	return out
}

func podSubnetsFromProto(s *ipledgerv1.PodSubnets) *policy.PodSubnets {
	if s == nil {
		return nil
	}
	out := &policy.PodSubnets{
		SubnetIDs: s.GetSubnetIds(), Tags: s.GetTags(), SecurityGroups: s.GetSecurityGroupIds(),
		IncludeNodeSubnet: s.GetIncludeNodeSubnet(), ExcludePrimaryENI: s.GetExcludePrimaryEni(),
	}
	if len(s.GetZones()) > 0 {
		out.Zones = make(map[string]policy.ZoneSubnets, len(s.GetZones()))
		for z, zs := range s.GetZones() {
			out.Zones[z] = policy.ZoneSubnets{SubnetIDs: zs.GetSubnetIds(), SecurityGroups: zs.GetSecurityGroupIds()}
		}
	}
	return out
}

func podSubnetsToProto(s *policy.PodSubnets) *ipledgerv1.PodSubnets {
	if s == nil {
		return nil
	}
	out := &ipledgerv1.PodSubnets{
		SubnetIds: s.SubnetIDs, Tags: s.Tags, SecurityGroupIds: s.SecurityGroups,
		IncludeNodeSubnet: s.IncludeNodeSubnet, ExcludePrimaryEni: s.ExcludePrimaryENI,
	}
	if len(s.Zones) > 0 {
		out.Zones = make(map[string]*ipledgerv1.ZonePodSubnets, len(s.Zones))
		for z, zs := range s.Zones {
			out.Zones[z] = &ipledgerv1.ZonePodSubnets{SubnetIds: zs.SubnetIDs, SecurityGroupIds: zs.SecurityGroups}
		}
	}
	return out
}

// PoliciesToProto converts a list of policies.
func PoliciesToProto(ps []policy.Policy) []*ipledgerv1.NodePolicy {
	out := make([]*ipledgerv1.NodePolicy, 0, len(ps))
	for _, p := range ps {
		out = append(out, PolicyToProto(p))
	}
	return out
}

// registrationFromProto converts a registration; the allocator validates the rest.
func registrationFromProto(req *ipledgerv1.RegisterNodeRequest) (allocator.Registration, error) {
	ip, err := netip.ParseAddr(req.GetPrimaryIp())
	if err != nil || !ip.Is4() {
		return allocator.Registration{}, invalidArg("primary_ip", fmt.Sprintf("%q is not an IPv4 address", req.GetPrimaryIp()))
	}
	return allocator.Registration{
		NodeName: req.GetNodeName(), InstanceID: req.GetInstanceId(), InstanceType: req.GetInstanceType(),
		AvailabilityZone: req.GetAvailabilityZone(), SubnetID: req.GetSubnetId(), PrimaryENI: req.GetPrimaryEniId(),
		PrimaryIP: ip, Labels: req.GetLabels(), AgentVersion: req.GetAgentVersion(),
	}, nil
}

// PoolToProto converts a pool as agents receive it: ENIs by device index, subnet CIDRs filled.
func PoolToProto(p *allocator.Pool) *ipledgerv1.NodePool {
	if p == nil {
		return nil
	}
	rec := p.Node
	out := &ipledgerv1.NodePool{
		NodeName: rec.Name, InstanceId: rec.InstanceID, Generation: p.Generation, Mode: ModeToProto(rec.Mode),
		TargetFree: uint32(p.Targets.TargetFree), MaxAddresses: uint32(p.Targets.Max), Draining: rec.Draining,
	}
	enis := append([]ledger.ENIRecord(nil), rec.ENIs...)
	sort.Slice(enis, func(i, j int) bool { return enis[i].DeviceIndex < enis[j].DeviceIndex })
	for _, e := range enis {
		ni := &ipledgerv1.NetworkInterface{
			EniId: e.ID, MacAddress: e.MAC, DeviceIndex: uint32(e.DeviceIndex), NetworkCardIndex: uint32(e.NetworkCardIndex),
			SubnetId: e.SubnetID, PrimaryIp: e.PrimaryIP.String(),
		}
		if c, ok := p.SubnetCIDRs[e.SubnetID]; ok {
			ni.SubnetCidr = c.String()
		}
		for _, ad := range e.Addresses {
			ni.Addresses = append(ni.Addresses, &ipledgerv1.PoolAddress{Ip: ad.IP.String(), State: StateToProto(ad.State)})
		}
		for _, pf := range e.Prefixes {
			ni.Prefixes = append(ni.Prefixes, &ipledgerv1.PoolPrefix{Cidr: pf.Prefix.String(), State: StateToProto(pf.State)})
		}
		out.Interfaces = append(out.Interfaces, ni)
	}
	return out
}

// usageFromProto converts a usage report (validateUsage bounded it).
func usageFromProto(u *ipledgerv1.UsageReport) (allocator.Usage, error) {
	out := allocator.Usage{
		PoolGeneration: u.GetPoolGeneration(), Free: int(u.GetFree()), Cooling: int(u.GetCooling()),
		PodsWaiting: int(u.GetPodsWaiting()), AddsTotal: u.GetAddsTotal(),
	}
	for i, p := range u.GetInUse() {
		ip, err := netip.ParseAddr(p.GetIp())
		if err != nil || !ip.Is4() {
			return allocator.Usage{}, invalidArg(fmt.Sprintf("usage.in_use[%d].ip", i), fmt.Sprintf("%q is not an IPv4 address", p.GetIp()))
		}
		pa := allocator.PodAddress{IP: ip, ContainerID: p.GetContainerId(), Ifname: p.GetIfname(), PodNamespace: p.GetPodNamespace(),
			PodName: p.GetPodName(), PodUID: p.GetPodUid()}
		if p.GetAssignedAt() != nil {
			pa.AssignedAt = p.GetAssignedAt().AsTime()
		}
		out.InUse = append(out.InUse, pa)
	}
	return out, nil
}

// podsToProto converts the pods of a usage report.
func podsToProto(u *allocator.Usage) []*ipledgerv1.PodAddress {
	if u == nil {
		return nil
	}
	out := make([]*ipledgerv1.PodAddress, 0, len(u.InUse))
	for _, p := range u.InUse {
		pa := &ipledgerv1.PodAddress{Ip: p.IP.String(), ContainerId: p.ContainerID, Ifname: p.Ifname, PodNamespace: p.PodNamespace,
			PodName: p.PodName, PodUid: p.PodUID}
		if !p.AssignedAt.IsZero() {
			pa.AssignedAt = timestamppb.New(p.AssignedAt)
		}
		out = append(out, pa)
	}
	return out
}

func ackFromProto(a *ipledgerv1.ReleaseAck) allocator.ReleaseAck {
	return allocator.ReleaseAck{ProposalID: a.GetProposalId(), Confirmed: a.GetConfirmed(), Refused: a.GetRefused()}
}

// proposalToProto converts a release proposal: its items split into addresses and prefixes.
func proposalToProto(p *ledger.ReleaseProposal) *ipledgerv1.ReleaseProposal {
	out := &ipledgerv1.ReleaseProposal{ProposalId: p.ID}
	for _, it := range p.Items {
		if _, err := netip.ParsePrefix(it); err == nil {
			out.Prefixes = append(out.Prefixes, it)
		} else {
			out.Addresses = append(out.Addresses, it)
		}
	}
	return out
}

func syncToProto(m allocator.SyncMessage) *ipledgerv1.SyncResponse {
	if m.Pool != nil {
		return &ipledgerv1.SyncResponse{Msg: &ipledgerv1.SyncResponse_Pool{Pool: PoolToProto(m.Pool)}}
	}
	if m.StalePods != nil {
		return &ipledgerv1.SyncResponse{Msg: &ipledgerv1.SyncResponse_StalePods{StalePods: &ipledgerv1.StalePods{PodUids: m.StalePods}}}
	}
	if m.Refusal != nil {
		r := &ipledgerv1.UsageRefused{Reason: m.Refusal.Reason}
		for _, ip := range m.Refusal.Addresses {
			r.Addresses = append(r.Addresses, ip.String())
		}
		return &ipledgerv1.SyncResponse{Msg: &ipledgerv1.SyncResponse_UsageRefused{UsageRefused: r}}
	}
	return &ipledgerv1.SyncResponse{Msg: &ipledgerv1.SyncResponse_Release{Release: proposalToProto(m.Proposal)}}
}

// FindingKindToProto is the wire kind of a finding.
func FindingKindToProto(k diff.Kind) ipledgerv1.FindingKind {
	switch k {
	case diff.LeasedNotOnEC2:
		return ipledgerv1.FindingKind_LEASED_NOT_ON_EC2
	case diff.OnEC2NotLeased:
		return ipledgerv1.FindingKind_ON_EC2_NOT_LEASED
	case diff.ENIMissing, diff.ENIAttachment, diff.ReservedENIAttached:
		return ipledgerv1.FindingKind_ENI_MISMATCH
	case diff.LeakedENI:
		return ipledgerv1.FindingKind_LEAKED_ENI
	case diff.DoubleOnEC2, diff.DoubleLease, diff.ForeignLeased:
		return ipledgerv1.FindingKind_DOUBLE_OWNER
	case diff.InUseNotLeased:
		return ipledgerv1.FindingKind_IN_USE_NOT_LEASED
	case diff.DoubleUse:
		return ipledgerv1.FindingKind_DOUBLE_USE
	}
	return ipledgerv1.FindingKind_FINDING_KIND_UNSPECIFIED
}

func checkToProto(r allocator.CheckReport) *ipledgerv1.CheckReport {
	out := &ipledgerv1.CheckReport{Ok: r.OK, NodesChecked: uint32(r.NodesChecked), EnisChecked: uint32(r.ENIsChecked),
		AddressesChecked: uint32(r.AddressesChecked), CheckedAt: timestamppb.New(r.CheckedAt)}
	for _, f := range r.Findings {
		out.Findings = append(out.Findings, &ipledgerv1.Finding{Kind: FindingKindToProto(f.Kind), SubnetId: f.Subnet, NodeName: f.Node,
			EniId: f.ENI, Address: f.Address, Detail: f.Detail})
	}
	return out
}
