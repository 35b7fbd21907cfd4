package pool

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Answer answers a release proposal. An item is confirmed when the node leases it and no
// address of it is held by a pod or cooling down; confirmed items are locked (never handed out
// again unless a newer pool shows them ACTIVE). Every other item (held, cooling, unknown,
// malformed) is refused. Every item appears in exactly one list of the ack, once. The locks are
// checkpointed before Answer returns; the ack must not be sent when Answer fails.
func (p *Pool) Answer(prop *ipledgerv1.ReleaseProposal) (*ipledgerv1.ReleaseAck, error) {
	if prop == nil {
		return nil, errors.New("pool: nil release proposal")
	}
	ack := &ipledgerv1.ReleaseAck{ProposalId: prop.GetProposalId()}
	seen := map[string]bool{}

	p.mu.Lock()
	now := p.cfg.Now()
	byItem := map[string][]*slot{}
	for _, s := range p.order {
		byItem[s.item] = append(byItem[s.item], s)
	}
	changed := false
	decide := func(raw string, canon string, ok bool) {
		if seen[raw] {
			return
		}
		seen[raw] = true
		if !ok || !releasable(byItem[canon], now) {
			ack.Refused = append(ack.Refused, raw)
			return
		}
		if _, locked := p.locks[canon]; !locked {
			p.locks[canon] = lock{proposalID: prop.GetProposalId(), generation: p.generation, lockedAt: now}
			p.dirtyItems[canon] = struct{}{}
			changed = true
		}
		ack.Confirmed = append(ack.Confirmed, raw)
	}
	for _, raw := range prop.GetAddresses() {
		a, err := netip.ParseAddr(raw)
		decide(raw, a.String(), err == nil && a.Is4())
	}
	for _, raw := range prop.GetPrefixes() {
		pr, err := netip.ParsePrefix(raw)
		decide(raw, pr.String(), err == nil && pr.Bits() == 28 && pr.Masked() == pr)
	}
	if changed {
		p.recountLocked()
		p.version++
	}
	v := p.version
	p.mu.Unlock()
	if changed {
		p.onChange()
	}
	if err := p.persist(v); err != nil {
		return nil, fmt.Errorf("answer release proposal %s: %w", prop.GetProposalId(), err)
	}
	return ack, nil
}

// releasableLocked says whether the lease item (canonical address or prefix) is leased to the
// node and none of its addresses is held by a pod or cooling down.
func releasable(slots []*slot, now time.Time) bool {
	for _, s := range slots {
		if s.holder != nil || now.Before(s.coolUntil) {
			return false
		}
	}
	return len(slots) > 0
}
