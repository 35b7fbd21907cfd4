package ec2sim

import (
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

func metadata(ctx context.Context, t *testing.T, c *imds.Client, path string) (string, error) {
	t.Helper()
	out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: path})
	if err != nil {
		return "", err
	}
	defer out.Content.Close()
	b, err := io.ReadAll(out.Content)
	return string(b), err
}

// TestIMDS reads each instance's identity through the aws-sdk-go-v2 imds client, one
// listener per instance.
func TestIMDS(t *testing.T) {
	srv := start(t)
	ctx := t.Context()
	st := srv.Sim().Snapshot()
	endpoints := map[string]bool{}
	for _, in := range st.Instances {
		ep, err := srv.IMDSEndpoint(in.ID)
		noErr(t, err)
		if ep != in.IMDSEndpoint || !strings.HasPrefix(ep, "http://127.0.0.1:") || endpoints[ep] {
			t.Fatalf("instance %s: endpoint %q (state says %q)", in.ID, ep, in.IMDSEndpoint)
		}
		endpoints[ep] = true
		c := imds.New(imds.Options{Endpoint: ep})
		sn, _ := st.Subnet(in.SubnetID)
		want := map[string]string{
			"instance-id":                 in.ID,
			"instance-type":               "m5.large",
			"local-ipv4":                  in.PrivateIP,
			"local-hostname":              in.PrivateDNSName,
			"hostname":                    in.PrivateDNSName,
			"mac":                         in.MAC,
			"placement/availability-zone": in.AvailabilityZone,
			"placement/region":            "eu-west-1",
			"network/interfaces/macs/":    in.MAC + "/",
			"network/interfaces/macs/" + in.MAC + "/device-number":          "0",
			"network/interfaces/macs/" + in.MAC + "/network-card":           "0",
			"network/interfaces/macs/" + in.MAC + "/interface-id":           in.PrimaryENI,
			"network/interfaces/macs/" + in.MAC + "/subnet-id":              in.SubnetID,
			"network/interfaces/macs/" + in.MAC + "/subnet-ipv4-cidr-block": sn.CIDR,
			"network/interfaces/macs/" + in.MAC + "/vpc-id":                 st.VPC.ID,
			"network/interfaces/macs/" + in.MAC + "/local-ipv4s":            in.PrivateIP,
		}
		for path, v := range want {
			got, err := metadata(ctx, t, c, path)
			noErr(t, err)
			if got != v {
				t.Fatalf("%s %s: %q, want %q", in.ID, path, got, v)
			}
		}
		doc, err := c.GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
		noErr(t, err)
		if doc.InstanceID != in.ID || doc.InstanceType != "m5.large" || doc.AvailabilityZone != in.AvailabilityZone ||
			doc.Region != "eu-west-1" || doc.PrivateIP != in.PrivateIP || doc.AccountID != "111111111111" {
			t.Fatalf("identity document %+v", doc)
		}
		region, err := c.GetRegion(ctx, &imds.GetRegionInput{})
		noErr(t, err)
		if region.Region != "eu-west-1" {
			t.Fatalf("region %q", region.Region)
		}
	}
	if len(endpoints) != 5 {
		t.Fatalf("%d IMDS endpoints, want 5", len(endpoints))
	}

	// IMDS follows the instance's ENIs and addresses.
	in := st.Instances[0]
	c := imds.New(imds.Options{Endpoint: in.IMDSEndpoint})
	ec := client(srv)
	pfxPath := "network/interfaces/macs/" + in.MAC + "/ipv4-prefix"
	if _, err := metadata(ctx, t, c, pfxPath); err == nil {
		t.Fatal("ipv4-prefix exists before any prefix")
	}
	as, err := ec.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(in.PrimaryENI), SecondaryPrivateIpAddressCount: aws.Int32(2)})
	noErr(t, err)
	ap, err := ec.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(in.PrimaryENI), Ipv4PrefixCount: aws.Int32(1)})
	noErr(t, err)
	ips, err := metadata(ctx, t, c, "network/interfaces/macs/"+in.MAC+"/local-ipv4s")
	noErr(t, err)
	lines := strings.Split(ips, "\n")
	if len(lines) != 3 || lines[0] != in.PrivateIP || !slices.Contains(lines, aws.ToString(as.AssignedPrivateIpAddresses[1].PrivateIpAddress)) {
		t.Fatalf("local-ipv4s %q", ips)
	}
	pfx, err := metadata(ctx, t, c, pfxPath)
	noErr(t, err)
	if pfx != aws.ToString(ap.AssignedIpv4Prefixes[0].Ipv4Prefix) {
		t.Fatalf("ipv4-prefix %q", pfx)
	}
	out, err := ec.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(in.SubnetID)})
	noErr(t, err)
	_, err = ec.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: out.NetworkInterface.NetworkInterfaceId, InstanceId: aws.String(in.ID), DeviceIndex: aws.Int32(1)})
	noErr(t, err)
	macs, err := metadata(ctx, t, c, "network/interfaces/macs/")
	noErr(t, err)
	second := aws.ToString(out.NetworkInterface.MacAddress)
	if got := strings.Split(macs, "\n"); len(got) != 2 || !slices.Contains(got, in.MAC+"/") || !slices.Contains(got, second+"/") {
		t.Fatalf("macs listing %q", macs)
	}
	dev, err := metadata(ctx, t, c, "network/interfaces/macs/"+second+"/device-number")
	noErr(t, err)
	if dev != "1" {
		t.Fatalf("device-number of the second ENI %q", dev)
	}
	listing, err := metadata(ctx, t, c, "network/interfaces/macs/"+second+"/")
	noErr(t, err)
	for _, want := range []string{"device-number", "interface-id", "local-ipv4s", "subnet-id", "vpc-id"} {
		if !slices.Contains(strings.Split(listing, "\n"), want) {
			t.Fatalf("mac listing %q lacks %s", listing, want)
		}
	}
	if _, err := metadata(ctx, t, c, "no/such/path"); err == nil {
		t.Fatal("unknown path answered")
	}
}

// TestIMDSTokenFlow checks IMDSv2 on the wire: PUT for a token with a TTL, 401 without one.
func TestIMDSTokenFlow(t *testing.T) {
	srv := start(t)
	ctx := t.Context()
	ep := srv.Sim().Snapshot().Instances[0].IMDSEndpoint
	do := func(method, path string, hdr map[string]string) (int, string, http.Header) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, ep+path, nil)
		noErr(t, err)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		noErr(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		noErr(t, err)
		return resp.StatusCode, string(b), resp.Header
	}
	if code, _, _ := do("GET", "/latest/meta-data/instance-id", nil); code != 401 {
		t.Fatalf("GET without token: %d", code)
	}
	if code, _, _ := do("PUT", "/latest/api/token", nil); code != 400 {
		t.Fatalf("PUT without TTL: %d", code)
	}
	if code, _, _ := do("PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "99999"}); code != 400 {
		t.Fatalf("PUT with a TTL over 21600: %d", code)
	}
	if code, _, _ := do("GET", "/latest/api/token", nil); code != 405 {
		t.Fatalf("GET token: %d", code)
	}
	code, tok, hdr := do("PUT", "/latest/api/token", map[string]string{"X-aws-ec2-metadata-token-ttl-seconds": "60"})
	if code != 200 || tok == "" || hdr.Get("X-aws-ec2-metadata-token-ttl-seconds") != "60" {
		t.Fatalf("PUT token: %d %q %v", code, tok, hdr)
	}
	code, body, _ := do("GET", "/latest/meta-data/instance-id", map[string]string{"X-aws-ec2-metadata-token": tok})
	if code != 200 || !strings.HasPrefix(body, "i-") {
		t.Fatalf("GET with token: %d %q", code, body)
	}
	if code, _, _ := do("GET", "/latest/meta-data/instance-id", map[string]string{"X-aws-ec2-metadata-token": "forged"}); code != 401 {
		t.Fatalf("GET with a forged token: %d", code)
	}
	code, body, _ = do("GET", "/latest/meta-data/", map[string]string{"X-aws-ec2-metadata-token": tok})
	if code != 200 || !slices.Contains(strings.Split(body, "\n"), "network/") || !slices.Contains(strings.Split(body, "\n"), "instance-id") {
		t.Fatalf("meta-data listing: %d %q", code, body)
	}
	// A token of one instance is not valid on another.
	other := srv.Sim().Snapshot().Instances[1].IMDSEndpoint
	req, err := http.NewRequestWithContext(ctx, "GET", other+"/latest/meta-data/instance-id", nil)
	noErr(t, err)
	req.Header.Set("X-aws-ec2-metadata-token", tok)
	resp, err := http.DefaultClient.Do(req)
	noErr(t, err)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("token replayed on another instance: %d", resp.StatusCode)
	}
}

// TestIMDSListenersClose: Close stops every listener.
func TestIMDSListenersClose(t *testing.T) {
	cfg := DefaultConfig()
	srv, err := Start(cfg, "127.0.0.1:0")
	noErr(t, err)
	eps := srv.IMDSEndpoints()
	if len(eps) != 5 {
		t.Fatalf("%d endpoints", len(eps))
	}
	noErr(t, srv.Close())
	noErr(t, srv.Close()) // idempotent
	for id, ep := range eps {
		c := imds.New(imds.Options{Endpoint: ep, Retryer: aws.NopRetryer{}})
		if _, err := c.GetMetadata(t.Context(), &imds.GetMetadataInput{Path: "instance-id"}); err == nil {
			t.Fatalf("IMDS of %s answers after Close", id)
		}
	}
	if _, err := http.Get(srv.Endpoint() + "/_sim/state"); err == nil {
		t.Fatal("EC2 endpoint answers after Close")
	}
}
