package harness

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/ipledger/ipledger/server/store"
)

// Binaries of the Kubernetes control plane (built by `make tools` from e2e/tools).
const (
	KubeAPIServerName = "kube-apiserver"
	KubeSchedulerName = "kube-scheduler"
)

// Kube is a real Kubernetes control plane on loopback: an embedded etcd of its own, a
// kube-apiserver and a kube-scheduler, each a process of the test's. There is no controller
// manager and no kubelet: a test plays the kubelet of its nodes (it creates their Node objects,
// watches the pods bound to them, runs CNI ADD and writes the pods' status).
type Kube struct {
	T   testing.TB
	Dir string
	// URL of the API server (https://127.0.0.1:<port>), and the admin's bearer token
	// (system:masters).
	URL   string
	Token string
	// Kubeconfig is a kubeconfig file for the admin (for processes the test starts).
	Kubeconfig string
	// Config and Client are the admin's.
	Config *rest.Config
	Client kubernetes.Interface

	etcd  *store.Embedded
	procs []*exec.Cmd
}

// kubeBinary is a control-plane binary in $IPLEDGER_BIN_DIR ("" when it is not there).
func kubeBinary(name string) string {
	if dir := os.Getenv(BinDirEnv); dir != "" {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	return ""
}

// RequireKube skips the test when the control plane's binaries were not built (`make tools`
// builds them into bin/, and `make test` runs it first).
func RequireKube(t testing.TB) {
	t.Helper()
	for _, name := range []string{KubeAPIServerName, KubeSchedulerName} {
		if kubeBinary(name) == "" {
			t.Skipf("skipping: %s is not in $%s (make tools builds it from e2e/tools)", name, BinDirEnv)
		}
	}
}

// StartKube starts etcd, the API server and the scheduler, waits until the API server is
// ready, and stops everything in t.Cleanup.
func StartKube(t testing.TB) *Kube {
	t.Helper()
	RequireKube(t)
	dir := t.TempDir()
	k := &Kube{T: t, Dir: dir, Token: "ipledger-e2e-admin"}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	emb, err := store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: filepath.Join(dir, "etcd")})
	if err != nil {
		t.Fatalf("kube: start etcd: %v", err)
	}
	k.etcd = emb
	t.Cleanup(func() {
		k.stopProcs()
		_ = emb.Close()
	})

	// Service account keys: the API server signs (and TokenReview checks) bound tokens.
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile, pubFile := filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	mustWrite(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	mustWrite(t, pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}))
	tokens := filepath.Join(dir, "tokens.csv")
	mustWrite(t, tokens, []byte(k.Token+`,admin,admin,"system:masters"`+"\n"))

	port := FreePort(t)
	k.URL = "https://127.0.0.1:" + port[strings.LastIndex(port, ":")+1:]
	k.start(KubeAPIServerName,
		"--etcd-servers="+strings.Join(emb.Endpoints(), ","),
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+port[strings.LastIndex(port, ":")+1:],
		"--cert-dir="+filepath.Join(dir, "pki"),
		"--token-auth-file="+tokens,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pubFile,
		"--service-account-signing-key-file="+keyFile,
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=10.96.0.0/16",
		// No controller manager creates namespaces' default service accounts: the test makes
		// the ones its pods use.
		"--disable-admission-plugins=ServiceAccount",
		"--profiling=false",
		// Loopback cannot be the kubernetes Service's endpoint; nothing in the tests uses it.
		"--endpoint-reconciler-type=none",
	)
	k.Config = &rest.Config{Host: k.URL, BearerToken: k.Token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 200, Burst: 400}
	k.Client = kubernetes.NewForConfigOrDie(k.Config)
	k.Kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	mustWrite(t, k.Kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: e2e, context: {cluster: e2e, user: admin}}]
current-context: e2e
`, k.URL, k.Token)))
	k.waitReady(90 * time.Second)
	k.start(KubeSchedulerName, "--kubeconfig="+k.Kubeconfig, "--authentication-kubeconfig="+k.Kubeconfig,
		"--authorization-kubeconfig="+k.Kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0")
	return k
}

func mustWrite(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// start runs one control-plane binary, its output in <dir>/<name>.log.
func (k *Kube) start(name string, args ...string) {
	k.T.Helper()
	logPath := filepath.Join(k.Dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		k.T.Fatal(err)
	}
	cmd := exec.Command(kubeBinary(name), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := Start(cmd); err != nil { // from the spawning thread: Pdeathsig follows the forking thread
		k.T.Fatalf("kube: start %s: %v", name, err)
	}
	k.procs = append(k.procs, cmd)
	k.T.Cleanup(func() {
		_ = logf.Close()
		if k.T.Failed() {
			keepArtifact(k.T, logPath, name+".log")
		}
	})
}

// stopProcs ends the processes this Kube started (by PID), scheduler first.
func (k *Kube) stopProcs() {
	for i := len(k.procs) - 1; i >= 0; i-- {
		c := k.procs[i]
		if c.Process == nil {
			continue
		}
		_ = c.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	k.procs = nil
}

// waitReady polls the API server's /readyz until it answers 200.
func (k *Kube) waitReady(d time.Duration) {
	k.T.Helper()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the test's own API server on loopback
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(k.T.Context(), http.MethodGet, k.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+k.Token)
		resp, err := hc.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			err = fmt.Errorf("/readyz: %s", resp.Status)
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	k.T.Fatalf("kube-apiserver not ready after %v: %v (log %s)", d, last, filepath.Join(k.Dir, KubeAPIServerName+".log"))
}

// AddNode creates a Ready Node object named name for an instance (providerID
// aws:///<zone>/<instance-id>), with capacity for maxPods pods, as a kubelet registering would,
// without the not-ready taint (there is no node lifecycle controller to remove it).
func (k *Kube) AddNode(ctx context.Context, name, zone, instanceID string, maxPods int, labels map[string]string) (*corev1.Node, error) {
	capacity := corev1.ResourceList{
		corev1.ResourcePods:   *resource.NewQuantity(int64(maxPods), resource.DecimalSI),
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("32Gi"),
	}
	all := map[string]string{"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": zone}
	for k, v := range labels {
		all[k] = v
	}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: all},
		Spec:       corev1.NodeSpec{ProviderID: "aws:///" + zone + "/" + instanceID},
	}
	created, err := k.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kube: create node %s: %w", name, err)
	}
	created.Status = corev1.NodeStatus{
		Capacity: capacity, Allocatable: capacity,
		Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
	}
	if created, err = k.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("kube: node %s status: %w", name, err)
	}
	// The API server's TaintNodesByCondition admission gives a new node the not-ready taint;
	// the node lifecycle controller (not run here) would take it away once the node is Ready.
	created.Spec.Taints = nil
	if created, err = k.Client.CoreV1().Nodes().Update(ctx, created, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("kube: node %s taints: %w", name, err)
	}
	return created, nil
}

// KarpenterModule is the Karpenter release whose published NodeClaim CRD the tests install
// (v1.13.0 is the newest that builds with this Go); it comes from the Go module proxy and no
// file of it is committed.
const KarpenterModule = "sigs.k8s.io/karpenter@v1.13.0"

var nodeClaimCRDPath = filepath.Join("pkg", "apis", "crds", "karpenter.sh_nodeclaims.yaml")

// InstallNodeClaimCRD downloads Karpenter's module (go mod download, cached by the module
// cache), installs its NodeClaim CRD through the API server and waits until it is served.
func (k *Kube) InstallNodeClaimCRD(ctx context.Context) {
	k.T.Helper()
	out, err := exec.CommandContext(ctx, "go", "mod", "download", "-json", KarpenterModule).Output()
	if err != nil {
		k.T.Fatalf("go mod download %s: %v", KarpenterModule, err)
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		k.T.Fatalf("go mod download %s: %v %s", KarpenterModule, err, mod.Error)
	}
	raw, err := os.ReadFile(filepath.Join(mod.Dir, nodeClaimCRDPath))
	if err != nil {
		k.T.Fatal(err)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		k.T.Fatalf("NodeClaim CRD: %v", err)
	}
	dyn := dynamic.NewForConfigOrDie(k.Config)
	crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	if _, err := crds.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{}); err != nil {
		k.T.Fatalf("create the NodeClaim CRD: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := k.Client.Discovery().ServerResourcesForGroupVersion("karpenter.sh/v1"); err == nil {
			if _, err := dyn.Resource(NodeClaimGVR).List(ctx, metav1.ListOptions{}); err == nil {
				return
			}
		}
		if time.Now().After(deadline) {
			k.T.Fatal("the NodeClaim CRD is not served after 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// NodeClaimGVR is Karpenter's NodeClaim resource.
var NodeClaimGVR = schema.GroupVersionResource{Group: "karpenter.sh", Version: "v1", Resource: "nodeclaims"}

// CreateNodeClaim creates a NodeClaim as Karpenter does when it launches an instance: the spec,
// then the status with the instance's provider id (the node has not joined yet).
func (k *Kube) CreateNodeClaim(ctx context.Context, name, zone, instanceID string) error {
	dyn := dynamic.NewForConfigOrDie(k.Config)
	nc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
		"metadata": map[string]any{"name": name},
		"spec": map[string]any{
			"nodeClassRef": map[string]any{"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
			"requirements": []any{map[string]any{"key": "kubernetes.io/arch", "operator": "In", "values": []any{"amd64"}}},
		},
	}}
	created, err := dyn.Resource(NodeClaimGVR).Create(ctx, nc, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("kube: create NodeClaim %s: %w", name, err)
	}
	_ = unstructured.SetNestedField(created.Object, "aws:///"+zone+"/"+instanceID, "status", "providerID")
	if _, err := dyn.Resource(NodeClaimGVR).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("kube: NodeClaim %s status: %w", name, err)
	}
	return nil
}
