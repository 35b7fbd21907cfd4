package ec2sim

import (
	"container/heap"
	"maps"
	"math"
	"slices"
	"time"
)

// The describe lag and the delayed completions of the profile (see Profile).
//
// Describe lag: every mutation of an ENI makes a new version of it, visible to Describe at a
// deadline (the mutation's time plus a lag drawn from Profile.DescribeLag). Describe shows the
// newest version whose deadline has passed, so what it shows never goes back in time. The ENI
// keeps, for each version not yet visible, the view of the version before it; a deleted ENI keeps
// its last view until its deletion is visible. Everything else (the mutations themselves,
// Snapshot, the other actions) sees the live state at once.
//
// Delayed completions (a detach that completes after its call answered) and the lags' expiries
// wait in a heap by deadline; every reader and writer settles what is due before it looks, so
// nothing depends on a timer firing on time and an injected clock drives it all.

// lagEntry is one version of an ENI not yet visible: the view Describe shows until at.
type lagEntry struct {
	before  *eni // the ENI before the mutation; nil when it did not exist
	existed bool
	at      time.Time
}

// eniLag is an ENI's versions not yet visible, in mutation order.
type eniLag struct {
	pending []lagEntry
}

// view copies what Describe shows of an ENI (its attachment included) so that later mutations
// of the live ENI do not change it.
func (e *eni) view() *eni {
	v := *e
	v.groups = slices.Clone(e.groups)
	v.secondaries = slices.Clone(e.secondaries)
	v.prefixes = slices.Clone(e.prefixes)
	v.tags = maps.Clone(e.tags)
	if e.att != nil {
		a := *e.att
		v.att = &a
	}
	return &v
}

// lagBefore is what a mutation of e must remember for the describe lag: e's view, or nil when
// no lag can apply (the profile has none and e has no version pending). Callers hold s.mu.
func (s *Sim) lagBefore(e *eni) *eni {
	if s.profile.Load().DescribeLag.Share <= 0 && s.lags[e.id] == nil {
		return nil
	}
	return e.view()
}

// lagged records a mutation of the ENI id whose previous state was before (from lagBefore;
// nil: nothing to record). Callers hold s.mu.
func (s *Sim) lagged(id string, before *eni) {
	if before != nil {
		s.recordVersion(id, before, true)
	}
}

// laggedCreate records the creation of e: until its lag passes Describe does not see it.
func (s *Sim) laggedCreate(e *eni) {
	if s.profile.Load().DescribeLag.Share > 0 {
		s.recordVersion(e.id, nil, false)
	}
}

func (s *Sim) recordVersion(id string, before *eni, existed bool) {
	lag := s.scaled(s.delays.draw(streamDescribeLag, s.profile.Load().DescribeLag.Sample))
	if lag <= 0 {
		// This version is visible at once, and with it every earlier one.
		delete(s.lags, id)
		return
	}
	at := s.now().Add(lag)
	l := s.lags[id]
	if l == nil {
		l = &eniLag{}
		s.lags[id] = l
	}
	l.pending = append(l.pending, lagEntry{before: before, existed: existed, at: at})
	s.pushDue(dueItem{at: at, kind: dueLag, eniID: id})
}

// describedENI is the ENI id as Describe sees it at now: the live ENI, or its view before the
// mutations whose lag has not passed; nil when Describe does not see it (not created yet for
// Describe, deleted, or hidden by the eventual-consistency delay). Callers hold s.mu (read).
func (s *Sim) describedENI(id string, now time.Time) *eni {
	e := s.enis[id]
	if l := s.lags[id]; l != nil {
		k := -1
		for i, p := range l.pending {
			if !now.Before(p.at) {
				k = i
			}
		}
		if k < len(l.pending)-1 {
			next := l.pending[k+1]
			e = next.before
			if !next.existed {
				e = nil
			}
		}
	}
	if e == nil || !s.visible(e, now) {
		return nil
	}
	return e
}

// laggingIDs lists the ENIs with versions not yet visible, sorted.
func (s *Sim) laggingIDs() []string {
	out := make([]string, 0, len(s.lags))
	for id := range s.lags {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// describedInstanceENIs is the instance's ENIs as Describe sees them at now.
func (s *Sim) describedInstanceENIs(in *instance, now time.Time) []*eni {
	if len(s.lags) == 0 {
		return in.enis
	}
	out := make([]*eni, 0, len(in.enis))
	for _, e := range in.enis {
		if s.lags[e.id] == nil {
			out = append(out, e)
		}
	}
	for _, id := range s.laggingIDs() {
		if v := s.describedENI(id, now); v != nil && v.att != nil && v.att.inst == in {
			out = append(out, v)
		}
	}
	return out
}

type dueKind uint8

const (
	dueDetach dueKind = iota // a detach completes
	dueLag                   // an ENI's lagging versions may be pruned
)

type dueItem struct {
	at    time.Time
	kind  dueKind
	e     *eni
	att   *attachment
	eniID string
}

type dueHeap []dueItem

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *dueHeap) Push(x any)        { *h = append(*h, x.(dueItem)) }
func (h *dueHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

// pushDue schedules an item. Callers hold s.mu.
func (s *Sim) pushDue(it dueItem) {
	heap.Push(&s.due, it)
	s.nextDue.Store(s.due[0].at.UnixNano())
}

// settleLocked carries out what is due by now: detaches complete, expired lag versions are
// dropped. Callers hold s.mu (write).
func (s *Sim) settleLocked(now time.Time) {
	for len(s.due) > 0 && !now.Before(s.due[0].at) {
		it := heap.Pop(&s.due).(dueItem)
		switch it.kind {
		case dueDetach:
			if it.e.att == it.att {
				s.detach(it.e)
			}
		case dueLag:
			s.pruneLag(it.eniID, now)
		}
	}
	next := int64(math.MaxInt64)
	if len(s.due) > 0 {
		next = s.due[0].at.UnixNano()
	}
	s.nextDue.Store(next)
}

// pruneLag drops the versions of an ENI that Describe already shows.
func (s *Sim) pruneLag(id string, now time.Time) {
	l := s.lags[id]
	if l == nil {
		return
	}
	k := -1
	for i, p := range l.pending {
		if !now.Before(p.at) {
			k = i
		}
	}
	if k == len(l.pending)-1 {
		delete(s.lags, id)
		return
	}
	l.pending = l.pending[k+1:]
}

// lock takes the write lock and settles what is due.
func (s *Sim) lock() {
	s.mu.Lock()
	s.settleLocked(s.now())
}

// rlock settles what is due (briefly taking the write lock, only when something is), then
// takes the read lock.
func (s *Sim) rlock() {
	if s.now().UnixNano() >= s.nextDue.Load() {
		s.lock()
		s.mu.Unlock()
	}
	s.mu.RLock()
}
