package rpcerr

import (
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name       string
		err        error
		wantReason ipledgerv1.Reason
		wantCode   codes.Code
		wantMeta   string
	}{
		{"not leader", New(codes.Unavailable, ipledgerv1.Reason_NOT_LEADER, "go there", map[string]string{"leader": "127.0.0.1:7"}),
			ipledgerv1.Reason_NOT_LEADER, codes.Unavailable, "127.0.0.1:7"},
		{"wrapped", fmt.Errorf("ctx: %w", New(codes.ResourceExhausted, ipledgerv1.Reason_SUBNET_EXHAUSTED, "full", nil)),
			ipledgerv1.Reason_SUBNET_EXHAUSTED, codes.ResourceExhausted, ""},
		{"plain status", status.Error(codes.Unavailable, "connection refused"), ipledgerv1.Reason_REASON_UNSPECIFIED, codes.Unavailable, ""},
		{"not a status", fmt.Errorf("boom"), ipledgerv1.Reason_REASON_UNSPECIFIED, codes.Unknown, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, meta := Info(tc.err)
			if r != tc.wantReason || meta["leader"] != tc.wantMeta {
				t.Fatalf("Info = %v %v, want %v %q", r, meta, tc.wantReason, tc.wantMeta)
			}
			if c := Code(tc.err); c != tc.wantCode {
				t.Fatalf("Code = %v, want %v", c, tc.wantCode)
			}
		})
	}
}

func TestCodeFor(t *testing.T) {
	for r, want := range map[ipledgerv1.Reason]codes.Code{
		ipledgerv1.Reason_SUBNET_EXHAUSTED:   codes.ResourceExhausted,
		ipledgerv1.Reason_NODE_DRAINING:      codes.ResourceExhausted,
		ipledgerv1.Reason_SERVER_UNREACHABLE: codes.Unavailable,
		ipledgerv1.Reason_EC2_THROTTLED:      codes.Unavailable,
		ipledgerv1.Reason_SUPPLY_TIMEOUT:     codes.DeadlineExceeded,
		ipledgerv1.Reason_INVALID_ARGUMENT:   codes.InvalidArgument,
		// A rate-limited agent tells the plugin to try again later; an identity problem is final.
		ipledgerv1.Reason_RATE_LIMITED:        codes.Unavailable,
		ipledgerv1.Reason_WRONG_NODE_IDENTITY: codes.PermissionDenied,
	} {
		if got := CodeFor(r); got != want {
			t.Errorf("CodeFor(%v) = %v, want %v", r, got, want)
		}
	}
}
