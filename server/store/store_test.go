package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ledger"
	"github.com/ipledger/ipledger/server/store"
)

func TestConfigValidate(t *testing.T) {
	good := store.Config{Endpoints: []string{"127.0.0.1:2379", "https://etcd-0.etcd:2379"}, ClusterName: "prod"}
	tests := []struct {
		name   string
		mutate func(*store.Config)
		want   string // substring of the error naming the setting; "" for valid
	}{
		{"valid", func(*store.Config) {}, ""},
		{"ttl 3s", func(c *store.Config) { c.SessionTTL = 3 * time.Second }, ""},
		{"no endpoints", func(c *store.Config) { c.Endpoints = nil }, "etcd endpoints"},
		{"bad endpoint", func(c *store.Config) { c.Endpoints = []string{"etcd"} }, `etcd endpoint "etcd"`},
		{"bad scheme", func(c *store.Config) { c.Endpoints = []string{"ftp://x:1"} }, "scheme"},
		{"no cluster", func(c *store.Config) { c.ClusterName = "" }, "cluster name"},
		{"cluster not a label", func(c *store.Config) { c.ClusterName = "Prod_1" }, "DNS-1123"},
		{"negative dial timeout", func(c *store.Config) { c.DialTimeout = -time.Second }, "dial timeout"},
		{"ttl too short", func(c *store.Config) { c.SessionTTL = 500 * time.Millisecond }, "session TTL"},
		{"ttl fractional", func(c *store.Config) { c.SessionTTL = 1500 * time.Millisecond }, "whole number of seconds"},
		{"password without user", func(c *store.Config) { c.Password = "x" }, "password"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mutate(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, store.ErrInvalid) || !bytes.Contains([]byte(err.Error()), []byte(tt.want)) {
				t.Fatalf("Validate() = %v, want ErrInvalid mentioning %q", err, tt.want)
			}
		})
	}
}

func TestOpenRefusesInvalidConfig(t *testing.T) {
	_, err := store.Open(t.Context(), store.Config{Endpoints: []string{"127.0.0.1:1"}, ClusterName: "Bad Name"})
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("Open with bad cluster name = %v, want ErrInvalid", err)
	}
}

func sampleRecords() (ledger.NodeRecord, ledger.SubnetRecord, *ipledgerv1.NodePolicy, ledger.PrewarmRecord) {
	at := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	node := ledger.NodeRecord{
		Name: "ip-10-0-1-7.ec2.internal", InstanceID: "i-0123", InstanceType: "m5.large",
		AvailabilityZone: "eu-west-1a", SubnetID: "subnet-a", PrimaryENI: "eni-1",
		PrimaryIP: netip.MustParseAddr("10.0.1.7"), Labels: map[string]string{"pool": "web", "a": "b"},
		Policy: "default", Mode: ledger.ModeSecondaryIP, RegisteredAt: at,
		ENIs: []ledger.ENIRecord{{
			ID: "eni-1", MAC: "02:00:00:00:00:01", SubnetID: "subnet-a", PrimaryIP: netip.MustParseAddr("10.0.1.7"),
			Addresses: []ledger.LeasedAddress{
				{IP: netip.MustParseAddr("10.0.1.8"), State: ledger.LeaseActive},
				{IP: netip.MustParseAddr("10.0.1.9"), State: ledger.LeaseReleasing},
			},
		}},
		Proposal: &ledger.ReleaseProposal{ID: "r1", ProposedAt: at, Items: []string{"10.0.1.9"}},
	}
	subnet := ledger.SubnetRecord{
		ID: "subnet-a", CIDR: netip.MustParsePrefix("10.0.1.0/24"), AvailabilityZone: "eu-west-1a",
		VPCID: "vpc-1", Tags: map[string]string{"kubernetes.io/role/cni": "1"}, MaxHeld: 100,
		Foreign:          []ledger.AddrRange{{First: netip.MustParseAddr("10.0.1.200"), Last: netip.MustParseAddr("10.0.1.210")}},
		ForeignScannedAt: at,
	}
	warm := uint32(3)
	policy := &ipledgerv1.NodePolicy{
		Name: "default", Order: 10, Mode: ipledgerv1.AddressMode(1), WarmIpTarget: &warm,
		Selector: &ipledgerv1.NodeSelector{Labels: map[string]string{"pool": "web", "zone": "a", "b": "c"}},
	}
	prewarm := ledger.PrewarmRecord{
		ID: "pw-1", SubnetID: "subnet-a", AvailabilityZone: "eu-west-1a", InstanceType: "m5.large",
		NodeCount: 2, AddressesPerNode: 8, CreatedAt: at, ExpiresAt: at.Add(time.Hour), State: ledger.PrewarmPending,
		ENIs: []ledger.PrewarmENI{{State: ledger.PrewarmENICreating, ClientToken: "tok-1"}},
	}
	return node, subnet, policy, prewarm
}

func TestCommitLoadRoundTrip(t *testing.T) {
	s := openStore(t, sharedEndpoints(t), "roundtrip", 0)
	l := campaign(t, s, addr(1))
	node, subnet, policy, prewarm := sampleRecords()

	rev, err := l.Commit(ctxTimeout(t, 5*time.Second), store.PutNode(node), store.PutSubnet(subnet), store.PutPolicy(policy), store.PutPrewarm(prewarm))
	if err != nil {
		t.Fatalf("commit: %v", err)
	}
	st, err := s.Load(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if st.Revision < rev {
		t.Errorf("load revision %d, before the commit's %d", st.Revision, rev)
	}
	if got := st.Nodes[node.Name]; !reflect.DeepEqual(got, node) || len(st.Nodes) != 1 {
		t.Errorf("nodes = %+v, want only %+v", st.Nodes, node)
	}
	if got := st.Subnets[subnet.ID]; !reflect.DeepEqual(got, subnet) || len(st.Subnets) != 1 {
		t.Errorf("subnets = %+v, want only %+v", st.Subnets, subnet)
	}
	if got := st.Policies[policy.Name]; !proto.Equal(got, policy) || len(st.Policies) != 1 {
		t.Errorf("policies = %v, want only %v", st.Policies, policy)
	}
	if got := st.Prewarms[prewarm.ID]; !reflect.DeepEqual(got, prewarm) || len(st.Prewarms) != 1 {
		t.Errorf("prewarms = %+v, want only %+v", st.Prewarms, prewarm)
	}

	// The values are plain JSON at the documented keys, byte-stable across writes.
	get := func(key string) []byte {
		t.Helper()
		resp, err := s.Client().Get(ctxTimeout(t, 5*time.Second), key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %s: %v, %d kvs", key, err, len(resp.Kvs))
		}
		return resp.Kvs[0].Value
	}
	wantNode, _ := json.Marshal(node)
	if got := get("/ipledger/" + runCluster(t, "roundtrip") + "/nodes/ip-10-0-1-7.ec2.internal"); !bytes.Equal(got, wantNode) {
		t.Errorf("node value %s, want %s", got, wantNode)
	}
	wantSubnet, _ := json.Marshal(subnet)
	if got := get("/ipledger/" + runCluster(t, "roundtrip") + "/subnets/subnet-a"); !bytes.Equal(got, wantSubnet) {
		t.Errorf("subnet value %s, want %s", got, wantSubnet)
	}
	wantPrewarm, _ := json.Marshal(prewarm)
	if got := get("/ipledger/" + runCluster(t, "roundtrip") + "/prewarm/pw-1"); !bytes.Equal(got, wantPrewarm) {
		t.Errorf("prewarm value %s, want %s", got, wantPrewarm)
	}
	policyJSON := get("/ipledger/" + runCluster(t, "roundtrip") + "/policies/default")
	if !json.Valid(policyJSON) || !bytes.Contains(policyJSON, []byte(`"warm_ip_target":3`)) {
		t.Errorf("policy value %s: want compact JSON with snake_case names", policyJSON)
	}
	for range 5 {
		if _, err := l.Commit(ctxTimeout(t, 5*time.Second), store.PutPolicy(policy)); err != nil {
			t.Fatalf("rewrite policy: %v", err)
		}
		if got := get("/ipledger/" + runCluster(t, "roundtrip") + "/policies/default"); !bytes.Equal(got, policyJSON) {
			t.Fatalf("policy value changed on rewrite: %s, then %s", policyJSON, got)
		}
	}

	// Deletes remove every record.
	if _, err := l.Commit(ctxTimeout(t, 5*time.Second), store.DeleteNode(node.Name), store.DeleteSubnet(subnet.ID),
		store.DeletePolicy(policy.Name), store.DeletePrewarm(prewarm.ID)); err != nil {
		t.Fatalf("commit deletes: %v", err)
	}
	st, err = s.Load(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatalf("load after deletes: %v", err)
	}
	if n := len(st.Nodes) + len(st.Subnets) + len(st.Policies) + len(st.Prewarms); n != 0 {
		t.Errorf("load after deletes: %d records left: %+v", n, st)
	}
}

func TestCommitRejectsBadOpsAndWritesNothing(t *testing.T) {
	s := openStore(t, sharedEndpoints(t), "badops", 0)
	l := campaign(t, s, addr(1))
	node, subnet, _, _ := sampleRecords()
	before, err := l.Commit(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatalf("empty commit (fence check): %v", err)
	}
	broken := node
	broken.InstanceID = ""
	tests := []struct {
		name string
		ops  []store.Op
	}{
		{"invalid node record", []store.Op{store.PutSubnet(subnet), store.PutNode(broken)}},
		{"same record twice", []store.Op{store.PutNode(node), store.DeleteNode(node.Name)}},
		{"zero op", []store.Op{store.PutSubnet(subnet), {}}},
		{"bad name", []store.Op{store.PutSubnet(subnet), store.DeletePolicy("a/b")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := l.Commit(ctxTimeout(t, 5*time.Second), tt.ops...); !errors.Is(err, store.ErrInvalid) {
				t.Fatalf("commit = %v, want ErrInvalid", err)
			}
		})
	}
	resp, err := s.Client().Get(ctxTimeout(t, 5*time.Second), s.Prefix(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Revision != before || resp.Count != 1 { // only the election key
		t.Fatalf("after rejected commits: revision %d (was %d), %d keys; want nothing written", resp.Header.Revision, before, resp.Count)
	}
}

func TestLoadAndWatchReportUnparseableValues(t *testing.T) {
	s := openStore(t, sharedEndpoints(t), "corrupt", 0)
	l := campaign(t, s, addr(1))
	node, _, _, _ := sampleRecords()
	rev, err := l.Commit(ctxTimeout(t, 5*time.Second), store.PutNode(node))
	if err != nil {
		t.Fatal(err)
	}
	// Someone writes garbage behind the store's back.
	if _, err := s.Client().Put(ctxTimeout(t, 5*time.Second), s.Prefix()+"subnets/subnet-x", "{not json"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctxTimeout(t, 5*time.Second)); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("load = %v, want ErrInvalid", err)
	}
	var applied []string
	err = s.Watch(ctxTimeout(t, 5*time.Second), rev-1, func(e store.Event) error {
		applied = append(applied, e.Name)
		return nil
	})
	if !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("watch = %v, want ErrInvalid", err)
	}
	if len(applied) != 1 || applied[0] != node.Name {
		t.Fatalf("applied %v before the bad value, want [%s]", applied, node.Name)
	}
	// A record whose name does not match its key is refused too.
	other := node
	other.Name = "somebody-else"
	b, _ := json.Marshal(other)
	if _, err := s.Client().Put(ctxTimeout(t, 5*time.Second), s.Prefix()+"subnets/subnet-x", `{"id":"subnet-x","cidr":"10.0.0.0/24"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Client().Put(ctxTimeout(t, 5*time.Second), s.Prefix()+"nodes/n2", string(b)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(ctxTimeout(t, 5*time.Second)); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("load with misnamed record = %v, want ErrInvalid", err)
	}
}

func TestLoadPaginates(t *testing.T) {
	s := openStore(t, sharedEndpoints(t), "paginate", 0)
	l := campaign(t, s, addr(1))
	node, _, _, _ := sampleRecords()
	const n = 600 // more than two pages
	var ops []store.Op
	for i := range n {
		rec := node
		rec.Name = fmt.Sprintf("node-%04d", i)
		ops = append(ops, store.PutNode(rec))
		if len(ops) == 100 {
			if _, err := l.Commit(ctxTimeout(t, 5*time.Second), ops...); err != nil {
				t.Fatal(err)
			}
			ops = nil
		}
	}
	st, err := s.Load(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != n {
		t.Fatalf("load returned %d nodes, want %d", len(st.Nodes), n)
	}
}

func TestWatchDeliversChangesInOrder(t *testing.T) {
	s := openStore(t, sharedEndpoints(t), "watch", 0)
	l := campaign(t, s, addr(1))
	node, subnet, policy, prewarm := sampleRecords()
	node2 := node
	node2.Name = "n2"

	start, err := l.Commit(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	type step struct {
		ops  []store.Op
		want []string // "type name put|del"
	}
	steps := []step{
		{[]store.Op{store.PutNode(node)}, []string{"node ip-10-0-1-7.ec2.internal put"}},
		{[]store.Op{store.PutSubnet(subnet), store.PutPolicy(policy)}, []string{"subnet subnet-a put", "policy default put"}},
		{[]store.Op{store.PutNode(node2), store.DeleteNode(node.Name), store.PutPrewarm(prewarm)},
			[]string{"node n2 put", "node ip-10-0-1-7.ec2.internal del", "prewarm pw-1 put"}},
		{[]store.Op{store.DeleteSubnet(subnet.ID)}, []string{"subnet subnet-a del"}},
	}
	var wantEvents []string
	var wantRevs []int64
	var last int64
	for _, st := range steps {
		rev, err := l.Commit(ctxTimeout(t, 5*time.Second), st.ops...)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range st.want {
			wantEvents = append(wantEvents, w)
			wantRevs = append(wantRevs, rev)
		}
		last = rev
	}

	// Watching from the revision before the first commit replays everything, in order, with the
	// records attached.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var got []string
	var revs []int64
	err = s.Watch(ctx, start, func(e store.Event) error {
		kind := "put"
		if e.Deleted {
			kind = "del"
			if e.Node != nil || e.Subnet != nil || e.Policy != nil || e.Prewarm != nil {
				t.Errorf("delete event %+v carries a record", e)
			}
		} else {
			switch e.Type {
			case store.RecordNode:
				if e.Node == nil || e.Node.Name != e.Name {
					t.Errorf("node event without its record: %+v", e)
				}
			case store.RecordSubnet:
				if e.Subnet == nil || !reflect.DeepEqual(*e.Subnet, subnet) {
					t.Errorf("subnet event %+v, want record %+v", e, subnet)
				}
			case store.RecordPolicy:
				if !proto.Equal(e.Policy, policy) {
					t.Errorf("policy event %v, want %v", e.Policy, policy)
				}
			case store.RecordPrewarm:
				if e.Prewarm == nil || !reflect.DeepEqual(*e.Prewarm, prewarm) {
					t.Errorf("prewarm event %+v", e)
				}
			}
		}
		got = append(got, string(e.Type)+" "+e.Name+" "+kind)
		revs = append(revs, e.Revision)
		if len(got) == len(wantEvents) {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("watch returned %v, want context.Canceled after the last event", err)
	}
	if !reflect.DeepEqual(got, wantEvents) || !reflect.DeepEqual(revs, wantRevs) {
		t.Fatalf("watch delivered\n %v at %v\nwant\n %v at %v", got, revs, wantEvents, wantRevs)
	}

	// WaitForRevision passes once a running watch has delivered the revision.
	wctx, wcancel := context.WithCancel(t.Context())
	watchDone := make(chan error, 1)
	var applied int
	go func() {
		watchDone <- s.Watch(wctx, start, func(store.Event) error { applied++; return nil })
	}()
	if err := s.WaitForRevision(ctxTimeout(t, 5*time.Second), last); err != nil {
		t.Fatalf("wait for revision %d: %v", last, err)
	}
	next, err := l.Commit(ctxTimeout(t, 5*time.Second), store.PutNode(node))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WaitForRevision(ctxTimeout(t, 5*time.Second), next); err != nil {
		t.Fatalf("wait for revision %d: %v", next, err)
	}
	wcancel()
	if err := <-watchDone; !errors.Is(err, context.Canceled) {
		t.Fatalf("watch ended with %v", err)
	}
	if applied != len(wantEvents)+1 {
		t.Fatalf("watch applied %d events by revision %d, want %d", applied, next, len(wantEvents)+1)
	}
	if err := s.WaitForRevision(ctxTimeout(t, 5*time.Second), next+1000); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("wait for a future revision = %v, want ErrInvalid", err)
	}

	// An error from apply ends the watch and is returned.
	boom := errors.New("boom")
	if err := s.Watch(ctxTimeout(t, 5*time.Second), start, func(store.Event) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("watch with failing apply = %v, want boom", err)
	}

	// After a compaction the history is gone.
	if _, err := s.Client().Compact(ctxTimeout(t, 5*time.Second), last); err != nil {
		t.Fatal(err)
	}
	err = s.Watch(ctxTimeout(t, 5*time.Second), start, func(store.Event) error { return nil })
	if !errors.Is(err, store.ErrCompacted) {
		t.Fatalf("watch from a compacted revision = %v, want ErrCompacted", err)
	}
	// Load still works, and watching from its revision does too.
	st, err := s.Load(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 2 || len(st.Subnets) != 0 || len(st.Policies) != 1 || len(st.Prewarms) != 1 {
		t.Fatalf("state after watch test: %+v", st)
	}
}
