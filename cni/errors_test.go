package cni

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func withInfo(code codes.Code, reason string, md map[string]string) error {
	st, err := status.New(code, "agent says "+reason).WithDetails(&errdetails.ErrorInfo{Domain: ErrorDomain, Reason: reason, Metadata: md})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func TestAgentCallError(t *testing.T) {
	const sock = "/run/ipledger/agent.sock"
	tests := []struct {
		name string
		err  error
		code uint
		msg  []string
	}{
		{"subnet exhausted", withInfo(codes.ResourceExhausted, "SUBNET_EXHAUSTED", nil), types.ErrTryAgainLater, []string{"no IP address for ns/pod", "subnet exhausted", "SUBNET_EXHAUSTED"}},
		{"budget", withInfo(codes.ResourceExhausted, "BUDGET_EXHAUSTED", nil), types.ErrTryAgainLater, []string{"budget"}},
		{"prefix block", withInfo(codes.ResourceExhausted, "NO_FREE_PREFIX_BLOCK", nil), types.ErrTryAgainLater, []string{"/28"}},
		{"node limit", withInfo(codes.ResourceExhausted, "NODE_AT_LIMIT", nil), types.ErrTryAgainLater, []string{"instance type"}},
		{"throttled", withInfo(codes.Unavailable, "EC2_THROTTLED", nil), types.ErrTryAgainLater, []string{"throttling"}},
		{"ec2 error", withInfo(codes.Unavailable, "EC2_ERROR", nil), types.ErrTryAgainLater, []string{"EC2 failed"}},
		{"server unreachable", withInfo(codes.Unavailable, "SERVER_UNREACHABLE", nil), types.ErrTryAgainLater, []string{"cannot reach the ipledger server"}},
		{"supply timeout", withInfo(codes.DeadlineExceeded, "SUPPLY_TIMEOUT", nil), types.ErrTryAgainLater, []string{"before the deadline"}},
		{"store", withInfo(codes.Unavailable, "STORE_UNAVAILABLE", nil), types.ErrTryAgainLater, []string{"etcd"}},
		{"future reason", withInfo(codes.Unavailable, "SOMETHING_NEW", nil), types.ErrTryAgainLater, []string{"something new"}},
		{"invalid env field", withInfo(codes.InvalidArgument, "INVALID_ARGUMENT", map[string]string{"field": "container_id"}), types.ErrInvalidEnvironmentVariables, []string{"invalid container_id"}},
		{"invalid other field", withInfo(codes.InvalidArgument, "INVALID_ARGUMENT", map[string]string{"field": "wait"}), types.ErrInvalidNetworkConfig, []string{"invalid wait"}},
		{"transport unavailable", status.Error(codes.Unavailable, "connection refused"), types.ErrTryAgainLater, []string{"agent unreachable at " + sock, "connection refused"}},
		{"local deadline", status.Error(codes.DeadlineExceeded, "context deadline exceeded"), types.ErrTryAgainLater, []string{"did not answer add for ns/pod in time"}},
		{"plain deadline", context.DeadlineExceeded, types.ErrTryAgainLater, []string{"did not answer"}},
		{"unimplemented", status.Error(codes.Unimplemented, "no GC"), types.ErrPluginNotAvailable, []string{"version skew"}},
		{"internal", status.Error(codes.Internal, "boom"), types.ErrInternal, []string{"boom"}},
		{"cni error passes", types.NewError(7, "already a CNI error", ""), 7, []string{"already a CNI error"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := agentCallError("add", sock, "ns/pod", tt.err)
			if e.Code != tt.code {
				t.Errorf("code = %d (%q), want %d", e.Code, e.Msg, tt.code)
			}
			for _, m := range tt.msg {
				if !strings.Contains(e.Error(), m) {
					t.Errorf("message %q lacks %q", e.Error(), m)
				}
			}
		})
	}
	if !agentAnswered(withInfo(codes.ResourceExhausted, "SUBNET_EXHAUSTED", nil)) || agentAnswered(status.Error(codes.Unavailable, "x")) ||
		agentAnswered(errors.New("x")) {
		t.Error("agentAnswered must be true exactly for errors with ipledger's ErrorInfo")
	}
	// Every reason that means "no address yet" has words for humans.
	for _, r := range []ipledgerv1.Reason{ipledgerv1.Reason_SUBNET_EXHAUSTED, ipledgerv1.Reason_BUDGET_EXHAUSTED,
		ipledgerv1.Reason_NO_FREE_PREFIX_BLOCK, ipledgerv1.Reason_NODE_AT_LIMIT, ipledgerv1.Reason_EC2_THROTTLED,
		ipledgerv1.Reason_EC2_ERROR, ipledgerv1.Reason_SERVER_UNREACHABLE, ipledgerv1.Reason_SUPPLY_TIMEOUT,
		ipledgerv1.Reason_STORE_UNAVAILABLE} {
		if reasonText[r] == "" {
			t.Errorf("no text for %s", r)
		}
	}
}
