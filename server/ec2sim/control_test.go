package ec2sim

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// ctl calls the control API and decodes the JSON answer into out (when not nil).
func ctl(t *testing.T, srv *Server, method, path string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		noErr(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, srv.Endpoint()+path, rd)
	noErr(t, err)
	resp, err := http.DefaultClient.Do(req)
	noErr(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	noErr(t, err)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

type ctlError struct {
	Error jsonError `json:"error"`
}

func TestControlAPI(t *testing.T) {
	srv := start(t, func(c *Config) { c.Throttle = true })
	c := client(srv)
	ctx := t.Context()

	var st State
	if code := ctl(t, srv, "GET", "/_sim/state", nil, &st); code != 200 {
		t.Fatalf("state: %d", code)
	}
	if st.Region != "eu-west-1" || st.VPC.CIDR != "192.168.0.0/16" || len(st.Subnets) != 6 || len(st.Instances) != 5 || len(st.ENIs) != 5 {
		t.Fatalf("state %+v", st)
	}
	for _, in := range st.Instances {
		if in.IMDSEndpoint == "" || in.State != "running" || in.PrimaryENI == "" {
			t.Fatalf("instance in state: %+v", in)
		}
	}
	subnet := st.Subnets[3].ID

	// Run two instances, then terminate one.
	var run struct {
		Instances []InstanceInfo `json:"instances"`
	}
	code := ctl(t, srv, "POST", "/_sim/instances", map[string]any{"instance_type": "m5.xlarge", "subnet_id": subnet, "count": 2, "tags": map[string]string{"pool": "x"}}, &run)
	if code != 200 || len(run.Instances) != 2 || run.Instances[0].IMDSEndpoint == "" || run.Instances[0].Tags["pool"] != "x" {
		t.Fatalf("run: %d %+v", code, run)
	}
	doc, err := imds.New(imds.Options{Endpoint: run.Instances[1].IMDSEndpoint}).GetInstanceIdentityDocument(ctx, &imds.GetInstanceIdentityDocumentInput{})
	noErr(t, err)
	if doc.InstanceID != run.Instances[1].ID || doc.InstanceType != "m5.xlarge" {
		t.Fatalf("IMDS of a control-API instance: %+v", doc)
	}
	var del map[string]string
	if code := ctl(t, srv, "DELETE", "/_sim/instances/"+run.Instances[0].ID, nil, &del); code != 200 || del["terminated"] != run.Instances[0].ID {
		t.Fatalf("terminate: %d %v", code, del)
	}
	var ce ctlError
	if code := ctl(t, srv, "DELETE", "/_sim/instances/i-0000000000000000f", nil, &ce); code != 400 || ce.Error.Code != "InvalidInstanceID.NotFound" {
		t.Fatalf("terminate unknown: %d %+v", code, ce)
	}
	if code := ctl(t, srv, "POST", "/_sim/instances", map[string]any{"instance_type": "m9.huge", "subnet_id": subnet}, &ce); code != 400 || ce.Error.Code != "InvalidParameterValue" {
		t.Fatalf("run unknown type: %d %+v", code, ce)
	}
	if code := ctl(t, srv, "POST", "/_sim/instances", map[string]any{"instance_typo": "m5.large"}, &ce); code != 400 {
		t.Fatalf("run with an unknown field: %d %+v", code, ce)
	}

	// A foreign ENI holds addresses nobody manages.
	var fe ENIInfo
	if code := ctl(t, srv, "POST", "/_sim/foreign-enis", map[string]any{"subnet_id": subnet, "addresses": 10}, &fe); code != 200 || !fe.Foreign || len(fe.Addresses()) != 10 || fe.Status != "available" {
		t.Fatalf("foreign ENI: %d %+v", code, fe)
	}
	if code := ctl(t, srv, "POST", "/_sim/foreign-enis", map[string]any{"subnet_id": subnet, "addresses": 0}, &ce); code != 400 {
		t.Fatalf("foreign ENI with 0 addresses: %d", code)
	}
	var frag map[string]int
	if code := ctl(t, srv, "POST", "/_sim/fragment", map[string]any{"subnet_id": subnet}, &frag); code != 200 || frag["occupied"] < 400 {
		t.Fatalf("fragment: %d %v", code, frag)
	}
	if code := ctl(t, srv, "POST", "/_sim/fragment", map[string]any{"subnet_id": "subnet-0000000000000000f"}, &ce); code != 400 || ce.Error.Code != "InvalidSubnetID.NotFound" {
		t.Fatalf("fragment unknown: %d %+v", code, ce)
	}

	// Faults through the control API.
	faults := map[string]any{"DescribeSubnets": map[string]any{"code": "InternalError", "probability": 1, "latency": "1ms"}}
	var fs map[string]Fault
	if code := ctl(t, srv, "POST", "/_sim/faults", faults, &fs); code != 200 || fs["DescribeSubnets"].Latency != time.Millisecond || fs["DescribeSubnets"].Probability != 1 {
		t.Fatalf("set faults: %d %+v", code, fs)
	}
	_, err = c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{})
	wantCode(t, err, "InternalError")
	if code := ctl(t, srv, "POST", "/_sim/faults", map[string]any{"NoSuchAction": map[string]any{}}, &ce); code != 400 {
		t.Fatalf("fault for an unknown action: %d", code)
	}
	if code := ctl(t, srv, "POST", "/_sim/faults", map[string]any{"DescribeSubnets": map[string]any{"probability": 2}}, &ce); code != 400 {
		t.Fatalf("probability 2: %d", code)
	}
	var cleared map[string]Fault
	if code := ctl(t, srv, "DELETE", "/_sim/faults", nil, &cleared); code != 200 || len(cleared) != 0 {
		t.Fatalf("clear faults: %d %v", code, cleared)
	}
	_, err = c.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{})
	noErr(t, err)

	// Stats count Query API calls by action and error code.
	_, err = c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String("eni-0000000000000000f"), SecondaryPrivateIpAddressCount: aws.Int32(1)})
	wantCode(t, err, "InvalidNetworkInterfaceID.NotFound")
	var stats Stats
	if code := ctl(t, srv, "GET", "/_sim/stats", nil, &stats); code != 200 {
		t.Fatalf("stats: %d", code)
	}
	ds, ap := stats.Calls["DescribeSubnets"], stats.Calls["AssignPrivateIpAddresses"]
	if ds.Calls != 2 || ds.Errors["InternalError"] != 1 || ap.Calls != 1 || ap.Errors["InvalidNetworkInterfaceID.NotFound"] != 1 {
		t.Fatalf("stats %+v", stats)
	}
	if tot := stats.Total(); tot.Calls != 3 {
		t.Fatalf("total %+v", tot)
	}

	// Throttling can be switched off.
	var on map[string]bool
	if code := ctl(t, srv, "POST", "/_sim/throttle", map[string]any{"on": false}, &on); code != 200 || on["on"] {
		t.Fatalf("throttle off: %d %v", code, on)
	}
	if code := ctl(t, srv, "GET", "/_sim/nothing", nil, &ce); code != 404 {
		t.Fatalf("unknown control path: %d", code)
	}

	// The state shows it all, with no address on two ENIs.
	st = State{}
	ctl(t, srv, "GET", "/_sim/state", nil, &st)
	if len(st.Instances) != 7 {
		t.Fatalf("%d instances", len(st.Instances))
	}
	terminated, _ := st.Instance(run.Instances[0].ID)
	if terminated.State != "terminated" || terminated.IMDSEndpoint != "" {
		t.Fatalf("terminated instance in state: %+v", terminated)
	}
	sn, _ := st.Subnet(subnet)
	if sn.FreeBlocks != 0 {
		t.Fatalf("free blocks after fragment: %d", sn.FreeBlocks)
	}
	if d := st.DuplicateAddresses(); len(d) != 0 {
		t.Fatalf("duplicates %v", d)
	}
	checkConsistent(t, srv)
}
