package ctl

import (
	"sort"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// The documents ipledgerctl prints with -o json and -o yaml. Their field names are stable and
// documented in docs/ipledgerctl.md; they are ctl's own, not the wire format, so the API can
// evolve without breaking scripts. Enumerations are lower snake case without their prefix
// ("secondary_ip", "active", "pod_waiting", "leaked_eni").

// Subnet is one subnet's budget. Always size = reserved + foreign + held + prewarm_reserved +
// free, and held = eni_primary + in_use + idle.
type Subnet struct {
	SubnetID        string            `json:"subnet_id"`
	AZ              string            `json:"az"`
	CIDR            string            `json:"cidr"`
	Size            uint32            `json:"size"`
	Reserved        uint32            `json:"reserved"`
	Foreign         uint32            `json:"foreign"`
	Held            uint32            `json:"held"`
	ENIPrimary      uint32            `json:"eni_primary"`
	InUse           uint32            `json:"in_use"`
	Idle            uint32            `json:"idle"`
	PrewarmReserved uint32            `json:"prewarm_reserved"`
	Free            uint32            `json:"free"`
	FreePrefixes    uint32            `json:"free_prefixes"`
	MaxHeld         uint32            `json:"max_held"`
	KeepFree        uint32            `json:"keep_free"`
	Headroom        uint32            `json:"headroom"`
	Forecast        Forecast          `json:"forecast"`
	Tags            map[string]string `json:"tags"`
	VPCID           string            `json:"vpc_id"`
	// Nodes registered in the subnet (their primary ENI's).
	Nodes uint32 `json:"nodes"`
	// PodSubnetOf are the policies (and zones) the subnet is a pod subnet of; empty when none.
	PodSubnetOf []PodSubnetRole `json:"pod_subnet_of"`
}

// PodSubnetRole says that a subnet is a pod subnet of a policy in a zone.
type PodSubnetRole struct {
	Policy string `json:"policy"`
	AZ     string `json:"az"`
	// SecurityGroups of the ENIs there (empty: the node's primary ENI's).
	SecurityGroups []string `json:"security_groups"`
}

// PodSubnetGroup is the pod subnets one policy gives the nodes of one zone, best first; supply
// spills over from one to the next, so the group's headroom and forecast are their sums'.
type PodSubnetGroup struct {
	Policy            string   `json:"policy"`
	AZ                string   `json:"az"`
	SubnetIDs         []string `json:"subnet_ids"`
	Headroom          uint32   `json:"headroom"`
	FreePrefixes      uint32   `json:"free_prefixes"`
	Forecast          Forecast `json:"forecast"`
	Nodes             uint32   `json:"nodes"`
	ExcludePrimaryENI bool     `json:"exclude_primary_eni"`
}

func podSubnetGroupDocs(in []*ipledgerv1.PodSubnetGroup) []PodSubnetGroup {
	out := make([]PodSubnetGroup, 0, len(in))
	for _, g := range in {
		out = append(out, PodSubnetGroup{Policy: g.GetPolicy(), AZ: g.GetAvailabilityZone(), SubnetIDs: nonNil(g.GetSubnetIds()),
			Headroom: g.GetHeadroom(), FreePrefixes: g.GetFreePrefixes(), Forecast: forecastDoc(g.GetForecast()),
			Nodes: g.GetNodes(), ExcludePrimaryENI: g.GetExcludePrimaryEni()})
	}
	return out
}

// Forecast is a subnet's exhaustion forecast from the trend of held addresses.
type Forecast struct {
	// HeldPerHour is the change of held addresses per hour over the window.
	HeldPerHour float64 `json:"held_per_hour"`
	// ExhaustionInSeconds is the time until headroom reaches zero at that trend; null when the
	// trend is flat or shrinking, or the history is too short.
	ExhaustionInSeconds *float64 `json:"exhaustion_in_seconds"`
	// WindowSeconds is the span of history the trend was measured over.
	WindowSeconds float64 `json:"window_seconds"`
	// Status is "exhausts" (exhaustion_in_seconds is set), "never" (flat or shrinking) or
	// "unknown" (less than a minute of history).
	Status string `json:"status"`
}

// minForecastWindow is the least history from which the server computes a trend.
const minForecastWindow = time.Minute

func subnetDoc(b *ipledgerv1.SubnetBudget) Subnet {
	s := Subnet{
		SubnetID: b.GetSubnetId(), AZ: b.GetAvailabilityZone(), CIDR: b.GetCidr(), Size: b.GetSize(),
		Reserved: b.GetReserved(), Foreign: b.GetForeign(), Held: b.GetHeld(), ENIPrimary: b.GetEniPrimary(),
		InUse: b.GetInUse(), Idle: b.GetIdle(), PrewarmReserved: b.GetPrewarmReserved(), Free: b.GetFree(),
		FreePrefixes: b.GetFreePrefixes(), MaxHeld: b.GetMaxHeld(), KeepFree: b.GetKeepFree(),
		Headroom: b.GetHeadroom(), Tags: nonNilMap(b.GetTags()), VPCID: b.GetVpcId(), Nodes: b.GetNodes(),
		PodSubnetOf: []PodSubnetRole{},
	}
	for _, r := range b.GetPodSubnetOf() {
		s.PodSubnetOf = append(s.PodSubnetOf, PodSubnetRole{Policy: r.GetPolicy(), AZ: r.GetAvailabilityZone(), SecurityGroups: nonNil(r.GetSecurityGroupIds())})
	}
	s.Forecast = forecastDoc(b.GetForecast())
	return s
}

func forecastDoc(f *ipledgerv1.Forecast) Forecast {
	out := Forecast{HeldPerHour: f.GetHeldPerHour(), WindowSeconds: seconds(f.GetWindow()), Status: "unknown"}
	switch {
	case f.GetTimeToExhaustion() != nil:
		v := seconds(f.GetTimeToExhaustion())
		out.ExhaustionInSeconds = &v
		out.Status = "exhausts"
	case f != nil && f.GetWindow().AsDuration() >= minForecastWindow:
		out.Status = "never"
	}
	return out
}

func subnetDocs(in []*ipledgerv1.SubnetBudget) []Subnet {
	out := make([]Subnet, 0, len(in))
	for _, b := range in {
		out = append(out, subnetDoc(b))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].AZ != out[j].AZ {
			return out[i].AZ < out[j].AZ
		}
		if out[i].CIDR != out[j].CIDR {
			return ipLess(out[i].CIDR, out[j].CIDR)
		}
		return out[i].SubnetID < out[j].SubnetID
	})
	return out
}

// forecastText is the table's forecast column.
func (f Forecast) text() string {
	switch f.Status {
	case "exhausts":
		return "in " + human(time.Duration(*f.ExhaustionInSeconds*float64(time.Second)))
	case "never":
		return "never"
	default:
		return "n/a"
	}
}

// NodeSummary is one node's row.
type NodeSummary struct {
	NodeName     string `json:"node_name"`
	InstanceID   string `json:"instance_id"`
	InstanceType string `json:"instance_type"`
	AZ           string `json:"az"`
	SubnetID     string `json:"subnet_id"`
	Mode         string `json:"mode"`
	Policy       string `json:"policy"`
	ENIs         uint32 `json:"enis"`
	// Held, InUse, Idle count pod addresses (ENI primaries excluded).
	Held       uint32     `json:"held"`
	InUse      uint32     `json:"in_use"`
	Idle       uint32     `json:"idle"`
	TargetFree uint32     `json:"target_free"`
	Deficit    uint32     `json:"deficit"`
	Connected  bool       `json:"connected"`
	Draining   bool       `json:"draining"`
	LastReport *time.Time `json:"last_report"`
	Registered *time.Time `json:"registered_at"`
	// IdentityMethod is how the node's agent proved its identity: "aws-iid" (attested with its
	// instance identity document), "certificate" (a certificate of the client CA) or "" when
	// unknown (plaintext, or not seen yet).
	IdentityMethod string `json:"identity_method"`
	// CertificateNotAfter is the expiry of the node's certificate (the last one issued to it,
	// or the one its agent presented); null when unknown.
	CertificateNotAfter *time.Time `json:"certificate_not_after"`
	// PodCapacity is the pod addresses the node can hold (its ENIs, less the primary with
	// custom networking, times their slots, capped by its policy); MaxPods the kubelet's
	// --max-pods for it.
	PodCapacity       uint32   `json:"pod_capacity"`
	MaxPods           uint32   `json:"max_pods"`
	ExcludePrimaryENI bool     `json:"exclude_primary_eni"`
	PodSubnetIDs      []string `json:"pod_subnet_ids"`
	// Kubernetes says the server reads the Kubernetes API (and leads); PodsBoundWithoutAddress
	// then counts the pods bound to the node that hold no address yet, PodsWaiting those of
	// them bound for 5 s or more (they wait, and carry an Event).
	Kubernetes              bool   `json:"kubernetes"`
	PodsBoundWithoutAddress uint32 `json:"pods_bound_without_address"`
	PodsWaiting             uint32 `json:"pods_waiting"`
}

// BoundPod is a pod bound to a node (spec.nodeName) that holds no address yet.
type BoundPod struct {
	Namespace string     `json:"namespace"`
	Name      string     `json:"name"`
	UID       string     `json:"uid"`
	BoundAt   *time.Time `json:"bound_at"`
	// Waiting: bound for 5 s or more without an address; WaitReason is why (its Event's
	// reason). Otherwise its address is on its way as its CNI ADD comes.
	Waiting    bool   `json:"waiting"`
	WaitReason string `json:"wait_reason"`
}

func modeName(m ipledgerv1.AddressMode) string { return enumName(m.String(), "ADDRESS_MODE_") }

func nodeSummaryDoc(n *ipledgerv1.NodeSummary) NodeSummary {
	return NodeSummary{
		NodeName: n.GetNodeName(), InstanceID: n.GetInstanceId(), InstanceType: n.GetInstanceType(),
		AZ: n.GetAvailabilityZone(), SubnetID: n.GetSubnetId(), Mode: modeName(n.GetMode()), Policy: n.GetPolicy(),
		ENIs: n.GetEnis(), Held: n.GetHeld(), InUse: n.GetInUse(), Idle: n.GetIdle(), TargetFree: n.GetTargetFree(),
		Deficit: n.GetDeficit(), Connected: n.GetConnected(), Draining: n.GetDraining(),
		LastReport: timePtr(n.GetLastReport()), Registered: timePtr(n.GetRegisteredAt()),
		IdentityMethod: n.GetIdentityMethod(), CertificateNotAfter: timePtr(n.GetCertificateNotAfter()),
		PodCapacity: n.GetPodCapacity(), MaxPods: n.GetMaxPods(), ExcludePrimaryENI: n.GetExcludePrimaryEni(),
		PodSubnetIDs: nonNil(n.GetPodSubnetIds()),
		Kubernetes:   n.GetKubernetes(), PodsBoundWithoutAddress: n.GetPodsBoundWithoutAddress(), PodsWaiting: n.GetPodsWaiting(),
	}
}

// Identity is one node attestation the server recorded (one per instance).
type Identity struct {
	InstanceID string `json:"instance_id"`
	NodeName   string `json:"node_name"`
	// Method is "aws-iid" (the EC2 instance identity document).
	Method    string `json:"method"`
	AccountID string `json:"account_id"`
	Region    string `json:"region"`
	// KeySHA256 is the SHA-256 of the node key's SubjectPublicKeyInfo, in hex.
	KeySHA256   string     `json:"key_sha256"`
	AttestedAt  *time.Time `json:"attested_at"`
	PendingTime *time.Time `json:"pending_time"`
	// CertificateSerial and CertificateNotAfter are the last certificate issued (at
	// attestation or renewal).
	CertificateSerial   string     `json:"certificate_serial"`
	CertificateNotAfter *time.Time `json:"certificate_not_after"`
	RenewedAt           *time.Time `json:"renewed_at"`
	Renewals            uint32     `json:"renewals"`
}

func identityDoc(r *ipledgerv1.NodeIdentity) Identity {
	return Identity{
		InstanceID: r.GetInstanceId(), NodeName: r.GetNodeName(), Method: r.GetMethod(), AccountID: r.GetAccountId(),
		Region: r.GetRegion(), KeySHA256: r.GetKeySha256(), AttestedAt: timePtr(r.GetAttestedAt()), PendingTime: timePtr(r.GetPendingTime()),
		CertificateSerial: r.GetCertificateSerial(), CertificateNotAfter: timePtr(r.GetCertificateNotAfter()),
		RenewedAt: timePtr(r.GetRenewedAt()), Renewals: r.GetRenewals(),
	}
}

// keyShort is the first 12 hex digits of a key hash (as git shortens commits).
func keyShort(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return orDash(h)
}

// NodeDetail is one node with its ENIs, pods and policy. It has every NodeSummary field.
type NodeDetail struct {
	NodeSummary
	Generation   uint64            `json:"generation"`
	MaxAddresses uint32            `json:"max_addresses"`
	Interfaces   []Interface       `json:"interfaces"`
	Pods         []Pod             `json:"pods"`
	PolicyDetail *Policy           `json:"policy_detail"`
	Labels       map[string]string `json:"labels"`
	// SupplyProblem is the reason the node's last request for addresses could not be met
	// ("" when none), e.g. "subnet_exhausted".
	SupplyProblem string `json:"supply_problem"`
	SupplyMessage string `json:"supply_message"`
	// BoundPods are the pods bound to the node that hold no address yet, bound earliest first
	// (with a Kubernetes client).
	BoundPods []BoundPod `json:"bound_pods"`
}

// Interface is one ENI of a node.
type Interface struct {
	ENIID            string    `json:"eni_id"`
	DeviceIndex      uint32    `json:"device_index"`
	NetworkCardIndex uint32    `json:"network_card_index"`
	MACAddress       string    `json:"mac_address"`
	SubnetID         string    `json:"subnet_id"`
	SubnetCIDR       string    `json:"subnet_cidr"`
	PrimaryIP        string    `json:"primary_ip"`
	Addresses        []Address `json:"addresses"`
	Prefixes         []Prefix  `json:"prefixes"`
}

// Address is a leased secondary address and its lease state.
type Address struct {
	IP    string `json:"ip"`
	State string `json:"state"`
}

// Prefix is a leased /28 prefix and its lease state.
type Prefix struct {
	CIDR  string `json:"cidr"`
	State string `json:"state"`
}

// Pod is an address a pod uses, as the node's agent reports it.
type Pod struct {
	IP          string     `json:"ip"`
	Namespace   string     `json:"namespace"`
	Name        string     `json:"name"`
	UID         string     `json:"uid"`
	ContainerID string     `json:"container_id"`
	Ifname      string     `json:"ifname"`
	AssignedAt  *time.Time `json:"assigned_at"`
}

func leaseName(s ipledgerv1.LeaseState) string { return enumName(s.String(), "LEASE_STATE_") }

func nodeDetailDoc(d *ipledgerv1.NodeDetail) NodeDetail {
	out := NodeDetail{
		NodeSummary:   nodeSummaryDoc(d.GetSummary()),
		Generation:    d.GetPool().GetGeneration(),
		MaxAddresses:  d.GetPool().GetMaxAddresses(),
		Interfaces:    []Interface{},
		Pods:          []Pod{},
		BoundPods:     []BoundPod{},
		Labels:        nonNilMap(d.GetLabels()),
		SupplyMessage: d.GetSupplyMessage(),
	}
	if r := d.GetSupplyProblem(); r != ipledgerv1.Reason_REASON_UNSPECIFIED {
		out.SupplyProblem = enumName(r.String(), "")
	}
	if d.GetPolicy() != nil {
		p := policyDoc(d.GetPolicy())
		out.PolicyDetail = &p
	}
	for _, ni := range d.GetPool().GetInterfaces() {
		it := Interface{
			ENIID: ni.GetEniId(), DeviceIndex: ni.GetDeviceIndex(), NetworkCardIndex: ni.GetNetworkCardIndex(),
			MACAddress: ni.GetMacAddress(), SubnetID: ni.GetSubnetId(), SubnetCIDR: ni.GetSubnetCidr(),
			PrimaryIP: ni.GetPrimaryIp(), Addresses: []Address{}, Prefixes: []Prefix{},
		}
		for _, a := range ni.GetAddresses() {
			it.Addresses = append(it.Addresses, Address{IP: a.GetIp(), State: leaseName(a.GetState())})
		}
		for _, p := range ni.GetPrefixes() {
			it.Prefixes = append(it.Prefixes, Prefix{CIDR: p.GetCidr(), State: leaseName(p.GetState())})
		}
		sort.Slice(it.Addresses, func(i, j int) bool { return ipLess(it.Addresses[i].IP, it.Addresses[j].IP) })
		sort.Slice(it.Prefixes, func(i, j int) bool { return ipLess(it.Prefixes[i].CIDR, it.Prefixes[j].CIDR) })
		out.Interfaces = append(out.Interfaces, it)
	}
	sort.Slice(out.Interfaces, func(i, j int) bool {
		a, b := out.Interfaces[i], out.Interfaces[j]
		if a.NetworkCardIndex != b.NetworkCardIndex {
			return a.NetworkCardIndex < b.NetworkCardIndex
		}
		return a.DeviceIndex < b.DeviceIndex
	})
	for _, p := range d.GetBoundPods() {
		out.BoundPods = append(out.BoundPods, BoundPod{
			Namespace: p.GetNamespace(), Name: p.GetName(), UID: p.GetUid(), BoundAt: timePtr(p.GetBoundAt()),
			Waiting: p.GetWaiting(), WaitReason: p.GetWaitReason(),
		})
	}
	for _, p := range d.GetPods() {
		out.Pods = append(out.Pods, Pod{
			IP: p.GetIp(), Namespace: p.GetPodNamespace(), Name: p.GetPodName(), UID: p.GetPodUid(),
			ContainerID: p.GetContainerId(), Ifname: p.GetIfname(), AssignedAt: timePtr(p.GetAssignedAt()),
		})
	}
	sort.Slice(out.Pods, func(i, j int) bool {
		a, b := out.Pods[i], out.Pods[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Name != b.Name {
			return a.Name < b.Name
		}
		return ipLess(a.IP, b.IP)
	})
	return out
}

// Limiter is the state of the server's one EC2 limiter.
type Limiter struct {
	Buckets         []Bucket    `json:"buckets"`
	Queue           []Queue     `json:"queue"`
	RecentThrottles []Throttle  `json:"recent_throttles"`
	Calls           []CallCount `json:"calls"`
	ThrottledTotal  uint64      `json:"throttled_total"`
}

// Bucket mirrors one of EC2's token buckets.
type Bucket struct {
	Name                     string   `json:"name"`
	Capacity                 uint32   `json:"capacity"`
	RefillPerSecond          float64  `json:"refill_per_second"`
	EffectiveRefillPerSecond float64  `json:"effective_refill_per_second"`
	Tokens                   float64  `json:"tokens"`
	Actions                  []string `json:"actions"`
}

// Queue is how many calls wait at one priority.
type Queue struct {
	Priority string `json:"priority"`
	Waiting  uint32 `json:"waiting"`
}

// Throttle is one RequestLimitExceeded EC2 answered.
type Throttle struct {
	Time   *time.Time `json:"time"`
	Action string     `json:"action"`
}

// CallCount counts EC2 calls by action and outcome ("ok", "throttled" or the EC2 error code).
type CallCount struct {
	Action  string `json:"action"`
	Outcome string `json:"outcome"`
	Count   uint64 `json:"count"`
}

func priorityName(p ipledgerv1.Priority) string { return enumName(p.String(), "PRIORITY_") }

func limiterDoc(l *ipledgerv1.LimiterState) Limiter {
	out := Limiter{Buckets: []Bucket{}, Queue: []Queue{}, RecentThrottles: []Throttle{}, Calls: []CallCount{}, ThrottledTotal: l.GetThrottledTotal()}
	for _, b := range l.GetBuckets() {
		out.Buckets = append(out.Buckets, Bucket{
			Name: b.GetName(), Capacity: b.GetCapacity(), RefillPerSecond: b.GetRefillPerSecond(),
			EffectiveRefillPerSecond: b.GetEffectiveRefillPerSecond(), Tokens: b.GetTokens(), Actions: nonNil(b.GetActions()),
		})
	}
	sort.Slice(out.Buckets, func(i, j int) bool { return out.Buckets[i].Name < out.Buckets[j].Name })
	queue := append([]*ipledgerv1.QueueLength(nil), l.GetQueue()...)
	sort.Slice(queue, func(i, j int) bool { return queue[i].GetPriority() < queue[j].GetPriority() })
	for _, q := range queue {
		out.Queue = append(out.Queue, Queue{Priority: priorityName(q.GetPriority()), Waiting: q.GetWaiting()})
	}
	for _, t := range l.GetRecentThrottles() {
		out.RecentThrottles = append(out.RecentThrottles, Throttle{Time: timePtr(t.GetTime()), Action: t.GetAction()})
	}
	sort.SliceStable(out.RecentThrottles, func(i, j int) bool {
		a, b := out.RecentThrottles[i].Time, out.RecentThrottles[j].Time
		return a != nil && b != nil && a.Before(*b)
	})
	for _, c := range l.GetCalls() {
		out.Calls = append(out.Calls, CallCount{Action: c.GetAction(), Outcome: c.GetOutcome(), Count: c.GetCount()})
	}
	sort.Slice(out.Calls, func(i, j int) bool {
		if out.Calls[i].Action != out.Calls[j].Action {
			return out.Calls[i].Action < out.Calls[j].Action
		}
		return out.Calls[i].Outcome < out.Calls[j].Outcome
	})
	return out
}

// Reservation is a pre-warm reservation.
type Reservation struct {
	ID                string       `json:"id"`
	SubnetID          string       `json:"subnet_id"`
	AZ                string       `json:"az"`
	InstanceType      string       `json:"instance_type"`
	NodeCount         uint32       `json:"node_count"`
	AddressesPerNode  uint32       `json:"addresses_per_node"`
	CreatedAt         *time.Time   `json:"created_at"`
	ExpiresAt         *time.Time   `json:"expires_at"`
	ENIs              []PrewarmENI `json:"enis"`
	ReservedAddresses uint32       `json:"reserved_addresses"`
	// State is "pending", "ready", "expired", "cancelled" or "consumed".
	State string `json:"state"`
}

// PrewarmENI is one pre-created ENI of a reservation.
type PrewarmENI struct {
	ENIID string `json:"eni_id"`
	// State is "creating", "ready", "attached" or "deleting".
	State     string   `json:"state"`
	NodeName  string   `json:"node_name"`
	Addresses []string `json:"addresses"`
}

func reservationDoc(r *ipledgerv1.PrewarmReservation) Reservation {
	out := Reservation{
		ID: r.GetId(), SubnetID: r.GetSubnetId(), AZ: r.GetAvailabilityZone(), InstanceType: r.GetInstanceType(),
		NodeCount: r.GetNodeCount(), AddressesPerNode: r.GetAddressesPerNode(), CreatedAt: timePtr(r.GetCreatedAt()),
		ExpiresAt: timePtr(r.GetExpiresAt()), ENIs: []PrewarmENI{}, ReservedAddresses: r.GetReservedAddresses(), State: r.GetState(),
	}
	for _, e := range r.GetEnis() {
		out.ENIs = append(out.ENIs, PrewarmENI{ENIID: e.GetEniId(), State: e.GetState(), NodeName: e.GetNodeName(), Addresses: nonNil(e.GetAddresses())})
	}
	sort.Slice(out.ENIs, func(i, j int) bool { return out.ENIs[i].ENIID < out.ENIs[j].ENIID })
	return out
}

// Fit is CanFit's answer.
type Fit struct {
	Fits bool `json:"fits"`
	// Needed is the addresses the nodes would need (pods, ENI primaries, warm floor).
	Needed uint32 `json:"needed"`
	// Available is what the budget still allows in the subnets considered.
	Available uint32   `json:"available"`
	Reasons   []string `json:"reasons"`
	Subnets   []Subnet `json:"subnets"`
	// With --policy: the pod subnets considered and the ENIs of the nodes each takes.
	PodSubnetIDs  []string `json:"pod_subnet_ids"`
	PodSubnetENIs []uint32 `json:"pod_subnet_enis"`
}

func fitDoc(r *ipledgerv1.CanFitResponse) Fit {
	return Fit{Fits: r.GetFits(), Needed: r.GetNeeded(), Available: r.GetAvailable(), Reasons: nonNil(r.GetReasons()), Subnets: subnetDocs(r.GetSubnets()),
		PodSubnetIDs: nonNil(r.GetPodSubnetIds()), PodSubnetENIs: nonNil(r.GetPodSubnetEnis())}
}

// Report is the result of check.
type Report struct {
	OK               bool       `json:"ok"`
	Findings         []Finding  `json:"findings"`
	NodesChecked     uint32     `json:"nodes_checked"`
	ENIsChecked      uint32     `json:"enis_checked"`
	AddressesChecked uint32     `json:"addresses_checked"`
	CheckedAt        *time.Time `json:"checked_at"`
	IncludedEC2      bool       `json:"included_ec2"`
}

// Finding is one inconsistency.
type Finding struct {
	// Kind is "double_owner", "leased_not_on_ec2", "on_ec2_not_leased", "leaked_eni",
	// "in_use_not_leased", "double_use" or "eni_mismatch".
	Kind     string `json:"kind"`
	SubnetID string `json:"subnet_id"`
	NodeName string `json:"node_name"`
	ENIID    string `json:"eni_id"`
	Address  string `json:"address"`
	Detail   string `json:"detail"`
}

func reportDoc(r *ipledgerv1.CheckReport, ec2 bool) Report {
	out := Report{
		OK: r.GetOk() && len(r.GetFindings()) == 0, Findings: []Finding{}, NodesChecked: r.GetNodesChecked(),
		ENIsChecked: r.GetEnisChecked(), AddressesChecked: r.GetAddressesChecked(), CheckedAt: timePtr(r.GetCheckedAt()),
		IncludedEC2: ec2,
	}
	for _, f := range r.GetFindings() {
		out.Findings = append(out.Findings, Finding{
			Kind: enumName(f.GetKind().String(), "FINDING_KIND_"), SubnetID: f.GetSubnetId(), NodeName: f.GetNodeName(),
			ENIID: f.GetEniId(), Address: f.GetAddress(), Detail: f.GetDetail(),
		})
	}
	sort.SliceStable(out.Findings, func(i, j int) bool {
		a, b := out.Findings[i], out.Findings[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.NodeName != b.NodeName {
			return a.NodeName < b.NodeName
		}
		if a.ENIID != b.ENIID {
			return a.ENIID < b.ENIID
		}
		return ipLess(a.Address, b.Address)
	})
	return out
}

// Status is which replica answered and how the cluster stands.
type Status struct {
	// Server is the address ipledgerctl asked (--server).
	Server string `json:"server"`
	// Replica is the advertised address of the replica that answered.
	Replica       string `json:"replica"`
	IsLeader      bool   `json:"is_leader"`
	Leader        string `json:"leader"`
	StoreHealthy  bool   `json:"store_healthy"`
	StoreMessage  string `json:"store_message"`
	Revision      int64  `json:"revision"`
	ClusterName   string `json:"cluster_name"`
	Nodes         uint32 `json:"nodes"`
	Subnets       uint32 `json:"subnets"`
	ServerVersion string `json:"server_version"`
	// ServerCommit is the commit the answering replica was built from ("" from servers that
	// do not say).
	ServerCommit string `json:"server_commit"`
}

func statusDoc(server string, s *ipledgerv1.ClusterStatus) Status {
	return Status{
		Server: server, Replica: s.GetReplica(), IsLeader: s.GetIsLeader(), Leader: s.GetLeader(),
		StoreHealthy: s.GetStoreHealthy(), StoreMessage: s.GetStoreMessage(), Revision: s.GetRevision(),
		ClusterName: s.GetClusterName(), Nodes: s.GetNodes(), Subnets: s.GetSubnets(), ServerVersion: s.GetVersion(),
		ServerCommit: s.GetCommit(),
	}
}
