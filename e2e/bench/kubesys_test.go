package bench

import (
	"testing"
	"time"
)

// ipledger-k8s runs end to end on a small batch: the bench's kube-apiserver starts, the server
// reads it (--kubeconfig), nodes register their Node objects, every pod is bound in the API
// before its ADD and runs. The goals are measured by the bench, not asserted here.
func TestIPLedgerK8sSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver, a server and agents")
	}
	bin := serverBin(t)
	if _, err := kubeBinary(bin, "kube-apiserver"); err != nil {
		t.Skipf("skipping: %v", err)
	}
	if got, err := ParseSystems("ipledger-k8s, ipledger"); err != nil || len(got) != 2 || got[0] != SystemIPLedgerK8s {
		t.Fatalf("ParseSystems: %v %v", got, err)
	}
	rep, err := Run(t.Context(), TraceParams{Trace: TraceBatch, Nodes: 3, Pods: 4, Waves: 1, TimeScale: 30,
		KubeletDelay: time.Second, Systems: []string{SystemIPLedgerK8s}}, Env{ServerBin: bin, WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Systems) != 1 {
		t.Fatalf("%d systems", len(rep.Systems))
	}
	r := rep.Systems[0]
	if r.Name != SystemIPLedgerK8s || r.Nodes != 3 || r.PodStarts != 12 || r.Adds != 12 || r.PodsNotRunning != 0 {
		t.Fatalf("ipledger-k8s: %+v", r)
	}
	if len(r.ServerExits) != 0 {
		t.Fatalf("the server exited: %v", r.ServerExits)
	}
	if rep.Params.KubeletDelayS != 1 {
		t.Fatalf("kubelet delay %v in the report", rep.Params.KubeletDelayS)
	}
}
