package deploy

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"sigs.k8s.io/yaml"
)

// This file renders the Helm chart (deploy/helm/ipledger) with the helm binary pinned in the
// test-tools module (e2e/tools: helm.sh/helm/v4 as a Go tool, outside the main module's
// dependencies), lints it, checks that bad values are refused with a clear message, and checks
// that the kustomize manifests are the chart's rendering (one source of truth): `make
// manifests` (go test ./deploy -run TestKustomizeIsRenderedFromTheChart -update) rewrites them.

const (
	chartDir       = "helm/ipledger"
	toolsModule    = "../e2e/tools"
	kustomizeBase  = "ci/kustomize-base-values.yaml"
	helmPackage    = "helm.sh/helm/v4/cmd/helm"
	generatedTitle = "# Generated from the Helm chart deploy/helm/ipledger"
)

var updateManifests = flag.Bool("update", false, "rewrite the kustomize manifests rendered from the chart")

// chartRenderings are the values files the chart is rendered and checked with, like the
// kustomizations: the defaults (plus what has none), the production example, and every
// certificate from user Secrets. external lists the objects each expects users to create.
var chartRenderings = []struct {
	name, values string
	external     map[string][]string
	podIdentity  bool
}{
	{name: "chart-default", values: "ci/default-values.yaml"},
	{name: "chart-production", values: "values-production.yaml"},
	{name: "chart-secrets", values: "ci/existing-secrets-values.yaml", external: map[string][]string{
		"Secret/ipledger-server-tls":      certificateSecretKeys,
		"Secret/ipledger-etcd-member-tls": certificateSecretKeys,
		// The CA that signs attested nodes' certificates (attestation.issuerSecretName).
		"Secret/ipledger-node-ca": {"tls.crt", "tls.key"},
	}, podIdentity: true},
}

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

// helm returns the pinned helm binary: make build's ($IPLEDGER_BIN_DIR or bin/), or one built
// from e2e/tools into the Go build cache's keeping (fast once built).
func helm(t *testing.T) string {
	t.Helper()
	helmOnce.Do(func() {
		for _, dir := range []string{os.Getenv("IPLEDGER_BIN_DIR"), filepath.Join(repoRoot, "bin")} {
			if p := filepath.Join(dir, "helm"); dir != "" && isExecutableFile(p) {
				helmPath = p
				return
			}
		}
		out := filepath.Join(os.TempDir(), fmt.Sprintf("ipledger-deploy-helm-%d", os.Getuid()))
		if err := os.MkdirAll(out, 0o700); err != nil {
			helmErr = err
			return
		}
		helmPath = filepath.Join(out, "helm")
		cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", helmPath, helmPackage)
		cmd.Dir = toolsModule
		if b, err := cmd.CombinedOutput(); err != nil {
			helmErr = fmt.Errorf("build helm from %s (make build does it too): %v\n%s", toolsModule, err, b)
		}
	})
	if helmErr != nil {
		t.Fatal(helmErr)
	}
	return helmPath
}

func isExecutableFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// runHelm runs helm with its state directories in a temporary directory (nothing in $HOME).
func runHelm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	home := t.TempDir()
	cmd := exec.CommandContext(t.Context(), helm(t), args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(home, "cache"), "HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"), "KUBECONFIG="+filepath.Join(home, "kubeconfig"))
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// renderChart is `helm template` of the chart in kube-system with a values file and --set values.
func renderChart(t *testing.T, values string, set ...string) ([]doc, error) {
	t.Helper()
	args := []string{"template", "ipledger", chartDir, "--namespace", namespace}
	if values != "" {
		args = append(args, "-f", filepath.Join(chartDir, values))
	}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	out, stderr, err := runHelm(t, args...)
	if err != nil {
		return nil, fmt.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr)
	}
	return splitYAML([]byte(out), "helm template -f "+values)
}

func TestChartLints(t *testing.T) {
	for _, r := range chartRenderings {
		t.Run(r.name, func(t *testing.T) {
			out, stderr, err := runHelm(t, "lint", "--strict", chartDir, "--namespace", namespace, "-f", filepath.Join(chartDir, r.values))
			if err != nil {
				t.Fatalf("helm lint --strict -f %s: %v\n%s%s", r.values, err, out, stderr)
			}
		})
	}
}

// Values that cannot work are refused at render time with what to do instead.
func TestChartRefusesBadValues(t *testing.T) {
	ca := "agent.serverCA.configMapName=ipledger-server-ca"
	base := []string{"clusterName=prod", "region=eu-west-1", "etcd.endpoints={https://10.0.0.1:2379}", ca}
	bundled := []string{"clusterName=prod", "region=eu-west-1", "etcd.bundled.enabled=true", ca}
	noCA := base[:3]
	tests := []struct {
		name string
		set  []string
		want string
	}{
		{"no cluster name", []string{"region=eu-west-1", "etcd.endpoints={https://10.0.0.1:2379}", ca}, "clusterName \"\" must be set to a DNS label"},
		{"cluster name not a DNS label", append(slices.Clone(base), "clusterName=Prod_1"), "clusterName \"Prod_1\" must be set to a DNS label"},
		{"no region", []string{"clusterName=prod", "etcd.endpoints={https://10.0.0.1:2379}", ca}, "region must be set"},
		{"no etcd", []string{"clusterName=prod", "region=eu-west-1", ca}, "ipledger needs etcd"},
		{"external and bundled etcd", append(slices.Clone(base), "etcd.bundled.enabled=true"), "etcd.endpoints and etcd.bundled.enabled=true exclude each other"},
		{"plaintext etcd", []string{"clusterName=prod", "region=eu-west-1", "etcd.endpoints={http://10.0.0.1:2379}", ca}, "must be an https:// URL"},
		// Attestation: the agents need the server's CA certificate, and no private key may reach
		// the nodes; the server needs the issuing CA.
		{"attest without the server's CA", noCA, "agent.identity=attest: the agents verify the server with a CA bundle; give exactly one of agent.serverCA.pem"},
		{"two server CAs", append(slices.Clone(base), "agent.serverCA.secretName=ca-only"), "give exactly one of agent.serverCA.pem"},
		{"the server's TLS Secret on the nodes", append(slices.Clone(noCA), "agent.serverCA.secretName=ipledger-server-tls"), `agent.serverCA.secretName "ipledger-server-tls" holds a private key`},
		{"the CA's Secret on the nodes", append(slices.Clone(noCA), "agent.serverCA.secretName=ipledger-ca"), `agent.serverCA.secretName "ipledger-ca" holds a private key`},
		{"a key in the CA bundle", append(slices.Clone(noCA), "agent.serverCA.pem=-----BEGIN CERTIFICATE-----x-----BEGIN EC PRIVATE KEY-----"), "agent.serverCA.pem holds a private key"},
		{"not a certificate", append(slices.Clone(noCA), "agent.serverCA.pem=hello"), "agent.serverCA.pem holds no PEM certificate"},
		{"attest without attestation", append(slices.Clone(base), "attestation.enabled=false"), "agent.identity=attest needs attestation.enabled=true"},
		{"unknown identity", append(slices.Clone(base), "agent.identity=spiffe"), "at '/agent/identity': value must be one of 'attest', 'files'"},
		{"no issuing CA", append(slices.Clone(base), "certificates.certManager.issuer.create=false", "certificates.certManager.issuer.kind=ClusterIssuer"), "set attestation.issuerSecretName to the Secret"},
		{"account id", append(slices.Clone(base), "attestation.accountIDs={1234}"), "/attestation/accountIDs/0"},
		{"vpc id", append(slices.Clone(base), "attestation.vpcIDs={vpc1}"), "/attestation/vpcIDs/0"},
		{"node name", append(slices.Clone(base), "attestation.nodeName=hostname"), "/attestation/nodeName"},
		{"lifetime", append(slices.Clone(base), "attestation.nodeCertLifetime=1day"), "/attestation/nodeCertLifetime"},
		{"bundled without service IPs", bundled, "etcd.bundled.serviceIPs has 0 addresses for 3 members"},
		{"bundled with 4 members", append(slices.Clone(bundled), "etcd.bundled.replicas=4"), "3 or 5 members"},
		{"service IP twice", append(slices.Clone(bundled), "etcd.bundled.serviceIPs={10.100.0.5,10.100.0.5,10.100.0.6}"), "every member needs its own address"},
		{"service IP not an address", append(slices.Clone(bundled), "etcd.bundled.serviceIPs={10.100.0.5,10.100.0.6,etcd}"), "\"etcd\" is not an IPv4 address"},
		{"unknown certificate source", append(slices.Clone(base), "certificates.source=vault"), "certificates.source is \"vault\""},
		{"log level", append(slices.Clone(base), "log.level=trace"), "log.level is \"trace\""},
		{"anti-affinity", append(slices.Clone(base), "server.affinity.podAntiAffinity.x=y"), "server.affinity.podAntiAffinity is the chart's"},
		{"cni version", append(slices.Clone(base), "agent.cniVersion=0.4.0"), "agent.cniVersion is \"0.4.0\""},
		// values.schema.json: misspelt keys and wrong types.
		{"misspelt key", append(slices.Clone(base), "server.replica=3"), "additional properties 'replica' not allowed"},
		{"wrong type", append(slices.Clone(base), "server.replicas=three"), "at '/server/replicas': got string, want integer"},
		{"not a subnet id", append(slices.Clone(base), "server.subnets={sn-1}"), "/server/subnets/0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderChart(t, "", tt.set...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("helm template --set %v: %v, want an error saying %q", tt.set, err, tt.want)
			}
		})
	}
	if _, err := renderChart(t, "", base...); err != nil {
		t.Fatalf("the minimal values render: %v", err)
	}
	// Files from the node's PKI need no server CA value; a Secret holding the CA certificate
	// alone may carry it to the agents.
	for _, set := range [][]string{append(slices.Clone(noCA), "agent.identity=files"), append(slices.Clone(noCA), "agent.serverCA.secretName=ipledger-ca-bundle")} {
		docs, err := renderChart(t, "", set...)
		if err != nil {
			t.Fatalf("%v: %v", set, err)
		}
		text, _ := json.Marshal(docs)
		if slices.Contains(set, "agent.identity=files") != strings.Contains(string(text), "/etc/ipledger/pki/node.crt") {
			t.Errorf("%v: the node's certificate files %s", set, map[bool]string{true: "missing", false: "used"}[slices.Contains(set, "agent.identity=files")])
		}
	}
}

// kustomizeTarget says where the output of a chart template goes in deploy/kustomize ("" for
// templates the base leaves to overlays or that render nothing with the base's values).
func kustomizeTarget(template string) string {
	switch template {
	case "settings.yaml":
		return "" // ConfigMap ipledger-settings and Secret ipledger-etcd: the overlay's
	case "certificates.yaml":
		return "kustomize/cert-manager/certificates.yaml"
	case "servicemonitors.yaml":
		return "kustomize/monitoring/servicemonitors.yaml"
	}
	return "kustomize/base/" + template
}

// renderKustomizeFiles renders the chart with the base's values, one file per template, as it
// is committed under deploy/kustomize.
func renderKustomizeFiles(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	if _, stderr, err := runHelm(t, "template", "ipledger", chartDir, "--namespace", namespace, "-f", filepath.Join(chartDir, kustomizeBase), "--output-dir", dir); err != nil {
		t.Fatalf("helm template --output-dir: %v\n%s", err, stderr)
	}
	files := map[string]string{}
	rendered, err := filepath.Glob(filepath.Join(dir, "ipledger", "templates", "*.yaml"))
	if err != nil || len(rendered) == 0 {
		t.Fatalf("helm wrote nothing to %s: %v", dir, err)
	}
	for _, p := range rendered {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Base(p)
		target := kustomizeTarget(name)
		if target == "" {
			continue
		}
		var body []string
		for line := range strings.SplitSeq(strings.TrimPrefix(string(b), "---\n"), "\n") {
			if !strings.HasPrefix(line, "# Source: ") {
				body = append(body, line)
			}
		}
		files[target] = generatedTitle + " (templates/" + name + ")\n# with " + kustomizeBase +
			" by `make manifests`. Edit the chart, not this file.\n" + strings.Trim(strings.Join(body, "\n"), "\n") + "\n"
	}
	return files
}

// The kustomize base, its cert-manager and monitoring parts are the chart's rendering.
func TestKustomizeIsRenderedFromTheChart(t *testing.T) {
	want := renderKustomizeFiles(t)
	// Every generated file that is committed must come from the chart.
	committed, _ := filepath.Glob("kustomize/*/*.yaml")
	for _, p := range committed {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := want[p]; !ok && bytes.HasPrefix(b, []byte(generatedTitle)) {
			t.Errorf("%s says it is generated, but the chart renders no such file", p)
		}
	}
	var drift []string
	for p, content := range want {
		got, err := os.ReadFile(p)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		if string(got) == content {
			continue
		}
		if *updateManifests {
			if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("rewrote %s", p)
			continue
		}
		drift = append(drift, p)
	}
	slices.Sort(drift)
	if len(drift) > 0 {
		t.Errorf("the kustomize manifests differ from the chart's rendering: %v; run make manifests", drift)
	}
}

// Every value of the chart is in docs/deploy.md's values table (the groups' keys, and the
// bundled etcd's in its own section).
func TestChartValuesAreDocumented(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(filepath.Join(repoRoot, "docs/deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	section := func(from, to string) string {
		s := string(doc)
		i, j := strings.Index(s, from), strings.Index(s, to)
		if i < 0 || j < i {
			t.Fatalf("docs/deploy.md has no section %q before %q", from, to)
		}
		return s[i:j]
	}
	table := section("### Values", "### The bundled etcd")
	bundled := section("### The bundled etcd", "### Backup and restore")
	for top, v := range values {
		sub, ok := v.(map[string]any)
		if !ok || top == "image" || top == "log" {
			if !strings.Contains(table, "`"+top) {
				t.Errorf("docs/deploy.md's values table does not name %s", top)
			}
			continue
		}
		for k := range sub {
			path := top + "." + k
			if top == "etcd" && k == "bundled" {
				for bk := range sub[k].(map[string]any) {
					if !strings.Contains(bundled, "etcd.bundled."+bk) && !strings.Contains(bundled, "`"+bk) {
						t.Errorf("docs/deploy.md's bundled etcd section does not name etcd.bundled.%s", bk)
					}
				}
				continue
			}
			if !strings.Contains(table, path) && !strings.Contains(table, "`."+k) && !strings.Contains(table, ", ."+k) {
				t.Errorf("docs/deploy.md's values table does not name %s", path)
			}
		}
	}
}
