package allocator

import (
	"context"
	"net/netip"
	"time"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

// EC2 is what the allocator asks of EC2. In production it is the gateway (*ec2gw.Gateway), the
// one limiter every call passes; tests use an in-memory fake. Methods may be called from many
// goroutines at once, never with an allocator lock held. Errors are the gateway's classified
// sentinels (ec2gw.ErrThrottled, ec2gw.ErrAddressInUse, ...); an error that is none of them
// means the outcome is unknown (EC2 may or may not have done the work).
type EC2 interface {
	DescribeInstances(ctx context.Context, p ec2gw.Priority, ids []string) ([]ec2gw.Instance, error)
	DescribeInstancesFiltered(ctx context.Context, p ec2gw.Priority, f ec2gw.InstanceFilter) ([]ec2gw.Instance, error)
	DescribeInstanceTypes(ctx context.Context, p ec2gw.Priority, names []string) ([]ec2gw.InstanceType, error)
	DescribeSubnets(ctx context.Context, p ec2gw.Priority, ids []string, vpcID string) ([]ec2gw.Subnet, error)
	DescribeNetworkInterfaces(ctx context.Context, p ec2gw.Priority, f ec2gw.ENIFilter) ([]ec2gw.ENI, error)
	CreateENI(ctx context.Context, p ec2gw.Priority, in ec2gw.CreateENIInput) (ec2gw.ENI, error)
	AttachENI(ctx context.Context, p ec2gw.Priority, eniID, instanceID string, deviceIndex, networkCard int) (attachmentID string, err error)
	SetDeleteOnTermination(ctx context.Context, p ec2gw.Priority, eniID, attachmentID string, v bool) error
	DetachENI(ctx context.Context, p ec2gw.Priority, attachmentID string, force bool) error
	DeleteENI(ctx context.Context, p ec2gw.Priority, eniID string) error
	AssignAddresses(ctx context.Context, p ec2gw.Priority, eniID string, ips []netip.Addr) error
	AssignPrefixes(ctx context.Context, p ec2gw.Priority, eniID string, prefixes []netip.Prefix) error
	UnassignAddresses(ctx context.Context, p ec2gw.Priority, eniID string, ips []netip.Addr, prefixes []netip.Prefix) error
	// EstimateWait is how long a new call of action at priority p would take now (queue and
	// call); it does no I/O.
	EstimateWait(action string, p ec2gw.Priority) time.Duration
}

var _ EC2 = (*ec2gw.Gateway)(nil)

// Store commits the leader's changes durably (etcd in production, through a fenced
// transaction of the leadership). Commit writes all changes or none and returns the revision of
// the write. Its errors wrap ErrNotLeader when this replica no longer leads (nothing was
// written), or anything else when the store could not be reached (the write may or may not
// have happened). Done is closed when the leadership behind the store ends. Commit is called
// from many goroutines at once, never with an allocator lock held.
type Store interface {
	Commit(ctx context.Context, changes ...Change) (revision int64, err error)
	Done() <-chan struct{}
}

// ChangeKind is the kind of record a Change writes.
type ChangeKind int

// Record kinds.
const (
	ChangeNode ChangeKind = iota + 1
	ChangeSubnet
	ChangePolicy
	ChangePrewarm
)

func (k ChangeKind) String() string {
	switch k {
	case ChangeNode:
		return "node"
	case ChangeSubnet:
		return "subnet"
	case ChangePolicy:
		return "policy"
	case ChangePrewarm:
		return "prewarm"
	}
	return "unknown"
}

// Change is one record write of a commit: a put (the record set) or a delete (Delete, by Name).
type Change struct {
	Kind    ChangeKind
	Name    string // node name, subnet id, policy name, reservation id
	Delete  bool
	Node    *ledger.NodeRecord
	Subnet  *ledger.SubnetRecord
	Policy  *policy.Policy
	Prewarm *ledger.PrewarmRecord
}

// PutNode writes a node record.
func PutNode(rec ledger.NodeRecord) Change {
	return Change{Kind: ChangeNode, Name: rec.Name, Node: &rec}
}

// DeleteNode deletes a node record.
func DeleteNode(name string) Change { return Change{Kind: ChangeNode, Name: name, Delete: true} }

// PutSubnet writes a subnet record.
func PutSubnet(rec ledger.SubnetRecord) Change {
	return Change{Kind: ChangeSubnet, Name: rec.ID, Subnet: &rec}
}

// PutPolicy writes a policy.
func PutPolicy(p policy.Policy) Change {
	return Change{Kind: ChangePolicy, Name: p.Name, Policy: &p}
}

// DeletePolicy deletes a policy.
func DeletePolicy(name string) Change { return Change{Kind: ChangePolicy, Name: name, Delete: true} }

// PutPrewarm writes a pre-warm reservation.
func PutPrewarm(rec ledger.PrewarmRecord) Change {
	return Change{Kind: ChangePrewarm, Name: rec.ID, Prewarm: &rec}
}

// DeletePrewarm deletes a pre-warm reservation.
func DeletePrewarm(id string) Change { return Change{Kind: ChangePrewarm, Name: id, Delete: true} }
