package pool

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// sealData wraps data as a checkpoint file with a valid checksum, so the fuzzer reaches the
// decoding of the data instead of stopping at the checksum. Data of odd length is sealed in the
// format before the journal (which Open migrates).
func sealData(data []byte) []byte {
	var compact bytes.Buffer
	if json.Compact(&compact, data) != nil {
		return data // not JSON: the file is what the fuzzer wrote
	}
	format := checkpointFormat
	if len(data)%2 == 1 {
		format = checkpointFormatLegacy
	}
	sum := sha256.Sum256(compact.Bytes())
	b, _ := json.Marshal(envelope{Format: format, SHA256: hex.EncodeToString(sum[:]), Data: compact.Bytes()})
	return b
}

// FuzzCheckpoint feeds the agent's checkpoint loader arbitrary data (with a valid checksum, as
// a buggy earlier version could have written): it never panics, refuses with
// ErrCorruptCheckpoint or ErrWrongIdentity, and what it loads it writes back so that loading
// that again gives the same pool and assignments. Then the loaded pool journals a few changes
// beside that snapshot, the journal is cut and one of its bytes changed where the input says
// (a torn or garbled tail), and it must load to the state after its last whole record.
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
		fuzzJournalTail(t, p, data)
	})
}

// fuzzJournalTail journals changes of p (loaded from a snapshot), then tears and garbles the
// journal as data says and checks it loads to the state of its last whole record.
func fuzzJournalTail(t *testing.T, p *Pool, data []byte) {
	seq := func() uint64 {
		p.persistMu.Lock()
		defer p.persistMu.Unlock()
		return p.lastSeq
	}
	states := []string{poolState(t, p)}
	ops := []func() error{
		func() error { _, err := p.Recover(ips("10.255.255.1")); return err },
		func() error {
			_, _, err := p.Assign(Key{ContainerID: "fz-0", IfName: "eth0"}, PodInfo{Name: "fz"})
			return err
		},
		func() error { _, _, err := p.Assign(Key{ContainerID: "fz-1", IfName: "eth0"}, PodInfo{}); return err },
		func() error { _, _, err := p.Release(Key{ContainerID: "fz-0", IfName: "eth0"}); return err },
		func() error { _, err := p.ReleaseRecovered(ips("10.255.255.1")); return err },
		func() error { _, err := p.Recover(ips("10.255.255.2")); return err },
	}
	for i, op := range ops {
		before := seq()
		if err := op(); err != nil && !errors.Is(err, ErrNoFreeAddress) {
			t.Fatalf("op %d on the loaded pool: %v", i, err)
		}
		if seq() != before {
			states = append(states, poolState(t, p))
		}
	}
	journals, err := listJournals(p.Path())
	if err != nil || len(journals) != 1 {
		t.Fatalf("journal files %v %v, want the one of these changes", journals, err)
	}
	raw, err := os.ReadFile(journals[0])
	if err != nil {
		t.Fatal(err)
	}
	snapshot, err := os.ReadFile(p.Path())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	ends := []int{len(journalMagic)}
	for off := len(journalMagic); off < len(raw); {
		off += 8 + int(binary.LittleEndian.Uint32(raw[off:]))
		ends = append(ends, off)
	}
	if len(ends) != len(states) {
		t.Fatalf("%d records for %d changes", len(ends)-1, len(states)-1)
	}
	h := crc32.ChecksumIEEE(data)
	cut := int(h % uint32(len(raw)+1))
	torn := slices.Clone(raw[:cut])
	whole := 0 // records ending at or before the cut, and before the garbled byte
	for i, e := range ends {
		if e <= cut && i > 0 {
			whole = i
		}
	}
	if len(data) > 0 && data[0]%2 == 0 && cut > len(journalMagic) {
		g := len(journalMagic) + int(h>>8)%(cut-len(journalMagic))
		torn[g] ^= 1 << (h % 8)
		for i := 1; i < len(ends); i++ {
			if ends[i] > g {
				whole = min(whole, i-1)
				break
			}
		}
	}
	dir := t.TempDir()
	path := filepath.Join(dir, filepath.Base(p.Path()))
	if snapshot != nil {
		if err := os.WriteFile(path, snapshot, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(journals[0])), torn, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := p.cfg
	cfg.CheckpointPath = path
	q, err := Open(cfg)
	if err != nil {
		t.Fatalf("journal of %d bytes cut at %d: %v", len(raw), cut, err)
	}
	if got := poolState(t, q); got != states[whole] {
		t.Fatalf("journal of %d bytes cut at %d (records end at %v): not the state of its first %d records:\ngot  %s\nwant %s",
			len(raw), cut, ends, whole, got, states[whole])
	}
}

// journalFrom makes a journal file of data: each line a record's payload (framed, with its
// checksum), a last line without a newline appended as it is (a torn tail).
func journalFrom(data []byte) []byte {
	out := []byte(journalMagic)
	for len(data) > 0 {
		line, rest, ok := bytes.Cut(data, []byte("\n"))
		if !ok {
			return append(out, data...)
		}
		if len(line) > 0 {
			rec := append(make([]byte, 8, 8+len(line)), line...)
			putFrame(rec)
			out = append(out, rec...)
		}
		data = rest
	}
	return out
}

// FuzzJournal feeds the loader a snapshot and a journal of arbitrary records (each with a valid
// checksum, as a buggy earlier version could have written, and any torn tail): it never panics,
// refuses only with ErrCorruptCheckpoint, and what it loads it compacts and loads again to the
// same pool, which goes on journaling.
func FuzzJournal(f *testing.F) {
	// A real journal: every kind of record.
	dir := f.TempDir()
	clock := newClock()
	p, err := Open(Config{CheckpointPath: filepath.Join(dir, "cp.json"), NodeName: "node-a", InstanceID: "i-1", Now: clock.Now, NoFsync: true})
	if err != nil {
		f.Fatal(err)
	}
	var seedErr error
	for _, op := range crashWorkload() {
		if err := op.do(p, clock); err != nil {
			seedErr = err
		}
	}
	if seedErr != nil {
		f.Fatal(seedErr)
	}
	journals, err := listJournals(p.Path())
	if err != nil || len(journals) != 1 {
		f.Fatalf("journal files %v %v", journals, err)
	}
	raw, err := os.ReadFile(journals[0])
	if err != nil {
		f.Fatal(err)
	}
	var lines []byte
	for off := len(journalMagic); off < len(raw); {
		n := int(binary.LittleEndian.Uint32(raw[off:]))
		lines = append(append(lines, raw[off+8:off+8+n]...), '\n')
		off += 8 + n
	}
	f.Add(lines)
	f.Add(lines[:len(lines)-7]) // torn
	f.Add([]byte(`{"seq":1,"set":[{"container_id":"a","ifname":"eth0","ip":"10.0.0.11","assigned_at":"2025-01-01T00:00:00Z","leased":false,"eni_id":""}]}` + "\n" +
		`{"seq":2,"set":[{"container_id":"a","ifname":"eth0","ip":"10.0.0.12","assigned_at":"2025-01-01T00:00:00Z","leased":false,"eni_id":""}]}` + "\n"))
	f.Add([]byte(`{"seq":1,"free":[{"ip":"10.0.0.11","released_at":"2025-01-01T00:00:00Z","cool_until":"2025-01-01T00:00:30Z"}],"lock":[{"item":"10.0.0.12","proposal_id":"p","generation":1,"locked_at":"2025-01-01T00:00:00Z"}],"unlock":["10.0.0.13"]}` + "\n"))
	f.Add([]byte(`{"seq":3,"full":{"generation":0,"saved_at":"2025-01-01T00:00:00Z","adds_total":0,"assignments":[],"locks":[],"released":[]}}` + "\n" + `{"seq":9}` + "\n"))
	f.Add([]byte(`{"seq":1,"full":{"node_name":"other"}}` + "\n"))
	f.Add([]byte(`{"seq":1,"full":{},"set":[]}` + "\n"))
	f.Add([]byte("\x00\x00\x00\x00garbage"))

	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, "cp.json")
		if err := os.WriteFile(journalName(path, 1), journalFrom(data), 0o600); err != nil {
			t.Fatal(err)
		}
		clock := newClock()
		cfg := Config{CheckpointPath: path, NodeName: "node-a", InstanceID: "i-1", Now: clock.Now, NoFsync: true}
		p, err := Open(cfg)
		if err != nil {
			if !errors.Is(err, ErrCorruptCheckpoint) {
				t.Fatalf("Open: %v, want ErrCorruptCheckpoint", err)
			}
			return
		}
		want := poolState(t, p)
		if err := p.Close(); err != nil { // a snapshot of what was loaded
			t.Fatalf("close: %v", err)
		}
		q, err := Open(cfg)
		if err != nil {
			t.Fatalf("the snapshot of what was loaded does not load: %v", err)
		}
		if got := poolState(t, q); got != want {
			t.Fatalf("compaction changed the pool:\n%s\n%s", want, got)
		}
		if _, _, err := q.Assign(Key{ContainerID: "fz", IfName: "eth0"}, PodInfo{}); err != nil && !errors.Is(err, ErrNoFreeAddress) {
			t.Fatalf("assign: %v", err)
		}
		want = poolState(t, q)
		r, err := Open(cfg)
		if err != nil {
			t.Fatalf("reopen after an ADD: %v", err)
		}
		if got := poolState(t, r); got != want {
			t.Fatalf("journal after compaction:\n%s\n%s", want, got)
		}
	})
}
