// Package ec2gw is ipledger's EC2 gateway: the only package of the allocator that imports the
// EC2 SDK (github.com/aws/aws-sdk-go-v2/service/ec2). Every EC2 call the allocator makes passes
// through a *Gateway in three steps, in this order:
//
//  1. the limiter: one token bucket per EC2 throttling bucket (EC2's defaults from EC2.md,
//     overridable for raised account limits), each with a priority queue of waiters (a pod is
//     waiting > node start > warm refill > pre-warm > release > reconcile; FIFO within a
//     priority). A bucket starts full like EC2's, keeps one second of refill in reserve, paces
//     at 97% of EC2's rate and never lends more than its capacity minus the calls still in
//     flight, so a gateway alone on the account is never throttled. On RequestLimitExceeded
//     (someone else shares the account) the bucket's rate is halved and then recovers gradually.
//  2. the SDK call, with the SDK's own retries and retry rate limiting off; the gateway retries
//     throttles and 5xx itself, and every retry passes the limiter again, so one limiter decides.
//  3. a metric by action and outcome, and the error classified once into the sentinel errors
//     below (errors.As(err, &smithy.APIError)).
//
// Requests that assign explicit addresses (or prefixes) to the same ENI while they wait for a
// token are coalesced into one AssignPrivateIpAddresses call.
//
// The gateway must never let an EC2 call bypass the limiter, never set AllowReassignment (EC2 is
// the final arbiter of who holds an explicit address), and never talk to anything but the
// configured endpoint. It keeps no durable state: what it did is reported to its caller, who
// records it.
package ec2gw
