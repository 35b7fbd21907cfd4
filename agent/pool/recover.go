package pool

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// An agent restarted on a stale or lost checkpoint does not know the pods started after the
// checkpoint was written; their addresses would look free. Two sources put them back:
//
//   - Recover: the node's kernel. An address with a pod's policy rules that no attachment holds
//     is held as a recovered assignment (no attachment known) until ReleaseRecovered says its
//     rules are gone.
//   - Restore: the server. The pods the node last reported in use come back with their
//     attachments; a recovered address gets its attachment.

func holderName(h *assignment) string {
	if h.recovered {
		return "a recovered pod"
	}
	return h.key.String()
}

// Recover holds addresses that pods on the node use (the kernel shows their policy rules) but
// that no attachment holds. A recovered address is never handed out, counts as in use in usage
// reports, is refused to release proposals, is left alone by GC and is checkpointed; it stays
// until ReleaseRecovered gives it back (its rules are gone) or Restore names its attachment.
// An address an attachment already holds is left as it is; an address the pool does not lease
// is held unleased (like an assignment whose address left the pool). It returns the addresses it
// recovered, by address.
func (p *Pool) Recover(ips []netip.Addr) ([]Assignment, error) {
	for _, ip := range ips {
		if !ip.Is4() {
			return nil, fmt.Errorf("pool: recover %v: not an IPv4 address", ip)
		}
	}
	p.mu.Lock()
	now := p.cfg.Now()
	var out []Assignment
	for _, ip := range ips {
		s, ok := p.slots[ip]
		if ok && s.holder != nil {
			continue
		}
		if !ok {
			s = &slot{ip: ip, item: ip.String()}
			p.slots[ip] = s
		}
		s.holder = &assignment{recovered: true, assignedAt: now}
		s.cpJSON = nil
		p.touchLocked(ip)
		p.recovered[ip] = s
		if s.prefix.IsValid() {
			p.prefixUse[s.prefix]++
		}
		out = append(out, p.assignmentLocked(s))
	}
	if len(out) > 0 {
		p.version++
	}
	v := p.version
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Assignment) int { return a.IP.Compare(b.IP) })
	if len(out) > 0 {
		p.onChange()
	}
	if err := p.persist(v); err != nil {
		return out, fmt.Errorf("recover: %w", err)
	}
	return out, nil
}

// Recovered returns the recovered addresses, by address.
func (p *Pool) Recovered() []netip.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]netip.Addr, 0, len(p.recovered))
	for ip := range p.recovered {
		out = append(out, ip)
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}

// ReleaseRecovered gives back those of ips that are still recovered (their pods are gone): they
// cool down before reuse, as after a Release. Other addresses are ignored. It returns what it
// released, by address.
func (p *Pool) ReleaseRecovered(ips []netip.Addr) ([]Assignment, error) {
	p.mu.Lock()
	now := p.cfg.Now()
	var out []Assignment
	for _, ip := range ips {
		s, ok := p.recovered[ip]
		if !ok {
			continue
		}
		out = append(out, p.assignmentLocked(s))
		p.dropHolderLocked(s, now)
	}
	if len(out) > 0 {
		p.version++
		p.notifyLocked()
	}
	v := p.version
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b Assignment) int { return a.IP.Compare(b.IP) })
	if len(out) > 0 {
		p.onChange()
	}
	if err := p.persist(v); err != nil {
		return out, fmt.Errorf("release recovered: %w", err)
	}
	return out, nil
}

// AwaitingRestore says whether new attachments wait for Restore now.
func (p *Pool) AwaitingRestore() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.awaitingRestoreLocked(p.cfg.Now())
}

// RestoreNote says what Restore did not do with one reported pod, or what it replaced.
type RestoreNote struct {
	IP  netip.Addr
	Key Key
	// Conflict: the report and the checkpoint disagree about who holds an address or which
	// address an attachment holds. The newer assignment was kept (Kept says which).
	Conflict bool
	Kept     string
	Reason   string
}

// RestoreResult says what Restore did.
type RestoreResult struct {
	// Ignored: Restore had already run; only the first call after Open restores.
	Ignored bool
	// Restored are assignments brought back from the report; Upgraded are recovered addresses
	// whose attachment the report named (both by address).
	Restored []Assignment
	Upgraded []Assignment
	// Replaced are assignments of the checkpoint that a newer one of the report superseded.
	Replaced []Assignment
	// Notes are the reported pods not restored (and why) and every conflict.
	Notes []RestoreNote
}

// Restore brings back the pods the server says the node last reported in use (its answer to
// the agent's first registration) that the checkpoint lacks, and ends the wait of new
// attachments (Config.RestoreWait). Only the first call restores; later ones are Ignored.
//
// A reported pod is restored, with its attachment, when its address is leased to the node
// ACTIVE or RELEASE_PROPOSED (or is recovered, whatever its lease), the runtime has not deleted
// the attachment since Open (Release of an unknown attachment, or GC without it), and the
// checkpoint does not show the address given back after the pod got it (the report is then the
// older record). When the report and the checkpoint disagree (the address held by another
// attachment, or the attachment holding another address), the newer assignment wins: the agent
// never gives an address to a second pod while the first holds it, so the older record is
// stale. Ties keep the checkpoint's. The result is checkpointed before Restore returns.
func (p *Pool) Restore(pods []*ipledgerv1.PodAddress) (RestoreResult, error) {
	p.mu.Lock()
	if p.restoreDone {
		p.mu.Unlock()
		return RestoreResult{Ignored: true}, nil
	}
	now := p.cfg.Now()
	var res RestoreResult
	note := func(ip netip.Addr, key Key, reason string, args ...any) {
		res.Notes = append(res.Notes, RestoreNote{IP: ip, Key: key, Reason: fmt.Sprintf(reason, args...)})
	}
	conflict := func(ip netip.Addr, key Key, kept string, reason string, args ...any) {
		res.Notes = append(res.Notes, RestoreNote{IP: ip, Key: key, Conflict: true, Kept: kept, Reason: fmt.Sprintf(reason, args...)})
	}
	seenIP := map[netip.Addr]bool{}
	seenKey := map[Key]bool{}
	for _, pa := range pods {
		key := Key{ContainerID: pa.GetContainerId(), IfName: pa.GetIfname()}
		ip, err := netip.ParseAddr(pa.GetIp())
		switch {
		case err != nil || !ip.Is4():
			note(netip.Addr{}, key, "address %q is not IPv4", pa.GetIp())
			continue
		case key.ContainerID == "" || key.IfName == "":
			// A recovered address the node reported: the kernel, not the report, knows it.
			continue
		case seenIP[ip] || seenKey[key]:
			conflict(ip, key, "the first", "the report names the address or the attachment twice")
			continue
		case p.forgotten[key] || (p.gcValid != nil && !p.gcValid[key]):
			note(ip, key, "the runtime deleted the attachment since the agent started")
			continue
		}
		seenIP[ip], seenKey[key] = true, true
		var assignedAt time.Time // unknown: older than anything the checkpoint holds
		if ts := pa.GetAssignedAt(); ts != nil {
			assignedAt = ts.AsTime()
		}
		cur, hasKey := p.byKey[key]
		if hasKey && cur.ip == ip {
			continue // the checkpoint has it
		}
		s, ok := p.slots[ip]
		switch {
		case !ok || (s.holder == nil && !s.leased):
			note(ip, key, "the address is not leased to the node")
			continue
		case s.holder == nil && s.state != ipledgerv1.LeaseState_LEASE_STATE_ACTIVE &&
			s.state != ipledgerv1.LeaseState_LEASE_STATE_RELEASE_PROPOSED:
			note(ip, key, "the address is %s", s.state)
			continue
		case s.holder == nil && !s.releasedAt.IsZero() && !s.releasedAt.Before(assignedAt):
			note(ip, key, "the checkpoint shows the address given back at %s, after the pod got it at %s",
				s.releasedAt.UTC().Format("15:04:05.000"), assignedAt.UTC().Format("15:04:05.000"))
			continue
		case s.holder != nil && !s.holder.recovered:
			other := s.holder
			if !assignedAt.After(other.assignedAt) {
				conflict(ip, key, other.key.String(), "the server says %s holds %s, the checkpoint gives it to %s (assigned later, at %s)",
					key, ip, other.key, other.assignedAt.UTC().Format("15:04:05.000"))
				continue
			}
			conflict(ip, key, key.String(), "the server says %s holds %s since %s, the checkpoint gives it to %s since %s: the checkpoint's is older",
				key, ip, assignedAt.UTC().Format("15:04:05.000"), other.key, other.assignedAt.UTC().Format("15:04:05.000"))
		case s.holder != nil && s.holder.recovered && !s.releasedAt.IsZero() && !s.releasedAt.Before(assignedAt):
			note(ip, key, "the address is in use, but the checkpoint shows it given back after this pod got it: another pod holds it")
			continue
		}
		if hasKey {
			if !assignedAt.After(cur.holder.assignedAt) {
				conflict(ip, key, key.String()+" on "+cur.ip.String(), "the server says %s holds %s, the checkpoint says %s (assigned later)", key, ip, cur.ip)
				continue
			}
			conflict(ip, key, key.String()+" on "+ip.String(), "the server says %s holds %s, the checkpoint says %s (assigned earlier): %s is given back",
				key, ip, cur.ip, cur.ip)
			res.Replaced = append(res.Replaced, p.assignmentLocked(cur))
			p.dropHolderLocked(cur, now)
		}
		h := &assignment{key: key, pod: PodInfo{Namespace: pa.GetPodNamespace(), Name: pa.GetPodName(), UID: pa.GetPodUid()},
			assignedAt: assignedAt}
		switch {
		case s.holder == nil:
			if s.prefix.IsValid() {
				p.prefixUse[s.prefix]++
			}
			s.holder = h
			res.Restored = append(res.Restored, p.assignmentLocked(s))
		case s.holder.recovered:
			delete(p.recovered, ip)
			s.holder = h
			res.Upgraded = append(res.Upgraded, p.assignmentLocked(s))
		default:
			res.Replaced = append(res.Replaced, p.assignmentLocked(s))
			delete(p.byKey, s.holder.key)
			s.holder = h
			res.Restored = append(res.Restored, p.assignmentLocked(s))
		}
		s.cpJSON = nil
		p.byKey[key] = s
	}
	p.restoreDone = true
	p.forgotten, p.gcValid = nil, nil
	p.dirtyFull = true // rare, and it moves assignments around: one record of the whole state
	p.version++
	v := p.version
	p.notifyLocked() // new attachments waited for this
	p.mu.Unlock()
	byIP := func(a, b Assignment) int { return a.IP.Compare(b.IP) }
	slices.SortFunc(res.Restored, byIP)
	slices.SortFunc(res.Upgraded, byIP)
	slices.SortFunc(res.Replaced, byIP)
	p.onChange()
	if err := p.persist(v); err != nil {
		return res, fmt.Errorf("restore: %w", err)
	}
	return res, nil
}
