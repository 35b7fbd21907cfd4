package servertest

import (
	"sync"
	"time"

	"github.com/ipledger/ipledger/server/allocator"
)

// Cluster is an in-memory allocator.Cluster for a test's replica (server.Options.Cluster):
// pods bound to nodes as the test says, every signal the allocator sent.
type Cluster struct {
	mu      sync.Mutex
	pods    map[string][]allocator.PodRef // node -> bound pods
	fns     []func(allocator.ClusterEvent)
	signals map[string]ClusterSignal // node -> the last signal
}

// ClusterSignal is what the allocator last told the Cluster about a node's waiting pods.
type ClusterSignal struct {
	Pods   []allocator.PodRef
	Reason allocator.WaitReason
}

// NewCluster returns a Cluster with no pods.
func NewCluster() *Cluster {
	return &Cluster{pods: map[string][]allocator.PodRef{}, signals: map[string]ClusterSignal{}}
}

// Bind binds a pod to node, as the scheduler does, at time at.
func (c *Cluster) Bind(node, namespace, name, uid string, at time.Time) {
	c.mu.Lock()
	c.pods[node] = append(c.pods[node], allocator.PodRef{Namespace: namespace, Name: name, UID: uid, BoundAt: at})
	fns := append([]func(allocator.ClusterEvent){}, c.fns...)
	c.mu.Unlock()
	for _, fn := range fns {
		fn(allocator.ClusterEvent{Node: node})
	}
}

// Signal returns the last signal the allocator sent for node.
func (c *Cluster) Signal(node string) (ClusterSignal, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.signals[node]
	return s, ok
}

// BoundPods implements allocator.Cluster.
func (c *Cluster) BoundPods(node string) []allocator.PodRef {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]allocator.PodRef(nil), c.pods[node]...)
}

// PodExists implements allocator.Cluster: a pod exists while it is bound (by uid, or by
// namespace and name on its node).
func (c *Cluster) PodExists(node, namespace, name, uid string) (bool, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for n, ps := range c.pods {
		for _, p := range ps {
			if (uid != "" && p.UID == uid) || (n == node && p.Namespace == namespace && p.Name == name) {
				return true, true
			}
		}
	}
	return false, true
}

// Watch implements allocator.Cluster.
func (c *Cluster) Watch(fn func(allocator.ClusterEvent)) func() {
	c.mu.Lock()
	c.fns = append(c.fns, fn)
	i := len(c.fns) - 1
	c.mu.Unlock()
	return func() {
		c.mu.Lock()
		c.fns[i] = func(allocator.ClusterEvent) {}
		c.mu.Unlock()
	}
}

// PodsWaiting implements allocator.Cluster.
func (c *Cluster) PodsWaiting(node string, pods []allocator.PodRef, reason allocator.WaitReason, _ string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.signals[node] = ClusterSignal{Pods: append([]allocator.PodRef(nil), pods...), Reason: reason}
}

var _ allocator.Cluster = (*Cluster)(nil)
