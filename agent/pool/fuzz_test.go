package pool

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// sealData wraps data as a checkpoint file with a valid checksum, so the fuzzer reaches the
// decoding of the data instead of stopping at the checksum.
func sealData(data []byte) []byte {
	var compact bytes.Buffer
	if json.Compact(&compact, data) != nil {
		return data // not JSON: the file is what the fuzzer wrote
	}
	sum := sha256.Sum256(compact.Bytes())
	b, _ := json.Marshal(envelope{Format: checkpointFormat, SHA256: hex.EncodeToString(sum[:]), Data: compact.Bytes()})
	return b
}

// FuzzCheckpoint feeds the agent's checkpoint loader arbitrary data (with a valid checksum, as
// a buggy earlier version could have written): it never panics, refuses with
// ErrCorruptCheckpoint or ErrWrongIdentity, and what it loads it writes back so that loading
// that again gives the same pool and assignments.
func FuzzCheckpoint(f *testing.F) {
	// A real checkpoint: a pool with addresses, one pod, one lock.
	dir := f.TempDir()
	p, err := Open(Config{CheckpointPath: filepath.Join(dir, "cp.json"), NodeName: "node-a", InstanceID: "i-1"})
	if err != nil {
		f.Fatal(err)
	}
	np := &ipledgerv1.NodePool{NodeName: "node-a", InstanceId: "i-1", Generation: 3, Mode: ipledgerv1.AddressMode_ADDRESS_MODE_SECONDARY_IP,
		Interfaces: []*ipledgerv1.NetworkInterface{{EniId: "eni-0", MacAddress: "02:00:00:00:00:01", SubnetCidr: "10.0.0.0/16", PrimaryIp: "10.0.0.10",
			Addresses: []*ipledgerv1.PoolAddress{
				{Ip: "10.0.0.11", State: ipledgerv1.LeaseState_LEASE_STATE_ACTIVE},
				{Ip: "10.0.0.12", State: ipledgerv1.LeaseState_LEASE_STATE_ACTIVE},
				{Ip: "10.0.0.13", State: ipledgerv1.LeaseState_LEASE_STATE_RELEASE_PROPOSED},
			}}}}
	if _, err := p.Apply(np, false); err != nil {
		f.Fatal(err)
	}
	if _, _, err := p.Assign(Key{ContainerID: "c1", IfName: "eth0"}, PodInfo{Namespace: "ns", Name: "pod"}); err != nil {
		f.Fatal(err)
	}
	if _, err := p.Answer(&ipledgerv1.ReleaseProposal{ProposalId: "rp-1", Addresses: []string{"10.0.0.13"}}); err != nil {
		f.Fatal(err)
	}
	if err := p.Close(); err != nil { // the snapshot holds it all
		f.Fatal(err)
	}
	raw, err := os.ReadFile(p.Path())
	if err != nil {
		f.Fatal(err)
	}
	var env envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(env.Data))
	f.Add([]byte(`{"generation":0,"assignments":[],"locks":[],"released":[]}`))
	f.Add([]byte(`{"node_name":"other","generation":1}`))
	f.Add([]byte(`{"generation":1,"assignments":[{"container_id":"c","ifname":"eth0","ip":"10.0.0.1"},{"container_id":"d","ifname":"eth0","ip":"10.0.0.1"}]}`))
	f.Add([]byte(`{"generation":2,"pool":{"generation":"2","interfaces":[{"eniId":"eni-1","addresses":[{"ip":"10.0.0.1"},{"ip":"10.0.0.1"}]}]}}`))
	f.Add([]byte(`{"locks":[{"item":""}]}`))
	f.Add([]byte(`{"generation":1,"assignments":[{"container_id":"","ifname":"","ip":"10.0.0.1","recovered":true},{"container_id":"","ifname":"","ip":"10.0.0.2","recovered":true}]}`))
	f.Add([]byte(`not json`))

	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "cp.json")
		if err := os.WriteFile(path, sealData(data), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := Config{CheckpointPath: path, NodeName: "node-a", InstanceID: "i-1", Now: func() time.Time { return time.Unix(1e9, 0) }}
		p, err := Open(cfg)
		if err != nil {
			if !errors.Is(err, ErrCorruptCheckpoint) {
				t.Fatalf("Open: %v, want ErrCorruptCheckpoint", err)
			}
			return
		}
		// Write back what was loaded, load it again: the same pool and pods.
		p.mu.Lock()
		out, err := p.encodeLocked(0)
		p.mu.Unlock()
		if err != nil {
			t.Fatalf("encode what was loaded: %v", err)
		}
		path2 := filepath.Join(dir, "cp2.json")
		if err := os.WriteFile(path2, out, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.CheckpointPath = path2
		q, err := Open(cfg)
		if err != nil {
			t.Fatalf("the checkpoint the agent wrote does not load: %v\n%s", err, out)
		}
		if p.Generation() != q.Generation() || !slices.EqualFunc(p.Assignments(), q.Assignments(), func(a, b Assignment) bool {
			return a.Key == b.Key && a.IP == b.IP && a.Pod == b.Pod && a.Recovered == b.Recovered
		}) || p.Counts() != q.Counts() {
			t.Fatalf("round trip changed the pool: %+v/%v vs %+v/%v", p.Counts(), p.Assignments(), q.Counts(), q.Assignments())
		}
	})
}
