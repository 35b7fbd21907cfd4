package ledger

import "errors"

// Sentinel errors. Every error the ledger returns wraps exactly one of them (test with
// errors.Is); the wrapping message names the subnet, node, address or owner concerned. Package
// api maps them to gRPC codes.
var (
	// ErrUnknownSubnet: the subnet id is not in the ledger (PutSubnet it first).
	ErrUnknownSubnet = errors.New("ledger: unknown subnet")
	// ErrUnknownNode: the node name is not in the ledger.
	ErrUnknownNode = errors.New("ledger: unknown node")
	// ErrUnknownPrewarm: the pre-warm reservation id is not in the ledger.
	ErrUnknownPrewarm = errors.New("ledger: unknown pre-warm reservation")
	// ErrSubnetExhausted: the subnet has fewer placeable addresses than asked for (free
	// addresses that are cooling down are not placeable).
	ErrSubnetExhausted = errors.New("ledger: subnet exhausted")
	// ErrBudgetExhausted: the subnet has the addresses, but the admin's budget (MaxHeld,
	// KeepFree) does not let the cluster take them.
	ErrBudgetExhausted = errors.New("ledger: subnet budget exhausted")
	// ErrNoFreePrefixBlock: enough addresses are free, but not enough whole aligned /28 blocks
	// (the subnet is fragmented).
	ErrNoFreePrefixBlock = errors.New("ledger: no free /28 block")
	// ErrConflict: an address, prefix, ENI or instance already has another owner.
	ErrConflict = errors.New("ledger: conflict")
	// ErrInUse: the subnet cannot be deleted or changed because something uses it.
	ErrInUse = errors.New("ledger: in use")
	// ErrInvalid: the input is malformed (bad CIDR, address outside its subnet, unaligned
	// prefix, unknown state, duplicate entries, ...).
	ErrInvalid = errors.New("ledger: invalid")
)
