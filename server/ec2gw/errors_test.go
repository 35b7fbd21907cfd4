package ec2gw

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// sdkError builds an error shaped like the SDK's for an EC2 error response.
func sdkError(op string, status int, code, msg string) error {
	return &smithy.OperationError{
		ServiceID:     "EC2",
		OperationName: op,
		Err: &awshttp.ResponseError{
			ResponseError: &smithyhttp.ResponseError{
				Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
				Err:      &smithy.GenericAPIError{Code: code, Message: msg},
			},
			RequestID: "req-1",
		},
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name        string
		err         error
		wantKind    error
		wantCode    string
		wantStatus  int
		wantOutcome string
	}{
		{"throttled 503", sdkError("AssignPrivateIpAddresses", 503, "RequestLimitExceeded", "Request limit exceeded."), ErrThrottled, "RequestLimitExceeded", 503, "throttled"},
		{"throttled 400", sdkError("AssignPrivateIpAddresses", 400, "RequestLimitExceeded", ""), ErrThrottled, "RequestLimitExceeded", 400, "throttled"},
		{"subnet full", sdkError("AssignPrivateIpAddresses", 400, "InsufficientFreeAddressesInSubnet", "x"), ErrSubnetFull, "InsufficientFreeAddressesInSubnet", 400, "InsufficientFreeAddressesInSubnet"},
		{"no cidr block", sdkError("AssignPrivateIpAddresses", 400, "InsufficientCidrBlocks", "x"), ErrNoCidrBlock, "InsufficientCidrBlocks", 400, "InsufficientCidrBlocks"},
		{"address in use", sdkError("AssignPrivateIpAddresses", 400, "InvalidIPAddress.InUse", "x"), ErrAddressInUse, "InvalidIPAddress.InUse", 400, "InvalidIPAddress.InUse"},
		{"eni address limit", sdkError("AssignPrivateIpAddresses", 400, "PrivateIpAddressLimitExceeded", "x"), ErrENIAddressLimit, "PrivateIpAddressLimitExceeded", 400, "PrivateIpAddressLimitExceeded"},
		{"attachment limit", sdkError("AttachNetworkInterface", 400, "AttachmentLimitExceeded", "x"), ErrAttachmentLimit, "AttachmentLimitExceeded", 400, "AttachmentLimitExceeded"},
		{"eni not found", sdkError("DeleteNetworkInterface", 400, "InvalidNetworkInterfaceID.NotFound", "x"), ErrNotFound, "InvalidNetworkInterfaceID.NotFound", 400, "InvalidNetworkInterfaceID.NotFound"},
		{"attachment not found", sdkError("DetachNetworkInterface", 400, "InvalidAttachmentID.NotFound", "x"), ErrNotFound, "InvalidAttachmentID.NotFound", 400, "InvalidAttachmentID.NotFound"},
		{"subnet not found", sdkError("DescribeSubnets", 400, "InvalidSubnetID.NotFound", "x"), ErrNotFound, "InvalidSubnetID.NotFound", 400, "InvalidSubnetID.NotFound"},
		{"eni in use", sdkError("DeleteNetworkInterface", 400, "InvalidNetworkInterface.InUse", "x"), ErrENIInUse, "InvalidNetworkInterface.InUse", 400, "InvalidNetworkInterface.InUse"},
		{"parameter value", sdkError("CreateNetworkInterface", 400, "InvalidParameterValue", "x"), ErrInvalidRequest, "InvalidParameterValue", 400, "InvalidParameterValue"},
		{"parameter combination", sdkError("CreateNetworkInterface", 400, "InvalidParameterCombination", "x"), ErrInvalidRequest, "InvalidParameterCombination", 400, "InvalidParameterCombination"},
		{"idempotent mismatch", sdkError("CreateNetworkInterface", 400, "IdempotentParameterMismatch", "x"), ErrInvalidRequest, "IdempotentParameterMismatch", 400, "IdempotentParameterMismatch"},
		{"unauthorized", sdkError("CreateTags", 403, "UnauthorizedOperation", "x"), ErrUnauthorized, "UnauthorizedOperation", 403, "UnauthorizedOperation"},
		{"unknown 403", sdkError("CreateTags", 403, "SomethingElse", "x"), ErrUnauthorized, "SomethingElse", 403, "SomethingElse"},
		{"internal", sdkError("CreateTags", 500, "InternalError", "x"), ErrUnavailable, "InternalError", 500, "InternalError"},
		{"unknown 502", sdkError("CreateTags", 502, "BadGateway", "x"), ErrUnavailable, "BadGateway", 502, "BadGateway"},
		{"200 whose body was lost", &smithy.OperationError{ServiceID: "EC2", OperationName: "AssignPrivateIpAddresses", Err: &awshttp.ResponseError{
			ResponseError: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: 200}},
				Err: errors.New("deserialization failed: use of closed network connection")}}}, ErrUnavailable, "", 200, "transport"},
		{"transport", &smithy.OperationError{ServiceID: "EC2", OperationName: "CreateTags", Err: errors.New("dial tcp: connection refused")}, ErrUnavailable, "", 0, "transport"},
		{"canceled", &smithy.OperationError{ServiceID: "EC2", OperationName: "CreateTags", Err: fmt.Errorf("send: %w", context.Canceled)}, ErrUnavailable, "", 0, "canceled"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ae := classify("Action", tc.err)
			var err error = ae
			if !errors.Is(err, tc.wantKind) {
				t.Errorf("errors.Is(%v, %v) = false", err, tc.wantKind)
			}
			for _, other := range []error{ErrThrottled, ErrSubnetFull, ErrNoCidrBlock, ErrAddressInUse, ErrENIAddressLimit,
				ErrAttachmentLimit, ErrNotFound, ErrENIInUse, ErrInvalidRequest, ErrUnauthorized, ErrUnavailable} {
				if other != tc.wantKind && errors.Is(err, other) {
					t.Errorf("errors.Is(%v, %v) = true, want only %v", err, other, tc.wantKind)
				}
			}
			var got *APIError
			if !errors.As(fmt.Errorf("wrapped: %w", err), &got) {
				t.Fatal("errors.As(*APIError) failed through a wrap")
			}
			if got.Code != tc.wantCode || got.HTTPStatus != tc.wantStatus || got.Outcome() != tc.wantOutcome {
				t.Errorf("code %q status %d outcome %q, want %q %d %q", got.Code, got.HTTPStatus, got.Outcome(),
					tc.wantCode, tc.wantStatus, tc.wantOutcome)
			}
			if !strings.Contains(got.Error(), "Action") {
				t.Errorf("message %q does not name the action", got.Error())
			}
		})
	}
	if classify("X", nil) != nil {
		t.Error("classify(nil) != nil")
	}
}

func TestAPIErrorMatchesContext(t *testing.T) {
	err := error(&APIError{Action: "A", Kind: ErrThrottled, Err: context.DeadlineExceeded})
	if !errors.Is(err, ErrThrottled) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%v: want both ErrThrottled and DeadlineExceeded", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatalf("%v matches context.Canceled", err)
	}
}

// A delete while a detach completes: EC2 answers InvalidParameterValue "... is currently in
// use" (vpc-cni #1399), which is the ENI in use (retry), not a bad request; the same code on
// another action or with another message stays a bad request.
func TestClassifyDeleteWhileDetaching(t *testing.T) {
	detaching := sdkError("DeleteNetworkInterface", 400, "InvalidParameterValue", "Network interface 'eni-1' is currently in use.")
	if err := error(classify("DeleteNetworkInterface", detaching)); !errors.Is(err, ErrENIInUse) || errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("delete while detaching: %v, want ErrENIInUse only", err)
	}
	other := sdkError("DeleteNetworkInterface", 400, "InvalidParameterValue", "Invalid id: eni-x")
	if err := error(classify("DeleteNetworkInterface", other)); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("another InvalidParameterValue: %v, want ErrInvalidRequest", err)
	}
	if err := error(classify("AttachNetworkInterface", detaching)); !errors.Is(err, ErrInvalidRequest) {
		t.Fatalf("the message on another action: %v, want ErrInvalidRequest", err)
	}
}
