package server_test

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/servertest"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHealthReadinessAndMetrics(t *testing.T) {
	s := servertest.StartDev(t, nil)
	conn := servertest.Dial(t, s.GRPCAddr())
	for _, in := range servertest.Instances(s)[:2] {
		a := servertest.NewAgent(t, conn, in)
		a.Register()
		a.Sync()
		a.WaitPool(10*time.Second, "a warm address", func(p *ipledgerv1.NodePool) bool { return len(servertest.Addresses(p, 0)) == 1 })
	}
	base := "http://" + s.HTTPAddr()
	if code, body := get(t, base+"/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, "leader") {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	_, metrics := get(t, base+"/metrics")
	value := func(re string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + re + ` (\S+)$`).FindStringSubmatch(metrics)
		if m == nil {
			t.Fatalf("metric %s missing from /metrics", re)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	subnet := servertest.Instances(s)[0].SubnetID
	held := value(`ipledger_subnet_addresses\{az="[^"]+",kind="held",subnet="` + subnet + `"\}`)
	if held < 2 {
		t.Fatalf("held in %s: %v", subnet, held)
	}
	if st := s.ClusterStatus(t.Context()); st.GetRevision() < 5 || !st.GetIsLeader() {
		t.Fatalf("a leader that committed registrations reports revision %d", st.GetRevision())
	}
	if value(`ipledger_leader`) != 1 || value(`ipledger_nodes_registered`) != 2 {
		t.Fatal("leader or node count wrong")
	}
	// Pools are a distribution over the nodes, not a series per node.
	if value(`ipledger_node_pool_addresses_count\{state="held"\}`) != 2 || strings.Contains(metrics, `ipledger_node_pool_addresses{node=`) {
		t.Fatal("ipledger_node_pool_addresses is not a histogram over the 2 nodes")
	}
	if value(`ipledger_ec2_calls_total\{action="AssignPrivateIpAddresses",outcome="ok"\}`) < 2 {
		t.Fatal("EC2 calls not counted")
	}
	for _, name := range []string{"ipledger_subnet_free_prefixes", "ipledger_subnet_headroom", "ipledger_node_pool_addresses",
		"ipledger_nodes_in_deficit", "ipledger_ec2_limiter_wait_seconds", "ipledger_ec2_queue_length", "ipledger_lease_operations_total", "ipledger_nodes_connected"} {
		if !strings.Contains(metrics, name) {
			t.Errorf("%s missing from /metrics", name)
		}
	}
	h := healthpb.NewHealthClient(conn)
	for svc, want := range map[string]healthpb.HealthCheckResponse_ServingStatus{
		"": healthpb.HealthCheckResponse_SERVING, "ipledger.v1.NodeService": healthpb.HealthCheckResponse_SERVING, "ipledger.v1.AdminService": healthpb.HealthCheckResponse_SERVING,
	} {
		resp, err := h.Check(t.Context(), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != want {
			t.Fatalf("health of %q: %v %v", svc, resp, err)
		}
	}
}
