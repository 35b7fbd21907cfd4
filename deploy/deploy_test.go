package deploy

import (
	"encoding/json"
	"flag"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ipledger/ipledger/agent"
	"github.com/ipledger/ipledger/deploy/cniinstall"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/allocator"
	"github.com/ipledger/ipledger/server/config"
)

const (
	serverName  = "ipledger-server"
	agentName   = "ipledger-agent"
	grpcService = "ipledger-server"
	policiesCM  = "ipledger-policies"
	conflistSrc = "cni/10-ipledger.conflist"
	irsaKey     = "eks.amazonaws.com/role-arn"
	etcdName    = "ipledger-etcd"
)

// Ports other node daemons hold on every node; host-network pods must not take them. 61678 and
// 61679 are aws-node's, which may still run beside ipledger during a migration.
var reservedNodePorts = map[int32]string{
	10248: "kubelet healthz", 10249: "kube-proxy metrics", 10250: "kubelet", 10256: "kube-proxy healthz",
	2379: "etcd client", 2380: "etcd peer", 61678: "aws-node metrics", 61679: "aws-node introspection", 9100: "node-exporter",
}

func forEachBundle(t *testing.T, f func(t *testing.T, b *bundle)) {
	for _, b := range bundles(t) {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

func TestStrictDecodingRejectsUnknownFields(t *testing.T) {
	// The decoder the other tests rely on must refuse what the API server would drop silently.
	bad := []struct{ name, yaml string }{
		{"misspelt container field", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n      - name: c\n        image: i\n        arg: [--x]\n"},
		{"duplicate field", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndata: {c: d}\n"},
		{"ServiceMonitor typo", "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec:\n  endpoint: []\n"},
		{"Certificate typo", "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {name: x}\nspec:\n  uri: [ipledger://server]\n"},
		{"unknown kind", "apiVersion: v1\nkind: Frobnicator\nmetadata: {name: x}\n"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			docs, err := splitYAML([]byte(tt.yaml), tt.name)
			if err == nil {
				_, err = load("test", docs)
			}
			if err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestRenderedObjects(t *testing.T) {
	forEachBundle(t, func(t *testing.T, b *bundle) {
		if len(b.deployments) != 1 || len(b.daemonSets) != 1 {
			t.Fatalf("want 1 Deployment and 1 DaemonSet, got %d and %d", len(b.deployments), len(b.daemonSets))
		}
		for _, d := range b.docs {
			if ns := str(d, "metadata", "namespace"); ns != namespace && d["kind"] != "ClusterRole" && d["kind"] != "ClusterRoleBinding" {
				t.Errorf("%s is in namespace %q, want %s (system-*-critical priority, beside aws-node)", id(d), ns, namespace)
			}
			if str(d, "metadata", "labels", "app.kubernetes.io/part-of") != "ipledger" && d["kind"] != "ConfigMap" && d["kind"] != "Secret" {
				t.Errorf("%s lacks app.kubernetes.io/part-of=ipledger", id(d))
			}
		}
		for name, keys := range overlayProvided {
			if name == "ConfigMap/ipledger-server-ca" && b.values("agent", "identity") == "files" {
				continue // agents with certificate files from the node's PKI need no server CA value
			}
			kind, n, _ := strings.Cut(name, "/")
			got, ok := b.keys(kind, n)
			if !ok {
				t.Errorf("%s is neither rendered nor external", name)
				continue
			}
			for _, k := range keys {
				if !slices.Contains(got, k) {
					t.Errorf("%s lacks key %s", name, k)
				}
			}
		}
	})
}

func TestEveryArgIsARealFlag(t *testing.T) {
	forEachBundle(t, func(t *testing.T, b *bundle) {
		for _, r := range b.runs(t) {
			for _, err := range r.refErrors {
				t.Errorf("%s: %v", r, err)
			}
			if _, err := flagValues(r.binary, r.args); err != nil {
				t.Errorf("%s: %v", r, err)
			}
		}
	})
}

func TestOverlayConfigurationLoads(t *testing.T) {
	// In the overlay and the chart's renderings every value is known: run each binary's real
	// loader and validation.
	forEachComplete(t, func(t *testing.T, b *bundle) {
		for _, r := range b.runs(t) {
			if len(r.missing) > 0 {
				t.Errorf("%s: unresolved %v", r, r.missing)
				continue
			}
			if err := binaries[r.binary].load(r.args, r.env); err != nil {
				t.Errorf("%s: %s refuses its configuration: %v", r, r.binary, err)
			}
		}
	})
}

func TestBaseLeavesOnlyOverlayValuesOpen(t *testing.T) {
	allowed := map[string]bool{"CLUSTER_NAME": true, "REGION": true, "ETCD_ENDPOINTS": true}
	for _, r := range base(t).runs(t) {
		for _, m := range r.missing {
			if !allowed[m] {
				t.Errorf("%s: $(%s) cannot be resolved and is not an overlay setting", r, m)
			}
		}
	}
}

func TestListenPortsProbesAndServices(t *testing.T) {
	forEachBundle(t, func(t *testing.T, b *bundle) {
		hostPorts := map[int32]string{}
		for _, r := range b.runs(t) {
			vals, err := flagValues(r.binary, r.args)
			if err != nil {
				t.Fatalf("%s: %v", r, err)
			}
			spec := binaries[r.binary]
			exposed := map[string]bool{}
			for flagName, portName := range spec.listen {
				addrs, err := listenAddrs(vals[flagName])
				if err != nil {
					t.Errorf("%s: --%s=%q: %v", r, flagName, vals[flagName], err)
					continue
				}
				want, ok := containerPort(r.c, portName)
				if !ok {
					t.Errorf("%s: --%s listens on %v but no container port is named %q", r, flagName, addrs, portName)
					continue
				}
				reached := false
				for _, a := range addrs {
					host, port, _ := net.SplitHostPort(a)
					if strconv.Itoa(int(want)) != port {
						t.Errorf("%s: --%s port %s, container port %s is %d", r, flagName, port, portName, want)
					}
					reached = reached || slices.Contains([]string{"", "0.0.0.0", "::", podIP(r.wl.pod)}, host) || strings.Contains(host, "$(")
				}
				// The kubelet probes and Services reach the pod IP; a listener must be there.
				if !reached {
					t.Errorf("%s: --%s binds %v, none of which the pod IP %s reaches", r, flagName, addrs, podIP(r.wl.pod))
				}
				exposed[portName] = true
			}
			for _, p := range r.c.Ports {
				if !exposed[p.Name] {
					t.Errorf("%s: container port %s (%d) has no listen flag behind it", r, p.Name, p.ContainerPort)
				}
				if r.wl.pod.HostNetwork {
					if who, ok := hostPorts[p.ContainerPort]; ok {
						t.Errorf("%s: host port %d is also %s's (both run in the host network, maybe on one node)", r, p.ContainerPort, who)
					}
					if what, ok := reservedNodePorts[p.ContainerPort]; ok {
						t.Errorf("%s: host port %d is the %s port", r, p.ContainerPort, what)
					}
					hostPorts[p.ContainerPort] = r.String()
				}
			}
			if r.init {
				if r.c.LivenessProbe != nil || r.c.ReadinessProbe != nil || len(r.c.Ports) > 0 {
					t.Errorf("%s: init containers have no probes or ports", r)
				}
				continue
			}
			checkProbes(t, r)
		}
		checkServices(t, b)
	})
}

// checkProbes: liveness and startup on /healthz, readiness on /healthz or /readyz, all on the
// HTTP port (never the gRPC one).
func checkProbes(t *testing.T, r run) {
	t.Helper()
	readiness := map[string]string{"ipledger-server": "/readyz", "ipledger-agent": "/healthz", "etcd": "/readyz"}[r.binary]
	liveness := map[string]string{"ipledger-server": "/healthz", "ipledger-agent": "/healthz", "etcd": "/livez"}[r.binary]
	httpPort := map[string]string{"ipledger-server": "http", "ipledger-agent": "metrics", "etcd": "metrics"}[r.binary]
	for _, p := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{{"liveness", r.c.LivenessProbe, liveness}, {"readiness", r.c.ReadinessProbe, readiness}, {"startup", r.c.StartupProbe, liveness}} {
		if p.probe == nil {
			t.Errorf("%s: no %s probe", r, p.kind)
			continue
		}
		g := p.probe.HTTPGet
		if g == nil {
			t.Errorf("%s: %s probe is not httpGet", r, p.kind)
			continue
		}
		if g.Path != p.path {
			t.Errorf("%s: %s probe path %s, want %s", r, p.kind, g.Path, p.path)
		}
		if g.Host != "" {
			t.Errorf("%s: %s probe sets host %s (the kubelet must probe the pod IP the listener binds)", r, p.kind, g.Host)
		}
		port := g.Port
		want, _ := containerPort(r.c, httpPort)
		switch {
		case port.Type == intstr.String && port.StrVal != httpPort:
			t.Errorf("%s: %s probe on port %q, want %q", r, p.kind, port.StrVal, httpPort)
		case port.Type == intstr.Int && port.IntVal != want:
			t.Errorf("%s: %s probe on port %d, want %d (%s)", r, p.kind, port.IntVal, want, httpPort)
		}
	}
	if r.c.StartupProbe != nil && r.binary == "ipledger-agent" {
		// IMDS discovery may take --discovery-timeout before the HTTP endpoint exists.
		budget := r.c.StartupProbe.PeriodSeconds * r.c.StartupProbe.FailureThreshold
		if budget < 120 {
			t.Errorf("%s: startup probe gives %d s, less than the 2 min IMDS discovery timeout", r, budget)
		}
	}
}

func checkServices(t *testing.T, b *bundle) {
	t.Helper()
	for _, s := range b.services {
		if len(s.Spec.Selector) == 0 {
			t.Errorf("Service %s has no selector", s.Name)
			continue
		}
		var matched []workload
		for _, wl := range b.workloads() {
			if wl.selects(labels.SelectorFromSet(s.Spec.Selector)) {
				matched = append(matched, wl)
			}
		}
		if len(matched) != 1 {
			t.Errorf("Service %s selects %d workloads, want exactly one", s.Name, len(matched))
			continue
		}
		wl := matched[0]
		for _, p := range s.Spec.Ports {
			found := false
			for _, c := range wl.pod.Containers {
				for _, cp := range c.Ports {
					if (p.TargetPort.Type == intstr.String && cp.Name == p.TargetPort.StrVal) ||
						(p.TargetPort.Type == intstr.Int && cp.ContainerPort == p.TargetPort.IntVal) {
						found = true
						if cp.Protocol != "" && cp.Protocol != protocol(p) {
							t.Errorf("Service %s port %s: protocol %s, container port %s", s.Name, p.Name, protocol(p), cp.Protocol)
						}
					}
				}
			}
			if !found {
				t.Errorf("Service %s port %s targets %s, which %s/%s does not expose", s.Name, p.Name, p.TargetPort.String(), wl.kind, wl.name)
			}
		}
	}
	grpc := b.service(grpcService)
	if grpc == nil || grpc.Spec.ClusterIP == corev1.ClusterIPNone {
		t.Fatalf("no ClusterIP Service %s for agents and ipledgerctl", grpcService)
	}
	if !slices.ContainsFunc(grpc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "grpc" }) {
		t.Errorf("Service %s has no port named grpc (the agent reads IPLEDGER_SERVER_SERVICE_PORT_GRPC)", grpcService)
	}
}

func TestAgentFindsTheServerService(t *testing.T) {
	forEachBundle(t, func(t *testing.T, b *bundle) {
		links := b.serviceLinkEnv()
		for _, r := range b.runs(t) {
			if r.binary != "ipledger-agent" {
				continue
			}
			vals, err := flagValues(r.binary, r.args)
			if err != nil {
				t.Fatal(err)
			}
			grpc := b.service(grpcService)
			port := ""
			for _, p := range grpc.Spec.Ports {
				if p.Name == "grpc" {
					port = strconv.Itoa(int(p.Port))
				}
			}
			want := net.JoinHostPort(links["IPLEDGER_SERVER_SERVICE_HOST"], port)
			if vals["server"] != want {
				t.Errorf("%s: --server=%s, want the %s Service's cluster IP and gRPC port %s", r, vals["server"], grpcService, want)
			}
			if r.wl.pod.DNSPolicy != corev1.DNSDefault {
				t.Errorf("%s: dnsPolicy %s; the agent must not depend on cluster DNS (CoreDNS needs the agent)", r, r.wl.pod.DNSPolicy)
			}
		}
		// Service links must not set a variable a binary reads as configuration.
		for _, r := range b.runs(t) {
			if r.wl.pod.EnableServiceLinks != nil && !*r.wl.pod.EnableServiceLinks {
				continue
			}
			for _, name := range binaries[r.binary].envNames() {
				if _, ok := links[name]; ok {
					t.Errorf("%s: Service link variable %s would configure %s", r, name, r.binary)
				}
			}
		}
	})
}

func TestServerDeployment(t *testing.T) {
	forEachBundle(t, func(t *testing.T, b *bundle) {
		d := b.deployment(t, serverName)
		pod := &d.Spec.Template.Spec
		podLabels := labels.Set(d.Spec.Template.Labels)
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
			t.Errorf("replicas %v, want 3 (leader + 2 hot standbys)", d.Spec.Replicas)
		}
		mustSelect(t, "Deployment selector", d.Spec.Selector, podLabels)
		if ru := d.Spec.Strategy.RollingUpdate; ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 0 || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 1 {
			t.Errorf("rolling update %+v, want maxSurge 0 (host ports + required anti-affinity) and maxUnavailable 1", ru)
		}

		// Anti-affinity across nodes (required), spread across zones (preferred).
		aa := pod.Affinity
		if aa == nil || aa.PodAntiAffinity == nil || len(aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
			t.Fatal("want one required pod anti-affinity term")
		}
		term := aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0]
		if term.TopologyKey != "kubernetes.io/hostname" {
			t.Errorf("anti-affinity topology %s, want kubernetes.io/hostname", term.TopologyKey)
		}
		mustSelect(t, "anti-affinity", term.LabelSelector, podLabels)
		if len(pod.TopologySpreadConstraints) != 1 {
			t.Fatal("want one topology spread constraint")
		}
		ts := pod.TopologySpreadConstraints[0]
		if ts.TopologyKey != "topology.kubernetes.io/zone" || ts.WhenUnsatisfiable != corev1.ScheduleAnyway || ts.MaxSkew != 1 {
			t.Errorf("topology spread %+v, want zone, maxSkew 1, ScheduleAnyway", ts)
		}
		mustSelect(t, "topology spread", ts.LabelSelector, podLabels)

		// PDB: at most one replica down voluntarily, selecting exactly the server pods.
		var serverPDBs []*policyv1.PodDisruptionBudget
		for _, p := range b.pdbs {
			if sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector); err == nil && sel.Matches(podLabels) {
				serverPDBs = append(serverPDBs, p)
			}
		}
		if len(serverPDBs) != 1 {
			t.Fatalf("want 1 PodDisruptionBudget of the server, got %d", len(serverPDBs))
		}
		pdb := serverPDBs[0]
		mustSelect(t, "PodDisruptionBudget", pdb.Spec.Selector, podLabels)
		agentLabels := labels.Set(b.daemonSet(t, agentName).Spec.Template.Labels)
		if sel, _ := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); sel.Matches(agentLabels) {
			t.Error("the PodDisruptionBudget also selects agent pods")
		}
		switch {
		case pdb.Spec.MaxUnavailable != nil && pdb.Spec.MinAvailable == nil:
			if pdb.Spec.MaxUnavailable.IntValue() != 1 {
				t.Errorf("PDB maxUnavailable %s, want 1", pdb.Spec.MaxUnavailable.String())
			}
		case pdb.Spec.MinAvailable != nil && pdb.Spec.MaxUnavailable == nil:
			if pdb.Spec.MinAvailable.IntValue() != 2 {
				t.Errorf("PDB minAvailable %s, want 2", pdb.Spec.MinAvailable.String())
			}
		default:
			t.Error("PDB must set exactly one of maxUnavailable, minAvailable")
		}

		// No pod network for the allocator (it supplies that network), no cluster DNS.
		if !pod.HostNetwork || pod.DNSPolicy != corev1.DNSDefault {
			t.Errorf("hostNetwork %v dnsPolicy %s, want host network and Default DNS", pod.HostNetwork, pod.DNSPolicy)
		}
		if pod.PriorityClassName != "system-cluster-critical" {
			t.Errorf("priorityClassName %q, want system-cluster-critical", pod.PriorityClassName)
		}

		// Security: non-root, read-only root, no capabilities, RuntimeDefault seccomp.
		if len(pod.Containers) != 1 {
			t.Fatalf("want one container, got %d", len(pod.Containers))
		}
		c := &pod.Containers[0]
		sc := c.SecurityContext
		if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
			t.Error("the pod must run as a non-root uid")
		}
		checkHardened(t, "server", pod, c)
		if sc != nil && sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
			t.Errorf("server adds capabilities %v; it needs none", sc.Capabilities.Add)
		}
		// POD_IP from the downward API: the server advertises $POD_IP:<grpc port> when it leads.
		if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "POD_IP" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
		}) {
			t.Error("no POD_IP from status.podIP")
		}
	})
}

func TestServerAdvertisesItsPodIP(t *testing.T) {
	forEachComplete(t, testServerAdvertisesItsPodIP)
}

func testServerAdvertisesItsPodIP(t *testing.T, b *bundle) {
	settings := b.configMaps["ipledger-settings"]
	if settings == nil {
		t.Fatal("no ConfigMap ipledger-settings")
	}
	for _, r := range b.runs(t) {
		if r.binary != "ipledger-server" {
			continue
		}
		cfg, err := config.Load("ipledger-server", r.args, func(k string) string { return r.env[k] })
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(cfg.GRPCListen)
		bound := net.JoinHostPort("0.0.0.0", port)
		if got, want := cfg.Advertise(bound, func(k string) string { return r.env[k] }), net.JoinHostPort(podIP(r.wl.pod), port); got != want {
			t.Errorf("advertises %s, want the pod IP %s that agents can dial", got, want)
		}
		if cfg.ClusterName != settings.Data["cluster-name"] || cfg.Region != settings.Data["region"] || len(cfg.EtcdEndpoints) < 3 {
			t.Errorf("overlay settings did not reach the server: cluster %q region %q etcd %v", cfg.ClusterName, cfg.Region, cfg.EtcdEndpoints)
		}
		for _, e := range cfg.EtcdEndpoints {
			if !strings.HasPrefix(e, "https://") {
				t.Errorf("etcd endpoint %s is not https (the client certificate would not be used)", e)
			}
		}
	}
}

func mustSelect(t *testing.T, what string, sel *metav1.LabelSelector, set labels.Set) {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil || sel == nil || s.Empty() {
		t.Errorf("%s: bad or empty selector %v: %v", what, sel, err)
		return
	}
	if !s.Matches(set) {
		t.Errorf("%s: selector %s does not select the pods (%v)", what, s, set)
	}
}

// checkHardened: read-only root, no privilege escalation, not privileged, drops ALL,
// RuntimeDefault seccomp (pod or container), no host PID/IPC.
func checkHardened(t *testing.T, who string, pod *corev1.PodSpec, c *corev1.Container) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s/%s: no securityContext", who, c.Name)
		return
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s/%s: root filesystem not read-only", who, c.Name)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s/%s: allowPrivilegeEscalation not false", who, c.Name)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s/%s: privileged", who, c.Name)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("%s/%s: does not drop ALL capabilities", who, c.Name)
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && pod.SecurityContext != nil {
		seccomp = pod.SecurityContext.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s/%s: seccomp profile %v, want RuntimeDefault", who, c.Name, seccomp)
	}
	if pod.HostPID || pod.HostIPC {
		t.Errorf("%s: host PID/IPC namespace", who)
	}
}

func TestAgentDaemonSet(t *testing.T) {
	forEachBundle(t, func(t *testing.T, b *bundle) {
		ds := b.daemonSet(t, agentName)
		pod := &ds.Spec.Template.Spec
		mustSelect(t, "DaemonSet selector", ds.Spec.Selector, labels.Set(ds.Spec.Template.Labels))
		if !pod.HostNetwork {
			t.Error("agent must run in the host network (ENIs, route tables, rules, IMDS)")
		}
		if pod.PriorityClassName != "system-node-critical" {
			t.Errorf("priorityClassName %q, want system-node-critical", pod.PriorityClassName)
		}
		if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool {
			return tl.Key == "" && tl.Operator == corev1.TolerationOpExists && tl.Effect == ""
		}) {
			t.Error("agent does not tolerate every taint: nodes with taints would get no addresses")
		}
		if pod.SecurityContext == nil || pod.SecurityContext.RunAsUser == nil || *pod.SecurityContext.RunAsUser != 0 {
			t.Error("agent must state runAsUser 0 (added capabilities are only effective for root)")
		}

		var agentRun, installRun *run
		for _, r := range b.runs(t) {
			if r.wl.kind != "DaemonSet" {
				continue
			}
			switch r.binary {
			case "ipledger-agent":
				agentRun = &r
			case "ipledger-cni-install":
				installRun = &r
			default:
				t.Errorf("%s runs unexpected %s", r, r.binary)
			}
		}
		if agentRun == nil || installRun == nil || !installRun.init || agentRun.init {
			t.Fatal("want the agent container and the ipledger-cni-install init container")
		}

		// Capabilities: NET_ADMIN and nothing else for the agent, none for the installer.
		checkHardened(t, "agent", pod, agentRun.c)
		checkHardened(t, "agent", pod, installRun.c)
		if caps := agentRun.c.SecurityContext.Capabilities; caps == nil || !slices.Equal(caps.Add, []corev1.Capability{"NET_ADMIN"}) {
			t.Errorf("agent capabilities add %v, want exactly [NET_ADMIN]", caps)
		}
		if caps := installRun.c.SecurityContext.Capabilities; caps != nil && len(caps.Add) > 0 {
			t.Errorf("installer adds capabilities %v; it only copies files as their owner", caps.Add)
		}
		if !slices.ContainsFunc(agentRun.c.Env, func(e corev1.EnvVar) bool {
			return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
		}) {
			t.Error("no NODE_NAME from spec.nodeName")
		}

		vals, err := flagValues("ipledger-agent", agentRun.args)
		if err != nil {
			t.Fatal(err)
		}
		if vals["manage-networking"] != "true" {
			t.Errorf("--manage-networking=%s, want true", vals["manage-networking"])
		}
		// Socket and checkpoint live on the host, writable.
		conf := sampleConflist(t)
		for _, f := range []struct{ flag, hostDir string }{{"socket", "/run/ipledger"}, {"checkpoint", "/var/lib/ipledger"}} {
			p := vals[f.flag]
			hp := hostPathOf(pod, agentRun.c, p)
			if filepath.Dir(hp) != f.hostDir {
				t.Errorf("--%s=%s is %q on the node, want a file in %s", f.flag, p, hp, f.hostDir)
			}
			if m, _ := mountFor(agentRun.c, p); m != nil && m.ReadOnly {
				t.Errorf("--%s=%s is on a read-only mount", f.flag, p)
			}
		}
		if hp := hostPathOf(pod, agentRun.c, vals["socket"]); hp != conf.AgentSocket {
			t.Errorf("agent serves %s on the node, the conflist's agentSocket is %s", hp, conf.AgentSocket)
		}

		// The installer puts only the plugin binary into the node's CNI bin directory; the agent
		// writes the conflist into the node's CNI config directory once it can serve (so the node
		// is Ready only then), and checks the plugins in the bin directory first.
		iv, err := flagValues("ipledger-cni-install", installRun.args)
		if err != nil {
			t.Fatal(err)
		}
		for flagName, want := range map[string]string{"bin-dir": "/opt/cni/bin", "conf-dir": "/etc/cni/net.d"} {
			if hp := hostPathOf(pod, installRun.c, iv[flagName]); hp != want {
				t.Errorf("installer --%s=%s is %q on the node, want %s", flagName, iv[flagName], hp, want)
			}
		}
		if iv["binary-only"] != "true" {
			t.Error("the installer writes the conflist (no --binary-only): the node turns Ready before its agent can serve")
		}
		if iv["plugin-name"] != "ipledger" || iv["plugin-name"] != conf.Type {
			t.Errorf("installer --plugin-name=%s; the conflist's plugin type is %s and must be ipledger", iv["plugin-name"], conf.Type)
		}
		for flagName, want := range map[string]string{"cni-conf-dir": "/etc/cni/net.d", "cni-bin-dir": "/opt/cni/bin"} {
			if hp := hostPathOf(pod, agentRun.c, vals[flagName]); hp != want {
				t.Errorf("agent --%s=%s is %q on the node, want %s", flagName, vals[flagName], hp, want)
			}
		}
		if m, _ := mountFor(agentRun.c, vals["cni-conf-dir"]); m == nil || m.ReadOnly {
			t.Errorf("agent --cni-conf-dir=%s is not on a writable mount: it cannot install the conflist", vals["cni-conf-dir"])
		}
		if src := dockerfileFor(t, agentRun.image).files[vals["cni-conflist-src"]]; src != "context:deploy/"+conflistSrc {
			t.Errorf("agent --cni-conflist-src=%s is %q in the image, want deploy/%s", vals["cni-conflist-src"], src, conflistSrc)
		}
		if iv["cni-version"] != "" {
			t.Errorf("installer --cni-version=%s: it installs no conflist; the agent's --cni-version applies", iv["cni-version"])
		}

		// Identity: attest keeps the node's key in --identity-dir on the node (it survives
		// restarts) and mounts no certificate files; files reads them from the node's PKI.
		cfg, err := agent.LoadConfig(agentRun.args, func(k string) (string, bool) { v, ok := agentRun.env[k]; return v, ok }, io.Discard)
		if err != nil {
			t.Fatalf("agent configuration: %v", err)
		}
		if cfg.Attests() {
			if hp := hostPathOf(pod, agentRun.c, vals["identity-dir"]); !strings.HasPrefix(hp, "/var/lib/ipledger/") {
				t.Errorf("--identity-dir=%s is %q on the node: the node's key must survive restarts in /var/lib/ipledger", vals["identity-dir"], hp)
			}
			if m, _ := mountFor(agentRun.c, vals["identity-dir"]); m == nil || m.ReadOnly {
				t.Errorf("--identity-dir=%s is not writable", vals["identity-dir"])
			}
			if b.chart && b.values("agent", "identity") != "attest" {
				t.Errorf("the agent attests, agent.identity is %q", b.values("agent", "identity"))
			}
		} else {
			if hp := hostPathOf(pod, agentRun.c, vals["tls-cert-file"]); !strings.HasPrefix(hp, "/etc/ipledger/pki/") {
				t.Errorf("--tls-cert-file=%s is %q on the node, want the node's PKI directory", vals["tls-cert-file"], hp)
			}
		}
	})
}

// conflistEntry is the ipledger entry of the sample conflist.
type conflistEntry struct {
	Type        string `json:"type"`
	AgentSocket string `json:"agentSocket"`
}

func sampleConflist(t *testing.T) conflistEntry {
	t.Helper()
	b, err := os.ReadFile(conflistSrc)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Plugins []conflistEntry `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil || len(list.Plugins) == 0 {
		t.Fatalf("%s: %v", conflistSrc, err)
	}
	return list.Plugins[0]
}

func TestCNIInstallFromTheAgentImage(t *testing.T) {
	forEachComplete(t, testCNIInstallFromTheAgentImage)
}

func testCNIInstallFromTheAgentImage(t *testing.T, b *bundle) {
	// Lay out the agent image (from its Dockerfile) and the node (from the DaemonSet's hostPath
	// volumes) under a temporary root, then run the installer with the manifest's arguments.
	ds := b.daemonSet(t, agentName)
	pod := &ds.Spec.Template.Spec
	var inst run
	for _, r := range b.runs(t) {
		if r.binary == "ipledger-cni-install" {
			inst = r
		}
	}
	if inst.c == nil {
		t.Fatal("no installer")
	}
	img := dockerfileFor(t, inst.image)
	root := t.TempDir()
	rooted := func(p string) string { return filepath.Join(root, p) }
	// The image: every file the final stage copies.
	for dst, src := range img.files {
		var content []byte
		switch {
		case strings.HasPrefix(src, "context:"):
			var err error
			if content, err = os.ReadFile(filepath.Join(repoRoot, strings.TrimPrefix(src, "context:"))); err != nil {
				t.Fatalf("%s copies %s: %v", img.path, src, err)
			}
		default:
			content = []byte("binary built from " + src)
		}
		if err := os.MkdirAll(filepath.Dir(rooted(dst)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(rooted(dst), content, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The node: its CNI bin dir holds the reference plugins the conflist chains.
	for _, m := range inst.c.VolumeMounts {
		if err := os.MkdirAll(rooted(m.MountPath), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if cmd0 := inst.c.Command[0]; !strings.HasPrefix(img.files[cmd0], "build:deploy/cmd/ipledger-cni-install") {
		t.Errorf("init container runs %s, which the agent image does not build from deploy/cmd/ipledger-cni-install (%q)", cmd0, img.files[cmd0])
	}
	cfg := cniinstall.DefaultConfig()
	fs := flag.NewFlagSet("ipledger-cni-install", flag.ContinueOnError)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(inst.args); err != nil {
		t.Fatal(err)
	}
	if src := img.files[cfg.PluginSource]; src != "build:cni/cmd/ipledger-cni" {
		t.Errorf("--plugin-src=%s is %q in the image, want the build of ./cni/cmd/ipledger-cni", cfg.PluginSource, src)
	}
	if src := img.files[cfg.ConflistSource]; src != "context:deploy/"+conflistSrc {
		t.Errorf("--conflist-src=%s is %q in the image, want deploy/%s", cfg.ConflistSource, src, conflistSrc)
	}
	if err := os.WriteFile(filepath.Join(rooted(cfg.BinDir), "portmap"), []byte("portmap"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.PluginSource, cfg.ConflistSource = rooted(cfg.PluginSource), rooted(cfg.ConflistSource)
	cfg.BinDir, cfg.ConfDir = rooted(cfg.BinDir), rooted(cfg.ConfDir)
	res, err := cniinstall.Install(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if hp := hostPathOf(pod, inst.c, strings.TrimPrefix(res.PluginPath, root)); hp != "/opt/cni/bin/ipledger" {
		t.Errorf("plugin lands at %s on the node, want /opt/cni/bin/ipledger", hp)
	}
	if res.ConflistPath != "" {
		t.Errorf("the init container installed the conflist %s: the node would be Ready before its agent serves", res.ConflistPath)
	}

	// Then the agent, with the DaemonSet's arguments and mounts, installs the conflist in the
	// same node directory once it can serve (as it does after its first pool).
	var ag run
	for _, r := range b.runs(t) {
		if r.binary == "ipledger-agent" {
			ag = r
		}
	}
	vals, err := flagValues("ipledger-agent", ag.args)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ag.c.VolumeMounts {
		if err := os.MkdirAll(rooted(m.MountPath), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The agent's mounts of the node's directories are the installer's (one tree under root).
	for flagName, instDir := range map[string]string{"cni-bin-dir": cfg.BinDir, "cni-conf-dir": cfg.ConfDir} {
		if rooted(vals[flagName]) != instDir || hostPathOf(pod, ag.c, vals[flagName]) != hostPathOf(pod, inst.c, strings.TrimPrefix(instDir, root)) {
			t.Fatalf("agent --%s=%s is not the directory the installer wrote (%s)", flagName, vals[flagName], instDir)
		}
	}
	ic := cniinstall.DefaultConfig()
	ic.ConfDir, ic.BinDir, ic.ConflistSource, ic.CNIVersion = rooted(vals["cni-conf-dir"]), rooted(vals["cni-bin-dir"]), rooted(vals["cni-conflist-src"]), vals["cni-version"]
	res, err = cniinstall.InstallConflist(ic)
	if err != nil {
		t.Fatalf("the agent's conflist installation: %v", err)
	}
	if hp := hostPathOf(pod, ag.c, strings.TrimPrefix(res.ConflistPath, root)); hp != "/etc/cni/net.d/10-ipledger.conflist" {
		t.Errorf("conflist lands at %s on the node, want /etc/cni/net.d/10-ipledger.conflist", hp)
	}
	if res.AgentSocket != sampleConflist(t).AgentSocket || res.AgentSocket != hostPathOf(pod, ag.c, vals["socket"]) {
		t.Errorf("installed config sends the plugin to %s; the agent serves %s", res.AgentSocket, hostPathOf(pod, ag.c, vals["socket"]))
	}
	b2, err := os.ReadFile(res.ConflistPath)
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(b2, &list); err != nil {
		t.Fatal(err)
	}
	if want := b.values("agent", "cniVersion"); b.chart && want != "" && list.CNIVersion != want {
		t.Errorf("the conflist's cniVersion is %s; agent.cniVersion is %s", list.CNIVersion, want)
	}
}

func TestVolumesAndReferences(t *testing.T) {
	forEachBundle(t, func(t *testing.T, b *bundle) {
		for _, wl := range b.workloads() {
			used := map[string]bool{}
			for _, c := range slices.Concat(wl.pod.InitContainers, wl.pod.Containers) {
				for _, m := range c.VolumeMounts {
					if slices.Contains(wl.claims, m.Name) {
						used[m.Name] = true
						continue
					}
					if volumeNamed(wl.pod, m.Name) == nil {
						t.Errorf("%s/%s: container %s mounts volume %s, which does not exist", wl.kind, wl.name, c.Name, m.Name)
					}
					used[m.Name] = true
				}
			}
			for _, v := range wl.pod.Volumes {
				if !used[v.Name] {
					t.Errorf("%s/%s: volume %s is mounted nowhere", wl.kind, wl.name, v.Name)
				}
				var kind, name string
				var items []corev1.KeyToPath
				switch {
				case v.ConfigMap != nil:
					kind, name, items = "ConfigMap", v.ConfigMap.Name, v.ConfigMap.Items
				case v.Secret != nil:
					kind, name, items = "Secret", v.Secret.SecretName, v.Secret.Items
				case v.HostPath != nil:
					if !filepath.IsAbs(v.HostPath.Path) || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
						t.Errorf("%s/%s: hostPath %s must be an absolute DirectoryOrCreate", wl.kind, wl.name, v.Name)
					}
					continue
				default:
					t.Errorf("%s/%s: volume %s has a source the test does not check", wl.kind, wl.name, v.Name)
					continue
				}
				keys, ok := b.keys(kind, name)
				if !ok {
					t.Errorf("%s/%s: volume %s needs %s %s, which is neither in the manifests nor documented as user-provided", wl.kind, wl.name, v.Name, kind, name)
				}
				for _, it := range items {
					if !slices.Contains(keys, it.Key) {
						t.Errorf("%s/%s: volume %s item %s is not a key of %s %s", wl.kind, wl.name, v.Name, it.Key, kind, name)
					}
				}
			}
			if wl.pod.ServiceAccountName == "" || b.serviceAccounts[wl.pod.ServiceAccountName] == nil {
				t.Errorf("%s/%s: service account %q is not in the manifests", wl.kind, wl.name, wl.pod.ServiceAccountName)
			}
		}
		// Every file a binary reads or writes is on a volume (root filesystems are read-only,
		// and the images carry no such files), and files from ConfigMaps/Secrets are real keys.
		fileFlags := map[string][]string{
			"ipledger-server": {"policy-file", "etcd-ca-file", "etcd-cert-file", "etcd-key-file", "tls-cert-file", "tls-key-file", "tls-client-ca-file"},
			"ipledger-agent":  {"socket", "checkpoint", "tls-ca-file", "identity-dir", "cni-conf-dir", "cni-bin-dir"},
			"etcd":            {"data-dir", "cert-file", "key-file", "trusted-ca-file", "peer-cert-file", "peer-key-file", "peer-trusted-ca-file"},
		}
		// Files some configurations have: attestation's issuing CA on the server, certificate
		// files from the node's PKI on the agent.
		optionalFileFlags := map[string][]string{
			"ipledger-server": {"issuer-cert-file", "issuer-key-file"},
			"ipledger-agent":  {"tls-cert-file", "tls-key-file"},
		}
		for _, r := range b.runs(t) {
			vals, err := flagValues(r.binary, r.args)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range append(slices.Clone(fileFlags[r.binary]), optionalFileFlags[r.binary]...) {
				p := vals[f]
				if p == "" {
					if !slices.Contains(optionalFileFlags[r.binary], f) {
						t.Errorf("%s: --%s is not set", r, f)
					}
					continue
				}
				m, rel := mountFor(r.c, p)
				if m == nil {
					t.Errorf("%s: --%s=%s is on no volume", r, f, p)
					continue
				}
				if slices.Contains(r.wl.claims, m.Name) {
					continue // a persistent volume of the StatefulSet
				}
				v := volumeNamed(r.wl.pod, m.Name)
				if v == nil {
					continue // reported above
				}
				var keys []string
				var ok bool
				switch {
				case v.ConfigMap != nil:
					keys, ok = b.keys("ConfigMap", v.ConfigMap.Name)
				case v.Secret != nil:
					keys, ok = b.keys("Secret", v.Secret.SecretName)
				default:
					continue
				}
				if ok && !slices.Contains(keys, rel) {
					t.Errorf("%s: --%s=%s: %s has no key %s (keys %v)", r, f, p, m.Name, rel, keys)
				}
			}
		}
	})
}

func TestPoliciesPassServerValidation(t *testing.T) {
	forEachBundle(t, func(t *testing.T, b *bundle) {
		cm := b.configMaps[policiesCM]
		if cm == nil {
			t.Fatalf("no ConfigMap %s", policiesCM)
		}
		var policyFile string
		for _, r := range b.runs(t) {
			if r.binary == "ipledger-server" {
				vals, err := flagValues(r.binary, r.args)
				if err != nil {
					t.Fatal(err)
				}
				policyFile = vals["policy-file"]
			}
		}
		key := filepath.Base(policyFile)
		content, ok := cm.Data[key]
		if !ok {
			t.Fatalf("%s has no key %s (--policy-file=%s)", policiesCM, key, policyFile)
		}
		path := filepath.Join(t.TempDir(), key)
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		policies, err := server.LoadPolicyFile(path)
		if err != nil {
			t.Fatalf("the server would refuse to start: %v", err)
		}
		var static, adaptive, def *ipledgerv1.NodePolicy
		for _, p := range policies {
			if p.WarmIpTarget != nil || p.MinimumIpTarget != nil || p.WarmEniTarget != nil || p.WarmPrefixTarget != nil {
				static = p
			} else {
				adaptive = p
			}
			if p.GetName() == "default" {
				def = p
			}
		}
		if static == nil || adaptive == nil {
			t.Errorf("want a VPC CNI-compatible (static targets) and an adaptive example policy, got %v", policies)
		}
		// The example spells out the default (it replaces the built-in one): it must match
		// every node and be adaptive.
		if def == nil || len(def.GetSelector().GetLabels())+len(def.GetSelector().GetInstanceTypes()) > 0 || def.AdaptiveFloor == nil {
			t.Errorf("want an adaptive policy named default with an empty selector, got %v", def)
		}
	})
}

func TestServiceAccountsAndRBAC(t *testing.T) {
	arn := regexp.MustCompile(`^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$`)
	forEachBundle(t, func(t *testing.T, b *bundle) {
		// The server reaches EC2 through IRSA and, with kubernetes.enabled (the default), reads
		// pods, Nodes and NodeClaims and writes Events and Node status; the agent reaches
		// neither. So: the server's ClusterRole with exactly those rules and its binding, a
		// token in the server's pods only, none in the agent's.
		kubeOn := true
		if kv, ok := b.chartValues["kubernetes"].(map[string]any); ok {
			if on, ok := kv["enabled"].(bool); ok {
				kubeOn = on
			}
		}
		wantRules := []string{"/pods,nodes/get,list,watch", "/nodes/status/patch", "/events/create,patch", "karpenter.sh/nodeclaims/get,list,watch"}
		var roles, bindings int
		for _, o := range b.rbac {
			switch r := o.(type) {
			case *rbacv1.ClusterRole:
				roles++
				var got []string
				for _, rule := range r.Rules {
					got = append(got, strings.Join(rule.APIGroups, ",")+"/"+strings.Join(rule.Resources, ",")+"/"+strings.Join(rule.Verbs, ","))
				}
				if r.Name != serverName || !slices.Equal(got, wantRules) {
					t.Errorf("ClusterRole %s rules %v; want %s with exactly %v", r.Name, got, serverName, wantRules)
				}
			case *rbacv1.ClusterRoleBinding:
				bindings++
				if r.RoleRef.Name != serverName || len(r.Subjects) != 1 || r.Subjects[0].Kind != "ServiceAccount" || r.Subjects[0].Name != serverName {
					t.Errorf("ClusterRoleBinding %s binds %v to %v; want the server's role to its service account only", r.Name, r.RoleRef, r.Subjects)
				}
			default:
				m, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
				t.Errorf("RBAC object %T %v grants what nothing uses", o, m["metadata"])
			}
		}
		if want := map[bool]int{true: 1, false: 0}[kubeOn]; roles != want || bindings != want {
			t.Errorf("kubernetes.enabled=%v: %d ClusterRoles and %d bindings, want %d of each", kubeOn, roles, bindings, want)
		}
		for _, wl := range b.workloads() {
			sa := b.serviceAccounts[wl.pod.ServiceAccountName]
			if sa == nil {
				t.Fatalf("%s/%s: no service account", wl.kind, wl.name)
			}
			if sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken {
				t.Errorf("%s/%s: service account %s mounts its token for every pod", wl.kind, wl.name, sa.Name)
			}
			mounted := wl.pod.AutomountServiceAccountToken != nil && *wl.pod.AutomountServiceAccountToken
			if want := wl.name == serverName && kubeOn; mounted != want {
				t.Errorf("%s/%s: Kubernetes API token mounted %v, want %v", wl.kind, wl.name, mounted, want)
			}
		}
		sa := b.serviceAccounts[b.deployment(t, serverName).Spec.Template.Spec.ServiceAccountName]
		role, irsa := sa.Annotations[irsaKey]
		switch {
		case b.podIdentity && irsa:
			t.Errorf("with EKS Pod Identity the server's service account must not carry %s=%q", irsaKey, role)
		case !b.podIdentity && !arn.MatchString(role):
			t.Errorf("server service account %s annotation %s=%q is not an IAM role ARN", sa.Name, irsaKey, role)
		}
		if b.name == "overlay" && strings.Contains(role, "CHANGE-ME") {
			t.Errorf("the overlay keeps the base's placeholder role %s", role)
		}
		for _, wl := range b.workloads() {
			if other := b.serviceAccounts[wl.pod.ServiceAccountName]; wl.name != serverName && (other.Name == sa.Name || other.Annotations[irsaKey] != "") {
				t.Errorf("%s/%s must not share the server's IAM role or have one: only the server calls EC2", wl.kind, wl.name)
			}
		}
	})
}

func TestOverlayImagesArePinned(t *testing.T) {
	forEachComplete(t, func(t *testing.T, b *bundle) {
		for _, r := range b.runs(t) {
			name, suffix := splitImage(r.c.Image)
			if !strings.Contains(name, "/") {
				t.Errorf("%s: image %s has no registry", r, r.c.Image)
			}
			if suffix == "" || suffix == ":latest" {
				t.Errorf("%s: image %s is not pinned to a tag or digest", r, r.c.Image)
			}
			if _, upstream := upstreamImages[r.image]; r.image != "ipledger-server" && r.image != "ipledger-agent" && !upstream {
				t.Errorf("%s: image %s is not built by a Dockerfile in %s", r, r.c.Image, dockerDir)
			}
		}
	})
}

func TestServiceMonitors(t *testing.T) {
	forEachComplete(t, func(t *testing.T, b *bundle) {
		if len(b.serviceMonitors) == 0 && b.name != "overlay" && b.name != "chart-production" {
			return // metrics.serviceMonitor.enabled=false
		}
		testServiceMonitors(t, b)
	})
}

func testServiceMonitors(t *testing.T, b *bundle) {
	want := 2
	if b.hasStatefulSet() {
		want = 3 // and the bundled etcd
	}
	if len(b.serviceMonitors) != want {
		t.Fatalf("want %d ServiceMonitors (server, agent, bundled etcd), got %d", want, len(b.serviceMonitors))
	}
	scraped := map[string]bool{}
	for _, sm := range b.serviceMonitors {
		if sm.APIVersion != "monitoring.coreos.com/v1" || sm.Namespace != namespace {
			t.Errorf("ServiceMonitor %s: %s in %s", sm.Name, sm.APIVersion, sm.Namespace)
		}
		if !slices.Contains(sm.Spec.NamespaceSelector.MatchNames, namespace) {
			t.Errorf("ServiceMonitor %s does not look in %s", sm.Name, namespace)
		}
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil || sel.Empty() {
			t.Errorf("ServiceMonitor %s: bad selector: %v", sm.Name, err)
			continue
		}
		var svcs []*corev1.Service
		for _, s := range b.services {
			if sel.Matches(labels.Set(s.Labels)) {
				svcs = append(svcs, s)
			}
		}
		if len(svcs) != 1 {
			t.Errorf("ServiceMonitor %s selects %d Services, want 1", sm.Name, len(svcs))
			continue
		}
		svc := svcs[0]
		for _, ep := range sm.Spec.Endpoints {
			if ep.Path != "/metrics" {
				t.Errorf("ServiceMonitor %s scrapes %s", sm.Name, ep.Path)
			}
			var sp *corev1.ServicePort
			for i := range svc.Spec.Ports {
				if svc.Spec.Ports[i].Name == ep.Port {
					sp = &svc.Spec.Ports[i]
				}
			}
			if sp == nil {
				t.Errorf("ServiceMonitor %s: Service %s has no port %q", sm.Name, svc.Name, ep.Port)
				continue
			}
			// The port must be the one the binary serves /metrics on.
			for _, wl := range b.workloads() {
				if wl.selects(labels.SelectorFromSet(svc.Spec.Selector)) {
					scraped[wl.name] = true
					if !slices.ContainsFunc(wl.pod.Containers, func(c corev1.Container) bool {
						_, ok := containerPort(&c, sp.TargetPort.StrVal)
						return ok && (sp.TargetPort.StrVal == "http" || sp.TargetPort.StrVal == "metrics")
					}) {
						t.Errorf("ServiceMonitor %s: %s does not serve metrics on %s", sm.Name, wl.name, sp.TargetPort.String())
					}
				}
			}
		}
	}
	if !scraped[serverName] || !scraped[agentName] || b.hasStatefulSet() != scraped[etcdName] {
		t.Errorf("scraped workloads %v, want server, agent and the bundled etcd when there is one", scraped)
	}
}

func TestDockerfiles(t *testing.T) {
	goVersion := goModVersion(t)
	for _, tt := range []struct {
		// name is the image and the binary it runs; users are the acceptable USER values.
		name  string
		users []string
		extra map[string]string // more files the image must carry: destination -> source
	}{
		{name: "ipledger-server", users: []string{"65532:65532", "65532", "nonroot"}},
		{name: "ipledger-agent", users: []string{"0:0", "0", "root"}, extra: map[string]string{
			"/usr/local/bin/ipledger-cni-install":    "build:deploy/cmd/ipledger-cni-install",
			"/opt/ipledger/bin/ipledger-cni":         "build:cni/cmd/ipledger-cni",
			"/opt/ipledger/cni/10-ipledger.conflist": "context:deploy/" + conflistSrc,
		}},
		{name: "ipledgerctl", users: []string{"65532:65532", "65532", "nonroot"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			img := dockerfileFor(t, tt.name)
			v, ok := strings.CutPrefix(img.builderImage, "golang:")
			if !ok {
				t.Fatalf("builder %s is not the golang image", img.builderImage)
			}
			if ver, _, _ := strings.Cut(v, "-"); !versionAtLeast(ver, goVersion) {
				t.Errorf("builder Go %s is older than go.mod's go %s", ver, goVersion)
			}
			for _, run := range img.buildRuns {
				if !strings.Contains(run, "CGO_ENABLED=0") || !strings.Contains(run, "-trimpath") {
					t.Errorf("go build without CGO_ENABLED=0 and -trimpath: %s", run)
				}
			}
			if len(img.buildRuns) == 0 {
				t.Fatal("no go build")
			}
			final, _, _ := strings.Cut(img.finalImage, "@")
			final, _, _ = strings.Cut(final, ":")
			if final != "gcr.io/distroless/static-debian12" && final != "scratch" {
				t.Errorf("final stage %s is not distroless static or scratch", img.finalImage)
			}
			if !slices.Contains(tt.users, img.user) {
				t.Errorf("USER %q, want one of %v", img.user, tt.users)
			}
			if len(img.entrypoint) != 1 || filepath.Base(img.entrypoint[0]) != tt.name {
				t.Fatalf("ENTRYPOINT %v, want the %s binary", img.entrypoint, tt.name)
			}
			if src := img.files[img.entrypoint[0]]; !strings.HasPrefix(src, "build:") || filepath.Base(strings.TrimPrefix(src, "build:")) != tt.name {
				t.Errorf("ENTRYPOINT %s is %q in the image, want the build of the %s package", img.entrypoint[0], src, tt.name)
			}
			for dst, src := range tt.extra {
				if img.files[dst] != src {
					t.Errorf("image file %s is %q, want %q", dst, img.files[dst], src)
				}
			}
			for dst, src := range img.files {
				if p, ok := strings.CutPrefix(src, "context:"); ok {
					if _, err := os.Stat(filepath.Join(repoRoot, p)); err != nil {
						t.Errorf("COPY %s %s: %v", p, dst, err)
					}
				}
			}
			// -X targets must exist, or the version silently stays "dev".
			for _, sym := range img.ldflagsX {
				pkg, name := sym[:strings.LastIndex(sym, ".")], sym[strings.LastIndex(sym, ".")+1:]
				var dirs []string
				if pkg == "main" {
					dirs = img.packages
				} else if rel, ok := strings.CutPrefix(pkg, "github.com/ipledger/ipledger/"); ok {
					dirs = []string{rel}
				} else {
					t.Errorf("-X %s: not a package of this module", sym)
				}
				found := false
				for _, d := range dirs {
					if ok, err := declaresStringVar(d, name); err == nil && ok {
						found = true
					}
				}
				if !found {
					t.Errorf("-X %s: no string variable %s in %v", sym, name, dirs)
				}
			}
			// The context keeps what the build needs.
			ignore, err := os.ReadFile(img.path + ".dockerignore")
			if err != nil {
				t.Errorf("no %s.dockerignore: the whole checkout (bin/, .git) would be sent as context", img.path)
			}
			for line := range strings.SplitSeq(string(ignore), "\n") {
				if dockerignoreExcludes(line) {
					t.Errorf("%s.dockerignore: %q drops files the build needs", img.path, line)
				}
			}
			for _, p := range img.packages {
				if ok, err := mainPackage(p); err != nil || !ok {
					t.Errorf("%s builds ./%s, which is not a main package of this repository: %v", img.path, p, err)
				}
			}
		})
	}
}

func TestIAMPolicyMatchesTheGateway(t *testing.T) {
	// The actions the gateway calls: every g.client.<Action>(...) in server/ec2gw.
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, filepath.Join(repoRoot, "server/ec2gw"), func(fi os.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	called := map[string]bool{}
	for _, p := range pkgs {
		ast.Inspect(p, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			if sel, ok := call.Fun.(*ast.SelectorExpr); ok {
				if inner, ok := sel.X.(*ast.SelectorExpr); ok && inner.Sel.Name == "client" {
					called["ec2:"+sel.Sel.Name] = true
				}
			}
			return true
		})
	}
	if len(called) < 10 {
		t.Fatalf("found only %v in server/ec2gw; the parse is wrong", called)
	}

	b, err := os.ReadFile("iam-policy.json")
	if err != nil {
		t.Fatal(err)
	}
	var pol struct {
		Version   string
		Statement []struct {
			Sid       string
			Effect    string
			Action    any
			Resource  any
			Condition map[string]map[string]string
		}
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&pol); err != nil {
		t.Fatal(err)
	}
	if pol.Version != "2012-10-17" {
		t.Errorf("policy Version %q", pol.Version)
	}
	granted := map[string]bool{}
	list := func(v any) []string {
		switch x := v.(type) {
		case string:
			return []string{x}
		case []any:
			var out []string
			for _, e := range x {
				s, _ := e.(string)
				out = append(out, s)
			}
			return out
		}
		return nil
	}
	for _, s := range pol.Statement {
		if s.Effect != "Allow" {
			t.Errorf("statement %s: effect %s", s.Sid, s.Effect)
		}
		for _, a := range list(s.Action) {
			if strings.Contains(a, "*") {
				t.Errorf("statement %s: wildcard action %s", s.Sid, a)
			}
			granted[a] = true
		}
		// Conditions on tags name the tag the allocator puts on ENIs.
		for _, kv := range s.Condition {
			for k := range kv {
				if tag, ok := strings.CutPrefix(k, "aws:RequestTag/"); ok && tag != allocator.TagCluster {
					t.Errorf("statement %s: condition on tag %s, the allocator tags %s", s.Sid, tag, allocator.TagCluster)
				}
				if tag, ok := strings.CutPrefix(k, "ec2:ResourceTag/"); ok && tag != allocator.TagCluster {
					t.Errorf("statement %s: condition on tag %s, the allocator tags %s", s.Sid, tag, allocator.TagCluster)
				}
			}
		}
	}
	for a := range called {
		if !granted[a] {
			t.Errorf("the gateway calls %s; deploy/iam-policy.json does not allow it", a)
		}
	}
	for a := range granted {
		if !called[a] {
			t.Errorf("deploy/iam-policy.json allows %s, which the gateway never calls", a)
		}
	}
}

func TestDocsDescribeWhatUsersProvide(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs/deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	for name, keys := range mergeMaps(userProvided, overlayProvided) {
		_, n, _ := strings.Cut(name, "/")
		if !strings.Contains(text, n) {
			t.Errorf("docs/deploy.md does not mention %s", name)
		}
		for _, k := range keys {
			if !strings.Contains(text, k) {
				t.Errorf("docs/deploy.md does not name key %s of %s", k, name)
			}
		}
	}
	for _, must := range []string{"iam-policy.json", "aws-node", "NET_ADMIN", "rollback", "ipledger-cni-install", "kubectl kustomize"} {
		if !strings.Contains(text, must) {
			t.Errorf("docs/deploy.md does not cover %q", must)
		}
	}
}

func mergeMaps(ms ...map[string][]string) map[string][]string {
	out := map[string][]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func TestRenderMatchesKubectlKustomize(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not installed: the renderer is only compared with the real kustomize where it is")
	}
	for _, dir := range []string{baseDir, overlayDir} {
		t.Run(dir, func(t *testing.T) {
			out, err := exec.CommandContext(t.Context(), kubectl, "kustomize", dir).Output()
			if err != nil {
				t.Fatalf("kubectl kustomize %s: %v", dir, err)
			}
			theirs, err := splitYAML(out, "kubectl kustomize")
			if err != nil {
				t.Fatal(err)
			}
			ours, err := renderKustomization(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range diffRenderings(ours, theirs) {
				t.Error(d)
			}
		})
	}
}
