package ctl

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"sigs.k8s.io/yaml"
)

// A policy file with pod subnets (the migration note's ENIConfig example) reads into the API's
// PodSubnets, and the printed document reads back into the same policy.
func TestPolicyFileWithPodSubnets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "custom.yaml")
	if err := os.WriteFile(path, []byte(`name: custom
order: 10
pod_subnets:
  exclude_primary_eni: true
  zones:
    eu-west-1a: {subnet_ids: [subnet-0a000001, subnet-0a000002], security_group_ids: [sg-01000000]}
    eu-west-1b: {subnet_ids: [subnet-0b000001]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := readPolicyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ps := p.GetPodSubnets()
	if !ps.GetExcludePrimaryEni() || len(ps.GetZones()) != 2 || !reflect.DeepEqual(ps.GetZones()["eu-west-1a"].GetSubnetIds(), []string{"subnet-0a000001", "subnet-0a000002"}) ||
		!reflect.DeepEqual(ps.GetZones()["eu-west-1a"].GetSecurityGroupIds(), []string{"sg-01000000"}) {
		t.Fatalf("read %v", ps)
	}
	doc := policyDoc(p)
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		t.Fatal(err)
	}
	again := filepath.Join(t.TempDir(), "again.yaml")
	if err := os.WriteFile(again, y, 0o644); err != nil {
		t.Fatal(err)
	}
	q, err := readPolicyFile(again)
	if err != nil {
		t.Fatalf("printed policy does not read back: %v\n%s", err, y)
	}
	if !reflect.DeepEqual(policyDoc(q), doc) {
		t.Fatalf("round trip:\n%+v\n%+v", policyDoc(q), doc)
	}
}
