package deploy

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/pkg/v3/flags"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/ipledger/ipledger/server/config"
)

// The chart's bundled etcd is checked against etcd's own flag set and configuration validation
// (go.etcd.io/etcd/server/v3/embed, the version ipledger's tests embed and the chart's default
// image runs), and its wiring without DNS: member names, hostAliases, the members' Services with
// fixed cluster IPs, the certificates' names and the server's endpoints must all agree.

func init() {
	binaries["etcd"] = binarySpec{
		flags: etcdFlags,
		envNames: func() []string {
			var out []string
			etcdFlags().VisitAll(func(f *flag.Flag) {
				out = append(out, "ETCD_"+strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_")))
			})
			return out
		},
		load: func(args []string, _ map[string]string) error {
			_, err := loadEtcd(args)
			return err
		},
		listen: map[string]string{"listen-client-urls": "client", "listen-peer-urls": "peer", "listen-metrics-urls": "metrics"},
	}
}

// etcdFlags are etcd's flags: embed's, plus the few etcdmain adds.
func etcdFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	embed.NewConfig().AddFlags(fs)
	fs.String("config-file", "", "")
	fs.String("initial-cluster-state", embed.ClusterStateFlagNew, "")
	fs.Bool("version", false, "")
	return fs
}

// loadEtcd parses etcd's arguments as etcdmain does and validates the configuration.
func loadEtcd(args []string) (*embed.Config, error) {
	cfg := embed.NewConfig()
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cfg.AddFlags(fs)
	state := fs.String("initial-cluster-state", embed.ClusterStateFlagNew, "")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("positional arguments %q", fs.Args())
	}
	cfg.ListenPeerUrls = flags.UniqueURLsFromFlag(fs, "listen-peer-urls")
	cfg.AdvertisePeerUrls = flags.UniqueURLsFromFlag(fs, "initial-advertise-peer-urls")
	cfg.ListenClientUrls = flags.UniqueURLsFromFlag(fs, "listen-client-urls")
	cfg.AdvertiseClientUrls = flags.UniqueURLsFromFlag(fs, "advertise-client-urls")
	cfg.ListenMetricsUrls = flags.UniqueURLsFromFlag(fs, "listen-metrics-urls")
	cfg.PeerTLSInfo.AllowedCNs = flags.StringsFromFlag(fs, "peer-cert-allowed-cn")
	cfg.LogOutputs = flags.UniqueStringsFromFlag(fs, "log-outputs")
	for _, o := range cfg.LogOutputs {
		if o != "stderr" && o != "stdout" && o != "default" {
			return nil, fmt.Errorf("--log-outputs %v: logs must go to the container's output", cfg.LogOutputs)
		}
	}
	cfg.LogOutputs = []string{"/dev/null"} // validation's own warnings, not the test's output
	cfg.ClusterState = *state
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	members, _, err := cfg.PeerURLsMapAndToken("etcd")
	if err != nil {
		return nil, err
	}
	self, ok := members[cfg.Name]
	if !ok {
		return nil, fmt.Errorf("--initial-cluster %q has no member %q (--name)", cfg.InitialCluster, cfg.Name)
	}
	if self.String() != types.URLs(cfg.AdvertisePeerUrls).String() {
		return nil, fmt.Errorf("--initial-cluster gives %s %s, --initial-advertise-peer-urls %s", cfg.Name, self, types.URLs(cfg.AdvertisePeerUrls))
	}
	for _, tls := range []struct {
		what string
		info interface{ Empty() bool }
		auth bool
	}{{"client", cfg.ClientTLSInfo, cfg.ClientTLSInfo.ClientCertAuth}, {"peer", cfg.PeerTLSInfo, cfg.PeerTLSInfo.ClientCertAuth}} {
		if tls.info.Empty() || !tls.auth {
			return nil, fmt.Errorf("%s TLS without certificates or without client certificate authentication", tls.what)
		}
	}
	return cfg, nil
}

// listenAddrs turns a listen flag's value (host:port, or a comma-separated list of URLs) into
// host:port addresses.
func listenAddrs(v string) ([]string, error) {
	if !strings.Contains(v, "://") {
		if _, _, err := net.SplitHostPort(v); err != nil {
			return nil, err
		}
		return []string{v}, nil
	}
	var out []string
	for s := range strings.SplitSeq(v, ",") {
		u, err := url.Parse(s)
		if err != nil || u.Port() == "" {
			return nil, fmt.Errorf("%q is not a URL with a port", s)
		}
		out = append(out, u.Host)
	}
	return out, nil
}

func TestEtcdLoaderRefusesBrokenClusters(t *testing.T) {
	// The checks below rely on the loader catching what etcd would refuse at start.
	ok := []string{"--name=m0", "--data-dir=/d", "--listen-peer-urls=https://10.0.0.1:7403", "--listen-client-urls=https://10.0.0.1:7402",
		"--advertise-client-urls=https://m0:7402", "--initial-advertise-peer-urls=https://m0:7403", "--initial-cluster=m0=https://m0:7403,m1=https://m1:7403",
		"--client-cert-auth", "--trusted-ca-file=/t/ca", "--cert-file=/t/c", "--key-file=/t/k",
		"--peer-client-cert-auth", "--peer-trusted-ca-file=/t/ca", "--peer-cert-file=/t/c", "--peer-key-file=/t/k"}
	if _, err := loadEtcd(ok); err != nil {
		t.Fatalf("a sound configuration is refused: %v", err)
	}
	for name, change := range map[string][]string{
		"not in the cluster":     {"--name=m2"},
		"advertises another URL": {"--initial-advertise-peer-urls=https://m9:7403"},
		"binds a host name":      {"--listen-client-urls=https://m0:7402"},
		"unknown flag":           {"--peer-skip-client-san-verify"},
		"bad state":              {"--initial-cluster-state=old"},
		"peer TLS without auth":  {"--peer-client-cert-auth=false"},
	} {
		if _, err := loadEtcd(append(slices.Clone(ok), change...)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestBundledEtcd(t *testing.T) {
	found := false
	for _, b := range bundles(t) {
		if !b.hasStatefulSet() {
			if b.chart && b.configMaps["ipledger-settings"] != nil && slices.ContainsFunc(b.services, func(s *corev1.Service) bool { return strings.HasPrefix(s.Name, etcdName) }) {
				t.Errorf("%s: etcd Services without the bundled etcd", b.name)
			}
			continue
		}
		found = true
		t.Run(b.name, func(t *testing.T) { testBundledEtcd(t, b) })
	}
	if !found {
		t.Fatal("no rendering has the bundled etcd (values-production.yaml turns it on)")
	}
}

func testBundledEtcd(t *testing.T, b *bundle) {
	if len(b.statefulSets) != 1 || b.statefulSets[0].Name != etcdName {
		t.Fatalf("want one StatefulSet %s, got %d", etcdName, len(b.statefulSets))
	}
	sts := b.statefulSets[0]
	pod := &sts.Spec.Template.Spec
	replicas := int(*sts.Spec.Replicas)
	if replicas != 3 && replicas != 5 {
		t.Errorf("%d members, want 3 or 5", replicas)
	}
	if sts.Spec.PodManagementPolicy != "Parallel" {
		t.Errorf("podManagementPolicy %s: the members of a new cluster must start together", sts.Spec.PodManagementPolicy)
	}
	if !pod.HostNetwork || pod.DNSPolicy != corev1.DNSDefault {
		t.Errorf("hostNetwork %v, dnsPolicy %s: etcd must need neither pod addresses nor cluster DNS (both need ipledger)", pod.HostNetwork, pod.DNSPolicy)
	}
	podLabels := labels.Set(sts.Spec.Template.Labels)
	aa := pod.Affinity
	if aa == nil || aa.PodAntiAffinity == nil || len(aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 ||
		aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey != "kubernetes.io/hostname" {
		t.Error("want a required anti-affinity per node: a node loss must take one member only")
	} else {
		mustSelect(t, "etcd anti-affinity", aa.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].LabelSelector, podLabels)
	}
	var pdbs int
	for _, p := range b.pdbs {
		if sel, _ := metav1.LabelSelectorAsSelector(p.Spec.Selector); sel.Matches(podLabels) {
			pdbs++
			if p.Spec.MaxUnavailable == nil || p.Spec.MaxUnavailable.IntValue() != 1 {
				t.Errorf("etcd PDB %s: maxUnavailable %v, want 1 (quorum survives a drain)", p.Name, p.Spec.MaxUnavailable)
			}
		}
	}
	if pdbs != 1 {
		t.Errorf("%d PodDisruptionBudgets select the etcd members, want 1", pdbs)
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Fatalf("want one volume claim template, got %d", len(sts.Spec.VolumeClaimTemplates))
	}
	claim := sts.Spec.VolumeClaimTemplates[0]
	if claim.Spec.Resources.Requests.Storage().IsZero() || !slices.Contains(claim.Spec.AccessModes, corev1.ReadWriteOnce) {
		t.Errorf("volume claim %s: %v, want a ReadWriteOnce size", claim.Name, claim.Spec)
	}
	c := &pod.Containers[0]
	checkHardened(t, "etcd", pod, c)
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("etcd resources %v: want CPU and memory requests and a memory limit", c.Resources)
	}

	// Resolve member 0 as the kubelet would, and parse its configuration as etcd does.
	var member run
	for _, r := range b.runs(t) {
		if r.binary == "etcd" {
			member = r
		}
	}
	cfg, err := loadEtcd(member.args)
	if err != nil {
		t.Fatalf("etcd refuses member 0's configuration: %v", err)
	}
	if m, _ := mountFor(c, cfg.Dir); m == nil || m.Name != claim.Name {
		t.Errorf("--data-dir=%s is not on the persistent volume %s", cfg.Dir, claim.Name)
	}
	if cfg.QuotaBackendBytes <= 0 || cfg.AutoCompactionRetention == "0" || cfg.AutoCompactionMode != "periodic" {
		t.Errorf("quota %d, compaction %s %s: want a quota and periodic compaction", cfg.QuotaBackendBytes, cfg.AutoCompactionMode, cfg.AutoCompactionRetention)
	}

	// Member names resolve through hostAliases to Service IPs; each such Service selects exactly
	// its member's pod and sends the peer and client ports to it.
	aliases := map[string]string{}
	for _, h := range pod.HostAliases {
		for _, n := range h.Hostnames {
			aliases[n] = h.IP
		}
	}
	byIP := map[string]*corev1.Service{}
	for _, s := range b.services {
		if s.Spec.ClusterIP != "" && s.Spec.ClusterIP != corev1.ClusterIPNone {
			byIP[s.Spec.ClusterIP] = s
		}
	}
	sts0 := workload{}
	for _, wl := range b.workloads() {
		if wl.name == etcdName {
			sts0 = wl
		}
	}
	members, _, err := cfg.PeerURLsMapAndToken("etcd")
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != replicas {
		t.Errorf("--initial-cluster has %d members, the StatefulSet %d", len(members), replicas)
	}
	cert := etcdMemberCertificate(b, pod)
	reach := func(what, host, port, portName string, want labels.Set) {
		t.Helper()
		ip := host
		if net.ParseIP(host) == nil {
			ip = aliases[host]
			if ip == "" {
				t.Errorf("%s: %s resolves through no hostAlias (and there is no DNS)", what, host)
				return
			}
		}
		svc := byIP[ip]
		if svc == nil {
			t.Errorf("%s: %s is no Service's cluster IP", what, ip)
			return
		}
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		if !sel.Matches(want) || slices.ContainsFunc(sts0.podLabels, func(l labels.Set) bool { return sel.Matches(l) && !labels.Equals(l, want) }) {
			t.Errorf("%s: Service %s (%s) does not select exactly %s", what, svc.Name, ip, want)
		}
		if !svc.Spec.PublishNotReadyAddresses {
			t.Errorf("%s: Service %s drops members that are not ready (members must reach each other to become ready)", what, svc.Name)
		}
		ok := false
		for _, p := range svc.Spec.Ports {
			if strconv.Itoa(int(p.Port)) == port && p.TargetPort.StrVal == portName {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s: Service %s has no port %s to the container's %s", what, svc.Name, port, portName)
		}
		if cert != nil && !slices.Contains(cert.Spec.DNSNames, host) && !slices.Contains(cert.Spec.IPAddresses, host) {
			t.Errorf("%s: the members' certificate names neither %s (dnsNames %v, ipAddresses %v)", what, host, cert.Spec.DNSNames, cert.Spec.IPAddresses)
		}
	}
	for name, urls := range members {
		i := strings.TrimPrefix(name, etcdName+"-")
		if _, err := strconv.Atoi(i); err != nil {
			t.Errorf("member %s is not named after a pod of the StatefulSet", name)
			continue
		}
		for _, u := range urls {
			reach("peer URL of "+name, u.Hostname(), u.Port(), "peer", labels.Merge(podLabels, labels.Set{"statefulset.kubernetes.io/pod-name": name}))
		}
	}
	for _, u := range cfg.AdvertiseClientUrls {
		reach("client URL of member 0", u.Hostname(), u.Port(), "client", labels.Merge(podLabels, labels.Set{"statefulset.kubernetes.io/pod-name": etcdName + "-0"}))
	}
	if !cfg.PeerTLSInfo.SkipClientSANVerify || len(cfg.PeerTLSInfo.AllowedCNs) != 1 {
		t.Errorf("peer TLS: skip SAN check %v, allowed CNs %v: peers arrive from node addresses, so the CN must be checked instead",
			cfg.PeerTLSInfo.SkipClientSANVerify, cfg.PeerTLSInfo.AllowedCNs)
	}
	if cert != nil && (cert.Spec.CommonName != cfg.PeerTLSInfo.AllowedCNs[0] || !slices.Contains(cert.Spec.Usages, "server auth") || !slices.Contains(cert.Spec.Usages, "client auth")) {
		t.Errorf("the members' certificate: CN %s (peers must be %v), usages %v (want server and client auth)", cert.Spec.CommonName, cfg.PeerTLSInfo.AllowedCNs, cert.Spec.Usages)
	}

	// The server reaches every member by its Service IP, with a client certificate of etcd's CA
	// whose CN is not a peer's.
	for _, r := range b.runs(t) {
		if r.binary != "ipledger-server" {
			continue
		}
		scfg, err := config.Load("ipledger-server", r.args, func(k string) string { return r.env[k] })
		if err != nil {
			t.Fatal(err)
		}
		if len(scfg.EtcdEndpoints) != replicas {
			t.Errorf("the server knows %d etcd endpoints, the cluster has %d members", len(scfg.EtcdEndpoints), replicas)
		}
		for i, e := range scfg.EtcdEndpoints {
			u, err := url.Parse(e)
			if err != nil || u.Scheme != "https" {
				t.Errorf("etcd endpoint %q is not https", e)
				continue
			}
			reach("server endpoint "+e, u.Hostname(), u.Port(), "client", labels.Merge(podLabels, labels.Set{"statefulset.kubernetes.io/pod-name": fmt.Sprintf("%s-%d", etcdName, i)}))
		}
		m, _ := mountFor(r.c, scfg.EtcdCertFile)
		v := volumeNamed(r.wl.pod, m.Name)
		for _, cc := range b.certificates {
			if v != nil && v.Secret != nil && cc.Spec.SecretName == v.Secret.SecretName {
				if cert != nil && cc.Spec.IssuerRef != cert.Spec.IssuerRef {
					t.Errorf("the server's etcd client certificate comes from %v, the members trust %v", cc.Spec.IssuerRef, cert.Spec.IssuerRef)
				}
				if slices.Contains(cfg.PeerTLSInfo.AllowedCNs, cc.Spec.CommonName) || slices.Contains(cc.Spec.Usages, "server auth") {
					t.Errorf("the server's etcd client certificate (CN %s, usages %v) could act as a member", cc.Spec.CommonName, cc.Spec.Usages)
				}
			}
		}
	}
}

// etcdMemberCertificate is the cert-manager Certificate of the members' TLS Secret (nil when the
// user provides the Secret).
func etcdMemberCertificate(b *bundle, pod *corev1.PodSpec) *cmCertificate {
	for _, v := range pod.Volumes {
		if v.Secret == nil {
			continue
		}
		for _, c := range b.certificates {
			if c.Spec.SecretName == v.Secret.SecretName {
				return c
			}
		}
	}
	return nil
}
