package e2e_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ipledger/ipledger/e2e/harness"
	"github.com/ipledger/ipledger/server/servertest"
)

// The control plane the Kubernetes tests run: a real kube-apiserver and kube-scheduler (built
// from the Go module proxy, e2e/tools), with the test as the kubelet. A pod is bound by the
// scheduler to the only node that fits it.
func TestKubeControlPlane(t *testing.T) {
	k := harness.StartKube(t)
	ctx := t.Context()
	if _, err := k.AddNode(ctx, "ip-10-0-1-7.eu-west-1.compute.internal", "eu-west-1a", "i-0123456789abcdef0", 10, nil); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "busybox"}}},
	}
	if _, err := k.Client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	servertest.WaitFor(t, 30*time.Second, "the scheduler to bind the pod", func() bool {
		p, err := k.Client.CoreV1().Pods("default").Get(ctx, "web", metav1.GetOptions{})
		return err == nil && p.Spec.NodeName == "ip-10-0-1-7.eu-west-1.compute.internal"
	})
	v, err := k.Client.Discovery().ServerVersion()
	if err != nil || v.GitVersion != "v1.37.2" {
		t.Fatalf("server version %v, %v; want v1.37.2", v, err)
	}
}
