package allocator

import (
	"errors"
	"fmt"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Errors the allocator returns. Package api maps each to a gRPC status and a Reason in one table.
var (
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

func invalid(field, format string, args ...any) error {
	return &InvalidArgumentError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// reasonOf is the Reason an error reports to agents (for supply problems).
func reasonOf(err error) ipledgerv1.Reason {
	switch {
	case err == nil:
		return ipledgerv1.Reason_REASON_UNSPECIFIED
	case errors.Is(err, ErrSubnetExhausted):
		return ipledgerv1.Reason_SUBNET_EXHAUSTED
	case errors.Is(err, ErrBudgetExhausted):
		return ipledgerv1.Reason_BUDGET_EXHAUSTED
	case errors.Is(err, ErrNoFreePrefixBlock):
		return ipledgerv1.Reason_NO_FREE_PREFIX_BLOCK
	case errors.Is(err, ErrNodeAtLimit):
		return ipledgerv1.Reason_NODE_AT_LIMIT
	case errors.Is(err, ErrThrottled):
		return ipledgerv1.Reason_EC2_THROTTLED
	case errors.Is(err, ErrDraining):
		return ipledgerv1.Reason_NODE_DRAINING
	case errors.Is(err, ErrStoreUnavailable):
		return ipledgerv1.Reason_STORE_UNAVAILABLE
	case errors.Is(err, ErrUnknownNode):
		return ipledgerv1.Reason_UNKNOWN_NODE
	default:
		return ipledgerv1.Reason_EC2_ERROR
	}
}

// definitive reports whether a supply problem will not go away by waiting a few seconds, so a
// pod waiting for an address should be told at once.
func definitive(r ipledgerv1.Reason) bool {
	switch r {
	case ipledgerv1.Reason_SUBNET_EXHAUSTED, ipledgerv1.Reason_BUDGET_EXHAUSTED, ipledgerv1.Reason_NO_FREE_PREFIX_BLOCK,
		ipledgerv1.Reason_NODE_AT_LIMIT, ipledgerv1.Reason_NODE_DRAINING:
		return true
	}
	return false
}
