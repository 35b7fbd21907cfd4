package store

import (
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Errors of the store. Every error the package returns wraps at most one of them, plus the
// underlying cause where there is one.
var (
	// ErrNotLeader: the leadership fence failed; this replica is not (or no longer) the leader
	// and the transaction wrote nothing.
	ErrNotLeader = errors.New("store: not leader")
	// ErrNoLeader: no replica currently holds the election.
	ErrNoLeader = errors.New("store: no leader")
	// ErrUnavailable: etcd could not be reached or has no quorum within the caller's deadline.
	// For Commit the outcome is unknown: the transaction may or may not have been applied.
	ErrUnavailable = errors.New("store: etcd unavailable")
	// ErrCompacted: the history a Watch needs has been compacted away; reload with Load.
	ErrCompacted = errors.New("store: revision compacted")
	// ErrReplaced: etcd is another incarnation than the one the store saw before (restored from
	// a snapshot, or replaced): its records may be older than what the caller holds. Reload
	// with Load; a leadership won before has ended.
	ErrReplaced = errors.New("store: etcd restored or replaced")
	// ErrInvalid: bad input (a name, a record, a configuration) or a value in etcd that cannot
	// be parsed. Nothing was written.
	ErrInvalid = errors.New("store: invalid")
)

// classify maps an error of the etcd client to the store's sentinels, keeping the cause.
func classify(what string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rpctypes.ErrRequestTooLarge), errors.Is(err, rpctypes.ErrTooManyOps),
		errors.Is(err, rpctypes.ErrDuplicateKey), errors.Is(err, rpctypes.ErrKeyNotFound):
		return fmt.Errorf("%s: %w: %w", what, ErrInvalid, err)
	case errors.Is(err, rpctypes.ErrCompacted):
		return fmt.Errorf("%s: %w: %w", what, ErrCompacted, err)
	default:
		// Unreachable, no quorum, the caller's deadline, a closed client, auth trouble: the
		// store cannot be used right now. The cause (e.g. context.DeadlineExceeded) stays
		// visible to errors.Is.
		return fmt.Errorf("%s: %w: %w", what, ErrUnavailable, err)
	}
}
