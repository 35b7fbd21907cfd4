package cni

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of ipledger's errors.
const ErrorDomain = "ipledger.io"

// reasonText says in words why the agent had no address, for kubelet events.
var reasonText = map[ipledgerv1.Reason]string{
	ipledgerv1.Reason_SUBNET_EXHAUSTED:     "the subnet has no free address (subnet exhausted)",
	ipledgerv1.Reason_BUDGET_EXHAUSTED:     "the subnet's address budget set by the admin is used up",
	ipledgerv1.Reason_NO_FREE_PREFIX_BLOCK: "the subnet has no free aligned /28 prefix block",
	ipledgerv1.Reason_NODE_AT_LIMIT:        "the node holds the most addresses its instance type allows",
	ipledgerv1.Reason_EC2_THROTTLED:        "EC2 is throttling the account, so no address could be assigned in time",
	ipledgerv1.Reason_EC2_ERROR:            "EC2 failed to assign an address",
	ipledgerv1.Reason_SERVER_UNREACHABLE:   "the node's agent cannot reach the ipledger server and its pool is empty",
	ipledgerv1.Reason_SUPPLY_TIMEOUT:       "no address arrived from EC2 before the deadline",
	ipledgerv1.Reason_STORE_UNAVAILABLE:    "the ipledger server's store (etcd) is unavailable",
	ipledgerv1.Reason_NODE_DRAINING:        "the node is being drained and gets no new addresses",
	ipledgerv1.Reason_UNKNOWN_NODE:         "the node is not registered with the ipledger server (yet)",
	ipledgerv1.Reason_NOT_LEADER:           "the ipledger server is changing leaders",
	ipledgerv1.Reason_INSTANCE_MISMATCH:    "EC2 does not confirm the node's instance",
	ipledgerv1.Reason_RATE_LIMITED:         "the ipledger server is rate-limiting this node's agent",
	ipledgerv1.Reason_WRONG_NODE_IDENTITY:  "the node's agent holds a certificate that does not name this node",
}

// errorInfo returns the status's ipledger ErrorInfo, or nil.
func errorInfo(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info
		}
	}
	return nil
}

// agentAnswered reports whether err is an answer of the agent (carries our ErrorInfo) rather
// than a failure to reach it.
func agentAnswered(err error) bool {
	st, ok := status.FromError(err)
	return ok && errorInfo(st) != nil
}

// agentCallError turns a failed CNIService call into a CNI error a human can act on: no address
// in time -> 11 "try again later" saying why; the agent unreachable -> 11; bad input -> 4 or 7.
// op names the call ("add", "del", ...) and who the pod it was for.
func agentCallError(op, socket, who string, err error) *types.Error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) {
			return types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("ipledger: agent at %s did not answer %s for %s in time", socket, op, who), err.Error())
		}
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ipledger: agent unreachable at %s: %v", socket, err), "")
	}
	info := errorInfo(st)
	if info == nil {
		// The status comes from gRPC itself, not from the agent.
		switch st.Code() {
		case codes.Unavailable:
			return types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("ipledger: agent unreachable at %s: %s", socket, st.Message()), "")
		case codes.DeadlineExceeded, codes.Canceled:
			return types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("ipledger: agent at %s did not answer %s for %s in time", socket, op, who), st.Message())
		case codes.InvalidArgument:
			return types.NewError(types.ErrInvalidNetworkConfig,
				fmt.Sprintf("ipledger: agent refused %s for %s: %s", op, who, st.Message()), "")
		case codes.Unimplemented:
			return types.NewError(types.ErrPluginNotAvailable,
				fmt.Sprintf("ipledger: agent at %s does not serve %s (version skew between plugin and agent?)", socket, op), st.Message())
		}
		return types.NewError(types.ErrInternal,
			fmt.Sprintf("ipledger: agent %s for %s failed: %s: %s", op, who, st.Code(), st.Message()), "")
	}
	reason := ipledgerv1.Reason(ipledgerv1.Reason_value[info.GetReason()])
	if reason == ipledgerv1.Reason_INVALID_ARGUMENT || st.Code() == codes.InvalidArgument {
		field := info.GetMetadata()["field"]
		code := types.ErrInvalidNetworkConfig
		if envField(field) {
			code = types.ErrInvalidEnvironmentVariables
		}
		msg := fmt.Sprintf("ipledger: agent refused %s for %s", op, who)
		if field != "" {
			msg += fmt.Sprintf(": invalid %s", field)
		}
		return types.NewError(code, msg, st.Message())
	}
	text, known := reasonText[reason]
	if !known {
		text = strings.ToLower(strings.ReplaceAll(info.GetReason(), "_", " "))
	}
	switch st.Code() {
	case codes.ResourceExhausted, codes.Unavailable, codes.DeadlineExceeded, codes.Aborted,
		codes.FailedPrecondition:
		what := "no IP address"
		if op != "add" {
			what = op + " failed"
		}
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("ipledger: %s for %s: %s (%s)", what, who, text, info.GetReason()), st.Message())
	}
	return types.NewError(types.ErrInternal,
		fmt.Sprintf("ipledger: agent %s for %s failed: %s (%s)", op, who, text, info.GetReason()), st.Message())
}

// envField reports whether an agent's field name comes from the CNI environment.
func envField(field string) bool {
	switch field {
	case "container_id", "ifname", "netns", "pod_namespace", "pod_name", "pod_uid":
		return true
	}
	return false
}
