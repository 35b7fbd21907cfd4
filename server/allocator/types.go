package allocator

import (
	"net/netip"
	"time"

	"github.com/ipledger/ipledger/server/allocator/diff"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ledger"
)

// The allocator's own types. The gRPC services (package api) convert between them and the wire.

// Registration is what a node's agent says about its node when it registers.
type Registration struct {
	NodeName         string
	InstanceID       string
	InstanceType     string
	AvailabilityZone string
	SubnetID         string
	PrimaryENI       string
	PrimaryIP        netip.Addr
	Labels           map[string]string
	AgentVersion     string
}

// Pool is a node's pool as its agent receives it: the node's record (ENIs, leases and their
// states, mode, draining) at a generation, the targets the allocator keeps and the CIDRs of the
// subnets of its ENIs (the agent configures the ENIs' route tables with them).
type Pool struct {
	Node        ledger.NodeRecord
	Generation  uint64
	Targets     policy.Targets
	SubnetCIDRs map[string]netip.Prefix
}

// PodAddress is one address a pod uses, as the agent reports it.
type PodAddress struct {
	IP           netip.Addr
	ContainerID  string
	Ifname       string
	PodNamespace string
	PodName      string
	PodUID       string
	AssignedAt   time.Time
}

// Usage is an agent's report of its node.
type Usage struct {
	PoolGeneration uint64
	InUse          []PodAddress
	Free           int
	Cooling        int
	PodsWaiting    int
	// AddsTotal counts the pod starts the agent served since it started (monotonic).
	AddsTotal uint64
}

// ReleaseAck is an agent's answer to a release proposal: the items it confirmed (it will not
// hand them out) and those it refused.
type ReleaseAck struct {
	ProposalID string
	Confirmed  []string
	Refused    []string
}

// SyncMessage is one message for a node's agent: its newest pool, a release proposal, or the
// addresses of a usage report the allocator refused, or the uids of pods the Kubernetes API
// deleted whose addresses the agent still holds.
type SyncMessage struct {
	Pool      *Pool
	Proposal  *ledger.ReleaseProposal
	Refusal   *UsageRefusal
	StalePods []string
}

// Empty says the message carries nothing (the subscription was closed).
func (m SyncMessage) Empty() bool {
	return m.Pool == nil && m.Proposal == nil && m.Refusal == nil && m.StalePods == nil
}

// UsageRefusal names the addresses of a usage report that are another node's, and why.
type UsageRefusal struct {
	Addresses []netip.Addr
	Reason    string
}

// CheckReport lists every inconsistency Check found.
type CheckReport struct {
	OK               bool
	Findings         []diff.Finding
	NodesChecked     int
	ENIsChecked      int
	AddressesChecked int
	CheckedAt        time.Time
}
