package allocator

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ipledger/ipledger/server/ec2gw"
)

// instanceBatcher merges the DescribeInstances calls of registrations that arrive together into
// one call of up to maxBatch ids: when a thousand nodes start at once, verifying them costs ten
// calls of the describe bucket instead of a thousand.
type instanceBatcher struct {
	gw     EC2
	linger time.Duration

	mu      mutex
	waiting map[string][]chan instanceResult
	open    bool
}

type instanceResult struct {
	inst ec2gw.Instance
	err  error
}

const maxDescribeBatch = 100

func newInstanceBatcher(gw EC2, obs lockObserver) *instanceBatcher {
	return &instanceBatcher{gw: gw, linger: 20 * time.Millisecond, mu: mutex{name: "instance batcher", obs: obs}, waiting: map[string][]chan instanceResult{}}
}

// describe returns EC2's view of one instance; ec2gw.ErrNotFound when EC2 does not know it.
func (b *instanceBatcher) describe(ctx context.Context, id string, prio ec2gw.Priority) (ec2gw.Instance, error) {
	ch := make(chan instanceResult, 1)
	b.mu.Lock()
	b.waiting[id] = append(b.waiting[id], ch)
	if !b.open {
		b.open = true
		go b.flush(context.WithoutCancel(ctx), prio)
	}
	b.mu.Unlock()
	select {
	case r := <-ch:
		return r.inst, r.err
	case <-ctx.Done():
		return ec2gw.Instance{}, ctx.Err()
	}
}

// flush waits a moment (of wall time: it gathers registrations that arrive together) for more
// ids, then describes everything waiting, in batches. One flush runs at a time: ids that arrive
// while its calls wait for the describe bucket or for EC2 join the next round of the same
// flush, so under load the batches grow towards maxDescribeBatch instead of many small calls
// queueing in the limiter one behind the other (each costing a token of the describe bucket).
func (b *instanceBatcher) flush(ctx context.Context, prio ec2gw.Priority) {
	time.Sleep(b.linger)
	for {
		b.mu.Lock()
		waiting := b.waiting
		if len(waiting) == 0 {
			b.open = false
			b.mu.Unlock()
			return
		}
		b.waiting = map[string][]chan instanceResult{}
		b.mu.Unlock()
		ids := make([]string, 0, len(waiting))
		for id := range waiting {
			ids = append(ids, id)
		}
		var wg sync.WaitGroup
		for start := 0; start < len(ids); start += maxDescribeBatch {
			batch := ids[start:min(start+maxDescribeBatch, len(ids))]
			wg.Add(1)
			go func() {
				defer wg.Done()
				results := b.call(ctx, batch, prio)
				for _, id := range batch {
					for _, ch := range waiting[id] {
						ch <- results[id]
					}
				}
			}()
		}
		wg.Wait()
	}
}

// call describes a batch. EC2 fails the whole call when one id is unknown, so a NotFound batch
// is asked again id by id.
func (b *instanceBatcher) call(ctx context.Context, ids []string, prio ec2gw.Priority) map[string]instanceResult {
	out := make(map[string]instanceResult, len(ids))
	insts, err := b.gw.DescribeInstances(ctx, prio, ids)
	if errors.Is(err, ec2gw.ErrNotFound) && len(ids) > 1 {
		for _, id := range ids {
			out[id] = b.call(ctx, []string{id}, prio)[id]
		}
		return out
	}
	if err != nil {
		for _, id := range ids {
			out[id] = instanceResult{err: err}
		}
		return out
	}
	found := map[string]ec2gw.Instance{}
	for _, in := range insts {
		found[in.ID] = in
	}
	for _, id := range ids {
		if in, ok := found[id]; ok {
			out[id] = instanceResult{inst: in}
		} else {
			out[id] = instanceResult{err: ec2gw.ErrNotFound}
		}
	}
	return out
}
