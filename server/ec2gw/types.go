package ec2gw

import (
	"net/netip"
	"time"
)

// Instance is an EC2 instance as DescribeInstances reports it.
type Instance struct {
	ID, Type, AvailabilityZone, SubnetID, VPCID, State, PrivateDNSName string
	PrivateIP                                                          netip.Addr
	ENIs                                                               []ENI // ordered by network card, then device index
	Tags                                                               map[string]string
	// LaunchTime is when the instance was last launched (EC2's launchTime; the identity
	// document's pendingTime of its current run).
	LaunchTime time.Time
	// OwnerID is the account of the instance's reservation.
	OwnerID string
}

// Attachment is an ENI's attachment to an instance.
type Attachment struct {
	ID, InstanceID, Status        string
	DeviceIndex, NetworkCardIndex int
	DeleteOnTermination           bool
}

// ENI is a network interface.
type ENI struct {
	ID, SubnetID, VPCID, AvailabilityZone, MAC, Description, Status string
	PrimaryIP                                                       netip.Addr
	SecondaryIPs                                                    []netip.Addr
	Prefixes                                                        []netip.Prefix
	Tags                                                            map[string]string
	Attachment                                                      *Attachment // nil when detached
	// SecurityGroupIDs are the ENI's security groups (new ENIs of a node copy its primary's).
	SecurityGroupIDs []string
}

// Subnet is a VPC subnet.
type Subnet struct {
	ID, VPCID, AvailabilityZone, AvailabilityZoneID string
	CIDR                                            netip.Prefix
	AvailableIPs                                    int
	Tags                                            map[string]string
}

// InstanceType holds the network limits of an instance type.
type InstanceType struct {
	Name, Hypervisor                  string
	MaxENIs, IPv4PerENI, NetworkCards int
	BareMetal                         bool
}

// InstanceFilter selects instances for DescribeInstancesFiltered; its fields are filters,
// combined with AND (at least one must be set).
type InstanceFilter struct {
	States  []string          // instance-state-name, any of
	Tags    map[string]string // tag:K = V
	TagKeys []string          // tag-key, any of
}

// ENIFilter selects ENIs for DescribeNetworkInterfaces. With IDs EC2 answers for exactly those
// (NotFound if one is missing); the other fields are filters, combined with AND.
type ENIFilter struct {
	IDs                                 []string
	SubnetID, VPCID, InstanceID, Status string
	Tags                                map[string]string // tag:K = V
	TagKeys                             []string          // tag-key, any of
}

// CreateENIInput describes an ENI to create.
type CreateENIInput struct {
	SubnetID         string
	SecurityGroupIDs []string
	Description      string
	PrimaryIP        netip.Addr // optional; EC2 picks one when unset
	SecondaryIPs     []netip.Addr
	Prefixes         []netip.Prefix // /28s; not together with SecondaryIPs
	Tags             map[string]string
	// ClientToken is required: callers persist it before the call so that a retry after a
	// failover cannot create a second ENI.
	ClientToken string
}

// LimiterState is a snapshot of the limiter, for the dashboard and admin API.
type LimiterState struct {
	Buckets         []BucketState
	Queue           map[Priority]int // waiters by priority, over all buckets
	RecentThrottles []ThrottleEvent  // newest last
	Calls           []CallCount
	ThrottledTotal  uint64
}

// BucketState is one bucket of the limiter. Rates are in tokens per second of the gateway's clock
// (a simulated second under a scaled clock); EffectiveRefillPerSecond is the pace the limiter
// refills at now, after backoff and its safety margin.
type BucketState struct {
	Name                                              string
	Capacity                                          int
	RefillPerSecond, EffectiveRefillPerSecond, Tokens float64
	Actions                                           []string
}

// ThrottleEvent is one RequestLimitExceeded answer.
type ThrottleEvent struct {
	Time   time.Time
	Action string
}

// CallCount counts EC2 calls of one action with one outcome ("ok", "throttled", the EC2 error
// code, "transport" or "canceled").
type CallCount struct {
	Action, Outcome string
	Count           uint64
}
