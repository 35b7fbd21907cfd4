package allocator

import (
	"context"

	"github.com/ipledger/ipledger/server/ledger"
)

// Subscription is one agent sync stream's view of its node: the latest pool (older ones are
// superseded) and every release proposal, in order.
type Subscription struct {
	node      string
	mu        mutex
	pool      *Pool
	proposals []ledger.ReleaseProposal
	stale     []string
	refusals  []UsageRefusal
	notify    chan struct{}
	done      chan struct{}
	err       error
}

func (s *Subscription) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *Subscription) sendPool(p *Pool) {
	s.mu.Lock()
	if s.pool == nil || p.Generation >= s.pool.Generation {
		s.pool = p
	}
	s.mu.Unlock()
	s.wake()
}

func (s *Subscription) sendProposal(p ledger.ReleaseProposal) {
	s.mu.Lock()
	s.proposals = append(s.proposals, p)
	s.mu.Unlock()
	s.wake()
}

func (s *Subscription) sendStale(uids []string) {
	s.mu.Lock()
	s.stale = uids
	s.mu.Unlock()
	s.wake()
}

func (s *Subscription) sendRefusal(r UsageRefusal) {
	s.mu.Lock()
	s.refusals = append(s.refusals, r)
	s.mu.Unlock()
	s.wake()
}

func (s *Subscription) end(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.done:
	default:
		s.err = err
		close(s.done)
	}
}

// Next blocks until there is something to send: the newest pool first, then proposals, then
// stale pods, then refusals of usage reports.
func (s *Subscription) Next(ctx context.Context) (SyncMessage, error) {
	for {
		s.mu.Lock()
		if s.pool != nil {
			p := s.pool
			s.pool = nil
			s.mu.Unlock()
			return SyncMessage{Pool: p}, nil
		}
		if len(s.proposals) > 0 {
			p := s.proposals[0]
			s.proposals = s.proposals[1:]
			s.mu.Unlock()
			return SyncMessage{Proposal: &p}, nil
		}
		if len(s.stale) > 0 {
			u := s.stale
			s.stale = nil
			s.mu.Unlock()
			return SyncMessage{StalePods: u}, nil
		}
		if len(s.refusals) > 0 {
			r := s.refusals[0]
			s.refusals = s.refusals[1:]
			s.mu.Unlock()
			return SyncMessage{Refusal: &r}, nil
		}
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return SyncMessage{}, ctx.Err()
		case <-s.done:
			return SyncMessage{}, s.err
		case <-s.notify:
		}
	}
}

// Subscribe opens a sync stream's view of a node: it starts with the current pool and any open
// release proposal. Close it when the stream ends.
func (a *Allocator) Subscribe(node string) (*Subscription, error) {
	ns, rec, err := a.nodeAndRecord(node)
	if err != nil {
		return nil, err
	}
	s := &Subscription{node: node, mu: mutex{name: "subscription", obs: a.cfg.observer}, notify: make(chan struct{}, 1), done: make(chan struct{})}
	a.mu.Lock()
	ns.subs[s] = struct{}{}
	s.sendPool(a.poolLocked(ns, rec))
	if p := rec.Proposal; p != nil {
		s.sendProposal(*p)
	}
	a.met.connected.Set(float64(a.connectedLocked()))
	a.mu.Unlock()
	a.kick(ns.name)
	return s, nil
}

// Unsubscribe ends a subscription.
func (a *Allocator) Unsubscribe(s *Subscription) {
	a.mu.Lock()
	if ns, ok := a.nodes[s.node]; ok {
		delete(ns.subs, s)
	}
	a.met.connected.Set(float64(a.connectedLocked()))
	a.mu.Unlock()
	s.end(nil)
}

func (a *Allocator) connectedLocked() int {
	n := 0
	for _, ns := range a.nodes {
		if len(ns.subs) > 0 {
			n++
		}
	}
	return n
}
