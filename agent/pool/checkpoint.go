package pool

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ipledger/ipledger/internal/atomicfile"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// checkpointFormat is the version of the snapshot's format. JSON field names are part of it:
// add fields, never rename them. Format 1 (before the journal) is still read, and migrated to
// the current format when Open finds it; format 2 adds journal_seq, so that an older agent
// refuses a snapshot whose journal it would not read instead of serving without it.
const (
	checkpointFormat       = 2
	checkpointFormatLegacy = 1
)

// envelope is the checkpoint file: the data and a checksum over its compact JSON, so a torn or
// edited file is recognised instead of trusted.
type envelope struct {
	Format int             `json:"format"`
	SHA256 string          `json:"sha256"`
	Data   json.RawMessage `json:"data"`
}

type cpData struct {
	NodeName   string          `json:"node_name,omitempty"`
	InstanceID string          `json:"instance_id,omitempty"`
	SavedAt    time.Time       `json:"saved_at"`
	Generation uint64          `json:"generation"`
	Pool       json.RawMessage `json:"pool,omitempty"` // protojson of the applied NodePool
	AddsTotal  uint64          `json:"adds_total"`
	// JournalSeq: the snapshot holds every journal record up to this one (format 2).
	JournalSeq  uint64         `json:"journal_seq,omitempty"`
	Assignments []cpAssignment `json:"assignments"`
	Locks       []cpLock       `json:"locks"`
	Released    []cpReleased   `json:"released"`
}

type cpAssignment struct {
	ContainerID  string     `json:"container_id"`
	IfName       string     `json:"ifname"`
	IP           netip.Addr `json:"ip"`
	PodNamespace string     `json:"pod_namespace,omitempty"`
	PodName      string     `json:"pod_name,omitempty"`
	PodUID       string     `json:"pod_uid,omitempty"`
	AssignedAt   time.Time  `json:"assigned_at"`
	Leased       bool       `json:"leased"`
	ENIID        string     `json:"eni_id"`
	ENIMAC       string     `json:"eni_mac,omitempty"`
	DeviceIndex  uint32     `json:"device_index"`
	SubnetID     string     `json:"subnet_id,omitempty"`
	SubnetCIDR   string     `json:"subnet_cidr,omitempty"`
	ENIPrimaryIP string     `json:"eni_primary_ip,omitempty"`
	// Recovered: held for a pod the kernel showed, attachment unknown (ContainerID, IfName "").
	Recovered bool `json:"recovered,omitempty"`
}

type cpLock struct {
	Item       string    `json:"item"`
	ProposalID string    `json:"proposal_id"`
	Generation uint64    `json:"generation"`
	LockedAt   time.Time `json:"locked_at"`
}

type cpReleased struct {
	IP         netip.Addr `json:"ip"`
	ReleasedAt time.Time  `json:"released_at"`
	CoolUntil  time.Time  `json:"cool_until,omitzero"`
}

// Path returns the checkpoint's snapshot file (its journal files are beside it).
func (p *Pool) Path() string { return p.cfg.CheckpointPath }

// encodeLocked returns the snapshot file of the pool's state, holding the journal up to seq.
func (p *Pool) encodeLocked(seq uint64) ([]byte, error) {
	data, err := p.encodeDataLocked(seq)
	if err != nil {
		return nil, err
	}
	return seal(data), nil
}

// encodeDataLocked returns the pool's whole state as compact JSON (cpData), for a snapshot or
// a full journal record. The parts that rarely change (the pool, each assignment) are encoded
// once and spliced in.
func (p *Pool) encodeDataLocked(seq uint64) ([]byte, error) {
	head, err := json.Marshal(cpData{
		NodeName:   p.cfg.NodeName,
		InstanceID: p.cfg.InstanceID,
		SavedAt:    p.cfg.Now().UTC(),
		Generation: p.generation,
		AddsTotal:  p.addsTotal,
		JournalSeq: seq,
	})
	if err != nil {
		return nil, err
	}
	// head ends with `,"assignments":null,"locks":null,"released":null}`; cut at the first list.
	cut := bytes.Index(head, []byte(`,"assignments":`))
	if cut < 0 {
		return nil, errors.New("unexpected checkpoint header")
	}
	var b bytes.Buffer
	b.Grow(len(p.npJSON) + 256*len(p.byKey) + 1024)
	b.Write(head[:cut])
	if p.npJSON != nil {
		b.WriteString(`,"pool":`)
		b.Write(p.npJSON)
	}
	b.WriteString(`,"assignments":[`)
	for i, s := range p.heldLocked() {
		j, err := s.assignmentJSON()
		if err != nil {
			return nil, err
		}
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(j)
	}
	b.WriteString(`],"locks":`)
	locks := make([]cpLock, 0, len(p.locks))
	for item, l := range p.locks {
		locks = append(locks, cpLock{Item: item, ProposalID: l.proposalID, Generation: l.generation, LockedAt: l.lockedAt.UTC()})
	}
	slices.SortFunc(locks, func(a, b cpLock) int { return strings.Compare(a.Item, b.Item) })
	if err := appendJSON(&b, locks); err != nil {
		return nil, err
	}
	// Only addresses still cooling: how long ago older ones were given back is not worth the bytes.
	now := p.cfg.Now()
	released := []cpReleased{}
	for _, s := range p.order {
		if s.holder == nil && now.Before(s.coolUntil) {
			released = append(released, cpReleased{IP: s.ip, ReleasedAt: s.releasedAt.UTC(), CoolUntil: s.coolUntil.UTC()})
		}
	}
	b.WriteString(`,"released":`)
	if err := appendJSON(&b, released); err != nil {
		return nil, err
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// assignmentJSON is the checkpoint entry of the slot's holder, encoded once.
func (s *slot) assignmentJSON() ([]byte, error) {
	if s.cpJSON == nil {
		var err error
		if s.cpJSON, err = json.Marshal(cpAssignment{
			ContainerID: s.holder.key.ContainerID, IfName: s.holder.key.IfName, IP: s.ip,
			PodNamespace: s.holder.pod.Namespace, PodName: s.holder.pod.Name, PodUID: s.holder.pod.UID,
			AssignedAt: s.holder.assignedAt.UTC(), Leased: s.leased,
			ENIID: s.eni.ID, ENIMAC: s.eni.MAC, DeviceIndex: s.eni.DeviceIndex, SubnetID: s.eni.SubnetID,
			SubnetCIDR: s.eni.SubnetCIDR, ENIPrimaryIP: s.eni.PrimaryIP, Recovered: s.holder.recovered,
		}); err != nil {
			return nil, err
		}
	}
	return s.cpJSON, nil
}

func appendJSON(b *bytes.Buffer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	b.Write(data)
	return nil
}

// seal wraps compact JSON data in the envelope with its checksum.
func seal(data []byte) []byte {
	sum := sha256.Sum256(data)
	out := make([]byte, 0, len(data)+128)
	out = fmt.Appendf(out, `{"format":%d,"sha256":"%s","data":`, checkpointFormat, hex.EncodeToString(sum[:]))
	out = append(out, data...)
	return append(out, '}')
}

// compactProtoJSON encodes np as compact JSON (protojson varies its whitespace on purpose).
func compactProtoJSON(np *ipledgerv1.NodePool) ([]byte, error) {
	raw, err := protojson.Marshal(np)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// parseSnapshot checks a snapshot file (envelope, format, checksum) and returns its data and
// format.
func parseSnapshot(raw []byte) (cpData, int, error) {
	var env envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		return cpData{}, 0, fmt.Errorf("not JSON: %w", err)
	}
	if env.Format != checkpointFormat && env.Format != checkpointFormatLegacy {
		return cpData{}, 0, fmt.Errorf("format %d, want %d (or %d, migrated)", env.Format, checkpointFormat, checkpointFormatLegacy)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, env.Data); err != nil {
		return cpData{}, 0, fmt.Errorf("data: %w", err)
	}
	sum := sha256.Sum256(compact.Bytes())
	if hex.EncodeToString(sum[:]) != env.SHA256 {
		return cpData{}, 0, errors.New("checksum mismatch")
	}
	d, err := parseData(compact.Bytes())
	if err != nil {
		return cpData{}, 0, fmt.Errorf("data: %w", err)
	}
	if env.Format == checkpointFormatLegacy && d.JournalSeq != 0 {
		return cpData{}, 0, errors.New("data: journal_seq in a format 1 checkpoint")
	}
	return d, env.Format, nil
}

// parseData decodes the pool's state (cpData), refusing fields it does not know.
func parseData(raw []byte) (cpData, error) {
	var d cpData
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return cpData{}, err
	}
	if dec.More() {
		return cpData{}, errors.New("data after the object")
	}
	return d, nil
}

// install checks the state d (a snapshot with its journal replayed) and puts it into the empty
// pool.
func (p *Pool) install(d cpData) error {
	if p.cfg.NodeName != "" && d.NodeName != "" && d.NodeName != p.cfg.NodeName {
		return fmt.Errorf("%w: checkpoint of node %q, this is node %q", ErrWrongIdentity, d.NodeName, p.cfg.NodeName)
	}
	if p.cfg.InstanceID != "" && d.InstanceID != "" && d.InstanceID != p.cfg.InstanceID {
		return fmt.Errorf("%w: checkpoint of instance %q, this is instance %q", ErrWrongIdentity, d.InstanceID, p.cfg.InstanceID)
	}
	var built []*slot
	var np *ipledgerv1.NodePool
	if len(d.Pool) > 0 {
		np = &ipledgerv1.NodePool{}
		if err := protojson.Unmarshal(d.Pool, np); err != nil {
			return fmt.Errorf("pool: %w", err)
		}
		var err error
		if built, err = p.buildSlots(np); err != nil {
			return err
		}
		if np.GetGeneration() != d.Generation {
			return fmt.Errorf("generation %d but pool generation %d", d.Generation, np.GetGeneration())
		}
	}
	slots := make(map[netip.Addr]*slot, len(built))
	for _, s := range built {
		slots[s.ip] = s
	}
	byKey := map[Key]*slot{}
	recovered := map[netip.Addr]*slot{}
	for _, a := range d.Assignments {
		key := Key{ContainerID: a.ContainerID, IfName: a.IfName}
		switch {
		case !a.IP.Is4():
			return fmt.Errorf("assignment %q/%q %v: not an IPv4 address", a.ContainerID, a.IfName, a.IP)
		case a.Recovered && key != (Key{}):
			return fmt.Errorf("recovered assignment of %v names attachment %s", a.IP, key)
		case !a.Recovered && (key.ContainerID == "" || key.IfName == ""):
			return fmt.Errorf("assignment %q/%q %v: incomplete", a.ContainerID, a.IfName, a.IP)
		}
		if _, dup := byKey[key]; dup && !a.Recovered {
			return fmt.Errorf("attachment %s assigned twice", key)
		}
		h := &assignment{key: key, pod: PodInfo{Namespace: a.PodNamespace, Name: a.PodName, UID: a.PodUID},
			assignedAt: a.AssignedAt, recovered: a.Recovered}
		s, ok := slots[a.IP]
		if !ok {
			s = &slot{ip: a.IP, item: a.IP.String(), eni: ENI{ID: a.ENIID, MAC: a.ENIMAC, DeviceIndex: a.DeviceIndex,
				SubnetID: a.SubnetID, SubnetCIDR: a.SubnetCIDR, PrimaryIP: a.ENIPrimaryIP}}
			slots[a.IP] = s
		}
		if s.holder != nil {
			return fmt.Errorf("address %s assigned twice (%s and %s)", a.IP, holderName(s.holder), holderName(h))
		}
		s.holder = h
		if h.recovered {
			recovered[a.IP] = s
		} else {
			byKey[key] = s
		}
	}
	for _, r := range d.Released {
		if s, ok := slots[r.IP]; ok && s.leased && s.holder == nil {
			s.releasedAt = r.ReleasedAt
			s.coolUntil = r.CoolUntil
		}
	}
	locks := map[string]lock{}
	for _, l := range d.Locks {
		if l.Item == "" {
			return errors.New("lock without item")
		}
		locks[l.Item] = lock{proposalID: l.ProposalID, generation: l.Generation, lockedAt: l.LockedAt}
	}

	p.np = np
	if len(d.Pool) > 0 {
		var b bytes.Buffer
		if err := json.Compact(&b, d.Pool); err != nil {
			return fmt.Errorf("pool: %w", err)
		}
		p.npJSON = b.Bytes()
	}
	p.generation = d.Generation
	p.slots = slots
	p.order = built
	p.byKey = byKey
	p.recovered = recovered
	p.locks = locks
	p.addsTotal = d.AddsTotal
	p.recountLocked()
	for _, s := range slots {
		if s.holder != nil && !s.leased {
			p.log.Error("checkpointed assignment is not in the checkpointed pool; keeping it for the pod",
				"ip", s.ip, "container", s.holder.key.ContainerID, "ifname", s.holder.key.IfName, "recovered", s.holder.recovered)
		}
	}
	return nil
}

// writeFileAtomic replaces path with data (written here rather than with internal/atomicfile
// because every step is a crash point the crash tests inject, through disk.step): a temp file in the same directory, fsync, rename
// over path, fsync of the directory. A crash at any point leaves either the old or the new file.
func (d disk) writeFileAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	if err := d.step(stepSnapshotCreate, path); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if err = d.step(stepSnapshotWrite, tmp); err != nil {
		_ = f.Close()
		return err
	}
	if _, err = f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err = d.syncFile(f, stepSnapshotSync); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = d.step(stepSnapshotRename, path); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return d.syncDir(dir)
}

// removeTemps deletes temp files left by writes that crashed before their rename: atomicfile's,
// and "<name>.tmp-*" of agents before it.
func removeTemps(path string) {
	atomicfile.RemoveTemps(path)
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(path), filepath.Base(path)+".tmp-*"))
	for _, m := range matches {
		_ = os.Remove(m)
	}
}

func cloneNodePool(np *ipledgerv1.NodePool) *ipledgerv1.NodePool {
	return proto.Clone(np).(*ipledgerv1.NodePool)
}
