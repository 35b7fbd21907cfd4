package ec2gw

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/smithy-go"
)

// Sentinel errors. Every error a Gateway method returns for an EC2 call is an *APIError whose
// Unwrap gives one of these, so errors.Is(err, ErrSubnetFull) works and errors.As gives the code.
// Input the gateway refuses before calling EC2 wraps ErrInvalidRequest.
var (
	// ErrThrottled: RequestLimitExceeded after the retries ran out, or the caller's context ended
	// while the call waited for the limiter (then errors.Is(err, context.Canceled) or
	// context.DeadlineExceeded holds as well).
	ErrThrottled = errors.New("ec2gw: throttled")
	// ErrSubnetFull: InsufficientFreeAddressesInSubnet.
	ErrSubnetFull = errors.New("ec2gw: subnet has no free addresses")
	// ErrNoCidrBlock: InsufficientCidrBlocks (no free aligned /28 although addresses are free).
	ErrNoCidrBlock = errors.New("ec2gw: no free /28 block in subnet")
	// ErrAddressInUse: InvalidIPAddress.InUse (someone else holds an explicit address).
	ErrAddressInUse = errors.New("ec2gw: address in use")
	// ErrENIAddressLimit: PrivateIpAddressLimitExceeded (the ENI holds all its type allows).
	ErrENIAddressLimit = errors.New("ec2gw: eni address limit reached")
	// ErrAttachmentLimit: AttachmentLimitExceeded (the instance holds all the ENIs it can).
	ErrAttachmentLimit = errors.New("ec2gw: instance attachment limit reached")
	// ErrNotFound: any *.NotFound (EC2 is eventually consistent: it can follow a create).
	ErrNotFound = errors.New("ec2gw: not found")
	// ErrENIInUse: InvalidNetworkInterface.InUse (delete while attached), or DeleteNetworkInterface's
	// InvalidParameterValue "... is currently in use" (delete while a detach completes).
	ErrENIInUse = errors.New("ec2gw: eni in use")
	// ErrInvalidRequest: InvalidParameterValue, InvalidParameterCombination,
	// IdempotentParameterMismatch, any other 4xx, and input refused before calling EC2.
	ErrInvalidRequest = errors.New("ec2gw: invalid request")
	// ErrUnauthorized: UnauthorizedOperation, AuthFailure and other 403s.
	ErrUnauthorized = errors.New("ec2gw: unauthorized")
	// ErrUnavailable: InternalError, any other 5xx, transport errors, a call cut short by its
	// context.
	ErrUnavailable = errors.New("ec2gw: ec2 unavailable")
	// ErrClosed: the gateway was closed.
	ErrClosed = errors.New("ec2gw: gateway closed")
)

// APIError is an EC2 call's failure, classified once. Kind is one of the sentinel errors above
// and is what Unwrap returns; Err, when set, is the underlying SDK or context error and is
// matched by errors.Is as well (so errors.Is(err, context.Canceled) works).
type APIError struct {
	Action     string // EC2 action
	Code       string // EC2 error code; "" for transport errors and limiter waits
	Message    string
	HTTPStatus int // 0 when no response was received
	Kind       error
	Err        error
	// Unknown: the call mutates and may have been carried out although it failed (a 5xx, a
	// lost connection, no answer in time): EC2 does such work after answering badly. The
	// caller must read the resource again before it concludes anything (OutcomeUnknown).
	Unknown bool
}

// OutcomeUnknown reports whether err is a mutating call's failure after which EC2 may still
// have done the work.
func OutcomeUnknown(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Unknown
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString(e.Action)
	b.WriteString(": ")
	if e.Code != "" {
		b.WriteString(e.Code)
		if e.HTTPStatus != 0 {
			fmt.Fprintf(&b, " (HTTP %d)", e.HTTPStatus)
		}
		if e.Message != "" {
			b.WriteString(": ")
			b.WriteString(e.Message)
		}
	} else {
		b.WriteString(e.Message)
	}
	if e.Kind != nil {
		b.WriteString(" [")
		b.WriteString(e.Kind.Error())
		b.WriteString("]")
	}
	if e.Unknown {
		b.WriteString(" (outcome unknown: EC2 may have carried it out)")
	}
	return b.String()
}

// Unwrap returns the sentinel error of the failure's class.
func (e *APIError) Unwrap() error { return e.Kind }

// Is matches the underlying SDK or context error, so callers can tell a context that ended.
func (e *APIError) Is(target error) bool {
	return e.Err != nil && errors.Is(e.Err, target)
}

// Outcome returns the metric label of the failure: "throttled", the EC2 error code, "canceled"
// for a call cut short by its context, or "transport" when no EC2 answer was received.
func (e *APIError) Outcome() string {
	switch {
	case e.Code == codeRequestLimitExceeded:
		return outcomeThrottled
	case e.Code != "":
		return e.Code
	case errors.Is(e.Err, context.Canceled) || errors.Is(e.Err, context.DeadlineExceeded):
		return "canceled"
	}
	return "transport"
}

const (
	codeRequestLimitExceeded = "RequestLimitExceeded"
	outcomeOK                = "ok"
	outcomeThrottled         = "throttled"
)

// classify turns an SDK error into an *APIError (nil for nil).
func classify(action string, err error) *APIError {
	if err == nil {
		return nil
	}
	ae := &APIError{Action: action, Err: err}
	// *smithyhttp.ResponseError, or the SDK's *awshttp.ResponseError that embeds it.
	var re interface{ HTTPStatusCode() int }
	if errors.As(err, &re) {
		ae.HTTPStatus = re.HTTPStatusCode()
	}
	var api smithy.APIError
	if errors.As(err, &api) {
		ae.Code = api.ErrorCode()
		ae.Message = api.ErrorMessage()
		ae.Kind = kindOf(ae.Code, ae.HTTPStatus)
		if action == "DeleteNetworkInterface" && ae.Code == "InvalidParameterValue" && strings.Contains(ae.Message, "currently in use") {
			// EC2's answer to a delete while a detach has not completed (vpc-cni #1399): the
			// ENI is still in use, and the delete succeeds once the detach does.
			ae.Kind = ErrENIInUse
		}
		return ae
	}
	// No EC2 error code: a transport error, or a response that could not be read (a 2xx whose
	// body was lost is not the caller's fault either).
	ae.Message = err.Error()
	switch {
	case ae.HTTPStatus == 403:
		ae.Kind = ErrUnauthorized
	case ae.HTTPStatus >= 400 && ae.HTTPStatus < 500:
		ae.Kind = ErrInvalidRequest
	default:
		ae.Kind = ErrUnavailable
	}
	return ae
}

// kindOf maps an EC2 error code (and the response status) to its sentinel error.
func kindOf(code string, status int) error {
	switch code {
	case codeRequestLimitExceeded, "Throttling", "ThrottlingException":
		return ErrThrottled
	case "InsufficientFreeAddressesInSubnet":
		return ErrSubnetFull
	case "InsufficientCidrBlocks":
		return ErrNoCidrBlock
	case "InvalidIPAddress.InUse":
		return ErrAddressInUse
	case "PrivateIpAddressLimitExceeded":
		return ErrENIAddressLimit
	case "AttachmentLimitExceeded":
		return ErrAttachmentLimit
	case "InvalidNetworkInterface.InUse":
		return ErrENIInUse
	case "UnauthorizedOperation", "AuthFailure", "OptInRequired", "Blocked":
		return ErrUnauthorized
	case "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable":
		return ErrUnavailable
	}
	switch {
	case strings.HasSuffix(code, ".NotFound"):
		return ErrNotFound
	case status >= 500:
		return ErrUnavailable
	case status == 403:
		return ErrUnauthorized
	}
	return ErrInvalidRequest
}

// invalidInput is the error for input the gateway refuses before calling EC2.
func invalidInput(action, format string, args ...any) error {
	return fmt.Errorf("%s: %w: %s", action, ErrInvalidRequest, fmt.Sprintf(format, args...))
}
