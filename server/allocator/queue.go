package allocator

import (
	"context"
	"sync"
)

// workQueue runs work for keys (node names) on a fixed number of workers instead of a goroutine
// per key: a key added several times before a worker takes it runs once, and a key never runs on
// two workers at once (added while it runs, it runs again afterwards). Adding never blocks.
type workQueue struct {
	mu      mutex
	queue   []string
	queued  map[string]bool
	running map[string]bool
	again   map[string]bool
	ready   chan struct{} // a token: some key may be waiting
}

func newWorkQueue(name string, obs lockObserver) *workQueue {
	return &workQueue{mu: mutex{name: name, obs: obs}, queued: map[string]bool{}, running: map[string]bool{},
		again: map[string]bool{}, ready: make(chan struct{}, 1)}
}

// add queues key unless it is queued already.
func (q *workQueue) add(key string) {
	q.mu.Lock()
	switch {
	case q.queued[key]:
	case q.running[key]:
		q.again[key] = true
	default:
		q.queued[key] = true
		q.queue = append(q.queue, key)
	}
	q.mu.Unlock()
	q.signal()
}

func (q *workQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// take returns the next key to run and marks it running (false when none is queued).
func (q *workQueue) take() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.queue) == 0 {
		return "", false
	}
	key := q.queue[0]
	q.queue = q.queue[1:]
	delete(q.queued, key)
	q.running[key] = true
	if len(q.queue) > 0 {
		q.signal()
	}
	return key, true
}

// finish marks key done, queueing it again if it was added while it ran.
func (q *workQueue) finish(key string) {
	q.mu.Lock()
	delete(q.running, key)
	again := q.again[key]
	delete(q.again, key)
	q.mu.Unlock()
	if again {
		q.add(key)
	}
}

// len is how many keys wait.
func (q *workQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.queue)
}

// run runs work on workers goroutines until ctx ends, and returns when they all have.
func (q *workQueue) run(ctx context.Context, workers int, work func(ctx context.Context, key string)) {
	var wg sync.WaitGroup
	for range max(workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				key, ok := q.take()
				if !ok {
					select {
					case <-ctx.Done():
						return
					case <-q.ready:
						continue
					}
				}
				work(ctx, key)
				q.finish(key)
				if ctx.Err() != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
}
