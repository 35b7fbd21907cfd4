package cniserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ipledger/ipledger/agent/internal/rpcerr"
	"github.com/ipledger/ipledger/agent/pool"
	"github.com/ipledger/ipledger/agent/serverconn"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

const active = ipledgerv1.LeaseState_LEASE_STATE_ACTIVE

// nodePool builds a pool: eni-0 (device 0) with primary addrs, eni-2 (device 2) with second.
func nodePool(gen uint64, primary, second []string) *ipledgerv1.NodePool {
	list := func(ips []string) []*ipledgerv1.PoolAddress {
		var out []*ipledgerv1.PoolAddress
		for _, ip := range ips {
			out = append(out, &ipledgerv1.PoolAddress{Ip: ip, State: active})
		}
		return out
	}
	return &ipledgerv1.NodePool{
		NodeName: "node-a", InstanceId: "i-1", Generation: gen,
		Mode: ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP,
		Interfaces: []*ipledgerv1.NetworkInterface{
			{EniId: "eni-0", MacAddress: "02:00:00:00:00:01", DeviceIndex: 0, SubnetCidr: "10.0.0.0/16", PrimaryIp: "10.0.0.10", Addresses: list(primary)},
			{EniId: "eni-2", MacAddress: "02:00:00:00:00:02", DeviceIndex: 2, SubnetCidr: "10.0.0.0/16", PrimaryIp: "10.0.0.20", Addresses: list(second)},
		},
	}
}

func ips(prefix string, from, n int) []string {
	var out []string
	for i := range n {
		a := from + i
		out = append(out, fmt.Sprintf("%s.%d.%d", prefix, a/250, a%250))
	}
	return out
}

type env struct {
	srv    *Server
	pool   *pool.Pool
	client ipledgerv1.CNIServiceClient
	socket string
	reg    *prometheus.Registry
}

// shortDir returns a short temp dir (unix socket paths are limited to 107 bytes).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "cni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func start(t *testing.T, np *ipledgerv1.NodePool, edit func(*Config)) *env {
	t.Helper()
	dir := shortDir(t)
	p, err := pool.Open(pool.Config{CheckpointPath: filepath.Join(dir, "cp.json"), NodeName: "node-a", InstanceID: "i-1"})
	if err != nil {
		t.Fatal(err)
	}
	if np != nil {
		if _, err := p.Apply(np, false); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{SocketPath: filepath.Join(dir, "run", "agent.sock"), Pool: p, Metrics: m, AddWait: 200 * time.Millisecond}
	if edit != nil {
		edit(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-srv.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	}
	return &env{srv: srv, pool: p, client: dial(t, cfg.SocketPath), socket: cfg.SocketPath, reg: reg}
}

func dial(t *testing.T, socket string) ipledgerv1.CNIServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return ipledgerv1.NewCNIServiceClient(cc)
}

func add(cid string) *ipledgerv1.CNIAddRequest {
	return &ipledgerv1.CNIAddRequest{ContainerId: cid, Ifname: "eth0", Netns: "/var/run/netns/" + cid, PodNamespace: "ns", PodName: "pod-" + cid}
}

// wantReason checks err's code, ErrorInfo reason and (optionally) metadata field.
func wantReason(t *testing.T, err error, code codes.Code, reason ipledgerv1.Reason, field string) {
	t.Helper()
	st := status.Convert(err)
	if err == nil || st.Code() != code {
		t.Fatalf("error %v, want code %v", err, code)
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if info == nil || info.GetDomain() != rpcerr.Domain || info.GetReason() != reason.String() {
		t.Fatalf("error %v: ErrorInfo %v, want reason %v", err, info, reason)
	}
	if field != "" && info.GetMetadata()["field"] != field {
		t.Fatalf("error %v: field %q, want %q", err, info.GetMetadata()["field"], field)
	}
}

func TestAddDelCheck(t *testing.T) {
	e := start(t, nodePool(1, []string{"10.0.0.11"}, []string{"10.0.0.21"}), nil)
	ctx := t.Context()

	r1, err := e.client.Add(ctx, add("c1"))
	if err != nil {
		t.Fatal(err)
	}
	if r1.Ip != "10.0.0.11" || r1.EniId != "eni-0" || r1.EniMac != "02:00:00:00:00:01" || r1.DeviceIndex != 0 || r1.RouteTable != 254 || r1.Waited {
		t.Fatalf("add c1 = %v", r1)
	}
	r2, err := e.client.Add(ctx, add("c2"))
	if err != nil {
		t.Fatal(err)
	}
	if r2.Ip != "10.0.0.21" || r2.EniId != "eni-2" || r2.DeviceIndex != 2 || r2.RouteTable != 3 {
		t.Fatalf("add c2 = %v", r2)
	}
	// Idempotent: the same attachment gets the same address, even with the pool empty.
	again, err := e.client.Add(ctx, add("c1"))
	if err != nil || again.Ip != r1.Ip || again.Waited {
		t.Fatalf("add c1 again = %v, %v", again, err)
	}
	chk, err := e.client.Check(ctx, &ipledgerv1.CNICheckRequest{ContainerId: "c2", Ifname: "eth0"})
	if err != nil || chk.Ip != "10.0.0.21" || chk.EniId != "eni-2" || chk.RouteTable != 3 {
		t.Fatalf("check c2 = %v, %v", chk, err)
	}
	del, err := e.client.Del(ctx, &ipledgerv1.CNIDelRequest{ContainerId: "c2", Ifname: "eth0"})
	if err != nil || del.Ip != "10.0.0.21" || del.RouteTable != 3 {
		t.Fatalf("del c2 = %v, %v", del, err)
	}
	del, err = e.client.Del(ctx, &ipledgerv1.CNIDelRequest{ContainerId: "c2", Ifname: "eth0"})
	if err != nil || del.Ip != "" {
		t.Fatalf("del c2 again = %v, %v", del, err)
	}
	_, err = e.client.Check(ctx, &ipledgerv1.CNICheckRequest{ContainerId: "c2", Ifname: "eth0"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("check after del: %v, want NOT_FOUND", err)
	}
	// Del's address was checkpointed as given back: a reloaded pool has only c1.
	q, err := pool.Open(pool.Config{CheckpointPath: e.pool.Path()})
	if err != nil {
		t.Fatal(err)
	}
	if as := q.Assignments(); len(as) != 1 || as[0].ContainerID != "c1" || as[0].Pod.Name != "pod-c1" {
		t.Fatalf("checkpoint holds %+v", as)
	}
	if got := metricValue(t, e.srv.cfg.Metrics.adds); got != 3 {
		t.Fatalf("adds_total %v, want 3", got)
	}
	if got := metricValue(t, e.srv.cfg.Metrics.dels); got != 1 {
		t.Fatalf("dels_total %v, want 1", got)
	}
	if n := metricCount(e.srv.cfg.Metrics.addDuration); n != 1 {
		t.Fatalf("add_duration series %d, want 1 (waited=false)", n)
	}
}

func TestValidation(t *testing.T) {
	e := start(t, nodePool(1, []string{"10.0.0.11"}, nil), nil)
	ctx := t.Context()
	long := strings.Repeat("a", 257)
	addWith := func(edit func(*ipledgerv1.CNIAddRequest)) *ipledgerv1.CNIAddRequest {
		r := add("c1")
		edit(r)
		return r
	}
	type call func() error
	tests := []struct {
		name  string
		call  call
		field string
	}{
		{"add: empty container id", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.ContainerId = "" }))
			return err
		}, "container_id"},
		{"add: container id too long", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.ContainerId = long }))
			return err
		}, "container_id"},
		{"add: container id with slash", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.ContainerId = "../etc" }))
			return err
		}, "container_id"},
		{"add: empty ifname", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.Ifname = "" }))
			return err
		}, "ifname"},
		{"add: ifname too long", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.Ifname = "eth0123456789012" }))
			return err
		}, "ifname"},
		{"add: ifname with colon", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.Ifname = "eth0:1" }))
			return err
		}, "ifname"},
		{"add: ifname dot", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.Ifname = ".." }))
			return err
		}, "ifname"},
		{"add: ifname with space", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.Ifname = "eth 0" }))
			return err
		}, "ifname"},
		{"add: relative netns", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.Netns = "proc/1/ns/net" }))
			return err
		}, "netns"},
		{"add: negative wait", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.Wait = durationpb.New(-time.Second) }))
			return err
		}, "wait"},
		{"add: wait too long", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.Wait = durationpb.New(time.Hour) }))
			return err
		}, "wait"},
		{"add: pod name with newline", func() error {
			_, err := e.client.Add(ctx, addWith(func(r *ipledgerv1.CNIAddRequest) { r.PodName = "a\nb" }))
			return err
		}, "pod_name"},
		{"del: bad container id", func() error {
			_, err := e.client.Del(ctx, &ipledgerv1.CNIDelRequest{ContainerId: "a b", Ifname: "eth0"})
			return err
		}, "container_id"},
		{"del: no ifname", func() error {
			_, err := e.client.Del(ctx, &ipledgerv1.CNIDelRequest{ContainerId: "c1"})
			return err
		}, "ifname"},
		{"check: no container id", func() error {
			_, err := e.client.Check(ctx, &ipledgerv1.CNICheckRequest{Ifname: "eth0"})
			return err
		}, "container_id"},
		{"gc: bad attachment", func() error {
			_, err := e.client.GC(ctx, &ipledgerv1.CNIGCRequest{ValidAttachments: []*ipledgerv1.Attachment{
				{ContainerId: "ok", Ifname: "eth0"}, {ContainerId: "ok", Ifname: "bad/name"}}})
			return err
		}, "valid_attachments[1].ifname"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantReason(t, tc.call(), codes.InvalidArgument, ipledgerv1.Reason_INVALID_ARGUMENT, tc.field)
		})
	}
	// None of it changed anything: the bad GC released nothing, the bad Adds assigned nothing.
	if c := e.pool.Counts(); c.Free != 1 || c.InUse != 0 {
		t.Fatalf("pool changed by bad input: %+v", c)
	}
	if got := metricValue(t, e.srv.cfg.Metrics.addFailures.WithLabelValues("INVALID_ARGUMENT")); got != 12 {
		t.Fatalf("add_failures_total{INVALID_ARGUMENT} = %v, want 12", got)
	}
	// Limits that are fine: 256 characters, 15-byte ifname, no netns.
	ok := add(strings.Repeat("b", 256))
	ok.Ifname, ok.Netns, ok.PodName = "eth0123456789ab", "", strings.Repeat("p", 253)
	if _, err := e.client.Add(ctx, ok); err != nil {
		t.Fatalf("valid limits refused: %v", err)
	}
}

func TestGC(t *testing.T) {
	e := start(t, nodePool(1, ips("10.0", 11, 5), nil), nil)
	ctx := t.Context()
	for _, c := range []string{"a", "b", "c"} {
		if _, err := e.client.Add(ctx, add(c)); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := e.client.GC(ctx, &ipledgerv1.CNIGCRequest{ValidAttachments: []*ipledgerv1.Attachment{{ContainerId: "b", Ifname: "eth0"}}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range resp.Released {
		got = append(got, r.ContainerId+"="+r.Ip)
		if r.PodName != "pod-"+r.ContainerId || r.AssignedAt == nil {
			t.Fatalf("released entry %v lacks pod details", r)
		}
	}
	if strings.Join(got, ",") != "a=10.0.0.11,c=10.0.0.13" {
		t.Fatalf("released %v", got)
	}
	if _, err := e.client.Check(ctx, &ipledgerv1.CNICheckRequest{ContainerId: "b", Ifname: "eth0"}); err != nil {
		t.Fatalf("b lost its address: %v", err)
	}
	// An empty valid list releases everything.
	resp, err = e.client.GC(ctx, &ipledgerv1.CNIGCRequest{})
	if err != nil || len(resp.Released) != 1 {
		t.Fatalf("gc all: %v %v", resp, err)
	}
}

func TestStatus(t *testing.T) {
	e := start(t, nodePool(1, []string{"10.0.0.11"}, nil), nil)
	ctx := t.Context()
	st, err := e.client.Status(ctx, &ipledgerv1.CNIStatusRequest{})
	if err != nil || !st.Ready || st.Free != 1 || st.ServerConnected {
		t.Fatalf("status with a free address: %v %v", st, err)
	}
	if _, err := e.client.Add(ctx, add("a")); err != nil {
		t.Fatal(err)
	}
	st, err = e.client.Status(ctx, &ipledgerv1.CNIStatusRequest{})
	if err != nil || st.Ready || st.Free != 0 || st.Reason != ipledgerv1.Reason_SERVER_UNREACHABLE || st.Message == "" {
		t.Fatalf("status with an empty pool and no server: %v %v", st, err)
	}
	drained := nodePool(2, []string{"10.0.0.11"}, nil)
	drained.Draining = true
	if _, err := e.pool.Apply(drained, false); err != nil {
		t.Fatal(err)
	}
	st, err = e.client.Status(ctx, &ipledgerv1.CNIStatusRequest{})
	if err != nil || st.Ready || st.Reason != ipledgerv1.Reason_NODE_DRAINING {
		t.Fatalf("status of a drained node: %v %v", st, err)
	}
	_, err = e.client.Add(ctx, add("b"))
	wantReason(t, err, codes.ResourceExhausted, ipledgerv1.Reason_NODE_DRAINING, "")
}

func TestSocketFile(t *testing.T) {
	e := start(t, nil, func(c *Config) { c.SocketGroup = "12345" })
	fi, err := os.Stat(e.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want a socket with 0660", fi.Mode())
	}
	if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != 12345 {
		t.Fatalf("socket group %d, want 12345", gid)
	}
	di, err := os.Stat(filepath.Dir(e.socket))
	if err != nil || di.Mode().Perm() != 0o755 {
		t.Fatalf("socket dir %v %v, want 0755", di, err)
	}
	// A second agent on the same socket refuses to start and leaves the first one serving.
	p2, err := pool.Open(pool.Config{CheckpointPath: filepath.Join(shortDir(t), "cp.json")})
	if err != nil {
		t.Fatal(err)
	}
	s2, err := New(Config{SocketPath: e.socket, Pool: p2})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Run(t.Context()); !errors.Is(err, ErrSocketInUse) {
		t.Fatalf("second Run: %v, want ErrSocketInUse", err)
	}
	if _, err := e.client.Status(t.Context(), &ipledgerv1.CNIStatusRequest{}); err != nil {
		t.Fatalf("first agent stopped answering: %v", err)
	}
}

func TestSocketStaleAndForeign(t *testing.T) {
	dir := shortDir(t)
	p, err := pool.Open(pool.Config{CheckpointPath: filepath.Join(dir, "cp.json")})
	if err != nil {
		t.Fatal(err)
	}
	// A stale socket left by a crashed agent: nothing listens on it.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	_ = l.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	s, err := New(Config{SocketPath: stale, Pool: p})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		t.Fatalf("Run over a stale socket: %v", err)
	}
	if _, err := dial(t, stale).Status(t.Context(), &ipledgerv1.CNIStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Run: %v", err)
	}

	// A regular file is not ours to remove.
	file := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, _ = New(Config{SocketPath: file, Pool: p})
	if err := s.Run(t.Context()); !errors.Is(err, ErrNotSocket) {
		t.Fatalf("Run over a file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "x" {
		t.Fatal("file was touched")
	}
}

func TestNewValidates(t *testing.T) {
	p, err := pool.Open(pool.Config{CheckpointPath: filepath.Join(t.TempDir(), "cp.json")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no pool", Config{SocketPath: "/tmp/x.sock"}, "no pool"},
		{"relative socket", Config{SocketPath: "x.sock", Pool: p}, "not absolute"},
		{"long socket", Config{SocketPath: "/" + strings.Repeat("s", 120), Pool: p}, "longer than"},
		{"unknown group", Config{SocketPath: "/tmp/x.sock", SocketGroup: "no-such-group-ipledger", Pool: p}, "no-such-group-ipledger"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want %q", err, tc.want)
			}
		})
	}
	if gid, err := LookupGroup("root"); err != nil || gid != 0 {
		t.Fatalf("LookupGroup(root) = %d, %v", gid, err)
	}
}

func TestConcurrentAddsNeverShareAnAddress(t *testing.T) {
	const addrs, adds = 300, 320
	e := start(t, nodePool(1, ips("10.0", 11, addrs/2), ips("10.0", 1000, addrs/2)), func(c *Config) { c.AddWait = 50 * time.Millisecond })
	ctx := t.Context()
	got := make([]string, adds)
	errs := make([]error, adds)
	var wg sync.WaitGroup
	for i := range adds {
		wg.Go(func() {
			r, err := e.client.Add(ctx, add(fmt.Sprint("c", i)))
			if err == nil {
				got[i] = r.Ip
			}
			errs[i] = err
		})
	}
	wg.Wait()
	seen := map[string]int{}
	failed := 0
	for i := range adds {
		if errs[i] != nil {
			wantReason(t, errs[i], codes.Unavailable, ipledgerv1.Reason_SERVER_UNREACHABLE, "")
			failed++
			continue
		}
		if j, dup := seen[got[i]]; dup {
			t.Fatalf("%s handed to c%d and c%d", got[i], j, i)
		}
		seen[got[i]] = i
	}
	if len(seen) != addrs || failed != adds-addrs {
		t.Fatalf("%d addresses handed out, %d failures; want %d and %d", len(seen), failed, addrs, adds-addrs)
	}
	// Repeats of every attachment get their own address back, concurrently too.
	for i := range adds {
		if errs[i] != nil {
			continue
		}
		wg.Go(func() {
			r, err := e.client.Add(ctx, add(fmt.Sprint("c", i)))
			if err != nil || r.Ip != got[i] {
				t.Errorf("repeat add c%d = %v %v, want %s", i, r, err, got[i])
			}
		})
	}
	wg.Wait()
}

func TestEmptyPoolNoServerFailsAfterWait(t *testing.T) {
	dead := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}()
	tests := []struct {
		name     string
		supplier func(p *pool.Pool) Supplier
	}{
		{"no allocator configured", func(*pool.Pool) Supplier { return nil }},
		{"allocator unreachable", func(p *pool.Pool) Supplier {
			conn, err := serverconn.New(serverconn.Config{
				Servers:  []string{dead},
				Identity: serverconn.Identity{NodeName: "node-a", InstanceID: "i-1"},
				Handler:  poolHandler{p}, BackoffMin: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan struct{})
			go func() { defer close(done); _ = conn.Run(ctx) }()
			t.Cleanup(func() { cancel(); <-done })
			return conn
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, nodePool(1, nil, nil), func(c *Config) {
				if sup := tc.supplier(c.Pool); sup != nil {
					c.Supplier = sup
				}
			})
			req := add("c1")
			req.Wait = durationpb.New(300 * time.Millisecond)
			t0 := time.Now()
			_, err := e.client.Add(t.Context(), req)
			took := time.Since(t0)
			wantReason(t, err, codes.Unavailable, ipledgerv1.Reason_SERVER_UNREACHABLE, "")
			if took < 300*time.Millisecond || took > 3*time.Second {
				t.Fatalf("failed after %v, want the 300ms wait", took)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, "c1/eth0") || !strings.Contains(msg, "300ms") {
				t.Fatalf("message %q does not say which attachment and how long", msg)
			}
			if _, ok := e.pool.Lookup(pool.Key{ContainerID: "c1", IfName: "eth0"}); ok {
				t.Fatal("failed Add left an assignment")
			}
			if got := metricValue(t, e.srv.cfg.Metrics.addFailures.WithLabelValues("SERVER_UNREACHABLE")); got != 1 {
				t.Fatalf("add_failures_total{SERVER_UNREACHABLE} = %v", got)
			}
			if e.srv.Waiting() != 0 {
				t.Fatalf("%d still waiting", e.srv.Waiting())
			}
		})
	}
}

// poolHandler lets a real serverconn.Conn feed the real pool.
type poolHandler struct{ p *pool.Pool }

func (h poolHandler) ApplyPool(np *ipledgerv1.NodePool, force bool) error {
	_, err := h.p.Apply(np, force)
	return err
}
func (h poolHandler) AnswerRelease(r *ipledgerv1.ReleaseProposal) (*ipledgerv1.ReleaseAck, error) {
	return h.p.Answer(r)
}
func (h poolHandler) Usage() *ipledgerv1.UsageReport { return h.p.Usage() }
func (h poolHandler) KnownGeneration() uint64        { return h.p.Generation() }
func (h poolHandler) StalePods([]string)             {}
func (h poolHandler) RestorePods(pods []*ipledgerv1.PodAddress) {
	_, _ = h.p.Restore(pods)
}

var _ Supplier = (*serverconn.Conn)(nil)

func TestWaitingAddWakesOnPoolAndCooldown(t *testing.T) {
	dir := shortDir(t)
	p, err := pool.Open(pool.Config{CheckpointPath: filepath.Join(dir, "cp.json"), Cooldown: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Apply(nodePool(1, []string{"10.0.0.11"}, nil), false); err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{SocketPath: filepath.Join(dir, "a.sock"), Pool: p, AddWait: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-srv.Ready()
	client := dial(t, filepath.Join(dir, "a.sock"))

	if _, err := client.Add(t.Context(), add("a")); err != nil {
		t.Fatal(err)
	}
	// b waits; a new pool brings an address.
	res := make(chan *ipledgerv1.CNIAddResponse, 1)
	go func() {
		r, err := client.Add(t.Context(), add("b"))
		if err != nil {
			t.Error(err)
		}
		res <- r
	}()
	waitFor(t, func() bool { return srv.Waiting() == 1 })
	if _, err := p.Apply(nodePool(2, []string{"10.0.0.11", "10.0.0.12"}, nil), false); err != nil {
		t.Fatal(err)
	}
	if r := <-res; r == nil || r.Ip != "10.0.0.12" || !r.Waited {
		t.Fatalf("b = %v, want 10.0.0.12 after waiting", r)
	}
	// c waits; a's address comes back after its cooldown.
	if _, err := client.Del(t.Context(), &ipledgerv1.CNIDelRequest{ContainerId: "a", Ifname: "eth0"}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	r, err := client.Add(t.Context(), add("c"))
	if err != nil || r.Ip != "10.0.0.11" || !r.Waited {
		t.Fatalf("c = %v %v, want the cooled 10.0.0.11", r, err)
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Fatalf("c waited %v for a 300ms cooldown", took)
	}
}

// scriptedSupplier stands in for the allocator to exercise the shared urgent request: it records
// the requests and answers each with what the script says, applying pools to the real pool.
type scriptedSupplier struct {
	mu       sync.Mutex
	counts   []uint32
	release  chan struct{}
	answer   func(n int, count uint32) error
	inflight int
	maxIn    int
}

func (s *scriptedSupplier) RequestAddresses(ctx context.Context, count uint32) error {
	s.mu.Lock()
	s.counts = append(s.counts, count)
	n := len(s.counts)
	s.inflight++
	s.maxIn = max(s.maxIn, s.inflight)
	s.mu.Unlock()
	defer func() { s.mu.Lock(); s.inflight--; s.mu.Unlock() }()
	if s.release != nil {
		select {
		case <-s.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return s.answer(n, count)
}

func (s *scriptedSupplier) ServerState() (bool, string) { return true, "" }

func TestWaitersShareOneRequest(t *testing.T) {
	sup := &scriptedSupplier{release: make(chan struct{})}
	e := start(t, nodePool(1, nil, nil), func(c *Config) { c.Supplier = sup; c.AddWait = 5 * time.Second })
	total := 0 // answers only run one at a time (asserted below)
	sup.answer = func(req int, count uint32) error {
		total += int(count)
		_, err := e.pool.Apply(nodePool(uint64(1+req), ips("10.0", 11, total), nil), false)
		return err
	}
	const n = 5
	var wg sync.WaitGroup
	got := make([]*ipledgerv1.CNIAddResponse, n)
	for i := range n {
		wg.Go(func() {
			r, err := e.client.Add(t.Context(), add(fmt.Sprint("w", i)))
			if err != nil {
				t.Errorf("w%d: %v", i, err)
			}
			got[i] = r
		})
	}
	waitFor(t, func() bool { return e.srv.Waiting() == n })
	close(sup.release)
	wg.Wait()
	sup.mu.Lock()
	counts, maxIn := append([]uint32(nil), sup.counts...), sup.maxIn
	sup.mu.Unlock()
	if maxIn != 1 {
		t.Fatalf("%d requests in flight at once, want 1", maxIn)
	}
	// The first waiter's request may have started before the others arrived; the next one asks
	// for everyone still waiting: all five get an address from at most two requests.
	sum := uint32(0)
	for _, c := range counts {
		sum += c
	}
	if len(counts) == 0 || len(counts) > 2 || sum < n {
		t.Fatalf("requests %v, want at most two asking for %d in all", counts, n)
	}
	seen := map[string]bool{}
	for i, r := range got {
		if r == nil || !r.Waited || seen[r.Ip] {
			t.Fatalf("w%d = %v", i, r)
		}
		seen[r.Ip] = true
	}
}

func TestWaitFailsWithTheAllocatorsReason(t *testing.T) {
	tests := []struct {
		name   string
		err    error
		code   codes.Code
		reason ipledgerv1.Reason
		says   string
	}{
		{"subnet exhausted", rpcerr.New(codes.ResourceExhausted, ipledgerv1.Reason_SUBNET_EXHAUSTED, "subnet-1 has 0 free", nil),
			codes.ResourceExhausted, ipledgerv1.Reason_SUBNET_EXHAUSTED, "subnet-1 has 0 free"},
		{"throttled", rpcerr.New(codes.Unavailable, ipledgerv1.Reason_EC2_THROTTLED, "queue 40s", nil),
			codes.Unavailable, ipledgerv1.Reason_EC2_THROTTLED, "throttling"},
		{"supply timeout", rpcerr.New(codes.DeadlineExceeded, ipledgerv1.Reason_SUPPLY_TIMEOUT, "slow", nil),
			codes.DeadlineExceeded, ipledgerv1.Reason_SUPPLY_TIMEOUT, "slow"},
		{"transport", status.Error(codes.Unavailable, "connection refused"),
			codes.Unavailable, ipledgerv1.Reason_SERVER_UNREACHABLE, "connection refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sup := &scriptedSupplier{answer: func(int, uint32) error { return tc.err }}
			e := start(t, nodePool(1, nil, nil), func(c *Config) {
				c.Supplier = sup
				c.AddWait = 250 * time.Millisecond
				c.SupplyRetry = 100 * time.Millisecond
			})
			_, err := e.client.Add(t.Context(), add("c1"))
			wantReason(t, err, tc.code, tc.reason, "")
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.says) {
				t.Fatalf("message %q does not say %q", msg, tc.says)
			}
			sup.mu.Lock()
			n := len(sup.counts)
			sup.mu.Unlock()
			// Retried after the pause, but not hammered: 250ms / 100ms pause.
			if n < 2 || n > 4 {
				t.Fatalf("%d requests in 250ms with a 100ms pause", n)
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// metricValue sums the counters and gauges c collects.
func metricValue(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 64)
	c.Collect(ch)
	close(ch)
	sum := 0.0
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		sum += d.GetCounter().GetValue() + d.GetGauge().GetValue()
	}
	return sum
}

// metricCount is the number of series c collects.
func metricCount(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 64)
	c.Collect(ch)
	close(ch)
	n := 0
	for range ch {
		n++
	}
	return n
}

// TestAddWaitsForRestore: after a restart the pool waits for the first registration; an Add
// waits too, without asking the allocator (the addresses it lacks may be running pods'), gets
// an address nobody holds once Restore has run, and fails with the reason when the wait for
// the registration outlasts its own.
func TestAddWaitsForRestore(t *testing.T) {
	dir := shortDir(t)
	p, err := pool.Open(pool.Config{CheckpointPath: filepath.Join(dir, "cp.json"), RestoreWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Apply(nodePool(1, []string{"10.0.0.11", "10.0.0.12"}, nil), false); err != nil {
		t.Fatal(err)
	}
	sup := &scriptedSupplier{answer: func(int, uint32) error { return nil }}
	unknownDels := make(chan struct{}, 4)
	srv, err := New(Config{SocketPath: filepath.Join(dir, "a.sock"), Pool: p, Supplier: sup, AddWait: 5 * time.Second,
		OnUnknownDel: func() { unknownDels <- struct{}{} }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	<-srv.Ready()
	client := dial(t, filepath.Join(dir, "a.sock"))

	// The wait of the Add is shorter than the pool's: it fails, saying why.
	short := add("impatient")
	short.Wait = durationpb.New(200 * time.Millisecond)
	_, err = client.Add(t.Context(), short)
	wantReason(t, err, codes.Unavailable, ipledgerv1.Reason_SERVER_UNREACHABLE, "")
	if !strings.Contains(status.Convert(err).Message(), "first registration") {
		t.Fatalf("error %v does not say the agent waits for its registration", err)
	}

	res := make(chan *ipledgerv1.CNIAddResponse, 1)
	go func() {
		r, err := client.Add(t.Context(), add("new"))
		if err != nil {
			t.Errorf("add while awaiting restore: %v", err)
		}
		res <- r
	}()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Waiting() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the Add does not wait")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The runtime deletes a pod the pool does not know: success, and the agent is told.
	if del, err := client.Del(t.Context(), &ipledgerv1.CNIDelRequest{ContainerId: "unknown", Ifname: "eth0"}); err != nil || del.Ip != "" {
		t.Fatalf("del of an unknown attachment: %v %v", del, err)
	}
	select {
	case <-unknownDels:
	case <-time.After(5 * time.Second):
		t.Fatal("OnUnknownDel not called")
	}
	// The registration says a running pod holds .11.
	if _, err := p.Restore([]*ipledgerv1.PodAddress{{Ip: "10.0.0.11", ContainerId: "running", Ifname: "eth0"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		if r == nil || r.Ip != "10.0.0.12" || !r.Waited {
			t.Fatalf("add after Restore = %v, want 10.0.0.12", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the Add did not wake after Restore")
	}
	sup.mu.Lock()
	defer sup.mu.Unlock()
	if len(sup.counts) != 0 {
		t.Fatalf("the allocator was asked for addresses %v while the pool waited for its registration", sup.counts)
	}
}

// A node at its instance limit: the allocator answers NODE_AT_LIMIT, and the Add fails with it
// at once instead of waiting out the Add's wait (a minute here, which the test's deadline is far
// below); the next Add fails too without asking the allocator again within the retry pause.
func TestAddOnAFullNodeFailsAtOnce(t *testing.T) {
	full := rpcerr.New(codes.ResourceExhausted, ipledgerv1.Reason_NODE_AT_LIMIT, "node-1 (t3.nano) holds 4 pod addresses", nil)
	sup := &scriptedSupplier{answer: func(int, uint32) error { return full }}
	e := start(t, nodePool(1, nil, nil), func(c *Config) {
		c.Supplier = sup
		c.AddWait = time.Minute
		c.SupplyRetry = time.Minute
	})
	for _, cid := range []string{"c1", "c2"} {
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		_, err := e.client.Add(ctx, add(cid))
		cancel()
		wantReason(t, err, codes.ResourceExhausted, ipledgerv1.Reason_NODE_AT_LIMIT, "")
		if msg := status.Convert(err).Message(); !strings.Contains(msg, "instance type allows") || !strings.Contains(msg, "t3.nano") {
			t.Fatalf("%s: message %q does not say the node is full", cid, msg)
		}
	}
	sup.mu.Lock()
	n := len(sup.counts)
	sup.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d requests for addresses, want 1 (the answer holds for the retry pause)", n)
	}
}
