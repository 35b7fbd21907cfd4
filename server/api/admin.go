package api

import (
	"context"
	"net/netip"
	"slices"
	"sort"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// AdminServer implements AdminService. Reads are answered from this replica's copy of the
// state; changes only by the leader.
type AdminServer struct {
	ipledgerv1.UnimplementedAdminServiceServer
	replica Replica
	now     func() time.Time
}

var _ ipledgerv1.AdminServiceServer = (*AdminServer)(nil)

// NewAdminServer serves AdminService for a replica.
func NewAdminServer(r Replica) *AdminServer {
	return &AdminServer{replica: r, now: r.Clock().Now}
}

func (s *AdminServer) leader() (*allocator.Allocator, error) {
	if a := s.replica.Allocator(); a != nil {
		return a, nil
	}
	return nil, NotLeader(s.replica.LeaderAddress())
}

// ListSubnets implements AdminService.
func (s *AdminServer) ListSubnets(ctx context.Context, _ *ipledgerv1.ListSubnetsRequest) (*ipledgerv1.ListSubnetsResponse, error) {
	led := s.replica.Ledger()
	out := &ipledgerv1.ListSubnetsResponse{}
	budgets := led.Budgets(s.now())
	byID := map[string]*ipledgerv1.SubnetBudget{}
	for _, b := range budgets {
		sb := s.subnetBudget(led, b)
		byID[b.SubnetID] = sb
		out.Subnets = append(out.Subnets, sb)
	}
	nodes := led.Nodes()
	for _, rec := range nodes {
		if sb := byID[rec.SubnetID]; sb != nil {
			sb.Nodes++
		}
	}
	for _, g := range policy.Groups(s.policies(), led.Subnets()) {
		pg := &ipledgerv1.PodSubnetGroup{Policy: g.Policy, AvailabilityZone: g.Zone, ExcludePrimaryEni: g.ExcludePrimaryENI}
		state := map[string]policy.SubnetState{}
		var forecasts []policy.Forecast
		headroom := 0
		for _, c := range g.Subnets {
			sb := byID[c.SubnetID]
			if sb == nil {
				continue
			}
			sb.PodSubnetOf = append(sb.PodSubnetOf, &ipledgerv1.PodSubnetRole{Policy: g.Policy, AvailabilityZone: g.Zone, SecurityGroupIds: c.SecurityGroups})
			b, _ := led.Budget(c.SubnetID, s.now())
			st := policy.SubnetState{Budget: b}
			if f := sb.GetForecast(); f != nil {
				st.HeldPerHour = f.GetHeldPerHour()
				fc := policy.Forecast{HeldPerHour: f.GetHeldPerHour(), Window: f.GetWindow().AsDuration(), OK: f.GetTimeToExhaustion() != nil}
				forecasts = append(forecasts, fc)
			}
			state[c.SubnetID] = st
			headroom += b.Headroom
			pg.FreePrefixes += uint32(b.FreePrefixes)
		}
		pg.Headroom = uint32(headroom)
		for _, c := range policy.Rank(g.Subnets, state, false, 1) {
			pg.SubnetIds = append(pg.SubnetIds, c.SubnetID)
		}
		for _, c := range g.Subnets { // those without room, last
			if !slices.Contains(pg.SubnetIds, c.SubnetID) {
				pg.SubnetIds = append(pg.SubnetIds, c.SubnetID)
			}
		}
		fc := policy.GroupForecast(forecasts, headroom)
		pg.Forecast = &ipledgerv1.Forecast{HeldPerHour: fc.HeldPerHour, Window: durationpb.New(fc.Window)}
		if fc.OK {
			pg.Forecast.TimeToExhaustion = durationpb.New(fc.TimeToExhaustion)
		}
		for _, rec := range nodes {
			if rec.Policy == g.Policy && rec.AvailabilityZone == g.Zone {
				pg.Nodes++
			}
		}
		out.PodSubnetGroups = append(out.PodSubnetGroups, pg)
	}
	return out, nil
}

func (s *AdminServer) subnetBudget(led *ledger.Ledger, b ledger.Budget) *ipledgerv1.SubnetBudget {
	sb := &ipledgerv1.SubnetBudget{
		SubnetId:         b.SubnetID,
		AvailabilityZone: b.AvailabilityZone,
		Cidr:             b.CIDR.String(),
		Size:             uint32(b.Size),
		Reserved:         uint32(b.Reserved),
		Foreign:          uint32(b.Foreign),
		Held:             uint32(b.Held),
		EniPrimary:       uint32(b.ENIPrimary),
		InUse:            uint32(b.InUse),
		Idle:             uint32(b.Idle),
		PrewarmReserved:  uint32(b.PrewarmReserved),
		Free:             uint32(b.Free),
		FreePrefixes:     uint32(b.FreePrefixes),
		MaxHeld:          uint32(b.MaxHeld),
		KeepFree:         uint32(b.KeepFree),
		Headroom:         uint32(b.Headroom),
	}
	if rec, ok := led.Subnet(b.SubnetID); ok {
		sb.Tags, sb.VpcId = rec.Tags, rec.VPCID
	}
	if f := s.replica.Forecaster(); f != nil {
		fc := f.Forecast(b.SubnetID, b.Headroom)
		sb.Forecast = &ipledgerv1.Forecast{HeldPerHour: fc.HeldPerHour, Window: durationpb.New(fc.Window)}
		if fc.OK {
			sb.Forecast.TimeToExhaustion = durationpb.New(fc.TimeToExhaustion)
		}
	}
	return sb
}

// SetSubnetBudget implements AdminService.
func (s *AdminServer) SetSubnetBudget(ctx context.Context, req *ipledgerv1.SetSubnetBudgetRequest) (*ipledgerv1.SubnetBudget, error) {
	if err := allocator.ValidateSubnetID("subnet_id", req.GetSubnetId()); err != nil {
		return nil, Status(err)
	}
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	if _, err := a.SetSubnetBudget(ctx, req.GetSubnetId(), int(req.GetMaxHeld()), int(req.GetKeepFree())); err != nil {
		return nil, Status(err)
	}
	led := s.replica.Ledger()
	b, err := led.Budget(req.GetSubnetId(), s.now())
	if err != nil {
		return nil, Status(err)
	}
	return s.subnetBudget(led, b), nil
}

// ListNodes implements AdminService.
func (s *AdminServer) ListNodes(ctx context.Context, _ *ipledgerv1.ListNodesRequest) (*ipledgerv1.ListNodesResponse, error) {
	led := s.replica.Ledger()
	out := &ipledgerv1.ListNodesResponse{}
	for _, rec := range led.Nodes() {
		out.Nodes = append(out.Nodes, s.summary(led, rec))
	}
	s.identityColumns(ctx, out.Nodes)
	return out, nil
}

func (s *AdminServer) summary(led *ledger.Ledger, rec ledger.NodeRecord) *ipledgerv1.NodeSummary {
	sum := &ipledgerv1.NodeSummary{
		NodeName:         rec.Name,
		InstanceId:       rec.InstanceID,
		InstanceType:     rec.InstanceType,
		AvailabilityZone: rec.AvailabilityZone,
		SubnetId:         rec.SubnetID,
		Mode:             ModeToProto(rec.Mode),
		Policy:           rec.Policy,
		Enis:             uint32(len(rec.ENIs)),
		Draining:         rec.Draining,
		RegisteredAt:     timestamppb.New(rec.RegisteredAt),
	}
	if c, ok := led.NodeCounts(rec.Name); ok {
		sum.Held = uint32(c.Leased)
		sum.InUse = uint32(c.InUse)
		sum.Idle = uint32(c.Idle)
	}
	pol := policy.Match(s.policies(), rec.MatchLabels(), rec.InstanceType)
	if rec.Policy != "" {
		for _, p := range s.policies() {
			if p.Name == rec.Policy {
				pol = p
			}
		}
	}
	sum.ExcludePrimaryEni = pol.ExcludesPrimaryENI()
	sum.PodCapacity, sum.MaxPods = podCapacity(pol, rec)
	for _, e := range rec.ENIs {
		if e.ID != rec.PrimaryENI && !slices.Contains(sum.PodSubnetIds, e.SubnetID) {
			sum.PodSubnetIds = append(sum.PodSubnetIds, e.SubnetID)
		}
	}
	slices.Sort(sum.PodSubnetIds)
	if a := s.replica.Allocator(); a != nil {
		if rt, ok := a.Runtime(rec.Name); ok {
			sum.Connected = rt.Connected
			if !rt.LastReport.IsZero() {
				sum.LastReport = timestamppb.New(rt.LastReport)
			}
			sum.TargetFree = uint32(rt.Targets.TargetFree)
			if rt.Kubernetes {
				sum.Kubernetes = true
				sum.PodsBoundWithoutAddress = uint32(len(rt.BoundPods))
				for _, p := range boundPodsToProto(rt, s.now()) {
					if p.GetWaiting() {
						sum.PodsWaiting++
					}
				}
			}
			want := rt.Targets.WantAddresses
			if d := want - int(sum.Held); d > 0 {
				sum.Deficit = uint32(d)
			}
		}
	}
	return sum
}

// podCapacity is the pod addresses a node can hold (its type's ENIs, less the primary with
// custom networking, times their slots, capped by its policy) and the kubelet's max-pods for
// it (capacity + 2 within the max-pods ceiling); 0, 0 for a type the table does not know.
func podCapacity(p policy.Policy, rec ledger.NodeRecord) (capacity, maxPods uint32) {
	t, ok := instancetypes.Lookup(rec.InstanceType)
	if !ok {
		return 0, 0
	}
	shape := policy.ShapeOf(t, rec.Mode)
	shape.MaxENIs = t.MaxENIsPerCard()
	shape.PrimaryUnused = p.ExcludesPrimaryENI()
	n := shape.MaxAddresses()
	if p.MaxAddresses != nil {
		n = min(n, int(*p.MaxAddresses))
	}
	m, err := t.MaxPods(instancetypes.MaxPodsOptions{Prefix: rec.Mode == ledger.ModePrefix, CustomNetworking: p.ExcludesPrimaryENI()})
	if err != nil {
		return uint32(n), 0
	}
	return uint32(n), uint32(min(m.Recommended, n+instancetypes.HostNetworkPods))
}

// ListEvents implements AdminService (the leader's events; a standby answers NOT_LEADER).
func (s *AdminServer) ListEvents(ctx context.Context, req *ipledgerv1.ListEventsRequest) (*ipledgerv1.ListEventsResponse, error) {
	if n := req.GetNodeName(); n != "" {
		if err := allocator.ValidateNodeName("node_name", n); err != nil {
			return nil, Status(err)
		}
	}
	if id := req.GetSubnetId(); id != "" {
		if err := allocator.ValidateSubnetID("subnet_id", id); err != nil {
			return nil, Status(err)
		}
	}
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	out := &ipledgerv1.ListEventsResponse{}
	for _, e := range a.Events(req.GetNodeName(), req.GetSubnetId()) {
		out.Events = append(out.Events, &ipledgerv1.Event{
			FirstTime: timestamppb.New(e.FirstTime), LastTime: timestamppb.New(e.LastTime), Count: uint32(e.Count),
			Type: e.Type, Reason: e.Reason, NodeName: e.Node, SubnetId: e.Subnet, Message: e.Message,
		})
	}
	return out, nil
}

// GetNode implements AdminService.
func (s *AdminServer) GetNode(ctx context.Context, req *ipledgerv1.GetNodeRequest) (*ipledgerv1.NodeDetail, error) {
	if err := allocator.ValidateNodeName("node_name", req.GetNodeName()); err != nil {
		return nil, Status(err)
	}
	d, err := s.detail(req.GetNodeName())
	if err == nil {
		s.identityColumns(ctx, []*ipledgerv1.NodeSummary{d.GetSummary()})
	}
	return d, err
}

func (s *AdminServer) detail(name string) (*ipledgerv1.NodeDetail, error) {
	led := s.replica.Ledger()
	rec, ok := led.Node(name)
	if !ok {
		return nil, Status(allocatorUnknown(name))
	}
	d := &ipledgerv1.NodeDetail{Summary: s.summary(led, rec), Labels: rec.Labels}
	pool := &allocator.Pool{Node: rec, SubnetCIDRs: map[string]netip.Prefix{}}
	if a := s.replica.Allocator(); a != nil {
		if rt, ok := a.Runtime(name); ok {
			pool.Generation, pool.Targets = rt.Generation, rt.Targets
			d.Policy = PolicyToProto(rt.Policy)
			d.Pods = podsToProto(rt.Usage)
			d.BoundPods = boundPodsToProto(rt, s.now())
			if rt.Problem != nil {
				d.SupplyProblem = Reason(rt.Problem)
				d.SupplyMessage = rt.Problem.Error()
			} else if rt.ModeMessage != "" {
				d.SupplyMessage = rt.ModeMessage
			}
		}
	}
	if d.Policy == nil {
		d.Policy = PolicyToProto(policy.Match(s.policies(), rec.MatchLabels(), rec.InstanceType))
	}
	for _, e := range rec.ENIs {
		if sub, ok := led.Subnet(e.SubnetID); ok {
			pool.SubnetCIDRs[e.SubnetID] = sub.CIDR
		}
	}
	d.Pool = PoolToProto(pool)
	return d, nil
}

// boundPodsToProto lists the pods bound to the node without an address; those bound for
// allocator.WaitSignalAfter or more wait, for the node's wait reason.
func boundPodsToProto(rt allocator.NodeRuntime, now time.Time) []*ipledgerv1.BoundPod {
	out := make([]*ipledgerv1.BoundPod, 0, len(rt.BoundPods))
	for _, p := range rt.BoundPods {
		bp := &ipledgerv1.BoundPod{Namespace: p.Namespace, Name: p.Name, Uid: p.UID}
		if !p.BoundAt.IsZero() {
			bp.BoundAt = timestamppb.New(p.BoundAt)
		}
		if now.Sub(p.BoundAt) >= allocator.WaitSignalAfter {
			bp.Waiting, bp.WaitReason = true, string(rt.WaitReason)
		}
		out = append(out, bp)
	}
	return out
}

// Reason is the Reason a supply problem reports.
func Reason(err error) ipledgerv1.Reason {
	r, _ := ReasonOf(Status(err))
	return ipledgerv1.Reason(ipledgerv1.Reason_value[r])
}

// DrainNode implements AdminService.
func (s *AdminServer) DrainNode(ctx context.Context, req *ipledgerv1.DrainNodeRequest) (*ipledgerv1.NodeDetail, error) {
	if err := allocator.ValidateNodeName("node_name", req.GetNodeName()); err != nil {
		return nil, Status(err)
	}
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	if err := a.Drain(ctx, req.GetNodeName(), req.GetUndo()); err != nil {
		return nil, Status(err)
	}
	d, err := s.detail(req.GetNodeName())
	if err == nil {
		s.identityColumns(ctx, []*ipledgerv1.NodeSummary{d.GetSummary()})
	}
	return d, err
}

// GetLimiter implements AdminService (leader only: only the leader calls EC2).
func (s *AdminServer) GetLimiter(ctx context.Context, _ *ipledgerv1.GetLimiterRequest) (*ipledgerv1.LimiterState, error) {
	if _, err := s.leader(); err != nil {
		return nil, err
	}
	st := s.replica.LimiterState()
	out := &ipledgerv1.LimiterState{ThrottledTotal: st.ThrottledTotal}
	for _, b := range st.Buckets {
		out.Buckets = append(out.Buckets, &ipledgerv1.LimiterBucket{
			Name: b.Name, Capacity: uint32(b.Capacity), RefillPerSecond: b.RefillPerSecond,
			EffectiveRefillPerSecond: b.EffectiveRefillPerSecond, Tokens: b.Tokens, Actions: b.Actions,
		})
	}
	for p := ipledgerv1.Priority_PRIORITY_POD_WAITING; p <= ipledgerv1.Priority_PRIORITY_RECONCILE; p++ {
		out.Queue = append(out.Queue, &ipledgerv1.QueueLength{Priority: p, Waiting: uint32(st.Queue[ec2gw.Priority(p)])})
	}
	for _, t := range st.RecentThrottles {
		out.RecentThrottles = append(out.RecentThrottles, &ipledgerv1.ThrottleEvent{Time: timestamppb.New(t.Time), Action: t.Action})
	}
	for _, c := range st.Calls {
		out.Calls = append(out.Calls, &ipledgerv1.CallCount{Action: c.Action, Outcome: c.Outcome, Count: c.Count})
	}
	sort.Slice(out.Calls, func(i, j int) bool {
		if out.Calls[i].Action != out.Calls[j].Action {
			return out.Calls[i].Action < out.Calls[j].Action
		}
		return out.Calls[i].Outcome < out.Calls[j].Outcome
	})
	return out, nil
}

// ListPolicies implements AdminService.
func (s *AdminServer) ListPolicies(ctx context.Context, _ *ipledgerv1.ListPoliciesRequest) (*ipledgerv1.ListPoliciesResponse, error) {
	if a := s.replica.Allocator(); a != nil {
		return &ipledgerv1.ListPoliciesResponse{Policies: PoliciesToProto(a.Policies())}, nil
	}
	return &ipledgerv1.ListPoliciesResponse{Policies: PoliciesToProto(s.replica.Policies())}, nil
}

// policies are the policies as the leader's allocator has them, or this standby's copy.
func (s *AdminServer) policies() []policy.Policy {
	if a := s.replica.Allocator(); a != nil {
		return a.Policies()
	}
	return s.replica.Policies()
}

// SetPolicy implements AdminService.
func (s *AdminServer) SetPolicy(ctx context.Context, req *ipledgerv1.SetPolicyRequest) (*ipledgerv1.NodePolicy, error) {
	p, err := PolicyFromProto(req.GetPolicy())
	if err == nil {
		err = p.Validate()
	}
	if err != nil {
		return nil, Status(err)
	}
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	if p, err = a.SetPolicy(ctx, p); err != nil {
		return nil, Status(err)
	}
	return PolicyToProto(p), nil
}

// DeletePolicy implements AdminService.
func (s *AdminServer) DeletePolicy(ctx context.Context, req *ipledgerv1.DeletePolicyRequest) (*ipledgerv1.DeletePolicyResponse, error) {
	if req.GetName() == "" {
		return nil, invalidArg("name", "empty")
	}
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	if err := a.DeletePolicy(ctx, req.GetName()); err != nil {
		return nil, Status(err)
	}
	return &ipledgerv1.DeletePolicyResponse{}, nil
}

// Check implements AdminService (leader only: it may ask EC2).
func (s *AdminServer) Check(ctx context.Context, req *ipledgerv1.CheckRequest) (*ipledgerv1.CheckReport, error) {
	a, err := s.leader()
	if err != nil {
		return nil, err
	}
	rep, err := a.Check(ctx, req.GetIncludeEc2())
	if err != nil {
		return nil, Status(err)
	}
	return checkToProto(rep), nil
}

// GetClusterStatus implements AdminService.
func (s *AdminServer) GetClusterStatus(ctx context.Context, _ *ipledgerv1.GetClusterStatusRequest) (*ipledgerv1.ClusterStatus, error) {
	return s.replica.ClusterStatus(ctx), nil
}

func allocatorUnknown(name string) error {
	return &unknownNode{name}
}

type unknownNode struct{ name string }

func (u *unknownNode) Error() string { return "allocator: unknown node: " + u.name }
func (u *unknownNode) Unwrap() error { return allocator.ErrUnknownNode }
