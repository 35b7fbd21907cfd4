package ec2sim

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"testing"
)

func TestInstanceTagsGoOnEveryLaunchUnderTheLaunchsOwn(t *testing.T) {
	cfg := DefaultConfig()
	cfg.InstanceTags = map[string]string{"kubernetes.io/cluster/dev": "owned", "team": "net"}
	srv, err := Start(cfg, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, in := range srv.Sim().Snapshot().Instances {
		if in.Tags["kubernetes.io/cluster/dev"] != "owned" || in.Tags["Name"] == "" {
			t.Fatalf("scenario instance %s tags %v", in.ID, in.Tags)
		}
	}
	snap := srv.Sim().Snapshot()
	got, err := srv.Sim().RunInstances(context.Background(), InstanceSpec{InstanceType: "m5.large", SubnetID: snap.Subnets[0].ID, Tags: map[string]string{"team": "db"}}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Tags["team"] != "db" || got[0].Tags["kubernetes.io/cluster/dev"] != "owned" {
		t.Fatalf("launched instance tags %v", got[0].Tags)
	}

	// The control API publishes the certificate that signs identity documents.
	resp, err := http.Get(srv.Endpoint() + "/_sim/iid-certificate")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	blk, _ := pem.Decode(b)
	if resp.StatusCode != 200 || blk == nil {
		t.Fatalf("GET /_sim/iid-certificate: %d %q", resp.StatusCode, b)
	}
	if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
		t.Fatal(err)
	}
	want, _ := srv.Sim().IIDCertificatePEM()
	if string(want) != string(b) {
		t.Fatal("the control API serves another certificate than IIDCertificatePEM")
	}
}
