package serverconn

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/ipledger/ipledger/agent/pool"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// reportingServer answers registration with a pool and the pods the node last reported.
type reportingServer struct {
	syncServer
	pods []*ipledgerv1.PodAddress
}

func (s *reportingServer) pool() *ipledgerv1.NodePool {
	return &ipledgerv1.NodePool{NodeName: "node-a", InstanceId: "i-1", Generation: 2,
		Mode: ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP,
		Interfaces: []*ipledgerv1.NetworkInterface{{EniId: "eni-0", PrimaryIp: "10.0.0.10", Addresses: []*ipledgerv1.PoolAddress{
			{Ip: "10.0.0.11", State: ipledgerv1.LeaseState_LEASE_STATE_ACTIVE},
			{Ip: "10.0.0.12", State: ipledgerv1.LeaseState_LEASE_STATE_ACTIVE},
		}}}}
}

func (s *reportingServer) RegisterNode(context.Context, *ipledgerv1.RegisterNodeRequest) (*ipledgerv1.RegisterNodeResponse, error) {
	return &ipledgerv1.RegisterNodeResponse{Pool: s.pool(), LastReportedInUse: s.pods}, nil
}

// TestRegistrationRestoresReportedPods: the pods of the registration answer reach the handler
// after the registration's pool, so a pool that waits for them restores them against the pool
// the server leases now, and only then hands out addresses.
func TestRegistrationRestoresReportedPods(t *testing.T) {
	fake := &reportingServer{pods: []*ipledgerv1.PodAddress{{Ip: "10.0.0.12", ContainerId: "running", Ifname: "eth0"}}}
	srv := grpc.NewServer()
	ipledgerv1.RegisterNodeServiceServer(srv, fake)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Stop(); <-served })

	p, err := pool.Open(pool.Config{CheckpointPath: filepath.Join(t.TempDir(), "cp.json"), RestoreWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, ln.Addr().String())
	cfg.Handler = poolHandler{p}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	waitState(t, 10*time.Second, "registered", c, func(st State) bool { return st.Registered })
	deadline := time.Now().Add(10 * time.Second)
	for p.AwaitingRestore() {
		if time.Now().After(deadline) {
			t.Fatal("the registration did not end the wait for Restore")
		}
		time.Sleep(10 * time.Millisecond)
	}
	a, ok := p.Lookup(pool.Key{ContainerID: "running", IfName: "eth0"})
	if !ok || a.IP.String() != "10.0.0.12" || a.ENI.ID != "eni-0" {
		t.Fatalf("reported pod after registration: %+v %v", a, ok)
	}
	got, _, err := p.Assign(pool.Key{ContainerID: "new", IfName: "eth0"}, pool.PodInfo{})
	if err != nil || got.IP.String() != "10.0.0.11" {
		t.Fatalf("new pod got %+v %v, want the address nobody holds", got, err)
	}
}
