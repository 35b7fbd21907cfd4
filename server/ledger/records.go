package ledger

import (
	"fmt"
	"net/netip"
	"time"
)

// The record types below are the durable state of the cluster: the leader commits them to etcd
// (package store serialises them as JSON under /ipledger/<cluster>/...), standbys load them from
// etcd, and the ledger is rebuilt from them. Everything else the ledger holds (pending
// reservations, agents' usage reports, addresses cooling down after release) is volatile.
//
// JSON field names are part of the on-disk format: add fields, never rename them.

// AddressMode says how a node receives pod addresses.
type AddressMode string

const (
	// ModeSecondaryIP leases individual secondary addresses.
	ModeSecondaryIP AddressMode = "secondary-ip"
	// ModePrefix leases aligned /28 prefixes.
	ModePrefix AddressMode = "prefix"
)

// LeaseState is where a leased address or prefix stands in the release handshake.
type LeaseState string

const (
	// LeaseActive: assigned on EC2 and committed; the agent may hand it out.
	LeaseActive LeaseState = "active"
	// LeaseReleaseProposed: the leader asked the agent to give it back.
	LeaseReleaseProposed LeaseState = "release-proposed"
	// LeaseReleasing: the agent confirmed it is not handed out; the leader is unassigning it.
	LeaseReleasing LeaseState = "releasing"
)

// LeasedAddress is one secondary address leased to a node.
type LeasedAddress struct {
	IP    netip.Addr `json:"ip"`
	State LeaseState `json:"state"`
}

// LeasedPrefix is one /28 prefix leased to a node.
type LeasedPrefix struct {
	Prefix netip.Prefix `json:"prefix"`
	State  LeaseState   `json:"state"`
}

// ENIRecord is one ENI attached to a node.
type ENIRecord struct {
	ID               string     `json:"id"`
	MAC              string     `json:"mac"`
	SubnetID         string     `json:"subnet_id"`
	PrimaryIP        netip.Addr `json:"primary_ip"`
	DeviceIndex      int        `json:"device_index"`
	NetworkCardIndex int        `json:"network_card_index"`
	AttachmentID     string     `json:"attachment_id,omitempty"`
	// Managed is true for ENIs ipledger created (and may delete); false for the instance's
	// primary ENI.
	Managed bool `json:"managed"`
	// DeleteOnTermination has been set on the attachment.
	DeleteOnTermination bool            `json:"delete_on_termination"`
	Addresses           []LeasedAddress `json:"addresses,omitempty"`
	Prefixes            []LeasedPrefix  `json:"prefixes,omitempty"`
}

// ReleaseProposal is a release handshake in flight for a node.
type ReleaseProposal struct {
	ID         string    `json:"id"`
	ProposedAt time.Time `json:"proposed_at"`
	// Items are addresses ("192.168.3.7") or prefixes ("192.168.3.16/28").
	Items []string `json:"items"`
}

// NodeRecord is a registered node and everything it leases.
type NodeRecord struct {
	Name             string     `json:"name"`
	InstanceID       string     `json:"instance_id"`
	InstanceType     string     `json:"instance_type"`
	AvailabilityZone string     `json:"availability_zone"`
	SubnetID         string     `json:"subnet_id"`
	PrimaryENI       string     `json:"primary_eni"`
	PrimaryIP        netip.Addr `json:"primary_ip"`
	// Labels are what the node's agent reports: shown, never trusted (a node must not choose
	// its own policy).
	Labels map[string]string `json:"labels,omitempty"`
	// Tags are the instance's EC2 tags as DescribeInstances gave them at registration: facts the
	// server verified, which policies match on (MatchLabels).
	Tags map[string]string `json:"tags,omitempty"`
	// Policy is the name of the node group policy that applies.
	Policy       string           `json:"policy"`
	Mode         AddressMode      `json:"mode"`
	Draining     bool             `json:"draining,omitempty"`
	RegisteredAt time.Time        `json:"registered_at"`
	ENIs         []ENIRecord      `json:"enis"`
	Proposal     *ReleaseProposal `json:"proposal,omitempty"`
}

// AddrRange is an inclusive range of addresses.
type AddrRange struct {
	First netip.Addr `json:"first"`
	Last  netip.Addr `json:"last"`
}

// SubnetRecord is a subnet the cluster uses.
type SubnetRecord struct {
	ID                 string            `json:"id"`
	CIDR               netip.Prefix      `json:"cidr"`
	AvailabilityZone   string            `json:"availability_zone"`
	AvailabilityZoneID string            `json:"availability_zone_id,omitempty"`
	VPCID              string            `json:"vpc_id"`
	Tags               map[string]string `json:"tags,omitempty"`
	// MaxHeld caps what the cluster may hold in the subnet (0: no cap).
	MaxHeld int `json:"max_held,omitempty"`
	// KeepFree is how many addresses the cluster leaves free for others.
	KeepFree int `json:"keep_free,omitempty"`
	// Foreign are the addresses used by ENIs ipledger does not manage, as of ForeignScannedAt.
	Foreign          []AddrRange `json:"foreign,omitempty"`
	ForeignScannedAt time.Time   `json:"foreign_scanned_at,omitempty"`
}

// Pre-warm reservation and ENI states.
const (
	PrewarmPending   = "pending"
	PrewarmReady     = "ready"
	PrewarmExpired   = "expired"
	PrewarmCancelled = "cancelled"
	PrewarmConsumed  = "consumed"

	PrewarmENICreating = "creating"
	PrewarmENIReady    = "ready"
	PrewarmENIAttached = "attached"
	PrewarmENIDeleting = "deleting"
)

// PrewarmENI is an ENI pre-created for a reservation.
type PrewarmENI struct {
	ID    string `json:"id,omitempty"`
	State string `json:"state"`
	// ClientToken makes the create idempotent across retries and failover.
	ClientToken string       `json:"client_token"`
	MAC         string       `json:"mac,omitempty"`
	PrimaryIP   netip.Addr   `json:"primary_ip,omitzero"`
	Addresses   []netip.Addr `json:"addresses,omitempty"`
	// NodeName is set once the ENI is attached to a node.
	NodeName string `json:"node_name,omitempty"`
}

// PrewarmRecord is an autoscaler's reservation for nodes that do not exist yet.
type PrewarmRecord struct {
	ID               string       `json:"id"`
	SubnetID         string       `json:"subnet_id"`
	AvailabilityZone string       `json:"availability_zone"`
	InstanceType     string       `json:"instance_type"`
	NodeCount        int          `json:"node_count"`
	AddressesPerNode int          `json:"addresses_per_node"`
	CreatedAt        time.Time    `json:"created_at"`
	ExpiresAt        time.Time    `json:"expires_at"`
	State            string       `json:"state"`
	ENIs             []PrewarmENI `json:"enis"`
}

// Validate checks the fields a NodeRecord must have.
func (n *NodeRecord) Validate() error {
	switch {
	case n.Name == "":
		return fmt.Errorf("ledger: node record without name")
	case n.InstanceID == "":
		return fmt.Errorf("ledger: node %s: no instance id", n.Name)
	case n.SubnetID == "":
		return fmt.Errorf("ledger: node %s: no subnet", n.Name)
	case n.Mode != ModeSecondaryIP && n.Mode != ModePrefix:
		return fmt.Errorf("ledger: node %s: unknown mode %q", n.Name, n.Mode)
	}
	for _, e := range n.ENIs {
		if e.ID == "" || !e.PrimaryIP.IsValid() || e.SubnetID == "" {
			return fmt.Errorf("ledger: node %s: ENI record without id, primary address or subnet", n.Name)
		}
	}
	return nil
}

// MatchLabels are the labels a node group policy's selector matches: the instance's EC2 tags,
// which the server read from EC2 itself, never what the agent reports.
func (r NodeRecord) MatchLabels() map[string]string { return r.Tags }
