// Package api serves the allocator's gRPC services (NodeService, AdminService) and owns the one
// table that maps the allocator's errors to gRPC statuses with a google.rpc.ErrorInfo reason.
// It validates requests and translates between the wire and the allocator; it never changes
// state except through the allocator, and never answers a change on a replica that does not lead.
package api

import (
	"context"
	"errors"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Domain of every ErrorInfo ipledger returns.
const Domain = "ipledger.io"

// errorTable maps allocator errors to a gRPC code and a Reason, first match wins.
var errorTable = []struct {
	err    error
	code   codes.Code
	reason ipledgerv1.Reason
}{
	{allocator.ErrInvalidArgument, codes.InvalidArgument, ipledgerv1.Reason_INVALID_ARGUMENT},
	{allocator.ErrInvalidPolicy, codes.InvalidArgument, ipledgerv1.Reason_INVALID_ARGUMENT},
	{allocator.ErrNoPodSubnet, codes.FailedPrecondition, ipledgerv1.Reason_NO_POD_SUBNET},
	{allocator.ErrNotLeader, codes.Unavailable, ipledgerv1.Reason_NOT_LEADER},
	{allocator.ErrUnknownNode, codes.NotFound, ipledgerv1.Reason_UNKNOWN_NODE},
	{allocator.ErrInstanceMismatch, codes.FailedPrecondition, ipledgerv1.Reason_INSTANCE_MISMATCH},
	{allocator.ErrInstanceRegistered, codes.AlreadyExists, ipledgerv1.Reason_INSTANCE_ALREADY_REGISTERED},
	{allocator.ErrNodeNameTaken, codes.AlreadyExists, ipledgerv1.Reason_INSTANCE_ALREADY_REGISTERED},
	{allocator.ErrSupplyTimeout, codes.DeadlineExceeded, ipledgerv1.Reason_SUPPLY_TIMEOUT},
	{allocator.ErrSubnetExhausted, codes.ResourceExhausted, ipledgerv1.Reason_SUBNET_EXHAUSTED},
	{allocator.ErrBudgetExhausted, codes.ResourceExhausted, ipledgerv1.Reason_BUDGET_EXHAUSTED},
	{allocator.ErrNoFreePrefixBlock, codes.ResourceExhausted, ipledgerv1.Reason_NO_FREE_PREFIX_BLOCK},
	{allocator.ErrNodeAtLimit, codes.ResourceExhausted, ipledgerv1.Reason_NODE_AT_LIMIT},
	{allocator.ErrDraining, codes.FailedPrecondition, ipledgerv1.Reason_NODE_DRAINING},
	{allocator.ErrThrottled, codes.Unavailable, ipledgerv1.Reason_EC2_THROTTLED},
	{allocator.ErrEC2, codes.Unavailable, ipledgerv1.Reason_EC2_ERROR},
	{allocator.ErrStoreUnavailable, codes.Unavailable, ipledgerv1.Reason_STORE_UNAVAILABLE},
	{allocator.ErrNotFound, codes.NotFound, ipledgerv1.Reason_REASON_UNSPECIFIED},
}

// Status converts an error into a gRPC status error carrying an ErrorInfo. A supply timeout
// whose cause is known reports that cause as its reason (e.g. EC2_THROTTLED).
func Status(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	for i, row := range errorTable {
		if !errors.Is(err, row.err) {
			continue
		}
		reason := row.reason
		if row.err == allocator.ErrSupplyTimeout {
			// The rows after the timeout's are its possible causes.
			for _, cause := range errorTable[i+1:] {
				if errors.Is(err, cause.err) {
					reason = cause.reason
					break
				}
			}
		}
		md := map[string]string{}
		var ia *allocator.InvalidArgumentError
		if errors.As(err, &ia) {
			md["field"] = ia.Field
		}
		if errors.Is(err, allocator.ErrInvalidPolicy) {
			md["field"] = "policy"
			var fe *policy.FieldError
			if errors.As(err, &fe) {
				md["field"] = "policy." + fe.Field
			}
		}
		var ps *allocator.PodSubnetError
		if errors.As(err, &ps) && ps.Field != "" {
			md["field"] = "policy." + ps.Field
		}
		return withInfo(row.code, err.Error(), reason, md)
	}
	return status.Error(codes.Internal, err.Error())
}

func withInfo(code codes.Code, msg string, reason ipledgerv1.Reason, md map[string]string) error {
	st := status.New(code, msg)
	if reason == ipledgerv1.Reason_REASON_UNSPECIFIED {
		return st.Err()
	}
	if len(md) == 0 {
		md = nil
	}
	withDetails, err := st.WithDetails(&errdetails.ErrorInfo{Reason: reason.String(), Domain: Domain, Metadata: md})
	if err != nil {
		return st.Err()
	}
	return withDetails.Err()
}

// NotLeader is the answer of a replica that does not lead.
func NotLeader(leader string) error {
	msg := "this replica is not the leader"
	md := map[string]string{}
	if leader != "" {
		msg += "; the leader is at " + leader
		md["leader"] = leader
	} else {
		msg += " and no leader is known right now"
	}
	return withInfo(codes.Unavailable, msg, ipledgerv1.Reason_NOT_LEADER, md)
}

// invalidArg is a request validation failure naming the field.
func invalidArg(field, msg string) error {
	return withInfo(codes.InvalidArgument, "invalid "+field+": "+msg, ipledgerv1.Reason_INVALID_ARGUMENT, map[string]string{"field": field})
}

// ReasonOf extracts the Reason of a status error ("" when it has none).
func ReasonOf(err error) (reason string, metadata map[string]string) {
	st, ok := status.FromError(err)
	if !ok {
		return "", nil
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == Domain {
			return info.GetReason(), info.GetMetadata()
		}
	}
	return "", nil
}
