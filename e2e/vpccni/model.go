package vpccni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/ipledger/ipledger/server/instancetypes"
)

// Errors of the model.
var (
	// ErrNoAvailableIP: AddNetwork found no free address; ipamd fails the call at once.
	ErrNoAvailableIP = errors.New("vpccni: no available IP address")
	// ErrNotReady: the node has not finished its start (DescribeInstances).
	ErrNotReady = errors.New("vpccni: ipamd not ready")
	// ErrUnknownPod: Del of a pod the node does not know.
	ErrUnknownPod = errors.New("vpccni: unknown pod")
)

// EC2 error codes after which ipamd stops growing for SubnetErrorPause.
const (
	CodeInsufficientCidrBlocks = "InsufficientCidrBlocks"
	CodeSubnetFull             = "InsufficientFreeAddressesInSubnet"
)

// Config configures one modelled node.
type Config struct {
	Settings Settings
	// Timers (zero: DefaultTimers, unscaled).
	Timers Timers
	// EC2 is the node's own SDK client (NewEC2Client).
	EC2 *ec2.Client
	// InstanceID of the node's instance.
	InstanceID string
	// ENIConfig is the node's zone's ENIConfig (custom networking only; required there).
	ENIConfig *ENIConfig
	// IMDSEndpoint is the instance's metadata service ("http://127.0.0.1:PORT"): after attaching
	// an ENI, the node waits until IMDS lists it before using its addresses, as ipamd does. Empty:
	// no wait.
	IMDSEndpoint string
	// Logger (nil: discard).
	Logger *slog.Logger
	// Now is the model's clock (nil: time.Now); tests inject one and call Reconcile themselves.
	Now func() time.Time
}

// Counts are what a node holds, from its own datastore.
type Counts struct {
	ENIs int `json:"enis"`
	// Total pod addresses (secondary addresses, or every address of the prefixes).
	Total    int `json:"total"`
	Assigned int `json:"assigned"`
	Cooling  int `json:"cooling"`
	Free     int `json:"free"`
	Prefixes int `json:"prefixes"`
	// Held counts every address taken from the subnet: ENI primaries plus Total.
	Held int `json:"held"`
	// SubnetErrors counts InsufficientCidrBlocks / InsufficientFreeAddressesInSubnet answers.
	SubnetErrors int `json:"subnet_errors"`
}

type address struct {
	pod       string
	coolUntil time.Time
	prefix    netip.Prefix // the /28 it belongs to, in prefix mode
}

type eniState struct {
	id           string
	device       int
	attachmentID string
	primaryIP    netip.Addr
	addrs        map[netip.Addr]*address
	prefixes     []netip.Prefix
}

// slotsUsed is how many IPv4 slots (besides the primary) the ENI uses on EC2.
func (e *eniState) slotsUsed() int {
	if len(e.prefixes) > 0 {
		return len(e.prefixes) + len(e.addrs) - 16*len(e.prefixes)
	}
	return len(e.addrs)
}

// Node is one modelled ipamd.
type Node struct {
	cfg    Config
	imds   *imds.Client // nil: no IMDS wait
	log    *slog.Logger
	now    func() time.Time
	ready  chan struct{}
	loopMu sync.Mutex // one reconciliation at a time

	// Set by start (under mu).
	mu           sync.Mutex
	started      bool
	typ          instancetypes.Type
	subnetID     string
	groups       []string
	enis         []*eniState // by device index
	pods         map[string]netip.Addr
	pausedUntil  time.Time
	lastAction   time.Time
	subnetErrors int
}

// New checks the configuration and returns a node; Run starts it.
func New(cfg Config) (*Node, error) {
	if err := cfg.Settings.Validate(); err != nil {
		return nil, err
	}
	if cfg.EC2 == nil || cfg.InstanceID == "" {
		return nil, errors.New("vpccni: EC2 client and InstanceID are required")
	}
	if cfg.Settings.CustomNetworking && (cfg.ENIConfig == nil || cfg.ENIConfig.Subnet == "") {
		return nil, errors.New("vpccni: custom networking needs the zone's ENIConfig")
	}
	if cfg.Timers == (Timers{}) {
		cfg.Timers = DefaultTimers()
	}
	cfg.Timers = cfg.Timers.withDefaults()
	if cfg.Timers.PoolLoop <= 0 || cfg.Timers.ReleaseInterval < 0 || cfg.Timers.Cooldown < 0 || cfg.Timers.SubnetErrorPause < 0 {
		return nil, errors.New("vpccni: timers must not be negative and the pool loop must be positive")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	n := &Node{cfg: cfg, log: cfg.Logger, now: cfg.Now, ready: make(chan struct{}), pods: map[string]netip.Addr{}}
	if cfg.IMDSEndpoint != "" {
		n.imds = imds.New(imds.Options{Endpoint: cfg.IMDSEndpoint})
	}
	return n, nil
}

// Ready is closed once the node knows its instance (its first DescribeInstances succeeded).
func (n *Node) Ready() <-chan struct{} { return n.ready }

// Run starts the node (retrying its DescribeInstances every pool loop until it succeeds) and
// runs the pool loop until ctx ends.
func (n *Node) Run(ctx context.Context) error {
	t := time.NewTicker(n.cfg.Timers.PoolLoop)
	defer t.Stop()
	for {
		if err := n.Reconcile(ctx); err != nil && ctx.Err() == nil {
			n.log.Debug("pool loop", "instance", n.cfg.InstanceID, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Start reads the instance (type, subnet, ENIs) with DescribeInstances. Reconcile calls it until
// it has succeeded once.
func (n *Node) Start(ctx context.Context) error {
	n.mu.Lock()
	started := n.started
	n.mu.Unlock()
	if started {
		return nil
	}
	inst, err := n.describeInstance(ctx)
	if err != nil {
		return err
	}
	typ, ok := instancetypes.Lookup(string(inst.InstanceType))
	if !ok {
		return fmt.Errorf("vpccni: unknown instance type %q", inst.InstanceType)
	}
	if n.cfg.Settings.PrefixMode && !typ.PrefixDelegation() {
		return fmt.Errorf("vpccni: %s does not support prefix delegation", typ.Name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.typ = typ
	n.subnetID = aws.ToString(inst.SubnetId)
	for _, ni := range inst.NetworkInterfaces {
		if ni.Attachment == nil {
			continue
		}
		e := &eniState{id: aws.ToString(ni.NetworkInterfaceId), device: int(aws.ToInt32(ni.Attachment.DeviceIndex)),
			attachmentID: aws.ToString(ni.Attachment.AttachmentId), addrs: map[netip.Addr]*address{}}
		for _, pa := range ni.PrivateIpAddresses {
			ip, err := netip.ParseAddr(aws.ToString(pa.PrivateIpAddress))
			if err != nil {
				continue
			}
			if aws.ToBool(pa.Primary) {
				e.primaryIP = ip
			} else {
				e.addrs[ip] = &address{}
			}
		}
		for _, p := range ni.Ipv4Prefixes {
			if pf, err := netip.ParsePrefix(aws.ToString(p.Ipv4Prefix)); err == nil {
				e.addPrefix(pf)
			}
		}
		if e.device == 0 {
			for _, g := range ni.Groups {
				n.groups = append(n.groups, aws.ToString(g.GroupId))
			}
		}
		n.enis = append(n.enis, e)
	}
	sort.Slice(n.enis, func(i, j int) bool { return n.enis[i].device < n.enis[j].device })
	n.started = true
	close(n.ready)
	return nil
}

func (e *eniState) addPrefix(p netip.Prefix) {
	e.prefixes = append(e.prefixes, p)
	for ip := p.Masked().Addr(); p.Contains(ip); ip = ip.Next() {
		e.addrs[ip] = &address{prefix: p}
	}
}

func (n *Node) describeInstance(ctx context.Context) (types.Instance, error) {
	out, err := n.cfg.EC2.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{n.cfg.InstanceID}})
	if err != nil {
		return types.Instance{}, fmt.Errorf("vpccni: DescribeInstances %s: %w", n.cfg.InstanceID, err)
	}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			if aws.ToString(in.InstanceId) == n.cfg.InstanceID {
				return in, nil
			}
		}
	}
	return types.Instance{}, fmt.Errorf("vpccni: DescribeInstances did not return %s", n.cfg.InstanceID)
}

// Add hands a free, non-cooling address to the pod (the same one again for a known pod), or
// fails at once with ErrNoAvailableIP.
func (n *Node) Add(pod string) (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.started {
		return netip.Addr{}, ErrNotReady
	}
	if ip, ok := n.pods[pod]; ok {
		return ip, nil
	}
	now := n.now()
	for _, e := range n.enis {
		for _, ip := range sortedAddrs(e.addrs) {
			a := e.addrs[ip]
			if a.pod == "" && !now.Before(a.coolUntil) {
				a.pod = pod
				n.pods[pod] = ip
				return ip, nil
			}
		}
	}
	return netip.Addr{}, ErrNoAvailableIP
}

// Del takes a pod's address back; it cools down before reuse.
func (n *Node) Del(pod string) (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	ip, ok := n.pods[pod]
	if !ok {
		return netip.Addr{}, fmt.Errorf("%w: %s", ErrUnknownPod, pod)
	}
	delete(n.pods, pod)
	for _, e := range n.enis {
		if a, ok := e.addrs[ip]; ok {
			a.pod = ""
			a.coolUntil = n.now().Add(n.cfg.Timers.Cooldown)
		}
	}
	return ip, nil
}

// Counts returns what the node holds now.
func (n *Node) Counts() Counts {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.countsLocked(n.now())
}

func (n *Node) countsLocked(now time.Time) Counts {
	c := Counts{ENIs: len(n.enis), SubnetErrors: n.subnetErrors}
	for _, e := range n.enis {
		c.Prefixes += len(e.prefixes)
		for _, a := range e.addrs {
			c.Total++
			switch {
			case a.pod != "":
				c.Assigned++
			case now.Before(a.coolUntil):
				c.Cooling++
			default:
				c.Free++
			}
		}
	}
	c.Held = c.ENIs + c.Total
	return c
}

func sortedAddrs(m map[netip.Addr]*address) []netip.Addr {
	out := make([]netip.Addr, 0, len(m))
	for ip := range m {
		out = append(out, ip)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	return out
}

// plan is one pool-loop decision.
type plan struct {
	// short: addresses (or prefixes in prefix mode) to add; fill: fill whole ENIs (WARM_ENI_TARGET).
	short int
	fill  bool
	// wantENIs is the ENI count WARM_ENI_TARGET wants (0 in the other modes).
	wantENIs int
	// over: addresses (or prefixes) above the targets that may be released.
	over int
}

func ceilDiv(a, b int) int {
	if b <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

func (n *Node) planLocked(now time.Time) plan {
	c := n.countsLocked(now)
	s := n.cfg.Settings
	slots := n.typ.IPv4PerENI - 1
	used := c.Assigned + c.Cooling
	switch {
	case s.warmIPMode():
		short := max(s.WarmIPTarget-c.Free, s.MinimumIPTarget-c.Total, 0)
		if s.WarmIPTarget == 0 && c.Free == 0 {
			// MINIMUM_IP_TARGET alone: a node whose pods used every address still grows by one
			// (otherwise the model would never serve pod number MINIMUM_IP_TARGET+1).
			short = max(short, 1)
		}
		over := max(min(c.Free-s.WarmIPTarget, c.Total-s.MinimumIPTarget), 0)
		return plan{short: short, over: over}
	case s.PrefixMode:
		want := ceilDiv(used, 16) + s.WarmPrefixTarget
		return plan{short: max(want-c.Prefixes, 0), over: max(c.Prefixes-want, 0)}
	case s.CustomNetworking:
		// The primary ENI holds no pods: WARM_ENI_TARGET counts the pod ENIs only.
		want := min(ceilDiv(used, slots)+s.WarmENITarget, n.typ.MaxENIs-1)
		podENIs := len(n.enis) - 1
		short := max(want*slots-c.Total, 0)
		if short > 0 && !n.hasRoomLocked() && podENIs >= want {
			short = 0
		}
		return plan{short: short, fill: true, wantENIs: want + 1, over: max(podENIs-want, 0)}
	default:
		want := min(max(1, ceilDiv(used, slots))+s.WarmENITarget, n.typ.MaxENIs)
		short := max(want*slots-c.Total, 0)
		if short > 0 && !n.hasRoomLocked() && len(n.enis) >= want {
			short = 0 // the ENIs it wants are there and full
		}
		return plan{short: short, fill: true, wantENIs: want, over: max(len(n.enis)-want, 0)}
	}
}

func (n *Node) hasRoomLocked() bool {
	return n.eniWithRoomLocked() != nil
}

// eniWithRoomLocked is the first ENI (by device index) with a free slot.
func (n *Node) eniWithRoomLocked() *eniState {
	slots := n.typ.IPv4PerENI - 1
	for _, e := range n.enis {
		if e.device == 0 && n.cfg.Settings.CustomNetworking {
			continue // custom networking: no pods on the primary ENI
		}
		if e.slotsUsed() < slots {
			return e
		}
	}
	return nil
}

// Reconcile runs one pass of the pool loop: start the node if needed, then grow by one EC2 step
// when short, or release (at most every ReleaseInterval) when over.
func (n *Node) Reconcile(ctx context.Context) error {
	n.loopMu.Lock()
	defer n.loopMu.Unlock()
	if err := n.Start(ctx); err != nil {
		return err
	}
	now := n.now()
	n.mu.Lock()
	p := n.planLocked(now)
	paused := now.Before(n.pausedUntil)
	sinceAction := now.Sub(n.lastAction)
	n.mu.Unlock()
	switch {
	case p.short > 0 && !paused:
		return n.increase(ctx, p)
	case p.short == 0 && p.over > 0 && sinceAction >= n.cfg.Timers.ReleaseInterval:
		return n.decrease(ctx, p)
	}
	return nil
}

// subnetError pauses growth after the subnet could not give what was asked.
func (n *Node) subnetError(err error) {
	if code := errCode(err); code == CodeInsufficientCidrBlocks || code == CodeSubnetFull {
		n.mu.Lock()
		n.pausedUntil = n.now().Add(n.cfg.Timers.SubnetErrorPause)
		n.subnetErrors++
		n.mu.Unlock()
	}
}

func (n *Node) increase(ctx context.Context, p plan) error {
	n.mu.Lock()
	slots := n.typ.IPv4PerENI - 1
	e := n.eniWithRoomLocked()
	var eniID string
	var room int
	if e != nil {
		eniID, room = e.id, slots-e.slotsUsed()
	}
	canAdd := len(n.enis) < n.typ.MaxENIs && (p.wantENIs == 0 || len(n.enis) < p.wantENIs)
	n.mu.Unlock()
	if e == nil {
		if !canAdd {
			return nil
		}
		id, err := n.createENI(ctx)
		if err != nil {
			return err
		}
		eniID, room = id, slots
	}
	count := min(p.short, room)
	if p.fill {
		count = room
	}
	if count <= 0 {
		return nil
	}
	err := n.assign(ctx, eniID, count)
	if count > 1 && !n.cfg.Settings.PrefixMode && errCode(err) == CodeSubnetFull {
		// ipamd's tryAssignIPs: when the ENI's fill fails, "try to just get one more IP" (it
		// does so after any error but a limit; the model only after the subnet's).
		err = n.assign(ctx, eniID, 1)
	}
	if err != nil {
		n.subnetError(err)
	}
	return err
}

// assign adds count addresses (or prefixes) to an ENI, EC2 choosing which.
func (n *Node) assign(ctx context.Context, eniID string, count int) error {
	in := &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eniID)}
	if n.cfg.Settings.PrefixMode {
		in.Ipv4PrefixCount = aws.Int32(int32(count))
	} else {
		in.SecondaryPrivateIpAddressCount = aws.Int32(int32(count))
	}
	out, err := n.cfg.EC2.AssignPrivateIpAddresses(ctx, in)
	if err != nil {
		return fmt.Errorf("vpccni: AssignPrivateIpAddresses %s (%d): %w", eniID, count, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.lastAction = n.now()
	e := n.eniLocked(eniID)
	if e == nil {
		return nil
	}
	for _, a := range out.AssignedPrivateIpAddresses {
		if ip, err := netip.ParseAddr(aws.ToString(a.PrivateIpAddress)); err == nil {
			e.addrs[ip] = &address{}
		}
	}
	for _, a := range out.AssignedIpv4Prefixes {
		if pf, err := netip.ParsePrefix(aws.ToString(a.Ipv4Prefix)); err == nil {
			e.addPrefix(pf)
		}
	}
	return nil
}

func (n *Node) eniLocked(id string) *eniState {
	for _, e := range n.enis {
		if e.id == id {
			return e
		}
	}
	return nil
}

// createENI makes, attaches and records a new ENI as ipamd does: DescribeSubnets,
// CreateNetworkInterface, DescribeInstances (free device index), AttachNetworkInterface,
// ModifyNetworkInterfaceAttribute (DeleteOnTermination). An ENI that cannot be attached is
// deleted again.
func (n *Node) createENI(ctx context.Context) (string, error) {
	n.mu.Lock()
	subnet, groups := n.subnetID, append([]string(nil), n.groups...)
	n.mu.Unlock()
	if c := n.cfg.ENIConfig; n.cfg.Settings.CustomNetworking {
		subnet = c.Subnet
		if len(c.SecurityGroups) > 0 {
			groups = append([]string(nil), c.SecurityGroups...)
		}
	}
	if _, err := n.cfg.EC2.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: []string{subnet}}); err != nil {
		return "", fmt.Errorf("vpccni: DescribeSubnets: %w", err)
	}
	created, err := n.cfg.EC2.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{
		SubnetId:    aws.String(subnet),
		Groups:      groups,
		Description: aws.String("aws-K8S-" + n.cfg.InstanceID),
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeNetworkInterface, Tags: []types.Tag{
			{Key: aws.String("node.k8s.amazonaws.com/instance_id"), Value: aws.String(n.cfg.InstanceID)},
		}}},
	})
	if err != nil {
		n.subnetError(err)
		return "", fmt.Errorf("vpccni: CreateNetworkInterface: %w", err)
	}
	eniID := aws.ToString(created.NetworkInterface.NetworkInterfaceId)
	mac := aws.ToString(created.NetworkInterface.MacAddress)
	primary, _ := netip.ParseAddr(aws.ToString(created.NetworkInterface.PrivateIpAddress))
	cleanup := func(cause error) error {
		if _, derr := n.cfg.EC2.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(eniID)}); derr != nil {
			n.log.Debug("delete of unattached ENI failed", "eni", eniID, "err", derr)
		}
		return cause
	}
	inst, err := n.describeInstance(ctx)
	if err != nil {
		return "", cleanup(err)
	}
	used := map[int]bool{}
	for _, ni := range inst.NetworkInterfaces {
		if ni.Attachment != nil {
			used[int(aws.ToInt32(ni.Attachment.DeviceIndex))] = true
		}
	}
	device := 1
	for used[device] {
		device++
	}
	att, err := n.cfg.EC2.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: aws.String(eniID), InstanceId: aws.String(n.cfg.InstanceID), DeviceIndex: aws.Int32(int32(device)),
	})
	if err != nil {
		return "", cleanup(fmt.Errorf("vpccni: AttachNetworkInterface: %w", err))
	}
	attID := aws.ToString(att.AttachmentId)
	if _, err := n.cfg.EC2.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: aws.String(eniID),
		Attachment:         &types.NetworkInterfaceAttachmentChanges{AttachmentId: aws.String(attID), DeleteOnTermination: aws.Bool(true)},
	}); err != nil {
		n.log.Debug("ModifyNetworkInterfaceAttribute failed", "eni", eniID, "err", err)
	}
	if err := n.waitAttached(ctx, mac); err != nil {
		// ipamd gives up on this ENI for now; its reconciliation finds it in IMDS later.
		n.log.Debug("attached ENI not in IMDS", "eni", eniID, "err", err)
	}
	n.mu.Lock()
	n.enis = append(n.enis, &eniState{id: eniID, device: device, attachmentID: attID, primaryIP: primary, addrs: map[netip.Addr]*address{}})
	sort.Slice(n.enis, func(i, j int) bool { return n.enis[i].device < n.enis[j].device })
	n.lastAction = n.now()
	n.mu.Unlock()
	return eniID, nil
}

// waitAttached waits until the instance's IMDS lists the MAC under network/interfaces/macs/, as
// ipamd's waitENIAttached does: polls from IMDSWaitMin doubling (at most RetryMax), 12 tries.
func (n *Node) waitAttached(ctx context.Context, mac string) error {
	if n.imds == nil || mac == "" {
		return nil
	}
	pause := n.cfg.Timers.IMDSWaitMin
	for try := 1; ; try++ {
		out, err := n.imds.GetMetadata(ctx, &imds.GetMetadataInput{Path: "network/interfaces/macs/"})
		if err == nil {
			b, rerr := io.ReadAll(out.Content)
			out.Content.Close()
			if rerr == nil && slices.Contains(strings.Fields(strings.ReplaceAll(string(b), "/", " ")), mac) {
				return nil
			}
		}
		if try == retries {
			return fmt.Errorf("vpccni: ENI %s not in IMDS after %d tries", mac, retries)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, n.cfg.Timers.RetryMax)
	}
}

func (n *Node) decrease(ctx context.Context, p plan) error {
	switch {
	case n.cfg.Settings.warmIPMode():
		return n.releaseAddresses(ctx, p.over)
	case n.cfg.Settings.PrefixMode:
		return n.releasePrefixes(ctx, p.over)
	default:
		return n.releaseENI(ctx)
	}
}

// idleLocked: no address of the ENI is assigned or cooling.
func idleLocked(e *eniState, now time.Time) bool {
	for _, a := range e.addrs {
		if a.pod != "" || now.Before(a.coolUntil) {
			return false
		}
	}
	return true
}

// releaseENI frees one whole secondary ENI without pods (the default mode frees nothing else).
func (n *Node) releaseENI(ctx context.Context) error {
	n.mu.Lock()
	now := n.now()
	var victim *eniState
	for i := len(n.enis) - 1; i >= 0; i-- {
		if e := n.enis[i]; e.device != 0 && idleLocked(e, now) {
			victim = e
			break
		}
	}
	n.mu.Unlock()
	if victim == nil {
		return nil
	}
	return n.freeENI(ctx, victim)
}

func (n *Node) freeENI(ctx context.Context, e *eniState) error {
	n.mu.Lock()
	// Take it out of the datastore first so no pod gets one of its addresses meanwhile.
	for i, x := range n.enis {
		if x == e {
			n.enis = append(n.enis[:i], n.enis[i+1:]...)
			break
		}
	}
	n.lastAction = n.now()
	n.mu.Unlock()
	if _, err := n.cfg.EC2.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: aws.String(e.attachmentID)}); err != nil {
		n.restoreENI(e)
		return fmt.Errorf("vpccni: DetachNetworkInterface %s: %w", e.id, err)
	}
	// ipamd waits 2 s for EC2 to detach the ENI, then retries the delete (500 ms doubling, at
	// most 1 min, 12 tries); an ENI already gone counts as deleted.
	pause := n.cfg.Timers.RetryMin
	wait := n.cfg.Timers.DetachWait
	for try := 1; ; try++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		_, err := n.cfg.EC2.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(e.id)})
		if err == nil || errCode(err) == "InvalidNetworkInterfaceID.NotFound" {
			return nil
		}
		if try == retries {
			// ipamd leaves it for its leaked-ENI cleanup; the addresses stay taken on EC2.
			return fmt.Errorf("vpccni: DeleteNetworkInterface %s: %w", e.id, err)
		}
		wait, pause = pause, min(2*pause, n.cfg.Timers.RetryMax)
	}
}

func (n *Node) restoreENI(e *eniState) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.enis = append(n.enis, e)
	sort.Slice(n.enis, func(i, j int) bool { return n.enis[i].device < n.enis[j].device })
}

// releaseAddresses unassigns up to over free addresses, from the last ENIs first, one call per
// ENI; secondary ENIs left empty are freed too.
func (n *Node) releaseAddresses(ctx context.Context, over int) error {
	n.mu.Lock()
	now := n.now()
	byENI := map[*eniState][]netip.Addr{}
	var order []*eniState
	for i := len(n.enis) - 1; i >= 0 && over > 0; i-- {
		e := n.enis[i]
		for _, ip := range sortedAddrs(e.addrs) {
			a := e.addrs[ip]
			if over == 0 {
				break
			}
			if a.pod == "" && !now.Before(a.coolUntil) {
				if len(byENI[e]) == 0 {
					order = append(order, e)
				}
				byENI[e] = append(byENI[e], ip)
				delete(e.addrs, ip) // out of the datastore before the call
				over--
			}
		}
	}
	if len(order) > 0 {
		n.lastAction = now
	}
	n.mu.Unlock()
	var errs []error
	for _, e := range order {
		ips := make([]string, 0, len(byENI[e]))
		for _, ip := range byENI[e] {
			ips = append(ips, ip.String())
		}
		if _, err := n.cfg.EC2.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{
			NetworkInterfaceId: aws.String(e.id), PrivateIpAddresses: ips,
		}); err != nil {
			n.mu.Lock()
			for _, ip := range byENI[e] {
				e.addrs[ip] = &address{}
			}
			n.mu.Unlock()
			errs = append(errs, fmt.Errorf("vpccni: UnassignPrivateIpAddresses %s: %w", e.id, err))
			continue
		}
		n.mu.Lock()
		empty := e.device != 0 && len(e.addrs) == 0
		n.mu.Unlock()
		if empty {
			if err := n.freeENI(ctx, e); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// releasePrefixes unassigns up to over prefixes none of whose addresses is assigned or cooling.
func (n *Node) releasePrefixes(ctx context.Context, over int) error {
	n.mu.Lock()
	now := n.now()
	type item struct {
		e *eniState
		p netip.Prefix
	}
	var items []item
	for i := len(n.enis) - 1; i >= 0 && len(items) < over; i-- {
		e := n.enis[i]
		for j := len(e.prefixes) - 1; j >= 0 && len(items) < over; j-- {
			p := e.prefixes[j]
			free := true
			for ip := p.Masked().Addr(); p.Contains(ip); ip = ip.Next() {
				if a := e.addrs[ip]; a != nil && (a.pod != "" || now.Before(a.coolUntil)) {
					free = false
					break
				}
			}
			if free {
				items = append(items, item{e, p})
			}
		}
	}
	for _, it := range items {
		removePrefixLocked(it.e, it.p)
	}
	if len(items) > 0 {
		n.lastAction = now
	}
	n.mu.Unlock()
	var errs []error
	for _, it := range items {
		if _, err := n.cfg.EC2.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{
			NetworkInterfaceId: aws.String(it.e.id), Ipv4Prefixes: []string{it.p.String()},
		}); err != nil {
			n.mu.Lock()
			it.e.addPrefix(it.p)
			n.mu.Unlock()
			errs = append(errs, fmt.Errorf("vpccni: UnassignPrivateIpAddresses %s %s: %w", it.e.id, it.p, err))
		}
	}
	return errors.Join(errs...)
}

func removePrefixLocked(e *eniState, p netip.Prefix) {
	for i, x := range e.prefixes {
		if x == p {
			e.prefixes = append(e.prefixes[:i], e.prefixes[i+1:]...)
			break
		}
	}
	for ip := p.Masked().Addr(); p.Contains(ip); ip = ip.Next() {
		delete(e.addrs, ip)
	}
}
