// Package rpcerr builds and reads the gRPC statuses of the ipledger API: a status whose details
// carry google.rpc.ErrorInfo with domain "ipledger.io" and a Reason name (common.proto). It is
// shared by the agent's CNI service (which answers with them) and its server connection (which
// reads the server's). It holds no state and does no I/O.
package rpcerr

import (
	"errors"
	"maps"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Domain is the ErrorInfo domain of every ipledger error.
const Domain = "ipledger.io"

// New returns a status error with code, message and an ErrorInfo naming reason.
func New(code codes.Code, reason ipledgerv1.Reason, msg string, meta map[string]string) error {
	st := status.New(code, msg)
	info := &errdetails.ErrorInfo{Domain: Domain, Reason: reason.String(), Metadata: maps.Clone(meta)}
	if withInfo, err := st.WithDetails(info); err == nil {
		st = withInfo
	}
	return st.Err()
}

// Info returns the ipledger Reason and metadata an error carries. REASON_UNSPECIFIED when the
// error is not a status with an ipledger ErrorInfo (or names a reason this build does not know).
func Info(err error) (ipledgerv1.Reason, map[string]string) {
	st, ok := status.FromError(err)
	if !ok || st == nil {
		return ipledgerv1.Reason_REASON_UNSPECIFIED, nil
	}
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != Domain {
			continue
		}
		return ipledgerv1.Reason(ipledgerv1.Reason_value[info.GetReason()]), info.GetMetadata()
	}
	return ipledgerv1.Reason_REASON_UNSPECIFIED, nil
}

// Code returns the gRPC code of err (codes.Unknown for a non-status error, OK for nil).
func Code(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Code()
	}
	return status.Code(err)
}

// CodeFor is the gRPC code the agent uses for a reason it reports to the CNI plugin:
// RESOURCE_EXHAUSTED for capacity, UNAVAILABLE for reachability and throttling,
// DEADLINE_EXCEEDED for a supply timeout, INVALID_ARGUMENT for bad input.
func CodeFor(r ipledgerv1.Reason) codes.Code {
	switch r {
	case ipledgerv1.Reason_SUBNET_EXHAUSTED, ipledgerv1.Reason_BUDGET_EXHAUSTED,
		ipledgerv1.Reason_NO_FREE_PREFIX_BLOCK, ipledgerv1.Reason_NODE_AT_LIMIT,
		ipledgerv1.Reason_NODE_DRAINING:
		return codes.ResourceExhausted
	case ipledgerv1.Reason_SERVER_UNREACHABLE, ipledgerv1.Reason_EC2_THROTTLED,
		ipledgerv1.Reason_EC2_ERROR, ipledgerv1.Reason_STORE_UNAVAILABLE,
		ipledgerv1.Reason_NOT_LEADER, ipledgerv1.Reason_RATE_LIMITED:
		return codes.Unavailable
	case ipledgerv1.Reason_SUPPLY_TIMEOUT:
		return codes.DeadlineExceeded
	case ipledgerv1.Reason_INVALID_ARGUMENT:
		return codes.InvalidArgument
	case ipledgerv1.Reason_UNKNOWN_NODE:
		return codes.NotFound
	case ipledgerv1.Reason_INSTANCE_ALREADY_REGISTERED:
		return codes.AlreadyExists
	case ipledgerv1.Reason_WRONG_NODE_IDENTITY, ipledgerv1.Reason_ADMIN_REQUIRED:
		return codes.PermissionDenied
	case ipledgerv1.Reason_INSTANCE_MISMATCH:
		return codes.FailedPrecondition
	default:
		return codes.Unknown
	}
}
