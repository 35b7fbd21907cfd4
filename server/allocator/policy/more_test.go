package policy

import (
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

func TestNormalizedEqualAndList(t *testing.T) {
	labels := map[string]string{"a": "b"}
	p := Policy{Name: "p", Selector: Selector{Labels: labels, InstanceTypes: []string{"m5.large"}}, WarmIPTarget: U32(2)}
	n := p.Normalized()
	if n.Mode != ledger.ModeSecondaryIP {
		t.Fatalf("normalized mode %q", n.Mode)
	}
	labels["a"] = "changed"
	if n.Selector.Labels["a"] != "b" {
		t.Fatal("the normalized policy shares its labels with the caller's")
	}
	if !n.Equal(n) || n.Equal(Policy{Name: "p"}) {
		t.Fatal("Equal")
	}
	m := n
	m.WarmIPTarget = U32(3)
	if n.Equal(m) {
		t.Fatal("policies with different targets are equal")
	}
	m.WarmIPTarget = nil
	if n.Equal(m) {
		t.Fatal("a set and an unset target are equal")
	}
	l := List(map[string]Policy{"z": {Name: "z", Order: 1}, "a": {Name: "a", Order: 1}, "first": {Name: "first", Order: 0}})
	var names []string
	for _, x := range l {
		names = append(names, x.Name)
	}
	if strings.Join(names, ",") != "first,a,z,default" {
		t.Fatalf("List order: %v", names)
	}
	if l := List(map[string]Policy{DefaultName: {Name: DefaultName, MinimumIPTarget: U32(2)}}); len(l) != 1 || l[0].MinimumIPTarget == nil {
		t.Fatalf("a replaced default: %+v", l)
	}
}

func TestShapesWindowsAndUnits(t *testing.T) {
	if s := ShapeOf(instancetypes.Type{}, ledger.ModePrefix); s.SlotsPerENI != 1 || s.MaxENIs != 1 || !s.Prefix || s.MaxAddresses() != 16 {
		t.Fatalf("the shape of an unknown type: %+v", s)
	}
	if AdaptiveWindow(Default()) != 5*time.Minute || AdaptiveWindow(Policy{AdaptiveWindowSeconds: U32(30)}) != 30*time.Second {
		t.Fatal("AdaptiveWindow")
	}
	tg := Targets{WantAddresses: 32, WantPrefixes: 2}
	if tg.Want(true) != 2 || tg.Want(false) != 32 {
		t.Fatal("Want")
	}
	if CeilDiv(5, 0) != 0 || CeilDiv(17, 16) != 2 {
		t.Fatal("CeilDiv")
	}
	typ, _ := instancetypes.Lookup("m5.large")
	d := Compute(Default(), ShapeOf(typ, ledger.ModePrefix), Inputs{InUse: 20, Draining: true}, time.Minute)
	if d.WantPrefixes != 2 || d.WantAddresses != 32 || d.TargetFree != 0 || d.ReleaseDelay != 0 {
		t.Fatalf("a draining prefix node: %+v", d)
	}
	if m, msg := ModeFor(Policy{}, typ); m != ledger.ModeSecondaryIP || msg != "" {
		t.Fatalf("ModeFor of a secondary-IP policy: %s %q", m, msg)
	}
}

func TestTrendForecastOfASubnet(t *testing.T) {
	tr := NewTrend(time.Hour)
	t0 := time.Unix(0, 0)
	if fc := tr.Forecast(100); fc.OK || fc.HeldPerHour != 0 {
		t.Fatalf("no samples: %+v", fc)
	}
	for i := 0; i <= 6; i++ {
		tr.Add(t0.Add(time.Duration(i)*10*time.Minute), 100+10*i) // 60 per hour
	}
	fc := tr.Forecast(120)
	if !fc.OK || fc.TimeToExhaustion != 2*time.Hour || fc.Window != time.Hour {
		t.Fatalf("forecast: %+v", fc)
	}
	flat := NewTrend(time.Hour)
	for i := range 4 {
		flat.Add(t0.Add(time.Duration(i)*time.Minute), 10)
	}
	if fc := flat.Forecast(5); fc.OK {
		t.Fatalf("a flat subnet runs out: %+v", fc)
	}
	if _, ok := TimeToExhaustion(1<<30, 0.001); ok {
		t.Fatal("a forecast beyond ten years")
	}
}

func TestCanFit(t *testing.T) {
	typ, _ := instancetypes.Lookup("m5.large")
	budgets := []ledger.Budget{
		{SubnetID: "s1", AvailabilityZone: "z1", Headroom: 30, Free: 30},
		{SubnetID: "s2", AvailabilityZone: "z1", Headroom: 12, Free: 100, MaxHeld: 20, Held: 8},
		{SubnetID: "s3", AvailabilityZone: "z2", Headroom: 500, Free: 600, KeepFree: 100},
	}
	// 10 pods + 1 floor on an m5.large: 1 node address, 1 extra ENI primary, 10 pods, 1 floor = 13.
	res := CanFit(budgets, CanFitRequest{AvailabilityZone: "z1", NodeCount: 2, PodsPerNode: 10, InstanceType: typ.Name})
	if !res.Fits || res.PerNode != 13 || res.Needed != 26 || res.Available != 42 || len(res.Budgets) != 2 {
		t.Fatalf("two nodes in z1: %+v", res)
	}
	res = CanFit(budgets, CanFitRequest{AvailabilityZone: "z1", NodeCount: 4, PodsPerNode: 10, InstanceType: typ.Name})
	if res.Fits || len(res.Reasons) != 3 || !strings.Contains(res.Reasons[1], "budget cap of 20") || !strings.Contains(res.Reasons[2], "together") {
		t.Fatalf("four nodes in z1: %+v", res)
	}
	res = CanFit(budgets, CanFitRequest{SubnetID: "s3", NodeCount: 1, PodsPerNode: 40, InstanceType: typ.Name})
	if res.Fits || !strings.Contains(res.Reasons[0], "at most 27 pod addresses") {
		t.Fatalf("40 pods on an m5.large: %+v", res)
	}
	res = CanFit(budgets, CanFitRequest{SubnetID: "s3", NodeCount: 1000, PodsPerNode: 0})
	if res.Fits || !strings.Contains(res.Reasons[0], "less the 100 kept free") {
		t.Fatalf("1000 nodes in s3: %+v", res)
	}
	if res := CanFit(budgets, CanFitRequest{SubnetID: "none", NodeCount: 1}); len(res.Budgets) != 0 {
		t.Fatalf("an unknown subnet: %+v", res)
	}
}
