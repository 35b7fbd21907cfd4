package replica

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/ipledger/ipledger/server/store"
)

// DefaultLeaderProbe is how often a standby looks at the leader.
const DefaultLeaderProbe = 100 * time.Millisecond

// refusalsToDepose is how many probes in a row must find the leader's port closed.
const refusalsToDepose = 2

// candidates and deposer are what the watchdog needs of the store.
type electionView interface {
	Candidates(ctx context.Context) ([]store.Candidate, error)
	Depose(ctx context.Context, c store.Candidate) error
}

// watchLeader runs on a standby until ctx ends. A leader killed with SIGKILL keeps its election
// key until its session's lease expires (the session TTL, 2-5 s); the standby sees sooner that
// its process is gone and deposes it (revokes that lease), so the next candidate leads at once:
//   - the leader's address refuses connections (no process listens there) on two probes in a
//     row, after the standby had reached it: a process that died, not a network partition
//     (where connections time out and the TTL decides);
//   - a newer candidate advertises the leader's own address: its process was restarted there
//     (two processes cannot serve one address; advertised addresses are one per replica).
//
// Deposing is safe even when wrong: a live leader deposed loses its leadership (its writes fail
// their fence and it exits), never correctness.
func (r *Replica) watchLeader(ctx context.Context, ev electionView, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var (
		watched  string // the leader key the counts below are about
		reached  bool   // a probe connected to the watched leader
		refusals int
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, 5*every)
		cands, err := ev.Candidates(pctx)
		cancel()
		if err != nil || len(cands) == 0 {
			continue
		}
		leader := cands[0]
		if leader.Key != watched {
			watched, reached, refusals = leader.Key, false, 0
		}
		if leader.Advertise == "" {
			continue
		}
		why := ""
		for _, c := range cands[1:] {
			if c.Advertise == leader.Advertise {
				why = "a newer candidate advertises its address: its process was restarted"
			}
		}
		if why == "" && leader.Advertise != r.cfg.Advertise {
			switch err := probe(ctx, leader.Advertise, 2*every); {
			case err == nil:
				reached, refusals = true, 0
			case errors.Is(err, syscall.ECONNREFUSED) && reached:
				refusals++
				if refusals >= refusalsToDepose {
					why = "its address refuses connections: its process is gone"
				}
			default:
				refusals = 0 // a timeout or unreachable network: the session TTL decides
			}
		}
		if why == "" {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, 10*every)
		err = ev.Depose(dctx, leader)
		cancel()
		if err != nil {
			r.log.Warn("deposing a dead leader failed; its session expires instead", "leader", leader.Advertise, "err", err)
			continue
		}
		r.log.Warn("deposed the leader: "+why, "leader", leader.Advertise, "key", leader.Key)
		watched = ""
	}
}

// probe opens (and closes) a TCP connection to addr.
func probe(ctx context.Context, addr string, timeout time.Duration) error {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}
