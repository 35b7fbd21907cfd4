package pool

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The checkpoint on disk is a snapshot and a journal.
//
//   - The snapshot (Config.CheckpointPath) is the whole state (envelope, cpData), written by
//     compaction atomically: temp file, fsync, rename, fsync of the directory. It names the last
//     journal record it holds (journal_seq).
//   - The journal is one or more files beside it, <path>.journal-<first seq, 16 hex digits>: a
//     header line, then records. A record is one change of state, the entries that changed (an
//     address held or given back, a lock taken or dropped) or, after an Apply or a Restore, the
//     whole state: uint32 length, uint32 CRC-32C of the payload, payload (JSON, with a seq one
//     above the record before it). Every change is appended and fsynced before the call that
//     made it returns; callers that arrive while a record is being written wait and are written
//     together by the next one (group commit: one write and one fsync for all of them).
//   - When the journal has grown past a threshold, the writer takes a snapshot of the state
//     (under the pool's lock, in memory), starts a new journal file for the records after it and
//     hands the snapshot to a background compaction, which writes it and then removes the
//     journal files it holds. Assign and Release never wait for it.
//
// Open reads the snapshot, then the records of every journal file above its journal_seq, in
// order. A file ends at its first record that is not whole or whose checksum is wrong (a write
// torn by a crash: that record was never reported durable); a later record that does not follow
// the one before it, unless it holds the whole state, means lost records, and the checkpoint is
// refused. What Open read is fsynced before anything is appended after it, and appends always
// go to a new file, never after a torn tail.
//
// Crash safety: every state the files can be recovered to is one the pool was in (the snapshot
// is a state; each record brings the state to the pool's state when the record was taken), and
// at least as new as the last change reported durable. A record whose write failed is never
// followed in its file; the next record holds the whole state, in a new file.

const (
	journalMagic       = "ipledger-journal 1\n"
	journalMagicPrefix = "ipledger-journal "
	// maxRecord bounds a record's length (a garbled length must not allocate gigabytes).
	maxRecord = 64 << 20
	// compactMinBytes: the journal is compacted once it holds this much (or twice the size of
	// the last snapshot, when that is more).
	compactMinBytes = 1 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrClosed: the pool was closed; nothing more is written.
var ErrClosed = errors.New("pool: closed")

// Steps of the checkpoint's writes, each announced to Config.faults before it is taken (the
// tests crash the pool at each).
const (
	stepJournalCreate  = "journal.create"
	stepJournalWrite   = "journal.write"
	stepJournalSync    = "journal.sync"
	stepJournalRemove  = "journal.remove"
	stepDirSync        = "dir.sync"
	stepOpenSync       = "open.sync"
	stepSnapshotCreate = "snapshot.create"
	stepSnapshotWrite  = "snapshot.write"
	stepSnapshotSync   = "snapshot.sync"
	stepSnapshotRename = "snapshot.rename"
)

// disk does the checkpoint's file system calls that matter for crash safety.
type disk struct {
	noSync bool
	hook   func(step, path string) error // nil outside tests
}

func (d disk) step(step, path string) error {
	if d.hook == nil {
		return nil
	}
	return d.hook(step, path)
}

func (d disk) syncFile(f *os.File, step string) error {
	if err := d.step(step, f.Name()); err != nil {
		return err
	}
	if d.noSync {
		return nil
	}
	return f.Sync()
}

func (d disk) syncDir(dir string) error {
	if err := d.step(stepDirSync, dir); err != nil {
		return err
	}
	if d.noSync {
		return nil
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	return f.Sync()
}

// jRecord is a journal record's payload: the whole state (Full), or the entries that changed.
type jRecord struct {
	Seq       uint64          `json:"seq"`
	Full      json.RawMessage `json:"full,omitempty"` // cpData
	AddsTotal uint64          `json:"adds_total,omitempty"`
	Set       []cpAssignment  `json:"set,omitempty"`    // addresses now held (by address)
	Free      []cpFree        `json:"free,omitempty"`   // addresses no longer held
	Lock      []cpLock        `json:"lock,omitempty"`   // release locks taken
	Unlock    []string        `json:"unlock,omitempty"` // release locks dropped

	full *cpData
}

// cpFree is an address no longer held, with its cooldown (zero times: none).
type cpFree struct {
	IP         netip.Addr `json:"ip"`
	ReleasedAt time.Time  `json:"released_at,omitzero"`
	CoolUntil  time.Time  `json:"cool_until,omitzero"`
}

func journalName(path string, firstSeq uint64) string {
	return fmt.Sprintf("%s.journal-%016x", path, firstSeq)
}

// listJournals returns the journal files beside path, by first seq.
func listJournals(path string) ([]string, error) {
	matches, err := filepath.Glob(path + ".journal-*")
	if err != nil {
		return nil, err
	}
	type jf struct {
		name string
		seq  uint64
	}
	var out []jf
	for _, m := range matches {
		hexSeq := strings.TrimPrefix(m, path+".journal-")
		seq, err := strconv.ParseUint(hexSeq, 16, 64)
		if err != nil || len(hexSeq) != 16 {
			continue // not one of ours
		}
		out = append(out, jf{m, seq})
	}
	slices.SortFunc(out, func(a, b jf) int { return cmp.Compare(a.seq, b.seq) })
	names := make([]string, len(out))
	for i, j := range out {
		names[i] = j.name
	}
	return names, nil
}

// readJournal returns the records of a journal file up to the first one that is torn (not
// whole, or its checksum wrong), and how many bytes they take. A file without a whole header
// has no records. A record whose checksum is right but whose content is not a record is an
// error: no torn write makes one.
func readJournal(raw []byte) ([]jRecord, int, error) {
	if !bytes.HasPrefix(raw, []byte(journalMagic)) {
		if i := bytes.IndexByte(raw, '\n'); bytes.HasPrefix(raw, []byte(journalMagicPrefix)) && i > 0 && i < 64 {
			return nil, 0, fmt.Errorf("journal format %q, want %q", raw[len(journalMagicPrefix):i], strings.TrimSpace(journalMagic[len(journalMagicPrefix):]))
		}
		return nil, 0, nil
	}
	off := len(journalMagic)
	var recs []jRecord
	var last uint64
	for off+8 <= len(raw) {
		n := int(binary.LittleEndian.Uint32(raw[off:]))
		sum := binary.LittleEndian.Uint32(raw[off+4:])
		if n == 0 || n > maxRecord || n > len(raw)-off-8 {
			break
		}
		payload := raw[off+8 : off+8+n]
		if crc32.Checksum(payload, crcTable) != sum {
			break
		}
		rec, err := parseRecord(payload)
		if err != nil {
			return nil, 0, fmt.Errorf("record at byte %d: %w", off, err)
		}
		if rec.Seq <= last {
			return nil, 0, fmt.Errorf("record at byte %d: seq %d after %d", off, rec.Seq, last)
		}
		last = rec.Seq
		recs = append(recs, rec)
		off += 8 + n
	}
	return recs, off, nil
}

func parseRecord(payload []byte) (jRecord, error) {
	var rec jRecord
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return jRecord{}, err
	}
	if dec.More() {
		return jRecord{}, errors.New("data after the record")
	}
	if rec.Seq == 0 {
		return jRecord{}, errors.New("seq 0")
	}
	if rec.Full != nil {
		if rec.AddsTotal != 0 || rec.Set != nil || rec.Free != nil || rec.Lock != nil || rec.Unlock != nil {
			return jRecord{}, errors.New("a full record with changes")
		}
		d, err := parseData(rec.Full)
		if err != nil {
			return jRecord{}, fmt.Errorf("full state: %w", err)
		}
		rec.full = &d
	}
	return rec, nil
}

// replay is the state being rebuilt from a snapshot and journal records, keyed as the records
// change it.
type replay struct {
	head     cpData // all but the lists
	assign   map[netip.Addr]cpAssignment
	released map[netip.Addr]cpReleased
	locks    map[string]cpLock
}

func newReplay(d cpData) (*replay, error) {
	r := &replay{head: d, assign: map[netip.Addr]cpAssignment{}, released: map[netip.Addr]cpReleased{}, locks: map[string]cpLock{}}
	r.head.Assignments, r.head.Locks, r.head.Released = nil, nil, nil
	for _, a := range d.Assignments {
		if _, dup := r.assign[a.IP]; dup {
			return nil, fmt.Errorf("address %s assigned twice", a.IP)
		}
		r.assign[a.IP] = a
	}
	for _, x := range d.Released {
		r.released[x.IP] = x
	}
	for _, l := range d.Locks {
		r.locks[l.Item] = l
	}
	return r, nil
}

func (r *replay) apply(rec jRecord) error {
	if rec.full != nil {
		nr, err := newReplay(*rec.full)
		if err != nil {
			return fmt.Errorf("record %d: %w", rec.Seq, err)
		}
		*r = *nr
		return nil
	}
	r.head.AddsTotal = rec.AddsTotal
	for _, a := range rec.Set {
		r.assign[a.IP] = a
		delete(r.released, a.IP)
	}
	for _, f := range rec.Free {
		delete(r.assign, f.IP)
		if f.ReleasedAt.IsZero() && f.CoolUntil.IsZero() {
			delete(r.released, f.IP)
		} else {
			r.released[f.IP] = cpReleased{IP: f.IP, ReleasedAt: f.ReleasedAt, CoolUntil: f.CoolUntil}
		}
	}
	for _, l := range rec.Lock {
		r.locks[l.Item] = l
	}
	for _, item := range rec.Unlock {
		delete(r.locks, item)
	}
	return nil
}

// data returns the rebuilt state, its lists in order.
func (r *replay) data() cpData {
	d := r.head
	d.Assignments = make([]cpAssignment, 0, len(r.assign))
	for _, a := range r.assign {
		d.Assignments = append(d.Assignments, a)
	}
	slices.SortFunc(d.Assignments, func(a, b cpAssignment) int { return a.IP.Compare(b.IP) })
	d.Released = make([]cpReleased, 0, len(r.released))
	for _, x := range r.released {
		d.Released = append(d.Released, x)
	}
	slices.SortFunc(d.Released, func(a, b cpReleased) int { return a.IP.Compare(b.IP) })
	d.Locks = make([]cpLock, 0, len(r.locks))
	for _, l := range r.locks {
		d.Locks = append(d.Locks, l)
	}
	slices.SortFunc(d.Locks, func(a, b cpLock) int { return strings.Compare(a.Item, b.Item) })
	return d
}

// load reads the snapshot and replays the journal into the empty pool. Nothing at all is a cold
// start.
func (p *Pool) load() error {
	path := p.cfg.CheckpointPath
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pool: create checkpoint directory: %w", err)
	}
	corrupt := func(file string, err error) error {
		if file != path {
			return fmt.Errorf("%w %s: journal %s: %w (move the checkpoint and its journal files away to start without them, losing the pods' assignments)",
				ErrCorruptCheckpoint, path, filepath.Base(file), err)
		}
		return fmt.Errorf("%w %s: %w (move it and its journal files away to start without them, losing the pods' assignments)", ErrCorruptCheckpoint, path, err)
	}
	var base cpData
	format := checkpointFormat
	raw, err := os.ReadFile(path)
	haveSnapshot := err == nil
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("pool: read checkpoint %s: %w", path, err)
	default:
		if base, format, err = parseSnapshot(raw); err != nil {
			return corrupt(path, err)
		}
	}
	journals, err := listJournals(path)
	if err != nil {
		return fmt.Errorf("pool: list the checkpoint's journal files: %w", err)
	}
	expected := base.JournalSeq + 1
	var rp *replay
	applied := 0
	for _, name := range journals {
		raw, err := os.ReadFile(name)
		if err != nil {
			return fmt.Errorf("pool: read checkpoint journal %s: %w", name, err)
		}
		recs, valid, err := readJournal(raw)
		if err != nil {
			return corrupt(name, err)
		}
		if valid < len(raw) {
			p.log.Warn("checkpoint journal ends in a torn record (a write a crash interrupted, never reported durable): ignoring it",
				"path", name, "bytes", len(raw)-valid)
		}
		for _, rec := range recs {
			switch {
			case rec.Seq < expected:
				continue // the snapshot or a full record holds it
			case rec.Seq > expected && rec.full == nil:
				return corrupt(name, fmt.Errorf("record %d follows record %d: records are missing", rec.Seq, expected-1))
			}
			if rp == nil {
				if rp, err = newReplay(base); err != nil {
					return corrupt(path, err)
				}
			}
			if err := rp.apply(rec); err != nil {
				return corrupt(name, err)
			}
			expected = rec.Seq + 1
			applied++
		}
	}
	d := base
	if rp != nil {
		d = rp.data()
	}
	if err := p.install(d); err != nil {
		file := path
		if applied > 0 {
			file = journals[len(journals)-1]
		}
		return corrupt(file, err)
	}
	p.lastSeq = expected - 1
	p.files = journals
	// Leftovers of a snapshot write that crashed before its rename; the checkpoint is intact.
	removeTemps(path)
	// What was read is the base of every later record: make it durable first (a crash of the
	// agent leaves its last writes in the page cache, where this Open reads them).
	for _, name := range slices.Concat(journals, []string{path}) {
		if err := p.syncPath(name); err != nil {
			return fmt.Errorf("pool: sync checkpoint %s: %w", name, err)
		}
	}
	if err := p.disk.syncDir(dir); err != nil {
		return fmt.Errorf("pool: sync checkpoint directory: %w", err)
	}
	if !haveSnapshot && applied == 0 {
		p.log.Info("no checkpoint: cold start", "path", path)
		return nil
	}
	p.restored = true
	if haveSnapshot && format == checkpointFormatLegacy {
		// An agent upgraded in place: its journal goes beside a snapshot of the new format,
		// which an older agent refuses (it would not read the journal).
		if err := p.compactSyncLocked(); err != nil {
			return fmt.Errorf("pool: migrate checkpoint %s from format %d: %w", path, format, err)
		}
		p.log.Info("checkpoint migrated", "path", path, "from_format", format, "to_format", checkpointFormat)
	}
	p.log.Info("checkpoint loaded", "path", path, "generation", p.generation, "journal_records", applied,
		"assignments", len(p.byKey), "recovered", len(p.recovered), "locks", len(p.locks))
	return nil
}

// syncPath fsyncs an existing file (a missing one is fine).
func (p *Pool) syncPath(name string) error {
	f, err := os.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	return p.disk.syncFile(f, stepOpenSync)
}

// touchLocked marks the address's entry as changed since the last record.
func (p *Pool) touchLocked(ip netip.Addr) {
	p.dirtyIPs[ip] = struct{}{}
}

// recordLocked returns the framed record of everything changed since the last record, and
// forgets the changes. The caller holds mu.
func (p *Pool) recordLocked(seq uint64) ([]byte, error) {
	var b bytes.Buffer
	b.Write(make([]byte, 8)) // length and checksum, below
	if p.dirtyFull {
		data, err := p.encodeDataLocked(0)
		if err != nil {
			return nil, err
		}
		b.Grow(len(data) + 32)
		fmt.Fprintf(&b, `{"seq":%d,"full":`, seq)
		b.Write(data)
		b.WriteByte('}')
	} else {
		fmt.Fprintf(&b, `{"seq":%d`, seq)
		if p.addsTotal != 0 {
			fmt.Fprintf(&b, `,"adds_total":%d`, p.addsTotal)
		}
		ips := make([]netip.Addr, 0, len(p.dirtyIPs))
		for ip := range p.dirtyIPs {
			ips = append(ips, ip)
		}
		slices.SortFunc(ips, func(a, b netip.Addr) int { return a.Compare(b) })
		var free []cpFree
		n := 0
		for _, ip := range ips {
			s := p.slots[ip]
			if s == nil || s.holder == nil {
				f := cpFree{IP: ip}
				if s != nil {
					f.ReleasedAt, f.CoolUntil = s.releasedAt.UTC(), s.coolUntil.UTC()
				}
				free = append(free, f)
				continue
			}
			j, err := s.assignmentJSON()
			if err != nil {
				return nil, err
			}
			if n == 0 {
				b.WriteString(`,"set":[`)
			} else {
				b.WriteByte(',')
			}
			b.Write(j)
			n++
		}
		if n > 0 {
			b.WriteByte(']')
		}
		if len(free) > 0 {
			b.WriteString(`,"free":`)
			if err := appendJSON(&b, free); err != nil {
				return nil, err
			}
		}
		var locks []cpLock
		var unlock []string
		items := make([]string, 0, len(p.dirtyItems))
		for item := range p.dirtyItems {
			items = append(items, item)
		}
		slices.Sort(items)
		for _, item := range items {
			if l, ok := p.locks[item]; ok {
				locks = append(locks, cpLock{Item: item, ProposalID: l.proposalID, Generation: l.generation, LockedAt: l.lockedAt.UTC()})
			} else {
				unlock = append(unlock, item)
			}
		}
		if len(locks) > 0 {
			b.WriteString(`,"lock":`)
			if err := appendJSON(&b, locks); err != nil {
				return nil, err
			}
		}
		if len(unlock) > 0 {
			b.WriteString(`,"unlock":`)
			if err := appendJSON(&b, unlock); err != nil {
				return nil, err
			}
		}
		b.WriteByte('}')
	}
	out := b.Bytes()
	if len(out)-8 > maxRecord {
		return nil, fmt.Errorf("record of %d bytes, at most %d", len(out)-8, maxRecord)
	}
	putFrame(out)
	p.dirtyFull = false
	clear(p.dirtyIPs)
	clear(p.dirtyItems)
	return out, nil
}

// putFrame fills in the length and checksum of the record whose payload follows them in rec.
func putFrame(rec []byte) {
	payload := rec[8:]
	binary.LittleEndian.PutUint32(rec, uint32(len(payload)))
	binary.LittleEndian.PutUint32(rec[4:], crc32.Checksum(payload, crcTable))
}

// persist makes sure the journal on disk holds at least version v (group commit). One caller
// at a time writes a record of every change so far; callers that arrive meanwhile queue, and
// when the record is on disk those it holds return at once (each on its own channel: no lock to
// take in turn), and the first of the others writes the next record, for all of them.
func (p *Pool) persist(v uint64) error {
	p.commitMu.Lock()
	if p.durable >= v {
		p.commitMu.Unlock()
		return nil
	}
	if p.writing {
		ch := make(chan bool, 1)
		p.waiters = append(p.waiters, commitWaiter{v: v, done: ch})
		p.commitMu.Unlock()
		if <-ch {
			return nil
		}
		// Handed over: this caller writes the next record.
	} else {
		p.writing = true
		p.commitMu.Unlock()
	}
	cur, err := p.writeRecord()
	p.commitMu.Lock()
	defer p.commitMu.Unlock()
	if err == nil && cur > p.durable {
		p.durable = cur
	}
	rest := p.waiters[:0]
	for _, w := range p.waiters {
		if w.v <= p.durable {
			w.done <- true
		} else {
			rest = append(rest, w)
		}
	}
	clear(p.waiters[len(rest):])
	p.waiters = rest
	if len(p.waiters) == 0 {
		p.writing = false
	} else {
		next := p.waiters[0]
		p.waiters = slices.Delete(p.waiters, 0, 1)
		next.done <- false
	}
	return err
}

// commitWaiter is a caller of persist waiting for the record being written: told true when
// its version is on disk, false when it is to write the next record itself.
type commitWaiter struct {
	v    uint64
	done chan bool
}

// writeRecord appends a record of every change so far and returns the version it holds.
func (p *Pool) writeRecord() (uint64, error) {
	p.persistMu.Lock()
	defer p.persistMu.Unlock()
	if p.closed {
		return 0, ErrClosed
	}
	p.mu.Lock()
	seq := p.lastSeq + 1
	rec, err := p.recordLocked(seq)
	cur := p.version
	p.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("pool: encode checkpoint journal record: %w", err)
	}
	p.lastSeq = seq
	if err := p.appendLocked(seq, rec); err != nil {
		// The record may or may not be on disk: nothing more goes after it, and the next record
		// holds the whole state (the caller undoes its change in memory).
		p.closeJournalLocked()
		p.mu.Lock()
		p.dirtyFull = true
		p.mu.Unlock()
		return 0, fmt.Errorf("pool: write checkpoint journal: %w", err)
	}
	p.journalBytes += int64(len(rec))
	p.maybeCompactLocked()
	return cur, nil
}

// appendLocked writes and fsyncs one framed record, in a new journal file when none is open.
// The caller holds persistMu.
func (p *Pool) appendLocked(seq uint64, rec []byte) error {
	if p.journal != nil {
		if err := p.disk.step(stepJournalWrite, p.journal.Name()); err != nil {
			return err
		}
		if _, err := p.journal.Write(rec); err != nil {
			return err
		}
		return p.disk.syncFile(p.journal, stepJournalSync)
	}
	name := journalName(p.cfg.CheckpointPath, seq)
	if err := p.disk.step(stepJournalCreate, name); err != nil {
		return err
	}
	// A file of that name can only be one without a valid record (its first write was torn).
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	p.journal = f
	if !slices.Contains(p.files, name) {
		p.files = append(p.files, name)
	}
	if err := p.disk.step(stepJournalWrite, name); err != nil {
		return err
	}
	buf := make([]byte, 0, len(journalMagic)+len(rec))
	buf = append(append(buf, journalMagic...), rec...)
	if _, err := f.Write(buf); err != nil {
		return err
	}
	if err := p.disk.syncFile(f, stepJournalSync); err != nil {
		return err
	}
	return p.disk.syncDir(filepath.Dir(name))
}

func (p *Pool) closeJournalLocked() {
	if p.journal != nil {
		_ = p.journal.Close()
		p.journal = nil
	}
}

// maybeCompactLocked starts a compaction when the journal has grown enough and none runs. The
// snapshot is taken here, under mu (so it is a state the pool was in, holding every record up
// to lastSeq); the next record goes to a new file; the snapshot is written in the background.
// The caller holds persistMu.
func (p *Pool) maybeCompactLocked() {
	if p.compacting || p.closing || p.journalBytes < max(p.compactAt, 2*p.snapshotSize) {
		return
	}
	p.mu.Lock()
	data, err := p.encodeLocked(p.lastSeq)
	p.mu.Unlock()
	if err != nil {
		p.log.Error("checkpoint compaction: encode snapshot", "err", err)
		return
	}
	old := p.files
	p.files = nil
	p.closeJournalLocked()
	p.journalBytes = 0
	p.compacting = true
	if p.inlineCompact {
		p.finishCompactLocked(old, len(data), p.compact(data, old))
		return
	}
	p.bg.Go(func() {
		err := p.compact(data, old)
		p.persistMu.Lock()
		defer p.persistMu.Unlock()
		p.finishCompactLocked(old, len(data), err)
	})
}

// compact writes the snapshot and removes the journal files it holds. It takes no lock of the
// pool.
func (p *Pool) compact(snapshot []byte, old []string) error {
	if err := p.disk.writeFileAtomic(p.cfg.CheckpointPath, snapshot); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	for _, name := range old {
		if err := p.disk.step(stepJournalRemove, name); err != nil {
			return err
		}
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove journal: %w", err)
		}
	}
	return p.disk.syncDir(filepath.Dir(p.cfg.CheckpointPath))
}

// finishCompactLocked records a compaction's outcome; journal files it did not remove are
// removed by the next one. The caller holds persistMu.
func (p *Pool) finishCompactLocked(old []string, size int, err error) {
	p.compacting = false
	if err != nil {
		p.log.Warn("checkpoint compaction failed; the journal keeps every change and compaction is tried again later",
			"path", p.cfg.CheckpointPath, "err", err)
		p.files = append(old, p.files...)
		return
	}
	p.snapshotSize = int64(size)
}

// compactSyncLocked writes a snapshot of the state now and removes every journal file. The
// caller holds persistMu (or is Open) and no compaction runs.
func (p *Pool) compactSyncLocked() error {
	p.mu.Lock()
	data, err := p.encodeLocked(p.lastSeq)
	p.mu.Unlock()
	if err != nil {
		return fmt.Errorf("pool: encode checkpoint: %w", err)
	}
	old := p.files
	p.files = nil
	p.closeJournalLocked()
	p.journalBytes = 0
	err = p.compact(data, old)
	p.finishCompactLocked(old, len(data), err)
	if err != nil {
		return fmt.Errorf("pool: checkpoint: %w", err)
	}
	return nil
}

// Flush makes every change so far durable (they all are already, unless a write failed).
func (p *Pool) Flush() error {
	p.mu.Lock()
	v := p.version
	p.mu.Unlock()
	return p.persist(v)
}

// Close writes the whole state as a snapshot (so the next Open reads no journal), waits for a
// compaction in the background and closes the journal. Nothing is written after Close: later
// changes fail with ErrClosed (and are undone).
func (p *Pool) Close() error {
	ferr := p.Flush()
	if errors.Is(ferr, ErrClosed) {
		return nil
	}
	p.persistMu.Lock()
	p.closing = true
	p.persistMu.Unlock()
	p.bg.Wait()
	p.persistMu.Lock()
	defer p.persistMu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	defer p.closeJournalLocked()
	if len(p.files) == 0 && p.journal == nil && ferr == nil {
		return nil // nothing journaled since the snapshot
	}
	// The snapshot holds the state in memory, which a failed Flush could not journal.
	if err := p.compactSyncLocked(); err != nil {
		return errors.Join(ferr, err)
	}
	return nil
}
