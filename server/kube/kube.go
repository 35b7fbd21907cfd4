// Package kube is the server's optional view of the Kubernetes API: client-go shared informers
// of pods bound to nodes, of Nodes and of Karpenter's NodeClaims (karpenter.sh/v1, when the CRD
// is installed), each object trimmed by the informer's transform before it is stored (a pod
// keeps name, namespace, uid, node, host network, phase and deletion; a Node its name, provider
// id and labels; a NodeClaim its provider id and node name), so its caches stay small at
// 200,000 pods. It implements allocator.Cluster: the allocator reads the caches and is told of
// changes, and it posts Events on pods that wait for an address and a condition on their Node.
//
// Every replica runs the informers (a standby's caches are warm when it takes over); only the
// leader's allocator acts on them and writes. It never changes a pod or a Node's spec, and never
// calls EC2 or etcd.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/ipledger/ipledger/internal/clock"
	"github.com/ipledger/ipledger/server/allocator"
)

// NodeClaimGVR is Karpenter's NodeClaim resource.
var NodeClaimGVR = schema.GroupVersionResource{Group: "karpenter.sh", Version: "v1", Resource: "nodeclaims"}

// ConditionAddressesWaiting is the Node condition ipledger sets while pods bound to the node
// wait for an address (status True, reason one of allocator's WaitReasons, the message with the
// count and the cause); False when none wait. Autoscalers and people read it; it is no taint
// and changes no scheduling.
const ConditionAddressesWaiting corev1.NodeConditionType = "ipledger.io/AddressesWaiting"

// ErrNoConfig: neither a kubeconfig nor an in-cluster configuration is available.
var ErrNoConfig = errors.New("kube: no kubeconfig and not in a cluster")

// RestConfig loads a client configuration: path "" uses the in-cluster configuration when
// there is one (ErrNoConfig when not), "none" turns the client off (ErrNoConfig), anything else
// is a kubeconfig file.
func RestConfig(path string) (*rest.Config, error) {
	switch path {
	case "none":
		return nil, ErrNoConfig
	case "":
		c, err := rest.InClusterConfig()
		if errors.Is(err, rest.ErrNotInCluster) {
			return nil, ErrNoConfig
		}
		if err != nil {
			return nil, fmt.Errorf("kube: in-cluster config: %w", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("kube: kubeconfig %s: %w", path, err)
	}
	return c, nil
}

// Config wires a Watcher.
type Config struct {
	Rest   *rest.Config
	Clock  clock.Clock
	Logger *slog.Logger
	// Resync of the informers (0: none).
	Resync time.Duration
}

// Watcher holds the informers' caches. Create it with New, Start it, and hand it to the
// allocator as its Cluster.
type Watcher struct {
	cfg    Config
	log    *slog.Logger
	client kubernetes.Interface
	dyn    dynamic.Interface

	factory  informers.SharedInformerFactory // pods bound to nodes
	nfactory informers.SharedInformerFactory // Nodes
	pods     cache.SharedIndexInformer
	nodes    cache.SharedIndexInformer
	claims   cache.SharedIndexInformer // nil until the CRD is seen
	dfactory dynamicinformer.DynamicSharedInformerFactory

	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder

	mu       sync.Mutex
	watchers map[int]func(allocator.ClusterEvent)
	nextID   int
	boundAt  map[types.UID]time.Time
	synced   bool
	signals  map[string]signal // node -> newest signal not yet written
	kickSig  chan struct{}
}

type signal struct {
	waiting int
	reason  allocator.WaitReason
	message string
}

var _ allocator.Cluster = (*Watcher)(nil)

const (
	byNode = "node"
	byUID  = "uid"
)

// New creates the informers (nothing runs until Start).
func New(cfg Config) (*Watcher, error) {
	if cfg.Rest == nil {
		return nil, ErrNoConfig
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	rc := rest.CopyConfig(cfg.Rest)
	rc.UserAgent = "ipledger-server"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube: dynamic client: %w", err)
	}
	w := &Watcher{
		cfg: cfg, log: cfg.Logger.With("component", "kube"), client: client, dyn: dyn,
		watchers: map[int]func(allocator.ClusterEvent){}, boundAt: map[types.UID]time.Time{},
		signals: map[string]signal{}, kickSig: make(chan struct{}, 1),
	}
	// Only pods bound to a node: the scheduler's binding is the event of interest.
	w.factory = informers.NewSharedInformerFactoryWithOptions(client, cfg.Resync,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			if o.FieldSelector == "" {
				o.FieldSelector = fields.OneTermNotEqualSelector("spec.nodeName", "").String()
			}
		}))
	w.pods = w.factory.Core().V1().Pods().Informer()
	w.nfactory = informers.NewSharedInformerFactory(client, cfg.Resync)
	w.nodes = w.nfactory.Core().V1().Nodes().Informer()
	if err := w.pods.SetTransform(trimPod); err != nil {
		return nil, err
	}
	if err := w.nodes.SetTransform(trimNode); err != nil {
		return nil, err
	}
	if err := w.pods.AddIndexers(cache.Indexers{
		byNode: func(obj any) ([]string, error) {
			if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
				return []string{p.Spec.NodeName}, nil
			}
			return nil, nil
		},
		byUID: func(obj any) ([]string, error) {
			if p, ok := obj.(*corev1.Pod); ok {
				return []string{string(p.UID)}, nil
			}
			return nil, nil
		},
	}); err != nil {
		return nil, err
	}
	if _, err := w.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.podChanged(nil, obj) },
		UpdateFunc: func(old, obj any) { w.podChanged(old, obj) },
		DeleteFunc: func(obj any) { w.podDeleted(obj) },
	}); err != nil {
		return nil, err
	}
	if _, err := w.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { w.nodeEvent(obj, false) },
		UpdateFunc: func(old, obj any) {
			if o, n := old.(*corev1.Node), obj.(*corev1.Node); o.Spec.ProviderID != n.Spec.ProviderID {
				w.nodeEvent(obj, false)
			}
		},
		DeleteFunc: func(obj any) { w.nodeEvent(obj, true) },
	}); err != nil {
		return nil, err
	}
	w.dfactory = dynamicinformer.NewDynamicSharedInformerFactory(dyn, cfg.Resync)
	w.broadcaster = record.NewBroadcaster()
	w.recorder = w.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "ipledger"})
	return w, nil
}

// Client is the watcher's Kubernetes client (TokenReview and tests).
func (w *Watcher) Client() kubernetes.Interface { return w.client }

// Start runs the informers until ctx ends and waits for their first sync (bounded by ctx). The
// NodeClaim informer starts once the CRD is served (looked for every 10 s). The writer of
// Events and conditions runs too; it writes only what the leader's allocator asks for.
func (w *Watcher) Start(ctx context.Context) error {
	w.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: w.client.CoreV1().Events("")})
	context.AfterFunc(ctx, w.broadcaster.Shutdown)
	go w.watchForNodeClaims(ctx)
	go w.writeSignals(ctx)
	w.factory.Start(ctx.Done())
	w.nfactory.Start(ctx.Done())
	for _, f := range []informers.SharedInformerFactory{w.factory, w.nfactory} {
		for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return fmt.Errorf("kube: %v informer did not sync: %w", typ, context.Cause(ctx))
			}
		}
	}
	w.mu.Lock()
	w.synced = true
	w.mu.Unlock()
	w.log.Info("kubernetes caches synced", "pods", len(w.pods.GetStore().ListKeys()), "nodes", len(w.nodes.GetStore().ListKeys()))
	return nil
}

func (w *Watcher) watchForNodeClaims(ctx context.Context) {
	for {
		_, err := w.client.Discovery().ServerResourcesForGroupVersion(NodeClaimGVR.GroupVersion().String())
		if err == nil {
			inf := w.dfactory.ForResource(NodeClaimGVR).Informer()
			if err := inf.SetTransform(trimNodeClaim); err != nil {
				w.log.Warn("nodeclaim transform", "err", err)
				return
			}
			if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
				AddFunc:    func(obj any) { w.claimEvent(obj) },
				UpdateFunc: func(_, obj any) { w.claimEvent(obj) },
			}); err != nil {
				w.log.Warn("nodeclaim handler", "err", err)
				return
			}
			w.mu.Lock()
			w.claims = inf
			w.mu.Unlock()
			w.dfactory.Start(ctx.Done())
			w.log.Info("watching Karpenter NodeClaims")
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}

// trimPod keeps what ipledger reads of a pod.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID,
			ResourceVersion: p.ResourceVersion, DeletionTimestamp: p.DeletionTimestamp},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase},
	}, nil
}

// trimNode keeps what ipledger reads of a Node.
func trimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Labels: n.Labels},
		Spec:       corev1.NodeSpec{ProviderID: n.Spec.ProviderID},
	}, nil
}

// trimNodeClaim keeps a NodeClaim's name, provider id and node name.
func trimNodeClaim(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	out := &unstructured.Unstructured{Object: map[string]any{}}
	out.SetAPIVersion(u.GetAPIVersion())
	out.SetKind(u.GetKind())
	out.SetName(u.GetName())
	out.SetUID(u.GetUID())
	out.SetResourceVersion(u.GetResourceVersion())
	if ts := u.GetDeletionTimestamp(); ts != nil {
		out.SetDeletionTimestamp(ts)
	}
	for _, f := range []string{"providerID", "nodeName"} {
		if v, ok, _ := unstructured.NestedString(u.Object, "status", f); ok {
			_ = unstructured.SetNestedField(out.Object, v, "status", f)
		}
	}
	return out, nil
}

// InstanceOf is the EC2 instance id of an AWS provider id (aws:///eu-west-1a/i-0123...).
func InstanceOf(providerID string) string {
	if !strings.HasPrefix(providerID, "aws://") {
		return ""
	}
	id := providerID[strings.LastIndex(providerID, "/")+1:]
	if !strings.HasPrefix(id, "i-") {
		return ""
	}
	return id
}

// ended: the pod holds no address any more, or never will.
func ended(p *corev1.Pod) bool {
	return p.DeletionTimestamp != nil || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

func (w *Watcher) podChanged(old, obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.HostNetwork {
		return
	}
	if o, ok := old.(*corev1.Pod); ok && o.Spec.NodeName == p.Spec.NodeName && ended(o) == ended(p) {
		return
	}
	w.mu.Lock()
	if _, seen := w.boundAt[p.UID]; !seen && !ended(p) {
		w.boundAt[p.UID] = w.cfg.Clock.Now()
	}
	w.mu.Unlock()
	w.emit(allocator.ClusterEvent{Node: p.Spec.NodeName})
}

func (w *Watcher) podDeleted(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	w.mu.Lock()
	delete(w.boundAt, p.UID)
	w.mu.Unlock()
	if !p.Spec.HostNetwork {
		w.emit(allocator.ClusterEvent{Node: p.Spec.NodeName})
	}
}

func (w *Watcher) nodeEvent(obj any, deleted bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	w.emit(allocator.ClusterEvent{Node: n.Name, NodeDeleted: deleted, InstanceID: InstanceOf(n.Spec.ProviderID)})
}

func (w *Watcher) claimEvent(obj any) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok || u.GetDeletionTimestamp() != nil {
		return
	}
	pid, _, _ := unstructured.NestedString(u.Object, "status", "providerID")
	node, _, _ := unstructured.NestedString(u.Object, "status", "nodeName")
	if id := InstanceOf(pid); id != "" {
		w.emit(allocator.ClusterEvent{Node: node, InstanceID: id})
	}
}

func (w *Watcher) emit(ev allocator.ClusterEvent) {
	w.mu.Lock()
	fns := make([]func(allocator.ClusterEvent), 0, len(w.watchers))
	for _, fn := range w.watchers {
		fns = append(fns, fn)
	}
	w.mu.Unlock()
	for _, fn := range fns {
		fn(ev)
	}
}

// Watch implements allocator.Cluster. The instances of every NodeClaim and Node in the caches
// are announced to a new watcher at once (a new leader learns what its predecessor was told).
func (w *Watcher) Watch(fn func(allocator.ClusterEvent)) func() {
	w.mu.Lock()
	id := w.nextID
	w.nextID++
	w.watchers[id] = fn
	claims := w.claims
	w.mu.Unlock()
	go func() {
		for _, obj := range w.nodes.GetStore().List() {
			if n := obj.(*corev1.Node); InstanceOf(n.Spec.ProviderID) != "" {
				fn(allocator.ClusterEvent{Node: n.Name, InstanceID: InstanceOf(n.Spec.ProviderID)})
			}
		}
		if claims != nil {
			for _, obj := range claims.GetStore().List() {
				u, _ := obj.(*unstructured.Unstructured)
				if u == nil || u.GetDeletionTimestamp() != nil {
					continue
				}
				pid, _, _ := unstructured.NestedString(u.Object, "status", "providerID")
				node, _, _ := unstructured.NestedString(u.Object, "status", "nodeName")
				if iid := InstanceOf(pid); iid != "" {
					fn(allocator.ClusterEvent{Node: node, InstanceID: iid})
				}
			}
		}
	}()
	return func() {
		w.mu.Lock()
		delete(w.watchers, id)
		w.mu.Unlock()
	}
}

// BoundPods implements allocator.Cluster.
func (w *Watcher) BoundPods(node string) []allocator.PodRef {
	objs, err := w.pods.GetIndexer().ByIndex(byNode, node)
	if err != nil || len(objs) == 0 {
		return nil
	}
	out := make([]allocator.PodRef, 0, len(objs))
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, obj := range objs {
		p := obj.(*corev1.Pod)
		if p.Spec.HostNetwork || ended(p) {
			continue
		}
		out = append(out, allocator.PodRef{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), BoundAt: w.boundAt[p.UID]})
	}
	return out
}

// PodExists implements allocator.Cluster.
func (w *Watcher) PodExists(node, namespace, name, uid string) (bool, bool) {
	w.mu.Lock()
	synced := w.synced
	w.mu.Unlock()
	if !synced {
		return false, false
	}
	if objs, err := w.pods.GetIndexer().ByIndex(byUID, uid); err == nil && len(objs) > 0 {
		return true, true
	}
	// A static pod's uid (the kubelet's) is not its mirror pod's: match by name on the node too.
	obj, ok, err := w.pods.GetStore().GetByKey(namespace + "/" + name)
	if err == nil && ok && obj.(*corev1.Pod).Spec.NodeName == node {
		return true, true
	}
	return false, true
}

// PodsWaiting implements allocator.Cluster: an Event on each pod (the broadcaster aggregates
// repeats) and the node's condition, written by the signal writer.
func (w *Watcher) PodsWaiting(node string, pods []allocator.PodRef, reason allocator.WaitReason, message string) {
	for _, p := range pods {
		ref := &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: p.Namespace, Name: p.Name, UID: types.UID(p.UID)}
		w.recorder.Event(ref, corev1.EventTypeWarning, string(reason), message)
	}
	w.mu.Lock()
	w.signals[node] = signal{waiting: len(pods), reason: reason, message: message}
	w.mu.Unlock()
	select {
	case w.kickSig <- struct{}{}:
	default:
	}
}

// writeSignals patches the nodes' conditions, newest signal per node, one node at a time.
func (w *Watcher) writeSignals(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kickSig:
		}
		w.mu.Lock()
		batch := w.signals
		w.signals = map[string]signal{}
		w.mu.Unlock()
		for node, s := range batch {
			if err := w.patchCondition(ctx, node, s); err != nil && ctx.Err() == nil {
				w.log.Info("node condition", "node", node, "err", err)
			}
		}
	}
}

func (w *Watcher) patchCondition(ctx context.Context, node string, s signal) error {
	if _, ok, _ := w.nodes.GetStore().GetByKey(node); !ok {
		return nil // no Node object (yet): nothing to mark
	}
	now := metav1.NewTime(w.cfg.Clock.Now())
	c := corev1.NodeCondition{Type: ConditionAddressesWaiting, Status: corev1.ConditionFalse, Reason: "NoneWaiting",
		Message: "no pod of this node waits for an address", LastHeartbeatTime: now, LastTransitionTime: now}
	if s.waiting > 0 {
		c.Status, c.Reason = corev1.ConditionTrue, string(s.reason)
		c.Message = fmt.Sprintf("%d pods wait for an address: %s", s.waiting, s.message)
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{c}}})
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = w.client.CoreV1().Nodes().Patch(cctx, node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	return err
}
