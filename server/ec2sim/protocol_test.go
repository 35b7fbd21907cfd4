package ec2sim

import (
	"encoding/xml"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

func postForm(t *testing.T, endpoint string, form url.Values) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, endpoint+"/", strings.NewReader(form.Encode()))
	noErr(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	noErr(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	noErr(t, err)
	return resp, body
}

// TestWireFormat checks the raw protocol: the success root element, namespace and request id
// header; EC2's error XML; InvalidAction for unknown actions.
func TestWireFormat(t *testing.T) {
	srv := start(t)
	resp, body := postForm(t, srv.Endpoint(), url.Values{"Action": {"DescribeSubnets"}, "Version": {"2016-11-15"}})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	var ok struct {
		XMLName   xml.Name
		RequestID string `xml:"requestId"`
		Subnets   []struct {
			ID string `xml:"subnetId"`
		} `xml:"subnetSet>item"`
	}
	noErr(t, xml.Unmarshal(body, &ok))
	if ok.XMLName.Local != "DescribeSubnetsResponse" || ok.XMLName.Space != "http://ec2.amazonaws.com/doc/2016-11-15/" ||
		len(ok.Subnets) != 6 || ok.RequestID == "" || resp.Header.Get("x-amzn-RequestId") != ok.RequestID {
		t.Fatalf("success body %s, header %v", body, resp.Header)
	}

	for _, action := range []string{"DescribeVpcs", ""} {
		resp, body = postForm(t, srv.Endpoint(), url.Values{"Action": {action}, "Version": {"2016-11-15"}})
		var er struct {
			XMLName xml.Name `xml:"Response"`
			Code    string   `xml:"Errors>Error>Code"`
			Message string   `xml:"Errors>Error>Message"`
			ReqID   string   `xml:"RequestID"`
		}
		noErr(t, xml.Unmarshal(body, &er))
		if resp.StatusCode != 400 || er.Code != "InvalidAction" || er.ReqID == "" || !strings.Contains(er.Message, "not valid") {
			t.Fatalf("unknown action %q: %d %s", action, resp.StatusCode, body)
		}
	}

	// The SDK reads the request id of successes from the header and of errors from the body.
	c := client(srv)
	out, err := c.DescribeSubnets(t.Context(), &ec2.DescribeSubnetsInput{})
	noErr(t, err)
	if id, ok := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata); !ok || id == "" {
		t.Fatal("no request id on a success")
	}
	_, err = c.DescribeSubnets(t.Context(), &ec2.DescribeSubnetsInput{SubnetIds: []string{"subnet-0000000000000000f"}})
	var re interface{ ServiceRequestID() string }
	if !errors.As(err, &re) || re.ServiceRequestID() == "" {
		t.Fatalf("no request id on an error: %v", err)
	}
	_, err = c.DescribeSubnets(t.Context(), &ec2.DescribeSubnetsInput{DryRun: aws.Bool(true)})
	wantCode(t, err, "DryRunOperation")
	if status(err) != http.StatusPreconditionFailed {
		t.Fatalf("DryRun status %d", status(err))
	}
}

// TestFaults: injected failures have no effect; latency delays; the deny list refuses.
func TestFaults(t *testing.T) {
	srv := start(t, func(c *Config) { c.TimeScale = 4 })
	c := client(srv)
	ctx := t.Context()
	sim := srv.Sim()
	subnet := subnetByCIDR(t, srv, "192.168.96.0/19")
	out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	eni := out.NetworkInterface.NetworkInterfaceId
	assign := func() error {
		_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: eni, SecondaryPrivateIpAddressCount: aws.Int32(1)})
		return err
	}

	sim.SetFault("AssignPrivateIpAddresses", Fault{Code: "InternalError", Probability: 1})
	err = assign()
	wantCode(t, err, "InternalError")
	if status(err) != 500 {
		t.Fatalf("status %d", status(err))
	}
	sim.SetFault("AssignPrivateIpAddresses", Fault{Code: "UnauthorizedOperation", Probability: 1})
	err = assign()
	wantCode(t, err, "UnauthorizedOperation")
	if status(err) != 403 {
		t.Fatalf("status %d", status(err))
	}
	if e, _ := sim.Snapshot().ENI(aws.ToString(eni)); len(e.SecondaryIPs) != 0 {
		t.Fatalf("a failed request assigned %v", e.SecondaryIPs)
	}

	// Half the calls fail (the unattached ENI holds up to 64 addresses).
	sim.SetFault("AssignPrivateIpAddresses", Fault{Code: "InternalError", Probability: 0.5})
	failed := 0
	for range 40 {
		if err := assign(); err != nil {
			wantCode(t, err, "InternalError")
			failed++
		}
	}
	if failed < 8 || failed > 32 {
		t.Fatalf("%d of 40 failed with probability 0.5", failed)
	}
	if e, _ := sim.Snapshot().ENI(aws.ToString(eni)); len(e.SecondaryIPs) != 40-failed {
		t.Fatalf("%d addresses after %d successes", len(e.SecondaryIPs), 40-failed)
	}
	if st := sim.Stats().Calls["AssignPrivateIpAddresses"]; st.Errors["InternalError"] != failed+1 || st.Errors["UnauthorizedOperation"] != 1 {
		t.Fatalf("stats %+v", st)
	}

	// Latency: 200 ms at time scale 4 is 50 ms.
	sim.SetFault("DescribeSubnets", Fault{Latency: 200 * time.Millisecond})
	t0 := time.Now()
	_, err = c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{})
	noErr(t, err)
	if d := time.Since(t0); d < 50*time.Millisecond {
		t.Fatalf("latency fault took %v", d)
	}
	sim.ClearFaults()
	noErr(t, assign())
	if len(sim.Faults()) != 0 {
		t.Fatalf("faults after clear: %v", sim.Faults())
	}
}

// TestAttachLatencyPhase: with injected latency, the attachment shows `attaching` until the
// latency has passed, and `attached` when the call returns.
func TestAttachLatencyPhase(t *testing.T) {
	srv := start(t)
	c := client(srv)
	ctx := t.Context()
	sim := srv.Sim()
	subnet := subnetByCIDR(t, srv, "192.168.0.0/19")
	inst := instanceIn(t, srv, subnet)
	out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	eni := aws.ToString(out.NetworkInterface.NetworkInterfaceId)
	sim.SetFault("AttachNetworkInterface", Fault{Latency: 500 * time.Millisecond})
	sim.SetFault("DetachNetworkInterface", Fault{Latency: 500 * time.Millisecond})

	phase := func() string {
		e, _ := sim.Snapshot().ENI(eni)
		if e.Attachment == nil {
			return "none"
		}
		return e.Attachment.Status
	}
	var wg sync.WaitGroup
	var attErr error
	var attID *string
	wg.Add(1)
	go func() {
		defer wg.Done()
		r, err := c.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{NetworkInterfaceId: aws.String(eni), InstanceId: aws.String(inst.ID), DeviceIndex: aws.Int32(1)})
		attErr = err
		if err == nil {
			attID = r.AttachmentId
		}
	}()
	eventually(t, 2*time.Second, "attaching phase", func() bool { return phase() == "attaching" })
	wg.Wait()
	noErr(t, attErr)
	if p := phase(); p != "attached" {
		t.Fatalf("after attach returned: %s", p)
	}
	wg.Add(1)
	var detErr error
	go func() {
		defer wg.Done()
		_, detErr = c.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{AttachmentId: attID})
	}()
	eventually(t, 2*time.Second, "detaching phase", func() bool { return phase() == "detaching" })
	wg.Wait()
	noErr(t, detErr)
	if p := phase(); p != "none" {
		t.Fatalf("after detach returned: %s", p)
	}
}

// TestDenyAndEventualConsistency uses a scenario with a deny list and a consistency delay.
func TestDenyAndEventualConsistency(t *testing.T) {
	sc := DefaultScenario()
	sc.Deny = []string{"DeleteNetworkInterface"}
	sc.EventualConsistencyDelay = Duration(2 * time.Second)
	srv := start(t, func(c *Config) { c.Scenario = sc; c.TimeScale = 5 }) // 400 ms
	c := client(srv)
	ctx := t.Context()
	subnet := subnetByCIDR(t, srv, "192.168.96.0/19")
	t0 := time.Now()
	out, err := c.CreateNetworkInterface(ctx, &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnet)})
	noErr(t, err)
	id := out.NetworkInterface.NetworkInterfaceId
	_, err = c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{aws.ToString(id)}})
	if time.Since(t0) < 400*time.Millisecond {
		wantCode(t, err, "InvalidNetworkInterfaceID.NotFound")
	}
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: id, SecondaryPrivateIpAddressCount: aws.Int32(1)})
	if time.Since(t0) < 400*time.Millisecond {
		wantCode(t, err, "InvalidNetworkInterfaceID.NotFound")
	}
	if _, ok := srv.Sim().Snapshot().ENI(aws.ToString(id)); !ok {
		t.Fatal("the snapshot does not show the new ENI")
	}
	eventually(t, 3*time.Second, "the ENI to become visible", func() bool {
		_, err := c.DescribeNetworkInterfaces(ctx, &ec2.DescribeNetworkInterfacesInput{NetworkInterfaceIds: []string{aws.ToString(id)}})
		return err == nil
	})
	if time.Since(t0) < 390*time.Millisecond {
		t.Fatalf("visible after %v, before the delay", time.Since(t0))
	}
	_, err = c.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: id})
	wantCode(t, err, "UnauthorizedOperation")
	if status(err) != 403 {
		t.Fatalf("deny status %d", status(err))
	}
	if _, ok := srv.Sim().Snapshot().ENI(aws.ToString(id)); !ok {
		t.Fatal("a denied delete deleted")
	}
}

func TestCheckLoopback(t *testing.T) {
	for _, ok := range []string{"127.0.0.1:0", "127.1.2.3:4566", "[::1]:80", "localhost:4566"} {
		if err := CheckLoopback(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{":4566", "0.0.0.0:4566", "192.168.1.5:80", "[::]:80", "example.com:80", "127.0.0.1"} {
		if err := CheckLoopback(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}
