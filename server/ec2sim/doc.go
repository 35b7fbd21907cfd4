// Package ec2sim is the EC2 simulator (binary ipledger-ec2sim): a real HTTP server speaking
// the EC2 Query protocol (API version 2016-11-15) faithfully enough that code which works
// against it works against EC2. The unmodified aws-sdk-go-v2 EC2 client talks to it through a
// custom endpoint with any static credentials (signatures are accepted, not checked).
//
// It owns one simulated account and region: a VPC (one or more IPv4 CIDR blocks, primary first:
// a secondary 100.64.0.0/16 for custom networking, more /16s for large clusters), its subnets
// in any of them with per-address ownership (the
// 5 AWS-reserved addresses, availableIpAddressCount, aligned /28 prefixes, CIDR reservations),
// ENIs, instances with per-type ENI and IPv4-per-ENI limits, EC2's token buckets, a clock of
// EC2 (per-action latencies, attach and detach phases, describe lag), injected faults and
// latency, eventual consistency, an IMDSv2 listener per running instance, and a JSON control
// API. It must never be used outside development, tests, the demo and the benchmark,
// never talk to real AWS, and never route or configure any of the addresses it hands out: they
// are data.
//
// # Query API (POST /)
//
// Actions: CreateNetworkInterface, AttachNetworkInterface, DetachNetworkInterface,
// DeleteNetworkInterface, AssignPrivateIpAddresses, UnassignPrivateIpAddresses,
// DescribeNetworkInterfaces, DescribeSubnets, DescribeInstances, DescribeInstanceTypes,
// ModifyNetworkInterfaceAttribute, CreateTags, DeleteTags, CreateSubnetCidrReservation,
// DeleteSubnetCidrReservation, RunInstances and TerminateInstances. Any other action gets
// InvalidAction (400). Success bodies are <ActionResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
// with the request id in the x-amzn-RequestId header; errors are
// <Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/></Response>.
//
// Every request passes, in order: the key check (a list index that is not a canonical decimal
// from 1 — "X.0", "X.-1", "X.01", "X.abc" — or a list parameter without an index is
// UnknownParameter, 400, no effect), the deny list (UnauthorizedOperation, 403), the token
// bucket (RequestLimitExceeded, 503, no effect), the injected fault of the action (latency, then
// with the configured probability a failure: by default before the action, with no effect; with
// outcome "after", "reset" or "timeout" the action is carried out and then answered with the
// error, the connection reset, or no answer until the client gives up), DryRun
// (DryRunOperation, 412), the profile's latency of the action (see "The clock of EC2"), and
// then the action; a request refused before the action answers after the profile's Refused
// latency. A mutating request is carried out even when its
// client disconnects during the latency, as EC2 does; only Describe* requests end with their
// client. Choices the simulator makes where EC2's documentation is silent:
//
//   - A count (SecondaryPrivateIpAddressCount, Ipv4PrefixCount, RunInstances) picks at random
//     (seeded) among free addresses outside AWS-reserved addresses and CIDR reservations; prefix
//     counts prefer `prefix` reservations and never use `explicit` ones; explicit addresses and
//     prefixes may be anywhere in the subnet that is free and not AWS-reserved.
//   - Assign mixes of addresses and prefixes in one request are InvalidParameterCombination, as
//     are a count with explicit values. Counts must be 1..1000 (InvalidParameterValue).
//   - An explicit prefix overlapping assigned addresses is InvalidIPAddress.InUse; a prefix count
//     with no free aligned /28 is InsufficientCidrBlocks.
//   - An unattached ENI may hold up to the largest IPv4-per-ENI limit of any type (64); attaching
//     checks the instance type's limit again (PrivateIpAddressLimitExceeded) and, for prefixes,
//     Nitro. DeviceIndex must be 0..127; an index in use is InvalidParameterValue; attaching an
//     attached ENI is InvalidNetworkInterface.InUse; a stopped or terminated instance is
//     IncorrectInstanceState; detaching device index 0 is OperationNotPermitted.
//   - Unknown ids are always *.NotFound (never *.Malformed). Malformed NextToken values are
//     InvalidParameterValue. Missing required parameters are MissingParameter.
//   - RunInstances takes one NetworkInterface entry, device index 0 (the primary interface),
//     with SubnetId (then no instance-level SubnetId: InvalidParameterCombination),
//     SecondaryPrivateIpAddressCount or Ipv4PrefixCount (not both) and SecurityGroupId.N, as a
//     launch template's NetworkInterfaces block gives it: EC2 places those addresses at launch,
//     at random like any count; over the type's IPv4-per-ENI limit is
//     PrivateIpAddressLimitExceeded, prefixes on a Xen type InvalidParameterValue, no free /28
//     InsufficientCidrBlocks. Between MinCount and MaxCount it launches what the subnet holds;
//     below MinCount nothing. Other device indexes are refused (attach those ENIs after launch).
//   - Instances are `running` as soon as RunInstances returns and `terminated` as soon as
//     TerminateInstances returns (terminated instances stay listed). CreateNetworkInterface and
//     RunInstances honour ClientToken.
//   - Attach and detach take effect when they arrive: the attachment shows `attaching` until
//     the call's latency (profile and injected fault) plus the profile's AttachUsable have
//     passed, and `detaching` until the later of the call's latency and the profile's
//     DetachComplete. An attaching ENI is not listed in its instance's IMDS; a detaching one
//     keeps its device index, counts against the instance's ENI limit, and
//     DeleteNetworkInterface refuses it with InvalidParameterValue ("... is currently in use.",
//     as EC2 answers while a detach has not completed); a second DetachNetworkInterface of a
//     detaching attachment succeeds and changes nothing. The ENI's own status stays in-use until
//     the detach completes.
//   - The eventual-consistency delay hides a new ENI from every action naming it
//     (InvalidNetworkInterfaceID.NotFound) and from describes, for the configured time divided by
//     TimeScale. Foreign ENIs made through the control API are visible at once.
//
// # The clock of EC2 (Config.Profile, --ec2-profile, scenario ec2_profile, /_sim/profile)
//
// ProfileInstant (the default) answers every call at once: only injected faults add latency.
// ProfileRealistic follows the published figures of EC2.md ("Latency and consistency"; medians
// from samples in vpc-cni, cilium and DataDog issues, tails estimated), each a lognormal with the
// given median and 99th percentile:
//
//	AssignPrivateIpAddresses, UnassignPrivateIpAddresses  350 ms / 1.5 s
//	ModifyNetworkInterfaceAttribute                       300 ms / 1 s
//	CreateNetworkInterface                                500 ms / 2 s
//	AttachNetworkInterface (call)                         700 ms / 2 s
//	  then usable (attached, in IMDS)                     300 ms / 3 s; 1% of attaches 10-150 s
//	DetachNetworkInterface (call)                         400 ms / 1.5 s
//	  detach complete (from the call)                     2 s / 30 s
//	DeleteNetworkInterface                                300 ms / 1.5 s
//	Describe* (by id or filtered, and unfiltered)         150 ms / 400 ms, plus 1 ms per item returned
//	refused (throttled, denied, malformed, DryRun)        5 ms / 50 ms
//	describe lag after a mutation of an ENI               90% none; else exponential, mean 1 s, cap 60 s
//
// and, as the simulator's choice where the table is silent, CreateTags, DeleteTags and the CIDR
// reservation actions 300 ms / 1 s, DescribeInstanceTypes like the describes, RunInstances
// 1 s / 3 s and TerminateInstances 500 ms / 2 s (the call only: instances are running as soon as
// RunInstances answers and gone when TerminateInstances does; boot time is not modelled). A
// mutation takes effect when its latency has passed, just before the answer, so an error the
// action itself finds (InvalidIPAddress.InUse, InsufficientFreeAddressesInSubnet, ...) also
// comes after the action's latency; a client that disconnects meanwhile does not stop it.
//
// Describe lag: each mutation of an ENI (create, attach, detach, delete, assign, unassign,
// modify, tags, the termination of its instance) makes a version of it that
// DescribeNetworkInterfaces and DescribeInstances show only once its own lag has passed; until
// then they show the version before (a new ENI is not found, a deleted one is still listed, by
// id and by every filter). Describe shows the newest version whose lag has passed, so it never
// goes back in time. Every other action, IMDS and the control API see the live state. The lag
// is per ENI; subnet counts (availableIpAddressCount) and instances do not lag. It is
// independent of the scenario's eventual_consistency_delay, which hides a new ENI from every
// action for a fixed time.
//
// Every draw comes from a seeded source of its own per action and per kind of delay (--seed),
// so the n-th call of an action gets the same latency whatever else runs; every duration is
// divided by TimeScale. Config.Clock (clockwork) drives the waits, the phases and the lag, so
// tests inject a fake clock; nothing depends on a timer firing on time: every reader settles
// the completions that are due before it looks. Not modelled: IMDS lagging behind assigned
// addresses, instance boot time (an instance launched through the control or programmatic API
// with "pending" stays pending, described but without IMDS, until it is started), per-request variance by load or region, latency
// of the IMDS and control endpoints.
//
// # Throttling
//
// One set of token buckets (the simulator is one account and region), continuous refill,
// one token per request, shapes from EC2's defaults: each of CreateNetworkInterface,
// DeleteNetworkInterface, AssignPrivateIpAddresses, UnassignPrivateIpAddresses and
// ModifyNetworkInterfaceAttribute its own 100 / 5 per s; CreateTags and DeleteTags share
// 100 / 10; AttachNetworkInterface, DetachNetworkInterface and TerminateInstances share the
// mutating 50 / 5; RunInstances has its own request bucket, 5 / 2, and each request also takes
// MaxCount tokens of the instances-launched bucket, 1000 / 2; DescribeSubnets, DescribeInstanceTypes and DescribeInstances /
// DescribeNetworkInterfaces with a filter, an id list, MaxResults or NextToken share the
// non-mutating 100 / 20; DescribeInstances / DescribeNetworkInterfaces with none of these share
// the unfiltered 50 / 10; subnet CIDR reservations 5 / 1. TimeScale multiplies the refill rates.
//
// # IMDS
//
// Each running instance has its own listener on 127.0.0.1 (the aws-sdk-go-v2 imds client
// replaces the URL path, so only the port can name the instance), opened when the instance
// starts and closed when it terminates or the Server closes. IMDSv2 only: PUT
// /latest/api/token with X-aws-ec2-metadata-token-ttl-seconds (1..21600) returns a token; a
// GET without a valid X-aws-ec2-metadata-token gets 401. Paths under /latest/meta-data/:
// instance-id, instance-type, local-ipv4, local-hostname, hostname, mac, ami-id,
// reservation-id, placement/{availability-zone,availability-zone-id,region},
// network/interfaces/macs/ (one "<mac>/" per attached ENI) and
// network/interfaces/macs/<mac>/{device-number, network-card, interface-id, subnet-id,
// subnet-ipv4-cidr-block, vpc-id, vpc-ipv4-cidr-block(s), local-ipv4s, ipv4-prefix (404 when
// none), local-hostname, mac, owner-id, security-group-ids}; directories list their entries one
// a line. /latest/dynamic/instance-identity/document is the JSON identity document (accountId,
// architecture, availabilityZone, imageId, instanceId, instanceType, pendingTime, privateIp,
// region, version and the null product codes), /latest/dynamic/instance-identity/rsa2048 its
// base64 PKCS#7 SignedData (SHA-256, RSA-2048, the document inside, no certificate attached) and
// /latest/dynamic/instance-identity/signature its base64 RSA PKCS#1 v1.5 SHA-256 signature, both
// made with the simulator's own key (one per process, made at first use; the DSA pkcs7 form is
// not served). Its certificate is GET /_sim/iid-certificate; ipledger-server --dev trusts it.
// Config.InstanceTags go on every launched instance (--dev gives its cluster tag).
//
// # Control API (JSON, under /_sim/ on the EC2 listener)
//
// Not throttled and not counted in stats. Errors are {"error": {"code": "...", "message": "..."}}
// with the EC2 error's status (400 for bad input and unknown ids) or 404 for unknown paths.
//
//	GET    /_sim/state          -> State: {"account_id","region","vpc":{"id","cidr"},
//	                               "subnets":[{"id","cidr","availability_zone","availability_zone_id",
//	                                 "vpc_id","tags","size","available","in_use","free_blocks",
//	                                 "reservations":[{"id","cidr","type"}]}],
//	                               "instances":[{"id","instance_type","subnet_id","availability_zone",
//	                                 "state","private_ip","private_dns_name","primary_eni","mac",
//	                                 "enis":[...],"tags","imds_endpoint"}],
//	                               "enis":[{"id","subnet_id","vpc_id","availability_zone","mac",
//	                                 "description","status","foreign","attachment":{"id","instance_id",
//	                                 "device_index","network_card_index","delete_on_termination","status"},
//	                                 "primary_ip","secondary_ips":[...],"prefixes":[...],"tags"}]}
//	GET    /_sim/stats          -> {"calls":{"AssignPrivateIpAddresses":{"calls":150,"throttled":50,
//	                                 "errors":{"RequestLimitExceeded":50}}, ...}}
//	GET    /_sim/faults         -> {"Action":{"code","http_status","probability","latency":"250ms",
//	                                 "outcome":"before|after|reset|timeout"}}
//	POST   /_sim/faults         <- {"AssignPrivateIpAddresses":{"code":"InternalError","probability":0.5,
//	                                 "latency":"100ms"}, ...}  (sets or replaces per action) -> all faults
//	DELETE /_sim/faults         clears every fault -> {}
//	POST   /_sim/throttle       <- {"on": false} -> {"on": false}
//	GET    /_sim/profile        -> {"name":"realistic","calls":{"AssignPrivateIpAddresses":{"p50":"350ms",
//	                                 "p99":"1.5s"}, ...},"refused":{...},"describe_per_item":"1ms",
//	                                 "attach_usable":{"p50","p99","tail_share","tail_min","tail_max"},
//	                                 "detach_complete":{...},"describe_lag":{"share","mean","cap"}}
//	POST   /_sim/profile        <- {"name":"realistic"} (a preset) or a whole profile as GET shows it
//	                               -> the profile now in use (calls already under way keep theirs)
//	POST   /_sim/instances      <- {"instance_type":"m5.large","subnet_id":"subnet-...","count":2,
//	                                 "tags":{"k":"v"},"pending":false} -> {"instances":[InstanceInfo...]}
//	POST   /_sim/instances/{id}/start  a pending instance runs (and gets IMDS) -> {"started":"i-..."}
//	DELETE /_sim/instances/{id} terminate -> {"terminated":"i-..."}
//	POST   /_sim/foreign-enis   <- {"subnet_id":"subnet-...","addresses":10} -> ENIInfo (an unattached,
//	                               untagged ENI of another user holding 1..64 addresses, primary included)
//	POST   /_sim/fragment       <- {"subnet_id":"subnet-..."} -> {"occupied":510} (one foreign address
//	                               in every free aligned /28, so InsufficientCidrBlocks follows)
//	GET    /_sim/iid-certificate -> PEM: the certificate that verifies instance identity documents
//
// # Clients
//
// aws-sdk-go-v2 talking to any fast loopback server can lose a response body ("deserialization
// failed ... use of closed network connection" on a 200): smithy-go closes the request body when
// the response headers arrive, while net/http may still read it once more. Give the SDK an HTTP
// client whose transport buffers request bodies: NewHTTPClient, or BufferBodies around your own
// transport. The IMDS client is not affected (its requests have no body).
//
// # Scenarios
//
// A scenario (YAML or JSON, see Scenario and testdata/scenario.yaml) gives the account, region,
// VPC, subnets, instances, deny list, faults, eventual-consistency delay and EC2 profile. IDs not given are
// generated from the seed (subnet- and eni- + 17 hex digits), so a seed reproduces them.
package ec2sim
