// Package dashboard serves the operator's web page of an ipledger-server replica: the budget of
// every subnet as a stacked bar, free /28 blocks, the nodes, pre-warm reservations and the EC2
// calls of the last hour.
//
// It owns the page (HTML, CSS and JavaScript embedded with go:embed: the page loads nothing from
// outside the replica and references only relative URLs, so it works offline and behind a path
// prefix), the JSON document the page renders, and the sampler that turns the EC2 gateway's
// cumulative call counters into a history of calls per interval.
//
// It must never change state: it reads through the replica's AdminService implementation
// (Source) and calls only its read methods. It never calls EC2 or etcd itself.
//
// # Routes (Handler)
//
//   - GET /                    the page (renders itself from the JSON, refreshes every few seconds)
//   - GET /static/...          its CSS and JavaScript
//   - GET /api/dashboard.json  the document below
//
// # The JSON document
//
// Field names are snake_case and stable; new fields may be added, none renamed or removed.
// Times are RFC 3339 strings in UTC; durations are seconds (numbers).
//
//	generated_at       time the document was built
//	refresh_seconds    how often the page fetches it again
//	cluster            which replica answered and who leads:
//	    name, replica, is_leader, leader, store_healthy, store_message, revision, version,
//	    nodes, subnets
//	subnets[]          one per subnet the cluster uses (sorted by subnet_id):
//	    subnet_id, name (its Name tag), availability_zone, cidr,
//	    size, reserved, foreign, held, eni_primary, in_use, idle, prewarm_reserved, free
//	        (always size = reserved + foreign + held + prewarm_reserved + free and
//	         held = eni_primary + in_use + idle),
//	    free_prefixes (aligned /28 blocks with every address free),
//	    total_prefixes (aligned /28 blocks in the CIDR),
//	    max_held (0: no cap), budget_cap (max_held, or size when there is no cap), keep_free,
//	    headroom (what the cluster may still take),
//	    forecast {held_per_hour, time_to_exhaustion_seconds (null when the trend is flat or
//	        shrinking), window_seconds},
//	    pod_subnet_of[] {policy, availability_zone}: the policies whose nodes put their pods'
//	        ENIs in this subnet ([] when none)
//	nodes[]            one per registered node (sorted by node_name):
//	    node_name, instance_id, instance_type, availability_zone, subnet_id, mode
//	    ("secondary_ip", "prefix"...), policy, enis, held, in_use, idle, target_free, deficit,
//	    connected, draining, last_report (null before the first report), registered_at
//	prewarms[]         pre-warm reservations:
//	    id, subnet_id, availability_zone, instance_type, node_count, addresses_per_node, state,
//	    reserved_addresses, enis, enis_ready, expires_at
//	ec2                the EC2 limiter and the history of calls:
//	    state ("leader": this replica calls EC2; "standby": the leader does, see leader;
//	        "unavailable": the limiter could not be read, see message),
//	    leader, message,
//	    sample_every_seconds, history_seconds,
//	    actions[] (every action with calls in the history, sorted),
//	    samples[] (oldest first) {time (end of the interval), seconds (its length),
//	        state (as above, at that time), calls {action: calls of every outcome},
//	        total, throttled, errors (calls that ended in an EC2 error other than throttling)},
//	    totals[] (calls in the history by action and outcome) {action, outcome, count},
//	    throttled_in_history, throttled_total (since the leader started),
//	    buckets[] {name, capacity, tokens, refill_per_second, effective_refill_per_second,
//	        actions[]},
//	    queue[] {priority ("pod_waiting"...), waiting},
//	    recent_throttles[] {time, action}
//	errors[]           parts of the document that could not be read ("subnets: ..."); the rest
//	                   is still filled in
//
// # The sampler
//
// Run reads GetLimiter every Options.SampleEvery and keeps, per interval, the difference of the
// cumulative counters, for Options.History (a ring buffer). Counters are taken to start with the
// sampler (the server starts both together), so calls made before the first sample are counted in
// the first interval. A counter that goes backwards was reset and counts from zero. On a standby
// GetLimiter answers NOT_LEADER; such intervals are kept with state "standby" and no calls.
package dashboard
