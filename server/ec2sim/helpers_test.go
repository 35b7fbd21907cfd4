package ec2sim

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/smithy-go"
)

// start runs a simulator on 127.0.0.1:0 with throttling off unless the test turns it on.
func start(t *testing.T, mutate ...func(*Config)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Throttle = false
	for _, m := range mutate {
		m(&cfg)
	}
	srv, err := Start(cfg, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start simulator: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close simulator: %v", err)
		}
	})
	return srv
}

// client is the unmodified SDK client pointed at the simulator, without retries so tests see
// raw responses. Its HTTP client buffers request bodies (see BufferBodies).
func client(srv *Server) *ec2.Client {
	return ec2.New(ec2.Options{
		Region:       "eu-west-1",
		BaseEndpoint: aws.String(srv.Endpoint()),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
		Retryer:      aws.NopRetryer{},
		HTTPClient:   NewHTTPClient(),
	})
}

// code returns the EC2 error code of err ("" for nil).
func code(err error) string {
	if err == nil {
		return ""
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return "not-an-api-error: " + err.Error()
}

func status(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// wantCode fails unless err carries the EC2 error code.
func wantCode(t *testing.T, err error, want string) {
	t.Helper()
	if got := code(err); got != want {
		t.Fatalf("want error %s, got %v", want, err)
	}
}

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// subnetByCIDR returns the id of the subnet with the CIDR.
func subnetByCIDR(t *testing.T, srv *Server, cidr string) string {
	t.Helper()
	for _, s := range srv.Sim().Snapshot().Subnets {
		if s.CIDR == cidr {
			return s.ID
		}
	}
	t.Fatalf("no subnet %s", cidr)
	return ""
}

// instanceIn returns a running instance of the default scenario in the subnet.
func instanceIn(t *testing.T, srv *Server, subnetID string) InstanceInfo {
	t.Helper()
	for _, in := range srv.Sim().Snapshot().Instances {
		if in.SubnetID == subnetID && in.State == "running" {
			return in
		}
	}
	t.Fatalf("no running instance in %s", subnetID)
	return InstanceInfo{}
}

// checkConsistent asserts no address is on two ENIs and every ENI's addresses lie in its
// subnet, and that the subnet counters match the ENIs.
func checkConsistent(t *testing.T, srv *Server) {
	t.Helper()
	st := srv.Sim().Snapshot()
	if d := st.DuplicateAddresses(); len(d) > 0 {
		t.Fatalf("addresses on two ENIs: %v", d)
	}
	inUse := map[string]int{}
	for _, e := range st.ENIs {
		sn, ok := st.Subnet(e.SubnetID)
		if !ok {
			t.Fatalf("ENI %s in unknown subnet %s", e.ID, e.SubnetID)
		}
		p := netip.MustParsePrefix(sn.CIDR)
		for _, a := range e.Addresses() {
			if !p.Contains(netip.MustParseAddr(a)) {
				t.Fatalf("ENI %s holds %s outside %s", e.ID, a, sn.CIDR)
			}
		}
		inUse[e.SubnetID] += len(e.Addresses())
	}
	for _, sn := range st.Subnets {
		if sn.InUse != inUse[sn.ID] || sn.Available != sn.Size-5-sn.InUse {
			t.Fatalf("subnet %s: in_use %d available %d, ENIs hold %d", sn.ID, sn.InUse, sn.Available, inUse[sn.ID])
		}
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
