package ec2sim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"
)

// Outcomes of an injected failure: when it happens, and what the client sees.
const (
	// OutcomeBefore (the default, also "") fails the call before it has any effect.
	OutcomeBefore = "before"
	// OutcomeAfter applies the call, then answers with the fault's error (EC2 did the work and
	// said it failed: "500 after apply").
	OutcomeAfter = "after"
	// OutcomeReset applies the call, then closes the connection without an answer.
	OutcomeReset = "reset"
	// OutcomeTimeout applies the call, then never answers: the connection stays open until the
	// client gives up (or the simulator closes), and is closed without an answer.
	OutcomeTimeout = "timeout"
)

var outcomes = []string{"", OutcomeBefore, OutcomeAfter, OutcomeReset, OutcomeTimeout}

// Fault injects latency and failures into one action. Every call of the action waits Latency
// (divided by TimeScale) and then, with Probability, fails as Outcome says: with Code and
// HTTPStatus and no effect (before, the default), or after the call took effect with Code and
// HTTPStatus (after), a closed connection (reset) or no answer at all (timeout). For
// AttachNetworkInterface and DetachNetworkInterface the latency is the attaching / detaching
// phase: the change is visible at once with attachment status attaching / detaching and
// completes when the latency has passed, just before the response (later when the profile adds
// an AttachUsable or DetachComplete delay). The latency adds to the profile's latency of the
// action.
//
// As EC2 does, a mutating call that has been received is carried out even when the client
// disconnects during its latency; only Describe calls end with their client.
type Fault struct {
	// Code is the EC2 error code (default InternalError).
	Code string
	// HTTPStatus of the failure (default: 403 for UnauthorizedOperation, 503 for
	// RequestLimitExceeded, 500 for InternalError and InternalFailure, 400 otherwise).
	HTTPStatus int
	// Probability of a failure, 0 to 1.
	Probability float64
	// Latency added to every call of the action.
	Latency time.Duration
	// Outcome of a failure: before (or ""), after, reset or timeout.
	Outcome string
}

type faultJSON struct {
	Code        string   `json:"code,omitempty"`
	HTTPStatus  int      `json:"http_status,omitempty"`
	Probability float64  `json:"probability,omitempty"`
	Latency     Duration `json:"latency,omitempty"`
	Outcome     string   `json:"outcome,omitempty"`
}

// MarshalJSON writes {"code","http_status","probability","latency":"250ms","outcome"}.
func (f Fault) MarshalJSON() ([]byte, error) {
	return json.Marshal(faultJSON{f.Code, f.HTTPStatus, f.Probability, Duration(f.Latency), f.Outcome})
}

// UnmarshalJSON reads the shape MarshalJSON writes.
func (f *Fault) UnmarshalJSON(b []byte) error {
	var j faultJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return fmt.Errorf("fault: %w", err)
	}
	*f = Fault{Code: j.Code, HTTPStatus: j.HTTPStatus, Probability: j.Probability, Latency: time.Duration(j.Latency), Outcome: j.Outcome}
	return nil
}

// Validate checks the ranges of the fault's fields.
func (f Fault) Validate() error {
	if f.Probability < 0 || f.Probability > 1 {
		return fmt.Errorf("probability %v must be between 0 and 1", f.Probability)
	}
	if f.HTTPStatus != 0 && (f.HTTPStatus < 400 || f.HTTPStatus > 599) {
		return fmt.Errorf("http_status %d must be 4xx or 5xx", f.HTTPStatus)
	}
	if f.Latency < 0 || f.Latency > 10*time.Minute {
		return fmt.Errorf("latency %v must be between 0 and 10m", f.Latency)
	}
	if !slices.Contains(outcomes, f.Outcome) {
		return fmt.Errorf("outcome %q must be before, after, reset or timeout", f.Outcome)
	}
	if f.Probability > 0 && f.Code == "" && f.HTTPStatus != 0 && f.HTTPStatus < 500 {
		return fmt.Errorf("a 4xx fault needs a code")
	}
	return nil
}

func (f Fault) code() string {
	if f.Code == "" {
		return "InternalError"
	}
	return f.Code
}

func (f Fault) status() int {
	if f.HTTPStatus != 0 {
		return f.HTTPStatus
	}
	return statusForCode(f.code())
}

func statusForCode(code string) int {
	switch code {
	case "UnauthorizedOperation", "AuthFailure":
		return http.StatusForbidden
	case "RequestLimitExceeded", "ServiceUnavailable", "Unavailable":
		return http.StatusServiceUnavailable
	case "InternalError", "InternalFailure":
		return http.StatusInternalServerError
	case "DryRunOperation":
		return http.StatusPreconditionFailed
	}
	return http.StatusBadRequest
}

// faults holds the injected faults and the seeded source that decides them.
type faults struct {
	mu  sync.Mutex
	rng *rand.Rand
	m   map[string]Fault
}

func (f *faults) set(action string, fl Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[action] = fl
}

func (f *faults) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m = map[string]Fault{}
}

func (f *faults) all() map[string]Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]Fault, len(f.m))
	for k, v := range f.m {
		out[k] = v
	}
	return out
}

// decision is what an injected fault does to one call.
type decision struct {
	latency time.Duration
	// err is the failure (nil: none); outcome says when it happens (OutcomeBefore for "").
	err     *APIError
	outcome string
}

// decide returns the latency to add and the failure, if any.
func (f *faults) decide(action string) decision {
	f.mu.Lock()
	defer f.mu.Unlock()
	fl, ok := f.m[action]
	if !ok {
		return decision{}
	}
	d := decision{latency: fl.Latency}
	if fl.Probability > 0 && f.rng.Float64() < fl.Probability {
		d.err = &APIError{Code: fl.code(), Message: "Injected fault: " + fl.code(), HTTPStatus: fl.status()}
		d.outcome = fl.Outcome
		if d.outcome == "" {
			d.outcome = OutcomeBefore
		}
	}
	return d
}
