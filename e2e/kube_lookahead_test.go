package e2e_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/agent/netconf/nstest"
	"github.com/ipledger/ipledger/e2e/harness"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/kube"
	"github.com/ipledger/ipledger/server/servertest"
)

// kubeletDelay is the time a kubelet takes from the binding of a pod to its CNI ADD (sandbox
// creation); the test's kubelet waits this long, as a real one would.
const kubeletDelay = 2 * time.Second

// TestKubeLookahead runs a real kube-apiserver and kube-scheduler with the server reading them.
// A Deployment-like burst of pods is bound by the scheduler to a node that holds at most one
// spare address; the test, as the node's kubelet, runs CNI ADD through the real plugin for each
// after kubeletDelay. With the lookahead on, every ADD is served from the pool without waiting;
// with it off (same test, same burst) some wait. Then, with the lookahead on: a node that
// cannot get addresses gives its bound pods an Event with the reason and a condition on its
// Node; a Node deleted in the API drains its lease; a NodeClaim's instance has addresses on its
// ENI before its agent registers.
func TestKubeLookahead(t *testing.T) {
	harness.RequireNodeNamespaces(t)
	k := harness.StartKube(t)
	if _, err := k.Client.CoreV1().ServiceAccounts("default").Create(t.Context(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waited := map[bool]uint64{}
	for i, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("lookahead=%v", on), func(t *testing.T) {
			s := harness.StartDev(t, func(c *config.Config) {
				c.Kubeconfig, c.KubeLookahead, c.KubeStalePodGrace = k.Kubeconfig, on, config.Duration(3*time.Second)
			})
			sim := s.Sim().Sim()
			// Assignments take a moment, as on EC2, so an ADD that finds the pool empty waits.
			sim.SetFault("AssignPrivateIpAddresses", ec2sim.Fault{Latency: 300 * time.Millisecond})
			inst := harness.Running(sim)[i]
			var b kubeRun
			waited[on], b = kubeBurst(t, k, s, inst, fmt.Sprintf("burst-%v", on), 8)
			if on {
				t.Run("pod deleted without DEL", func(t *testing.T) { testStalePod(t, k, b) })
				t.Run("waiting pods are signalled", func(t *testing.T) { testWaitingEvents(t, k, s, inst) })
				t.Run("node deleted", func(t *testing.T) { testNodeDeleted(t, k, s, inst) })
				t.Run("nodeclaim pre-warm", func(t *testing.T) { testNodeClaimPrewarm(t, k, s, harness.Running(sim)[2]) })
			}
		})
	}
	t.Logf("ADDs that waited for the allocator: lookahead on %d of 8, off %d of 8", waited[true], waited[false])
	if waited[true] != 0 {
		t.Errorf("lookahead on: %d ADDs waited for the allocator, want 0", waited[true])
	}
	if waited[false] == 0 {
		t.Errorf("lookahead off: no ADD waited; the burst did not outrun the pool, so the test shows nothing")
	}
}

// kubeRun is what kubeBurst leaves running: the node, its agent, the pods and their sandboxes.
type kubeRun struct {
	node      *harness.Node
	agent     *harness.Agent
	pods      []*corev1.Pod
	sandboxes map[string]*harness.Pod
}

// kubeBurst starts the node's agent, checks its pool holds at most one spare address, creates n
// pods bound to it by the scheduler, plays its kubelet, and returns how many ADDs waited.
func kubeBurst(t *testing.T, k *harness.Kube, s *server.Server, inst ec2simInstance, app string, n int) (uint64, kubeRun) {
	ctx := t.Context()
	if _, err := k.AddNode(ctx, inst.PrivateDNSName, inst.AvailabilityZone, inst.ID, 29, nil); err != nil {
		t.Fatal(err)
	}
	node := harness.NewNode(t, s.Sim(), inst, s.GRPCAddr())
	ag := node.StartAgentInProcess(nil)
	v := ag.WaitConnected(20*time.Second, 1)
	// Let the pool settle at its floor (a fresh node may hold its start prior briefly).
	v = ag.WaitView(30*time.Second, "the pool at its floor", func(v agent.PoolView) bool { return v.Counts.Free <= 1 })
	if v.Counts.Free > 1 {
		t.Fatalf("before the burst the node holds %d spare addresses, want at most 1", v.Counts.Free)
	}
	pods := createPods(t, k, app, inst.PrivateDNSName, n)
	sandboxes := kubelet(t, k, node, pods)
	return histogramCount(t, ag.InProcess().Gatherer(), "ipledger_agent_add_duration_seconds", "true"),
		kubeRun{node: node, agent: ag, pods: pods, sandboxes: sandboxes}
}

// createPods creates n pods of an app pinned to a node (as a Deployment's ReplicaSet would
// create them, all at once) and waits until the scheduler bound them all.
func createPods(t *testing.T, k *harness.Kube, app, nodeName string, n int) []*corev1.Pod {
	ctx := t.Context()
	for j := range n {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-%d", app, j), Namespace: "default", Labels: map[string]string{"app": app}},
			Spec: corev1.PodSpec{
				NodeSelector: map[string]string{"kubernetes.io/hostname": nodeName},
				Containers:   []corev1.Container{{Name: "c", Image: "busybox"}},
			},
		}
		if _, err := k.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var bound []*corev1.Pod
	servertest.WaitFor(t, 30*time.Second, "the scheduler to bind the burst", func() bool {
		l, err := k.Client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{LabelSelector: "app=" + app,
			FieldSelector: fields.OneTermEqualSelector("spec.nodeName", nodeName).String()})
		if err != nil {
			return false
		}
		bound = bound[:0]
		for i := range l.Items {
			bound = append(bound, &l.Items[i])
		}
		return len(bound) == n
	})
	return bound
}

// kubelet runs CNI ADD for each pod kubeletDelay after it was bound (through the real plugin,
// with the pod's namespace, name and uid in CNI_ARGS) and writes its status. It returns the
// pods' sandboxes by name.
func kubelet(t *testing.T, k *harness.Kube, node *harness.Node, pods []*corev1.Pod) map[string]*harness.Pod {
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	sandboxes := map[string]*harness.Pod{}
	for _, p := range pods {
		wg.Go(func() {
			<-time.After(time.Until(start.Add(kubeletDelay)))
			sandbox := node.NewPod(p.Name)
			mu.Lock()
			sandboxes[p.Name] = sandbox
			mu.Unlock()
			env := node.Env("ADD", sandbox)
			env["CNI_ARGS"] = "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + p.Namespace + ";K8S_POD_NAME=" + p.Name + ";K8S_POD_UID=" + string(p.UID)
			r := node.RunPlugin(env, node.Conf("1.1.0"))
			if r.Err != nil {
				t.Errorf("ADD %s: %v: %s", p.Name, r.Err, r.Stdout)
				return
			}
			ip := r.IP(t)
			p.Status.Phase, p.Status.PodIP = corev1.PodRunning, ip.String()
			if _, err := k.Client.CoreV1().Pods(p.Namespace).UpdateStatus(t.Context(), p, metav1.UpdateOptions{}); err != nil {
				t.Errorf("pod %s status: %v", p.Name, err)
			}
		})
	}
	wg.Wait()
	return sandboxes
}

// testStalePod: two pods of the burst are deleted in the API without their CNI DEL. The
// sandbox of one is gone (its runtime lost it): after the grace, the server names it to the
// agent, which finds its veth gone and gives its address back. The other's sandbox is still
// there: the agent keeps its address until its DEL.
func testStalePod(t *testing.T, k *harness.Kube, b kubeRun) {
	ctx := t.Context()
	lost, kept := b.pods[0], b.pods[1]
	held := func(v agent.PoolView, name string) bool {
		for _, p := range v.Pods {
			if p.PodName == name {
				return true
			}
		}
		return false
	}
	if v := b.agent.WaitView(10*time.Second, "the burst's pods in use", func(v agent.PoolView) bool {
		return held(v, lost.Name) && held(v, kept.Name)
	}); !held(v, lost.Name) {
		t.Fatal("the pod is not in use before the test")
	}
	nstest.Remove(t, b.sandboxes[lost.Name].NS)
	for _, p := range []*corev1.Pod{lost, kept} {
		if err := k.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
	}
	deleted := time.Now()
	v := b.agent.WaitView(60*time.Second, "the address of the pod deleted without DEL given back", func(v agent.PoolView) bool {
		return !held(v, lost.Name)
	})
	if took := time.Since(deleted); took < 3*time.Second {
		t.Errorf("the address came back %s after the deletion, before the 3 s grace", took)
	}
	if !held(v, kept.Name) {
		t.Errorf("the pod whose sandbox is still there lost its address without its DEL")
	}
	b.node.Del(b.sandboxes[kept.Name])
}

// testWaitingEvents: the node is drained, a pod is bound to it and never served: it gets an
// Event with the reason NodeDraining, and the Node the condition an autoscaler can read.
func testWaitingEvents(t *testing.T, k *harness.Kube, s *server.Server, inst ec2simInstance) {
	ctx := t.Context()
	admin := harness.Admin(t, s.GRPCAddr())
	if _, err := admin.DrainNode(ctx, &ipledgerv1.DrainNodeRequest{NodeName: inst.PrivateDNSName}); err != nil {
		t.Fatal(err)
	}
	pods := createPods(t, k, "waits", inst.PrivateDNSName, 1)
	servertest.WaitFor(t, 30*time.Second, "an Event on the waiting pod", func() bool {
		evs, err := k.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("involvedObject.name", pods[0].Name).String()})
		if err != nil {
			return false
		}
		for _, e := range evs.Items {
			if e.Reason == "NodeDraining" && e.Source.Component == "ipledger" && strings.Contains(e.Message, "draining") {
				return true
			}
		}
		return false
	})
	servertest.WaitFor(t, 30*time.Second, "the node's condition", func() bool {
		n, err := k.Client.CoreV1().Nodes().Get(ctx, inst.PrivateDNSName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range n.Status.Conditions {
			if c.Type == kube.ConditionAddressesWaiting && c.Status == corev1.ConditionTrue && c.Reason == "NodeDraining" {
				return true
			}
		}
		return false
	})
	// The bound pod shows in the admin API as bound but waiting.
	if w := s.Allocator().BoundWaiting(inst.PrivateDNSName); len(w) != 1 || w[0].Name != pods[0].Name {
		t.Errorf("bound-but-waiting pods %v, want %s", w, pods[0].Name)
	}
	if _, err := admin.DrainNode(ctx, &ipledgerv1.DrainNodeRequest{NodeName: inst.PrivateDNSName, Undo: true}); err != nil {
		t.Fatal(err)
	}
	if err := k.Client.CoreV1().Pods("default").Delete(ctx, pods[0].Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
}

// testNodeDeleted: deleting the Node object drains the node's lease at once (the instance is
// still running in EC2).
func testNodeDeleted(t *testing.T, k *harness.Kube, s *server.Server, inst ec2simInstance) {
	ctx := t.Context()
	admin := harness.Admin(t, s.GRPCAddr())
	if err := k.Client.CoreV1().Nodes().Delete(ctx, inst.PrivateDNSName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, 10*time.Second, "the deleted node to drain", func() bool {
		d, err := admin.GetNode(ctx, &ipledgerv1.GetNodeRequest{NodeName: inst.PrivateDNSName})
		return err == nil && d.GetSummary().GetDraining()
	})
}

// testNodeClaimPrewarm: a NodeClaim whose status names an instance makes the server register it
// and assign its first addresses before its agent starts; the agent then registers and finds
// them in its pool.
func testNodeClaimPrewarm(t *testing.T, k *harness.Kube, s *server.Server, inst ec2simInstance) {
	ctx := t.Context()
	k.InstallNodeClaimCRD(ctx)
	if err := k.CreateNodeClaim(ctx, "default-abcde", inst.AvailabilityZone, inst.ID); err != nil {
		t.Fatal(err)
	}
	sim := s.Sim().Sim()
	servertest.WaitFor(t, 60*time.Second, "addresses on the NodeClaim instance's ENI before its agent", func() bool {
		e, err := harness.SimENI(sim, inst.PrimaryENI)
		return err == nil && len(e.SecondaryIPs) > 0
	})
	node := harness.NewNode(t, s.Sim(), inst, s.GRPCAddr())
	ag := node.StartAgentInProcess(nil)
	v := ag.WaitConnected(20*time.Second, 1)
	if v.NodeName != inst.PrivateDNSName {
		t.Fatalf("agent registered as %q, want %q", v.NodeName, inst.PrivateDNSName)
	}
}
