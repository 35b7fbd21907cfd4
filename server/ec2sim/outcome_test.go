package ec2sim

import (
	"context"
	"encoding/xml"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go"
)

// newENI creates an unattached ENI in the seed scenario's idle subnet.
func newENI(t *testing.T, srv *Server) string {
	t.Helper()
	out, err := client(srv).CreateNetworkInterface(t.Context(), &ec2.CreateNetworkInterfaceInput{SubnetId: aws.String(subnetByCIDR(t, srv, "192.168.96.0/19"))})
	noErr(t, err)
	return aws.ToString(out.NetworkInterface.NetworkInterfaceId)
}

func secondaries(t *testing.T, srv *Server, eni string) int {
	t.Helper()
	e, ok := srv.Sim().Snapshot().ENI(eni)
	if !ok {
		t.Fatalf("ENI %s is gone", eni)
	}
	return len(e.SecondaryIPs)
}

// A mutation EC2 applied may still fail to reach the client: a 500 after the work was done, a
// reset connection, or no answer until the client gives up. Each leaves the address assigned.
func TestFaultOutcomeAfterApply(t *testing.T) {
	srv := start(t)
	c := client(srv)
	eni := newENI(t, srv)
	assign := func(ctx context.Context) error {
		_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eni), SecondaryPrivateIpAddressCount: aws.Int32(1)})
		return err
	}

	srv.Sim().SetFault("AssignPrivateIpAddresses", Fault{Probability: 1, Outcome: OutcomeAfter})
	err := assign(t.Context())
	wantCode(t, err, "InternalError")
	if status(err) != http.StatusInternalServerError {
		t.Fatalf("after-apply failure answered %d, want 500", status(err))
	}
	if n := secondaries(t, srv, eni); n != 1 {
		t.Fatalf("after a 500-after-apply the ENI holds %d secondary addresses, want 1", n)
	}

	srv.Sim().SetFault("AssignPrivateIpAddresses", Fault{Probability: 1, Outcome: OutcomeReset})
	err = assign(t.Context())
	var ae smithy.APIError
	if err == nil || errors.As(err, &ae) {
		t.Fatalf("reset: err %v, want a transport error without an EC2 answer", err)
	}
	if n := secondaries(t, srv, eni); n != 2 {
		t.Fatalf("after a reset the ENI holds %d secondary addresses, want 2", n)
	}

	srv.Sim().SetFault("AssignPrivateIpAddresses", Fault{Probability: 1, Outcome: OutcomeTimeout})
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	err = assign(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timeout: err %v, want the client's deadline", err)
	}
	if n := secondaries(t, srv, eni); n != 3 {
		t.Fatalf("after an unanswered call the ENI holds %d secondary addresses, want 3", n)
	}
	if st := srv.Sim().Stats().Calls["AssignPrivateIpAddresses"]; st.Errors["InternalError"] != 3 {
		t.Fatalf("stats %+v, want the three failures counted as InternalError", st)
	}

	// The default outcome still fails without effect.
	srv.Sim().SetFault("AssignPrivateIpAddresses", Fault{Probability: 1})
	wantCode(t, assign(t.Context()), "InternalError")
	if n := secondaries(t, srv, eni); n != 3 {
		t.Fatalf("a failure before apply assigned: %d secondary addresses", n)
	}
	if err := (Fault{Outcome: "later"}).Validate(); err == nil {
		t.Fatal("an unknown outcome was accepted")
	}
}

// A client that disconnects while EC2 is still working does not stop the mutation.
func TestMutationOutlivesItsClient(t *testing.T) {
	srv := start(t)
	c := client(srv)
	eni := newENI(t, srv)
	srv.Sim().SetFault("AssignPrivateIpAddresses", Fault{Latency: 400 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	_, err := c.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(eni), SecondaryPrivateIpAddressCount: aws.Int32(2)})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the client's deadline", err)
	}
	eventually(t, 5*time.Second, "the abandoned assign to take effect", func() bool {
		e, _ := srv.Sim().Snapshot().ENI(eni)
		return len(e.SecondaryIPs) == 2
	})
}

// Malformed list indices and unindexed list parameters are refused, not silently dropped.
func TestMalformedListKeys(t *testing.T) {
	srv := start(t)
	eni := newENI(t, srv)
	base := func() url.Values {
		return url.Values{"Action": {"AssignPrivateIpAddresses"}, "Version": {"2016-11-15"}, "NetworkInterfaceId": {eni}}
	}
	for _, key := range []string{"PrivateIpAddress.0", "PrivateIpAddress.-1", "PrivateIpAddress.01", "PrivateIpAddress.abc",
		"PrivateIpAddress.+1", "PrivateIpAddress.", "PrivateIpAddress"} {
		form := base()
		form.Set(key, "192.168.100.10")
		resp, body := postForm(t, srv.Endpoint(), form)
		var er struct {
			Code string `xml:"Errors>Error>Code"`
			Msg  string `xml:"Errors>Error>Message"`
		}
		noErr(t, xml.Unmarshal(body, &er))
		if resp.StatusCode != 400 || er.Code != "UnknownParameter" || er.Msg != "The parameter "+key+" is not recognized" {
			t.Errorf("key %q: %d %s, want 400 UnknownParameter naming it", key, resp.StatusCode, body)
		}
	}
	if n := secondaries(t, srv, eni); n != 0 {
		t.Fatalf("refused requests assigned %d addresses", n)
	}
	// Nested lists too; the canonical spelling works.
	form := url.Values{"Action": {"DescribeSubnets"}, "Version": {"2016-11-15"}, "Filter.1.Name": {"vpc-id"}, "Filter.1.Value": {"vpc-1"}}
	if resp, body := postForm(t, srv.Endpoint(), form); resp.StatusCode != 400 {
		t.Errorf("unindexed Filter.1.Value: %d %s, want 400", resp.StatusCode, body)
	}
	form = base()
	form.Set("PrivateIpAddress.1", "192.168.100.10")
	if resp, body := postForm(t, srv.Endpoint(), form); resp.StatusCode != 200 {
		t.Fatalf("canonical PrivateIpAddress.1: %d %s", resp.StatusCode, body)
	}
	if n := secondaries(t, srv, eni); n != 1 {
		t.Fatalf("the canonical request assigned %d addresses, want 1", n)
	}
}
