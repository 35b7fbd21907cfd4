package allocator

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ipledger/ipledger/server/allocator/policy"
	"github.com/ipledger/ipledger/server/ec2gw"
)

// Cluster is what the allocator reads of, and tells, Kubernetes (package kube in production,
// over client-go informers; nil without a Kubernetes client, and ipledger runs on agents'
// reports alone). Its reads come from in-memory caches and do no I/O: they are leaf calls
// that may be made holding Allocator.mu. Its writes (Events, the node's condition) are queued
// and sent by the Cluster itself, never waited for.
type Cluster interface {
	// BoundPods lists the pods bound to the node (spec.nodeName) that use the pod network
	// and have not ended or been deleted.
	BoundPods(node string) []PodRef
	// PodExists reports whether the API knows a pod of that uid, or of that namespace and
	// name bound to node (false once it is deleted); known reports whether the caches have
	// synced at all.
	PodExists(node, namespace, name, uid string) (exists, known bool)
	// Watch calls fn, from one goroutine of the Cluster's, whenever the pods bound to a node
	// or the node's objects change; fn must not block. The returned func stops the calls.
	Watch(fn func(ClusterEvent)) (stop func())
	// PodsWaiting tells people and autoscalers that pods of the node wait for an address,
	// and why (an Event per pod, a condition on the Node); an empty list clears the signal.
	PodsWaiting(node string, pods []PodRef, reason WaitReason, message string)
}

// PodRef names a pod.
type PodRef struct {
	Namespace, Name, UID string
	// BoundAt is when the Cluster first saw the pod bound to its node.
	BoundAt time.Time
}

// ClusterEvent says what changed in Kubernetes for a node.
type ClusterEvent struct {
	Node string
	// NodeDeleted: the Node object was deleted.
	NodeDeleted bool
	// InstanceID: the Cluster learnt that an instance (a Karpenter NodeClaim's, or the Node's
	// provider id) will be or is this node; Node may be empty before the node has a name.
	InstanceID string
}

// WaitReason is why pods of a node wait for an address (the Event's reason).
type WaitReason string

// The reasons of waiting pods.
const (
	WaitSubnetExhausted WaitReason = "SubnetExhausted"
	WaitEC2Throttled    WaitReason = "EC2Throttled"
	WaitRefillInFlight  WaitReason = "RefillInFlight"
	WaitNodeDraining    WaitReason = "NodeDraining"
	WaitNodeAtLimit     WaitReason = "NodeAtLimit"
)

// waitReasonOf classifies a supply problem (nil: the refill is on its way).
func waitReasonOf(err error) WaitReason {
	switch {
	case err == nil:
		return WaitRefillInFlight
	case errors.Is(err, ErrDraining):
		return WaitNodeDraining
	case errors.Is(err, ErrSubnetExhausted), errors.Is(err, ErrBudgetExhausted), errors.Is(err, ErrNoFreePrefixBlock):
		return WaitSubnetExhausted
	case errors.Is(err, ErrThrottled):
		return WaitEC2Throttled
	case errors.Is(err, ErrNodeAtLimit):
		return WaitNodeAtLimit
	}
	return WaitRefillInFlight
}

// lookaheadLocked lists the pods bound to the node that hold no address yet (the agent's last
// report names the pods it serves, by uid): the demand the scheduler announced before their CNI
// ADD. Without a Cluster, or with the lookahead off, it is empty.
func (a *Allocator) lookaheadLocked(ns *nodeState) []PodRef {
	if !a.cfg.Lookahead {
		return nil
	}
	return a.boundWaitingLocked(ns)
}

// boundWaitingLocked lists the pods bound to the node that hold no address yet, whether the
// lookahead counts them or not.
func (a *Allocator) boundWaitingLocked(ns *nodeState) []PodRef {
	if a.cfg.Cluster == nil {
		return nil
	}
	pods := a.cfg.Cluster.BoundPods(ns.name)
	if len(pods) == 0 {
		return nil
	}
	held := map[string]bool{}
	if ns.usage != nil {
		for _, p := range ns.usage.InUse {
			if p.PodUID != "" {
				held[p.PodUID] = true
			}
			held[p.PodNamespace+"/"+p.PodName] = true
		}
	}
	out := pods[:0:0]
	for _, p := range pods {
		if !held[p.UID] && !held[p.Namespace+"/"+p.Name] {
			out = append(out, p)
		}
	}
	return out
}

// BoundWaiting lists the pods bound to the node that hold no address yet (for ipledgerctl and
// the dashboard; empty without a Cluster).
func (a *Allocator) BoundWaiting(node string) []PodRef {
	ns, ok := a.node(node)
	if !ok || a.cfg.Cluster == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.boundWaitingLocked(ns)
}

// watchCluster kicks nodes whose pods changed, drains nodes deleted in the API and registers
// instances the cluster announced, until ctx ends. Leader only: the Cluster's caches are warm on
// every replica, but only the leader acts on them.
func (a *Allocator) watchCluster(ctx context.Context) {
	events := make(chan ClusterEvent, 1024)
	stop := a.cfg.Cluster.Watch(func(ev ClusterEvent) {
		select {
		case events <- ev:
		default:
			// A burst beyond the buffer: the tick looks at every node within a second anyway.
		}
	})
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-events:
			a.clusterEvent(ctx, ev)
		}
	}
}

func (a *Allocator) clusterEvent(ctx context.Context, ev ClusterEvent) {
	if ev.Node != "" {
		if _, ok := a.node(ev.Node); ok {
			if ev.NodeDeleted {
				a.nodeDeleted(ctx, ev.Node)
				return
			}
			a.mu.Lock()
			if ns := a.nodes[ev.Node]; ns != nil {
				ns.nextSupply = time.Time{}
			}
			a.mu.Unlock()
			a.kick(ev.Node)
			return
		}
	}
	if ev.InstanceID != "" && !ev.NodeDeleted {
		a.preregisterAsync(ctx, ev.InstanceID, nil)
	}
}

// nodeDeleted drains a node whose Node object was deleted: it gets no new addresses and its
// surplus goes back at once, without waiting for EC2 to show the instance's termination; the
// instance check is asked to look now.
func (a *Allocator) nodeDeleted(ctx context.Context, node string) {
	rec, ok := a.led.Node(node)
	if !ok {
		return
	}
	if !rec.Draining {
		cctx, cancel := context.WithTimeout(ctx, a.cfg.PassTimeout)
		err := a.Drain(cctx, node, false)
		cancel()
		if err != nil {
			a.log.Warn("drain node deleted in Kubernetes", "node", node, "err", err)
			return
		}
		a.log.Info("node deleted in Kubernetes: draining", "node", node, "instance", rec.InstanceID)
	}
	go func() {
		cctx, cancel := context.WithTimeout(ctx, a.cfg.PassTimeout)
		defer cancel()
		if gone, err := a.instanceGone(cctx, rec.InstanceID, ec2gw.PriorityRelease); err == nil && gone {
			if err := a.removeNode(cctx, node, "node deleted in Kubernetes, instance gone"); err != nil {
				a.log.Warn("remove node", "node", node, "err", err)
			}
		}
	}()
}

// signalWaiting tells the Cluster which bound pods of the node wait, and why; called after a
// supply pass. Pods bound less than waitSignalAfter ago are not yet waiting (their ADD is
// on its way); a node with none clears its signal (sent once per change).
func (a *Allocator) signalWaiting(ns *nodeState, problem error) {
	if a.cfg.Cluster == nil {
		return
	}
	now := a.now()
	a.mu.Lock()
	pods := a.boundWaitingLocked(ns)
	var waiting []PodRef
	for _, p := range pods {
		if now.Sub(p.BoundAt) >= waitSignalAfter {
			waiting = append(waiting, p)
		}
	}
	reason := waitReasonOf(problem)
	key := string(reason) + "/" + strconv.Itoa(len(waiting))
	if len(waiting) == 0 {
		key = ""
	}
	same := key == ns.signalKey
	ns.signalKey = key
	a.mu.Unlock()
	if same {
		return
	}
	msg := "waiting for a VPC address from ipledger"
	if problem != nil {
		msg += ": " + problem.Error()
	}
	a.cfg.Cluster.PodsWaiting(ns.name, waiting, reason, msg)
}

// waitSignalAfter is how long a pod bound to a node may be without an address before it is
// said to wait (the kubelet takes about a second from binding to CNI ADD).
const waitSignalAfter = 5 * time.Second

// preregisterAsync registers, in the background, an instance Kubernetes announced before its
// agent started (a Karpenter NodeClaim's, a Node's provider id), or one EC2 lists as pending
// with the cluster tag (described already: inst is its description; nil describes it), so that
// supply gives the node its first addresses before its agent registers. Each instance is tried
// once per leader unless it fails; a failed one is tried again after preregisterRetry.
func (a *Allocator) preregisterAsync(ctx context.Context, instanceID string, inst *ec2gw.Instance) {
	if _, ok := a.led.NodeByInstance(instanceID); ok {
		return
	}
	now := a.now()
	a.mu.Lock()
	if a.preregistering[instanceID] || now.Sub(a.preregFailed[instanceID]) < preregisterRetry {
		a.mu.Unlock()
		return
	}
	a.preregistering[instanceID] = true
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		cctx, cancel := context.WithTimeout(ctx, a.cfg.PassTimeout)
		defer cancel()
		var name string
		var err error
		if inst != nil {
			name, err = a.preregisterInstance(cctx, *inst)
		} else {
			name, err = a.Preregister(cctx, instanceID)
		}
		a.mu.Lock()
		delete(a.preregistering, instanceID)
		if err != nil {
			a.preregFailed[instanceID] = a.now()
		} else {
			delete(a.preregFailed, instanceID)
		}
		a.mu.Unlock()
		if err != nil {
			if ctx.Err() == nil {
				a.log.Info("pre-register instance", "instance", instanceID, "err", err)
			}
			return
		}
		source := "kubernetes"
		if inst != nil {
			source = "ec2-pending"
		}
		a.met.preregistered.WithLabelValues(source).Inc()
		a.log.Info("instance pre-registered before its agent", "instance", instanceID, "node", name, "source", source)
	}()
}

// preregisterRetry is how long an instance whose pre-registration failed (no policy for it, a
// zone without pod subnet, EC2 unavailable) waits before it is tried again.
const preregisterRetry = time.Minute

// Preregister registers an instance as its agent will (the node named by its private DNS name,
// as EKS and Karpenter name nodes, or by its instance id with NodeNames "instance-id"), from
// EC2's description, before the agent starts: supply then gives it its first addresses at
// node-start priority, and the agent's registration finds the node registered. The instance
// must be pending or running.
func (a *Allocator) Preregister(ctx context.Context, instanceID string) (string, error) {
	if rec, ok := a.led.NodeByInstance(instanceID); ok {
		return rec.Name, nil
	}
	inst, err := a.describer.describe(ctx, instanceID, ec2gw.PriorityNodeStart)
	if err != nil {
		return "", ec2Err(err, "")
	}
	return a.preregisterInstance(ctx, inst)
}

// preregisterInstance registers a described instance as its agent will.
func (a *Allocator) preregisterInstance(ctx context.Context, inst ec2gw.Instance) (string, error) {
	if rec, ok := a.led.NodeByInstance(inst.ID); ok {
		return rec.Name, nil
	}
	if inst.State != "pending" && inst.State != "running" {
		return "", fmt.Errorf("%w: instance %s is %s", ErrInstanceMismatch, inst.ID, inst.State)
	}
	name := inst.PrivateDNSName
	if a.cfg.NodeNames == NodeNamesInstanceID {
		name = inst.ID
	}
	if name == "" {
		return "", fmt.Errorf("%w: instance %s has no private DNS name yet", ErrInstanceMismatch, inst.ID)
	}
	req := Registration{
		NodeName: name, InstanceID: inst.ID, InstanceType: inst.Type,
		AvailabilityZone: inst.AvailabilityZone, SubnetID: inst.SubnetID, PrimaryIP: inst.PrivateIP,
	}
	for _, e := range inst.ENIs {
		if e.Attachment != nil && e.Attachment.DeviceIndex == 0 {
			req.PrimaryENI = e.ID
		}
	}
	if _, _, err := a.registerNode(ctx, req, &inst); err != nil {
		return "", err
	}
	return req.NodeName, nil
}

// discoverPending looks for instances EC2 lists as pending that carry the cluster's instance
// tag (PendingTag) and are not registered, and pre-registers them from that description: a node
// any autoscaler launched gets its first addresses while it boots, before its agent can
// register. One filtered, paginated DescribeInstances a round (up to 1000 instances a page), at
// reconcile priority, through the gateway's one limiter: it takes a token of the describe
// bucket only when no other call of higher priority wants it, and a round waiting for one
// delays the next (the loop runs one round at a time).
// ctx is the leadership's (the pre-registrations it starts outlive the round); the describe
// has PassTimeout.
func (a *Allocator) discoverPending(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, a.cfg.PassTimeout)
	defer cancel()
	f := ec2gw.InstanceFilter{States: []string{"pending"}}
	key, val, hasVal := strings.Cut(a.cfg.PendingTag, "=")
	if hasVal {
		f.Tags = map[string]string{key: val}
	} else {
		f.TagKeys = []string{key}
	}
	insts, err := a.gw.DescribeInstancesFiltered(dctx, ec2gw.PriorityReconcile, f)
	if err != nil {
		return ec2Err(err, "")
	}
	seen := map[string]bool{}
	for _, in := range insts {
		seen[in.ID] = true
		if _, ok := a.led.NodeByInstance(in.ID); ok {
			continue
		}
		a.preregisterAsync(ctx, in.ID, &in)
	}
	a.mu.Lock()
	for id := range a.preregFailed {
		if !seen[id] && !a.preregistering[id] {
			delete(a.preregFailed, id) // running or gone: its agent (or nobody) registers it
		}
	}
	a.mu.Unlock()
	return nil
}

// staleCheckEvery is how often the pods agents report are compared with the API's: a tenth of
// the grace, within [1 s, 10 s].
func staleCheckEvery(grace time.Duration) time.Duration {
	return min(max(grace/10, time.Second), 10*time.Second)
}

// checkStalePods finds, on every node, the pods the agent reports holding an address that the
// Kubernetes API deleted (their CNI DEL never came: a runtime that lost the sandbox, a node
// restarted under the kubelet) and, once the API has lacked them for StalePodGrace, names them
// to the agent, which gives each address back only if its own state agrees (the pod's veth is
// gone). The next usage report shows the result; a pod still reported is named again after
// another grace. Nothing is done before the caches have synced, so an API outage or a slow
// start frees nothing.
func (a *Allocator) checkStalePods(context.Context) error {
	now := a.now()
	grace := a.cfg.StalePodGrace
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ns := range a.nodes {
		if ns.usage == nil || len(ns.usage.InUse) == 0 {
			ns.goneSince = nil
			continue
		}
		seen := map[string]bool{}
		var due []string
		for _, p := range ns.usage.InUse {
			if p.PodUID == "" && p.PodName == "" {
				continue // a recovered address: the agent looks after it from the kernel's rules
			}
			key := p.PodUID
			if key == "" {
				key = p.PodNamespace + "/" + p.PodName
			}
			exists, known := a.cfg.Cluster.PodExists(ns.name, p.PodNamespace, p.PodName, p.PodUID)
			if !known {
				return nil
			}
			if exists {
				continue
			}
			seen[key] = true
			if ns.goneSince == nil {
				ns.goneSince = map[string]time.Time{}
			}
			since, ok := ns.goneSince[key]
			if !ok {
				ns.goneSince[key] = now
				continue
			}
			if now.Sub(since) >= grace {
				due = append(due, key)
			}
		}
		for k := range ns.goneSince {
			if !seen[k] {
				delete(ns.goneSince, k)
			}
		}
		if len(due) == 0 || now.Sub(ns.staleSentAt) < grace || len(ns.subs) == 0 {
			continue
		}
		ns.staleSentAt = now
		slices.Sort(due)
		for s := range ns.subs {
			s.sendStale(due)
		}
		a.met.stalePods.Add(float64(len(due)))
		a.log.Info("pods deleted in Kubernetes still hold addresses on their node; asking its agent to give them back",
			"node", ns.name, "pods", due, "grace", grace)
	}
	return nil
}

// leadSamples keeps the last leads (how long before a pod held its address the Cluster showed
// it bound to its node), to size the free stock the lookahead makes unnecessary.
type leadSamples struct {
	ring []time.Duration
	next int
}

const leadSampleCount = 128

func (l *leadSamples) add(d time.Duration) {
	if len(l.ring) < leadSampleCount {
		l.ring = append(l.ring, d)
		return
	}
	l.ring[l.next] = d
	l.next = (l.next + 1) % leadSampleCount
}

// low is the 10th percentile of the samples (ok false before minLeadSamples): the lead most
// pods get at least.
func (l *leadSamples) low() (time.Duration, bool) {
	if len(l.ring) < minLeadSamples {
		return 0, false
	}
	s := slices.Clone(l.ring)
	slices.Sort(s)
	return s[len(s)/10], true
}

const minLeadSamples = 10

// sampleLeadsLocked records, for each pod the agent reports holding an address for the first
// time, how long before this report the Cluster showed it bound (its BoundAt): the time the
// lookahead had to supply it before its ADD, report delay included.
func (a *Allocator) sampleLeadsLocked(ns *nodeState, now time.Time) {
	if !a.cfg.Lookahead || a.cfg.Cluster == nil || ns.usage == nil {
		return
	}
	var bound map[string]time.Time
	seen := make(map[string]bool, len(ns.usage.InUse))
	for _, p := range ns.usage.InUse {
		key := p.PodUID
		if key == "" {
			key = p.PodNamespace + "/" + p.PodName
		}
		if key == "/" {
			continue
		}
		seen[key] = true
		if ns.leadSeen[key] {
			continue
		}
		if bound == nil {
			bound = map[string]time.Time{}
			for _, b := range a.cfg.Cluster.BoundPods(ns.name) {
				bound[b.UID] = b.BoundAt
				bound[b.Namespace+"/"+b.Name] = b.BoundAt
			}
		}
		at, ok := bound[key]
		if !ok {
			at, ok = bound[p.PodNamespace+"/"+p.PodName]
		}
		if ok && !at.IsZero() {
			a.leads.add(max(now.Sub(at), 0))
		}
	}
	ns.leadSeen = seen
}

// discountAnnouncedLocked shrinks the adaptive target's expectation of pod starts by what the
// lookahead covers: a pod seen bound a lead L before its ADD needs no free address in stock
// when a refill takes less than L. With the usual lead (the 10th percentile of recent pods) at
// least the refill latency R, the starts need no stock (the policy's floor remains); with a
// shorter one, the share 1 - L/R still does. Without the lookahead, or before enough pods were
// seen, the target is as without Kubernetes.
func (a *Allocator) discountAnnouncedLocked(in *policy.Inputs) {
	if !a.cfg.Lookahead || a.cfg.Cluster == nil {
		return
	}
	lead, ok := a.leads.low()
	if !ok {
		return
	}
	r := in.RefillLatency
	if r <= 0 || lead >= r {
		in.StartRate, in.PeakBurst, in.StartPrior = 0, 0, 0
		return
	}
	f := 1 - float64(lead)/float64(r)
	in.StartRate *= f
	in.PeakBurst = int(math.Ceil(float64(in.PeakBurst) * f))
	in.StartPrior = int(math.Ceil(float64(in.StartPrior) * f))
}
