package ec2gw

import (
	"context"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
)

// maxAssignPerCall caps the addresses (or prefixes) one coalesced AssignPrivateIpAddresses
// carries: more than the largest instance type's IPv4-per-ENI limit (50) can never succeed.
// A single request larger than this is sent on its own, as asked.
const maxAssignPerCall = 50

type assignKind int

const (
	assignIPs assignKind = iota
	assignPrefixes
)

type batchKey struct {
	eni  string
	kind assignKind
}

// coalescer merges AssignAddresses (or AssignPrefixes) requests for one ENI that wait for a
// token at the same time into one AssignPrivateIpAddresses. A batch is open while its token is
// pending; it holds one waiter in the limiter at the best priority of its members. Once its token
// is granted the batch is closed, its call runs in a goroutine owned by the gateway, and every
// member gets the call's outcome. A member that leaves before the call takes its items along;
// a batch whose members all left withdraws from the limiter.
type coalescer struct {
	g      *Gateway
	mu     sync.Mutex
	open   map[batchKey]*batch
	closed bool
}

type batch struct {
	key     batchKey
	items   map[string]int // item -> members asking for it
	order   []string       // items in the order they were asked for
	members map[*member]struct{}
	prio    Priority
	ticket  *waiter
	started bool
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	err     error
}

type member struct {
	prio  Priority
	items []string
}

func newCoalescer(g *Gateway) *coalescer {
	return &coalescer{g: g, open: map[batchKey]*batch{}}
}

// assign adds items to the open batch of (eni, kind), or starts one, and waits for the outcome.
func (c *coalescer) assign(ctx context.Context, p Priority, eni string, kind assignKind, items []string) error {
	b, m := c.join(p, eni, kind, items)
	if b == nil {
		return &APIError{Action: ActionAssignPrivateIPAddresses, Message: "gateway closed", Kind: ErrClosed, Err: ErrClosed}
	}
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		if c.leave(b, m) {
			return &APIError{Action: ActionAssignPrivateIPAddresses,
				Message: "context ended while waiting for the limiter", Kind: ErrThrottled, Err: ctx.Err()}
		}
		// The call is under way: its outcome is unknown to this caller.
		return &APIError{Action: ActionAssignPrivateIPAddresses,
			Message: "context ended during the call", Kind: ErrUnavailable, Err: ctx.Err()}
	}
}

// join adds a member to the open batch of (eni, kind) or a new one; nil after close.
func (c *coalescer) join(p Priority, eni string, kind assignKind, items []string) (*batch, *member) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, nil
	}
	key := batchKey{eni: eni, kind: kind}
	m := &member{prio: p, items: dedup(items)}
	b := c.open[key]
	if b == nil || b.started || !b.fits(m.items) {
		b = c.newBatch(key, p)
	}
	b.members[m] = struct{}{}
	for _, it := range m.items {
		if b.items[it] == 0 {
			b.order = append(b.order, it)
		}
		b.items[it]++
	}
	if p < b.prio {
		b.prio = p
		c.g.lim.setPriority(b.ticket, p)
	}
	return b, m
}

// fits reports whether adding items keeps the batch within maxAssignPerCall (an empty batch takes
// any request, however large).
func (b *batch) fits(items []string) bool {
	n := len(b.items)
	if n == 0 {
		return true
	}
	for _, it := range items {
		if b.items[it] == 0 {
			n++
		}
	}
	return n <= maxAssignPerCall
}

// newBatch opens a batch for key (replacing a full one in the open map) and starts its call's
// goroutine. Called with c.mu held.
func (c *coalescer) newBatch(key batchKey, p Priority) *batch {
	b := &batch{
		key:     key,
		items:   map[string]int{},
		members: map[*member]struct{}{},
		prio:    p,
		done:    make(chan struct{}),
	}
	b.ctx, b.cancel = context.WithCancel(c.g.ctx)
	b.ticket = c.g.lim.enqueue(ActionAssignPrivateIPAddresses, p, 0)
	c.open[key] = b
	c.g.wg.Go(func() { c.run(b) })
	return b
}

// close makes every later join fail, so no batch starts after the gateway waits for them.
func (c *coalescer) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
}

// leave withdraws m from b if b's call has not started (true); its items go unless another
// member asked for them too. An emptied batch withdraws from the limiter.
func (c *coalescer) leave(b *batch, m *member) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b.started {
		return false
	}
	delete(b.members, m)
	for _, it := range m.items {
		if b.items[it]--; b.items[it] <= 0 {
			delete(b.items, it)
		}
	}
	if len(b.members) == 0 {
		if c.open[b.key] == b {
			delete(c.open, b.key)
		}
		b.started = true // nobody may join a batch on its way out
		b.cancel()
		return true
	}
	best := PriorityReconcile + 1
	for o := range b.members {
		best = min(best, o.prio)
	}
	if best != b.prio {
		b.prio = best
		c.g.lim.setPriority(b.ticket, best)
	}
	return true
}

// run waits for the batch's token, closes the batch and makes the call.
func (c *coalescer) run(b *batch) {
	defer b.cancel()
	defer close(b.done)
	werr := c.g.lim.wait(b.ctx, b.ticket)
	c.mu.Lock()
	b.started = true
	if c.open[b.key] == b {
		delete(c.open, b.key)
	}
	var items []string
	for _, it := range b.order {
		if b.items[it] > 0 {
			items = append(items, it)
		}
	}
	prio := b.prio
	c.mu.Unlock()
	if werr != nil {
		if c.g.ctx.Err() != nil {
			werr = ErrClosed // the batch's context ends with the gateway
		}
		b.err = c.g.waitFailed(callSpec{action: ActionAssignPrivateIPAddresses}, nil, werr)
		return
	}
	if len(items) == 0 {
		c.g.lim.refund(b.ticket)
		return
	}
	in := &ec2.AssignPrivateIpAddressesInput{NetworkInterfaceId: aws.String(b.key.eni)}
	if b.key.kind == assignIPs {
		in.PrivateIpAddresses = items
	} else {
		in.Ipv4Prefixes = items
	}
	spec := callSpec{action: ActionAssignPrivateIPAddresses, prio: prio, eni: b.key.eni}
	b.err = c.g.call(b.ctx, spec, b.ticket, func(ctx context.Context) error {
		_, err := c.g.client.AssignPrivateIpAddresses(ctx, in)
		return err
	})
}

func dedup(items []string) []string {
	seen := make(map[string]bool, len(items))
	out := make([]string, 0, len(items))
	for _, it := range items {
		if !seen[it] {
			seen[it] = true
			out = append(out, it)
		}
	}
	return out
}
