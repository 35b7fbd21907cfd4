package bench

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/store"
)

// SystemIPLedgerK8s is ipledger reading a real Kubernetes API (--kubeconfig): the bench starts a
// kube-apiserver, registers each node's Node object as its kubelet would, and binds each pod to
// its node in the API (a Pod created with spec.nodeName, which is what the scheduler's binding
// writes) when the trace schedules it, before the kubelet's CNI ADD: the pod-binding lookahead.
const SystemIPLedgerK8s = "ipledger-k8s"

// benchNamespace holds the bench's pods in the API.
const benchNamespace = "bench"

// binder is a node whose system sees pods bound before their CNI ADD (ipledger-k8s).
type binder interface {
	// Bind records the pod as bound to the node in the Kubernetes API.
	Bind(ctx context.Context, pod string) error
	// Unbind deletes the pod from the API (after its DEL, or when it was deleted before it ran).
	Unbind(ctx context.Context, pod string)
}

// kubeAPI is a kube-apiserver process on loopback with an embedded etcd of its own (no
// scheduler: the trace places pods; no controller manager, no kubelet).
type kubeAPI struct {
	dir        string
	etcd       *store.Embedded
	cmd        *exec.Cmd
	logf       *os.File
	url, token string
	kubeconfig string
	client     kubernetes.Interface
}

// kubeBinary finds a control-plane binary next to the server's, in $IPLEDGER_BIN_DIR or ./bin
// (make tools builds them).
func kubeBinary(serverBin, name string) (string, error) {
	for _, d := range []string{filepath.Dir(serverBin), os.Getenv("IPLEDGER_BIN_DIR"), "bin"} {
		if d == "" {
			continue
		}
		p, err := filepath.Abs(filepath.Join(d, name))
		if err != nil {
			continue
		}
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("bench: %s not found next to %s, in $IPLEDGER_BIN_DIR or ./bin (make tools builds it)", name, serverBin)
}

func startKubeAPI(ctx context.Context, dir, serverBin string) (_ *kubeAPI, err error) {
	bin, err := kubeBinary(serverBin, "kube-apiserver")
	if err != nil {
		return nil, err
	}
	k := &kubeAPI{dir: dir, token: "ipledger-bench-admin"}
	defer func() {
		if err != nil {
			k.Close()
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if k.etcd, err = store.StartEmbedded(ctx, store.EmbeddedConfig{Dir: filepath.Join(dir, "etcd")}); err != nil {
		return nil, fmt.Errorf("bench: kube etcd: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	keyFile, pubFile, tokens := filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub"), filepath.Join(dir, "tokens.csv")
	for path, b := range map[string][]byte{
		keyFile: pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}),
		pubFile: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
		tokens:  []byte(k.token + `,admin,admin,"system:masters"` + "\n"),
	} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, err
		}
	}
	addr, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	k.url = "https://127.0.0.1:" + port
	if k.logf, err = os.Create(filepath.Join(dir, "kube-apiserver.log")); err != nil {
		return nil, err
	}
	k.cmd = exec.Command(bin,
		"--etcd-servers="+k.etcd.Endpoints()[0], "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port="+port, "--cert-dir="+filepath.Join(dir, "pki"), "--token-auth-file="+tokens,
		"--authorization-mode=RBAC", "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+pubFile, "--service-account-signing-key-file="+keyFile,
		"--api-audiences=https://kubernetes.default.svc.cluster.local", "--service-cluster-ip-range=10.96.0.0/16",
		"--disable-admission-plugins=ServiceAccount", "--profiling=false", "--endpoint-reconciler-type=none")
	k.cmd.Stdout, k.cmd.Stderr = k.logf, k.logf
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := k.cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start kube-apiserver: %w", err)
	}
	k.kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	if err := os.WriteFile(k.kubeconfig, fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters: [{name: bench, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: bench, context: {cluster: bench, user: admin}}]
current-context: bench
`, k.url, k.token), 0o600); err != nil {
		return nil, err
	}
	if err := k.waitReady(ctx, 90*time.Second); err != nil {
		return nil, err
	}
	cfg := &rest.Config{Host: k.url, BearerToken: k.token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 500, Burst: 1000}
	if k.client, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if _, err := k.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}}, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("bench: namespace: %w", err)
	}
	return k, nil
}

func (k *kubeAPI) waitReady(ctx context.Context, d time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // the bench's own API server on loopback
	deadline := time.Now().Add(d)
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, k.url+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+k.token)
		resp, err := hc.Do(req)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("/readyz: %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("bench: kube-apiserver not ready after %v: %w (log %s)", d, last, k.logf.Name())
}

// Close stops the API server (by its PID) and its etcd.
func (k *kubeAPI) Close() {
	if k.cmd != nil && k.cmd.Process != nil {
		_ = k.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = k.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = k.cmd.Process.Kill()
			<-done
		}
	}
	if k.logf != nil {
		_ = k.logf.Close()
	}
	if k.etcd != nil {
		_ = k.etcd.Close()
	}
}

// ipledgerK8sSystem is the ipledger system whose server reads the bench's Kubernetes API.
type ipledgerK8sSystem struct {
	*ipledgerSystem
	kube *kubeAPI
}

func startIPLedgerK8s(ctx context.Context, env systemEnv) (system, error) {
	kube, err := startKubeAPI(ctx, filepath.Join(env.workDir, "kube"), env.serverBin)
	if err != nil {
		return nil, err
	}
	env.extraServerArgs = append(env.extraServerArgs, "--kubeconfig", kube.kubeconfig)
	s, err := startIPLedger(ctx, env)
	if err != nil {
		kube.Close()
		return nil, err
	}
	return &ipledgerK8sSystem{ipledgerSystem: s, kube: kube}, nil
}

func (s *ipledgerK8sSystem) Name() string { return SystemIPLedgerK8s }

// StartNode registers the node's Node object (named by its private DNS name, with its provider
// id and no taint, as a kubelet would) and starts its agent.
func (s *ipledgerK8sSystem) StartNode(ctx context.Context, inst ec2sim.InstanceInfo, r role) (node, error) {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: inst.PrivateDNSName, Labels: map[string]string{"topology.kubernetes.io/zone": inst.AvailabilityZone}},
		Spec:       corev1.NodeSpec{ProviderID: "aws:///" + inst.AvailabilityZone + "/" + inst.ID},
	}
	if _, err := s.kube.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("bench: node %s: %w", inst.PrivateDNSName, err)
	}
	h, err := s.ipledgerSystem.StartNode(ctx, inst, r)
	if err != nil {
		return nil, err
	}
	return &k8sNode{node: h, kube: s.kube, name: inst.PrivateDNSName}, nil
}

func (s *ipledgerK8sSystem) Close() error {
	err := s.ipledgerSystem.Close()
	s.kube.Close()
	return err
}

// k8sNode is an ipledger node whose pods are bound in the API before their ADD.
type k8sNode struct {
	node
	kube *kubeAPI
	name string
}

func (n *k8sNode) Bind(ctx context.Context, pod string) error {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: pod},
		Spec: corev1.PodSpec{
			NodeName:   n.name,
			Containers: []corev1.Container{{Name: "app", Image: "registry.invalid/pause:3.10"}},
		},
	}
	_, err := n.kube.client.CoreV1().Pods(benchNamespace).Create(ctx, p, metav1.CreateOptions{})
	return err
}

func (n *k8sNode) Unbind(ctx context.Context, pod string) {
	zero := int64(0)
	// A pod already gone is fine; any other error leaves a pod the lookahead counts, which the
	// report's held addresses would show.
	_ = n.kube.client.CoreV1().Pods(benchNamespace).Delete(ctx, pod, metav1.DeleteOptions{GracePeriodSeconds: &zero})
}
