package e2e_test

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ec2sim"
)

func mustNode(t *testing.T, admin ipledgerv1.AdminServiceClient, name string) *ipledgerv1.NodeDetail {
	t.Helper()
	d, err := admin.GetNode(t.Context(), &ipledgerv1.GetNodeRequest{NodeName: name})
	if err != nil {
		t.Fatalf("GetNode %s: %v", name, err)
	}
	return d
}

// ec2Secondaries lists the secondary addresses EC2 has on an ENI, sorted.
func ec2Secondaries(t *testing.T, sim *ec2sim.Sim, id string) []string {
	t.Helper()
	e, ok := sim.Snapshot().ENI(id)
	if !ok {
		t.Fatalf("ENI %s is not in the simulator", id)
	}
	out := slices.Clone(e.SecondaryIPs)
	slices.Sort(out)
	return out
}

// counter reads a counter of a registry by its one label value (0 when absent).
func counter(t *testing.T, g prometheus.Gatherer, name, label string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
