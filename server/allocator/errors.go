package allocator

import (
	"errors"
	"fmt"

	"github.com/ipledger/ipledger/server/allocator/policy"
)

// Errors the allocator returns. Package api maps each to a gRPC status and a Reason in one table
// (the allocator itself maps none).
var (
	// ErrInvalidPolicy wraps every policy validation error.
	ErrInvalidPolicy = policy.ErrInvalid
	// ErrUnknownNode: the node is not registered.
	ErrUnknownNode = errors.New("allocator: unknown node")
	// ErrInstanceMismatch: EC2 does not know the instance or its facts differ from the request.
	ErrInstanceMismatch = errors.New("allocator: instance does not match EC2")
	// ErrInstanceRegistered: another node name is registered for the instance.
	ErrInstanceRegistered = errors.New("allocator: instance already registered under another node name")
	// ErrNodeNameTaken: the node name is registered for another instance that is still running.
	ErrNodeNameTaken = errors.New("allocator: node name registered for another running instance")
	// ErrSubnetExhausted: no free address (or /28 block) in the subnet.
	ErrSubnetExhausted = errors.New("allocator: subnet exhausted")
	// ErrBudgetExhausted: the admin budget of the subnet allows no more.
	ErrBudgetExhausted = errors.New("allocator: subnet budget exhausted")
	// ErrNoFreePrefixBlock: single addresses are free but no aligned /28.
	ErrNoFreePrefixBlock = errors.New("allocator: no free /28 block")
	// ErrNodeAtLimit: the node holds what its instance type or policy allows.
	ErrNodeAtLimit = errors.New("allocator: node at its address limit")
	// ErrThrottled: EC2 is throttling, or the limiter queue is too long for the deadline.
	ErrThrottled = errors.New("allocator: EC2 throttled")
	// ErrEC2: EC2 failed for a reason that is not capacity.
	ErrEC2 = errors.New("allocator: EC2 error")
	// ErrDraining: the node is drained.
	ErrDraining = errors.New("allocator: node draining")
	// ErrStoreUnavailable: etcd cannot commit right now.
	ErrStoreUnavailable = errors.New("allocator: store unavailable")
	// ErrNotLeader: this replica lost leadership.
	ErrNotLeader = errors.New("allocator: not the leader")
	// ErrSupplyTimeout: the deadline passed while waiting for addresses.
	ErrSupplyTimeout = errors.New("allocator: timed out waiting for addresses")
	// ErrNotFound: a named object (subnet, policy, reservation) does not exist.
	ErrNotFound = errors.New("allocator: not found")
	// ErrNoPodSubnet is wrapped by *PodSubnetError: a policy's pod subnets are unusable (unknown
	// to EC2, of another VPC) or a node's policy gives its zone none.
	ErrNoPodSubnet = errors.New("allocator: no pod subnet")
	// ErrInvalidArgument is wrapped by *InvalidArgumentError.
	ErrInvalidArgument = errors.New("allocator: invalid argument")
)

// InvalidArgumentError names the request field that failed validation.
type InvalidArgumentError struct {
	Field string
	Msg   string
}

func (e *InvalidArgumentError) Error() string { return fmt.Sprintf("invalid %s: %s", e.Field, e.Msg) }

// Unwrap makes errors.Is(err, ErrInvalidArgument) true.
func (e *InvalidArgumentError) Unwrap() error { return ErrInvalidArgument }

// PodSubnetError says why a policy's pod subnets cannot be used, naming the policy field
// ("pod_subnets.subnet_ids[1]") when a policy is refused, or the node when a node is.
type PodSubnetError struct {
	Policy, Field, Node, Msg string
}

func (e *PodSubnetError) Error() string {
	switch {
	case e.Node != "":
		return fmt.Sprintf("%v: node %s, policy %q: %s", ErrNoPodSubnet, e.Node, e.Policy, e.Msg)
	case e.Field != "":
		return fmt.Sprintf("%v: policy %q: %s: %s", ErrNoPodSubnet, e.Policy, e.Field, e.Msg)
	}
	return fmt.Sprintf("%v: policy %q: %s", ErrNoPodSubnet, e.Policy, e.Msg)
}

// Unwrap makes errors.Is(err, ErrNoPodSubnet) true.
func (e *PodSubnetError) Unwrap() error { return ErrNoPodSubnet }

func invalid(field, format string, args ...any) error {
	return &InvalidArgumentError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// definitive reports whether a supply problem will not go away by waiting a few seconds, so a
// pod waiting for an address should be told at once.
func definitive(err error) bool {
	for _, e := range []error{ErrSubnetExhausted, ErrBudgetExhausted, ErrNoFreePrefixBlock, ErrNodeAtLimit, ErrDraining} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
