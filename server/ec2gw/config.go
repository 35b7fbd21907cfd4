package ec2gw

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/ipledger/ipledger/internal/clock"
	"github.com/prometheus/client_golang/prometheus"
)

// Priority orders EC2 work in the limiter's queues: a lower number is served first. The
// numbering mirrors ipledgerv1.Priority.
type Priority int

// Priority classes, highest first.
const (
	PriorityPodWaiting Priority = 1 // a pod is waiting for an address
	PriorityNodeStart  Priority = 2 // a node is starting with no warm addresses
	PriorityWarmRefill Priority = 3 // topping up a running node's warm pool
	PriorityPrewarm    Priority = 4 // pre-creating ENIs for autoscalers
	PriorityRelease    Priority = 5 // release and garbage collection
	PriorityReconcile  Priority = 6 // describes for reconciliation
)

// priorities lists every valid priority, highest first.
var priorities = []Priority{
	PriorityPodWaiting, PriorityNodeStart, PriorityWarmRefill,
	PriorityPrewarm, PriorityRelease, PriorityReconcile,
}

// Valid reports whether p is one of the defined priority classes.
func (p Priority) Valid() bool { return p >= PriorityPodWaiting && p <= PriorityReconcile }

// String returns the class name used in logs and metric labels.
func (p Priority) String() string {
	switch p {
	case PriorityPodWaiting:
		return "pod-waiting"
	case PriorityNodeStart:
		return "node-start"
	case PriorityWarmRefill:
		return "warm-refill"
	case PriorityPrewarm:
		return "prewarm"
	case PriorityRelease:
		return "release"
	case PriorityReconcile:
		return "reconcile"
	}
	return fmt.Sprintf("priority(%d)", int(p))
}

// EC2 action names the gateway calls, as they appear in metrics and bucket configuration.
const (
	ActionCreateNetworkInterface          = "CreateNetworkInterface"
	ActionDeleteNetworkInterface          = "DeleteNetworkInterface"
	ActionAttachNetworkInterface          = "AttachNetworkInterface"
	ActionDetachNetworkInterface          = "DetachNetworkInterface"
	ActionModifyNetworkInterfaceAttribute = "ModifyNetworkInterfaceAttribute"
	ActionAssignPrivateIPAddresses        = "AssignPrivateIpAddresses"
	ActionUnassignPrivateIPAddresses      = "UnassignPrivateIpAddresses"
	ActionCreateTags                      = "CreateTags"
	ActionDescribeInstances               = "DescribeInstances"
	ActionDescribeInstanceTypes           = "DescribeInstanceTypes"
	ActionDescribeSubnets                 = "DescribeSubnets"
	ActionDescribeNetworkInterfaces       = "DescribeNetworkInterfaces"
)

// UnfilteredSuffix marks the limiter key of a describe call that EC2 charges to its
// "unfiltered and unpaginated" bucket: "DescribeInstances" + UnfilteredSuffix is a
// DescribeInstances with no filter, no id list and no pagination. The plain action name is the
// filtered or paginated form. The gateway itself always passes ids or paginates, so it never
// uses these keys; the bucket is configured to mirror EC2.
const UnfilteredSuffix = ":unfiltered"

// FallbackAction in a bucket's Actions makes it the bucket of every action no bucket names.
const FallbackAction = "*"

// gatewayKeys are the limiter keys the gateway uses; every one must resolve to a bucket.
var gatewayKeys = []string{
	ActionCreateNetworkInterface, ActionDeleteNetworkInterface,
	ActionAttachNetworkInterface, ActionDetachNetworkInterface,
	ActionModifyNetworkInterfaceAttribute,
	ActionAssignPrivateIPAddresses, ActionUnassignPrivateIPAddresses,
	ActionCreateTags,
	ActionDescribeInstances, ActionDescribeNetworkInterfaces,
	ActionDescribeSubnets, ActionDescribeInstanceTypes,
}

// BucketConfig is one EC2 throttling bucket: Capacity tokens, refilled at RefillPerSecond, taken
// one per request by the listed Actions (limiter keys: action names, "<action>:unfiltered" for
// the unfiltered describe forms, or "*" for every action no other bucket lists).
type BucketConfig struct {
	Name            string
	Capacity        int
	RefillPerSecond float64
	Actions         []string
}

// DefaultBuckets returns EC2's default throttling buckets (EC2.md): each ENI and IP action has a
// bucket of its own (100 / 5 per s), tags share one (100 / 10), other mutating actions the
// default mutating bucket (50 / 5), describes 100 / 20, unfiltered and unpaginated describes
// 50 / 10, subnet CIDR reservations 5 / 1.
func DefaultBuckets() []BucketConfig {
	own := func(action string) BucketConfig {
		return BucketConfig{Name: action, Capacity: 100, RefillPerSecond: 5, Actions: []string{action}}
	}
	return []BucketConfig{
		own(ActionCreateNetworkInterface),
		own(ActionDeleteNetworkInterface),
		own(ActionAssignPrivateIPAddresses),
		own(ActionUnassignPrivateIPAddresses),
		own(ActionModifyNetworkInterfaceAttribute),
		{Name: "tags", Capacity: 100, RefillPerSecond: 10, Actions: []string{ActionCreateTags, "DeleteTags"}},
		{Name: "mutating", Capacity: 50, RefillPerSecond: 5, Actions: []string{
			ActionAttachNetworkInterface, ActionDetachNetworkInterface, FallbackAction}},
		{Name: "describe", Capacity: 100, RefillPerSecond: 20, Actions: []string{
			ActionDescribeSubnets, ActionDescribeInstanceTypes,
			ActionDescribeInstances, ActionDescribeNetworkInterfaces}},
		{Name: "describe-unfiltered", Capacity: 50, RefillPerSecond: 10, Actions: []string{
			ActionDescribeInstances + UnfilteredSuffix,
			ActionDescribeNetworkInterfaces + UnfilteredSuffix}},
		{Name: "cidr-reservations", Capacity: 5, RefillPerSecond: 1, Actions: []string{
			"CreateSubnetCidrReservation", "DeleteSubnetCidrReservation"}},
	}
}

// Config configures a Gateway.
type Config struct {
	Region      string                  // required
	Endpoint    string                  // "" = AWS's own endpoint resolution; the simulator's URL locally
	Credentials aws.CredentialsProvider // nil = the default credential chain (config.LoadDefaultConfig)
	Buckets     []BucketConfig          // nil = DefaultBuckets(); overridable for raised account limits
	// Clock paces the limiter and times calls and retries (nil = the real clock). A run against
	// a simulator sped up by --time-scale passes a scaled clock (package internal/clock).
	Clock clock.Clock
	// MaxRetries is how often a throttled or 5xx call is retried (0 = 5, negative = never); each
	// retry passes the limiter again.
	MaxRetries int
	Registerer prometheus.Registerer // nil = no metrics
	Logger     *slog.Logger          // nil = discard
}

// DefaultMaxRetries is the number of gateway-level retries when Config.MaxRetries is 0.
const DefaultMaxRetries = 5

// Validate reports every problem of the configuration in one error.
func (c Config) Validate() error {
	var errs []error
	if strings.TrimSpace(c.Region) == "" {
		errs = append(errs, errors.New("region is required"))
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("endpoint %q: %w", c.Endpoint, err))
		case u.Scheme != "http" && u.Scheme != "https":
			errs = append(errs, fmt.Errorf("endpoint %q: scheme must be http or https", c.Endpoint))
		case u.Host == "":
			errs = append(errs, fmt.Errorf("endpoint %q: no host", c.Endpoint))
		}
	}
	if c.Buckets != nil {
		if err := validateBuckets(c.Buckets); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ec2gw: invalid config: %w", err)
	}
	return nil
}

func validateBuckets(buckets []BucketConfig) error {
	var errs []error
	if len(buckets) == 0 {
		return errors.New("buckets: at least one bucket is required")
	}
	names := map[string]bool{}
	owner := map[string]string{}
	for i, b := range buckets {
		where := fmt.Sprintf("bucket %d (%q)", i, b.Name)
		if b.Name == "" {
			errs = append(errs, fmt.Errorf("%s: name is required", where))
		} else if names[b.Name] {
			errs = append(errs, fmt.Errorf("%s: duplicate name", where))
		}
		names[b.Name] = true
		if b.Capacity < 1 {
			errs = append(errs, fmt.Errorf("%s: capacity %d must be >= 1", where, b.Capacity))
		}
		if !(b.RefillPerSecond > 0) || math.IsInf(b.RefillPerSecond, 0) {
			errs = append(errs, fmt.Errorf("%s: refill %v per second must be a finite number > 0", where, b.RefillPerSecond))
		}
		if len(b.Actions) == 0 {
			errs = append(errs, fmt.Errorf("%s: no actions", where))
		}
		for _, a := range b.Actions {
			if a == "" {
				errs = append(errs, fmt.Errorf("%s: empty action name", where))
				continue
			}
			if prev, ok := owner[a]; ok {
				errs = append(errs, fmt.Errorf("%s: action %q is already in bucket %q", where, a, prev))
				continue
			}
			owner[a] = b.Name
		}
	}
	if _, ok := owner[FallbackAction]; !ok {
		for _, k := range gatewayKeys {
			if _, ok := owner[k]; !ok {
				errs = append(errs, fmt.Errorf("buckets: no bucket for action %q (list it or add a %q bucket)", k, FallbackAction))
			}
		}
	}
	return errors.Join(errs...)
}

func (c Config) maxRetries() int {
	switch {
	case c.MaxRetries == 0:
		return DefaultMaxRetries
	case c.MaxRetries < 0:
		return 0
	}
	return c.MaxRetries
}
