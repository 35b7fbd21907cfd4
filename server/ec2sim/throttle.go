package ec2sim

import (
	"sync"
	"time"
)

// BucketShape is the size and refill rate (tokens per second) of one EC2 token bucket.
type BucketShape struct {
	Size   float64 `json:"size"`
	Refill float64 `json:"refill_per_second"`
}

// Bucket names and shapes: EC2's defaults per account and region (EC2.md).
const (
	BucketMutating         = "mutating"                 // 50 / 5: Attach, Detach, RunInstances, TerminateInstances, other mutating
	BucketNonMutating      = "non-mutating"             // 100 / 20: DescribeSubnets, DescribeInstanceTypes, filtered or paginated describes
	BucketUnfiltered       = "unfiltered-describe"      // 50 / 10: DescribeInstances / DescribeNetworkInterfaces with no filter, ID or pagination
	BucketTags             = "tags"                     // 100 / 10: CreateTags, DeleteTags
	BucketCIDRReservations = "subnet-cidr-reservations" // 5 / 1
	// RunInstances is resource-intensive: its requests have their own bucket, and the instances
	// they launch another, one token per instance (EC2.md).
	BucketRunInstances      = "RunInstances"       // 5 / 2: requests
	BucketInstancesLaunched = "instances-launched" // 1000 / 2: instances
)

// Shapes of EC2's buckets. The ENI and IP actions each have their own bucket named after the
// action.
var bucketShapes = map[string]BucketShape{
	BucketMutating:                    {50, 5},
	BucketNonMutating:                 {100, 20},
	BucketUnfiltered:                  {50, 10},
	BucketTags:                        {100, 10},
	BucketCIDRReservations:            {5, 1},
	BucketRunInstances:                {5, 2},
	BucketInstancesLaunched:           {1000, 2},
	"CreateNetworkInterface":          {100, 5},
	"DeleteNetworkInterface":          {100, 5},
	"AssignPrivateIpAddresses":        {100, 5},
	"UnassignPrivateIpAddresses":      {100, 5},
	"ModifyNetworkInterfaceAttribute": {100, 5},
}

// bucketFor names the bucket a request takes its token from. paginatedOrFiltered is true when
// the request has a filter, an id list, MaxResults or NextToken.
func bucketFor(action string, paginatedOrFiltered bool) string {
	switch action {
	case "CreateNetworkInterface", "DeleteNetworkInterface", "AssignPrivateIpAddresses",
		"UnassignPrivateIpAddresses", "ModifyNetworkInterfaceAttribute":
		return action
	case "CreateTags", "DeleteTags":
		return BucketTags
	case "CreateSubnetCidrReservation", "DeleteSubnetCidrReservation":
		return BucketCIDRReservations
	case "RunInstances":
		return BucketRunInstances
	case "DescribeSubnets", "DescribeInstanceTypes":
		return BucketNonMutating
	case "DescribeInstances", "DescribeNetworkInterfaces":
		if paginatedOrFiltered {
			return BucketNonMutating
		}
		return BucketUnfiltered
	}
	return BucketMutating
}

// bucket is a token bucket with continuous refill: a request takes one whole token.
type bucket struct {
	shape  BucketShape
	tokens float64
	last   time.Time
}

// throttle holds one set of buckets: the simulator models one account and region.
type throttle struct {
	mu      sync.Mutex
	on      bool
	scale   float64
	buckets map[string]*bucket
}

func newThrottle(on bool, scale float64) *throttle {
	return &throttle{on: on, scale: scale, buckets: map[string]*bucket{}}
}

// take removes one token from the named bucket; false means the request is throttled.
func (t *throttle) take(name string, now time.Time) bool { return t.takeN(name, 1, now) }

// takeN removes n tokens from the named bucket, all or none; false means throttled.
func (t *throttle) takeN(name string, n int, now time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.on {
		return true
	}
	b, ok := t.buckets[name]
	if !ok {
		shape := bucketShapes[name]
		b = &bucket{shape: shape, tokens: shape.Size, last: now}
		t.buckets[name] = b
	}
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens += dt.Seconds() * b.shape.Refill * t.scale
		if b.tokens > b.shape.Size {
			b.tokens = b.shape.Size
		}
		b.last = now
	}
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

func (t *throttle) setOn(on bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.on = on
}

// BucketShapes returns EC2's default bucket shapes by bucket name (a copy); the ENI and IP
// actions' buckets are named after the action.
func BucketShapes() map[string]BucketShape {
	out := make(map[string]BucketShape, len(bucketShapes))
	for k, v := range bucketShapes {
		out[k] = v
	}
	return out
}

// BucketFor names the bucket a request of the action takes its token from; filtered is true
// when the request has a filter, an id list, MaxResults or NextToken.
func BucketFor(action string, filtered bool) string { return bucketFor(action, filtered) }
