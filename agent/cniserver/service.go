package cniserver

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/ipledger/ipledger/agent/internal/rpcerr"
	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/agent/pool"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// RouteTable is the route table that carries traffic of addresses on the ENI at deviceIndex.
func RouteTable(deviceIndex uint32) uint32 {
	return uint32(netconf.TableForDevice(int(deviceIndex)))
}

// Add hands an address to the attachment (the same one again for a known attachment), waiting
// for the allocator when the pool has none free.
func (s *Server) Add(ctx context.Context, req *ipledgerv1.CNIAddRequest) (*ipledgerv1.CNIAddResponse, error) {
	start := time.Now()
	if err := validateAdd(req); err != nil {
		s.cfg.Metrics.addFailed(ipledgerv1.Reason_INVALID_ARGUMENT.String())
		return nil, err
	}
	key := pool.Key{ContainerID: req.GetContainerId(), IfName: req.GetIfname()}
	pod := pool.PodInfo{Namespace: req.GetPodNamespace(), Name: req.GetPodName(), UID: req.GetPodUid()}
	a, isNew, err := s.cfg.Pool.Assign(key, pod)
	waited := false
	if errors.Is(err, pool.ErrNoFreeAddress) {
		waited = true
		wait := s.cfg.AddWait
		if w := req.GetWait(); w != nil && w.AsDuration() > 0 {
			wait = w.AsDuration()
		}
		a, err = s.wait(ctx, key, pod, wait)
		isNew = true
	}
	if err != nil {
		st := s.addError(key, err)
		reason, _ := rpcerr.Info(st)
		label := reason.String()
		if reason == ipledgerv1.Reason_REASON_UNSPECIFIED {
			label = status.Code(st).String()
		}
		s.cfg.Metrics.addFailed(label)
		s.log.Warn("CNI add failed", "container", key.ContainerID, "ifname", key.IfName,
			"pod", req.GetPodNamespace()+"/"+req.GetPodName(), "reason", label, "err", st)
		return nil, st
	}
	d := time.Since(start)
	s.cfg.Metrics.observeAdd(d, waited)
	if isNew {
		s.log.Debug("CNI add", "container", key.ContainerID, "ifname", key.IfName, "ip", a.IP,
			"eni", a.ENI.ID, "waited", waited, "took", d)
	}
	return &ipledgerv1.CNIAddResponse{
		Ip:          a.IP.String(),
		EniId:       a.ENI.ID,
		EniMac:      a.ENI.MAC,
		DeviceIndex: a.ENI.DeviceIndex,
		RouteTable:  RouteTable(a.ENI.DeviceIndex),
		Waited:      waited,
	}, nil
}

// addError turns an Add failure into the status the plugin gets.
func (s *Server) addError(key pool.Key, err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Errorf(codes.Internal, "add %s: %v", key, err)
}

// Del takes the attachment's address back. An attachment without one is success.
func (s *Server) Del(_ context.Context, req *ipledgerv1.CNIDelRequest) (*ipledgerv1.CNIDelResponse, error) {
	if err := validateAttachment("", req.GetContainerId(), req.GetIfname()); err != nil {
		return nil, err
	}
	key := pool.Key{ContainerID: req.GetContainerId(), IfName: req.GetIfname()}
	a, found, err := s.cfg.Pool.Release(key)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "del %s: %v", key, err)
	}
	if !found {
		if s.cfg.OnUnknownDel != nil {
			s.cfg.OnUnknownDel()
		}
		return &ipledgerv1.CNIDelResponse{}, nil
	}
	s.cfg.Metrics.released(1)
	s.log.Debug("CNI del", "container", key.ContainerID, "ifname", key.IfName, "ip", a.IP)
	return &ipledgerv1.CNIDelResponse{Ip: a.IP.String(), RouteTable: RouteTable(a.ENI.DeviceIndex)}, nil
}

// Check returns the attachment's address; NOT_FOUND when it has none.
func (s *Server) Check(_ context.Context, req *ipledgerv1.CNICheckRequest) (*ipledgerv1.CNICheckResponse, error) {
	if err := validateAttachment("", req.GetContainerId(), req.GetIfname()); err != nil {
		return nil, err
	}
	key := pool.Key{ContainerID: req.GetContainerId(), IfName: req.GetIfname()}
	a, ok := s.cfg.Pool.Lookup(key)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "attachment %s has no address", key)
	}
	return &ipledgerv1.CNICheckResponse{Ip: a.IP.String(), EniId: a.ENI.ID, RouteTable: RouteTable(a.ENI.DeviceIndex)}, nil
}

// GC takes back the address of every attachment not in valid_attachments.
func (s *Server) GC(_ context.Context, req *ipledgerv1.CNIGCRequest) (*ipledgerv1.CNIGCResponse, error) {
	valid := make([]pool.Key, 0, len(req.GetValidAttachments()))
	for i, va := range req.GetValidAttachments() {
		if err := validateAttachment(fmt.Sprintf("valid_attachments[%d].", i), va.GetContainerId(), va.GetIfname()); err != nil {
			return nil, err
		}
		valid = append(valid, pool.Key{ContainerID: va.GetContainerId(), IfName: va.GetIfname()})
	}
	released, err := s.cfg.Pool.GC(valid)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "gc: %v", err)
	}
	s.cfg.Metrics.released(len(released))
	resp := &ipledgerv1.CNIGCResponse{}
	for _, a := range released {
		resp.Released = append(resp.Released, &ipledgerv1.PodAddress{
			Ip: a.IP.String(), ContainerId: a.ContainerID, Ifname: a.IfName,
			PodNamespace: a.Pod.Namespace, PodName: a.Pod.Name, PodUid: a.Pod.UID,
			AssignedAt: timestamppb.New(a.AssignedAt),
		})
	}
	if len(released) > 0 {
		s.log.Info("CNI gc released attachments", "count", len(released), "valid", len(valid))
	}
	return resp, nil
}

// Status says whether an address can be had now: a free one in the pool, or an allocator to ask.
func (s *Server) Status(context.Context, *ipledgerv1.CNIStatusRequest) (*ipledgerv1.CNIStatusResponse, error) {
	free := s.cfg.Pool.Counts().Free
	connected, lastErr := false, "no allocator configured"
	if s.cfg.Supplier != nil {
		connected, lastErr = s.cfg.Supplier.ServerState()
	}
	resp := &ipledgerv1.CNIStatusResponse{Free: uint32(free), ServerConnected: connected, Ready: free > 0 || connected}
	switch {
	case free > 0:
	case s.cfg.Pool.Draining():
		resp.Ready = false
		resp.Reason = ipledgerv1.Reason_NODE_DRAINING
		resp.Message = "no free address and the node is being drained: the allocator gives it no new addresses"
	case !connected:
		resp.Reason = ipledgerv1.Reason_SERVER_UNREACHABLE
		resp.Message = "no free address and the allocator cannot be reached"
		if lastErr != "" {
			resp.Message += ": " + lastErr
		}
	}
	return resp, nil
}

// wait waits up to d for an address, asking the allocator (one request shared by all waiters).
func (s *Server) wait(ctx context.Context, key pool.Key, pod pool.PodInfo, d time.Duration) (pool.Assignment, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	s.addWaiting(1)
	waiting := true
	defer func() {
		if waiting {
			s.addWaiting(-1)
		}
	}()
	runDone := s.runDone()
	for {
		changed := s.cfg.Pool.Changed()
		// The pod stops counting as waiting before the pool can show it in use: a usage report
		// taken in between would count it twice, and the allocator would supply one address
		// too many.
		s.addWaiting(-1)
		waiting = false
		a, _, err := s.cfg.Pool.Assign(key, pod)
		if !errors.Is(err, pool.ErrNoFreeAddress) {
			return a, err
		}
		s.addWaiting(1)
		waiting = true
		var supplied <-chan struct{}
		var retryAt time.Time
		if !errors.Is(err, pool.ErrAwaitingRestore) {
			// While the pool waits for the first registration, the allocator is not asked:
			// the addresses it lacks may be running pods'.
			if _, cooling := s.cfg.Pool.NextFreeAt(); !cooling && s.full() {
				// The allocator just said the node holds all it may and nothing here becomes
				// free: answer now rather than after the whole wait.
				return pool.Assignment{}, s.waitError(ctx, key, time.Since(start).Round(time.Millisecond))
			}
			supplied, retryAt = s.kick(ctx)
		}
		var wake time.Time
		if t, ok := s.cfg.Pool.NextFreeAt(); ok {
			wake = t
		}
		if !retryAt.IsZero() && (wake.IsZero() || retryAt.Before(wake)) {
			wake = retryAt
		}
		var timer *time.Timer
		var timerC <-chan time.Time
		if !wake.IsZero() {
			timer = time.NewTimer(max(time.Until(wake), time.Millisecond))
			timerC = timer.C
		}
		var fail error
		select {
		case <-changed:
		case <-supplied:
		case <-timerC:
		case <-runDone:
			fail = status.Error(codes.Unavailable, "the agent is shutting down")
		case <-ctx.Done():
			fail = s.waitError(ctx, key, d)
		}
		if timer != nil {
			timer.Stop()
		}
		if fail != nil {
			return pool.Assignment{}, fail
		}
	}
}

// full reports whether the last request for addresses ended with NODE_AT_LIMIT moments ago
// (before its retry time: after it, the allocator is asked again).
func (s *Server) full() bool {
	s.mu.Lock()
	last, inflight, retryAt := s.lastErr, s.inflight, s.retryAt
	s.mu.Unlock()
	if last == nil || inflight || !time.Now().Before(retryAt) {
		return false
	}
	reason, _ := rpcerr.Info(last)
	return reason == ipledgerv1.Reason_NODE_AT_LIMIT
}

func (s *Server) runDone() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.runCtx == nil {
		return nil
	}
	return s.runCtx.Done()
}

func (s *Server) addWaiting(n int) {
	s.mu.Lock()
	s.waiting += n
	s.mu.Unlock()
	if s.cfg.OnWaitingChange != nil {
		s.cfg.OnWaitingChange()
	}
}

// kick starts a request for addresses unless one is in flight (its end is returned), the last
// one failed moments ago (the time of the next is returned), there is no allocator, or the node
// is drained.
func (s *Server) kick(ctx context.Context) (supplied <-chan struct{}, retryAt time.Time) {
	if s.cfg.Supplier == nil || s.cfg.Pool.Draining() {
		return nil, time.Time{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inflight {
		return s.done, time.Time{}
	}
	if now := time.Now(); now.Before(s.retryAt) {
		return nil, s.retryAt
	}
	if s.runCtx == nil {
		return nil, time.Time{}
	}
	// Leave the request a margin before the waiter's deadline so the allocator's reason arrives.
	timeout := s.cfg.AddWait
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		timeout = left - min(left/10, 500*time.Millisecond)
	}
	if timeout <= 0 {
		return nil, time.Time{}
	}
	count := uint32(max(s.waiting, 1))
	done := s.done
	s.inflight = true
	rctx, cancel := context.WithTimeout(s.runCtx, timeout)
	s.requests.Add(1)
	go func() {
		defer s.requests.Done()
		defer cancel()
		before := s.cfg.Pool.Generation()
		err := s.cfg.Supplier.RequestAddresses(rctx, count)
		s.mu.Lock()
		defer s.mu.Unlock()
		s.inflight = false
		s.lastErr = err
		switch {
		case err != nil:
			s.retryAt = time.Now().Add(s.cfg.SupplyRetry)
			s.log.Warn("request for addresses failed", "count", count, "err", err)
		case s.cfg.Pool.Generation() == before:
			// A success that brought no new pool: do not ask again at once.
			s.retryAt = time.Now().Add(s.cfg.SupplyRetry)
		default:
			s.retryAt = time.Time{}
		}
		close(s.done)
		s.done = make(chan struct{})
	}()
	return done, time.Time{}
}

// waitError explains why a wait for an address ended without one.
func (s *Server) waitError(ctx context.Context, key pool.Key, d time.Duration) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return status.FromContextError(ctx.Err()).Err()
	}
	prefix := fmt.Sprintf("no address for %s after waiting %v", key, d)
	fail := func(reason ipledgerv1.Reason, why string) error {
		code := rpcerr.CodeFor(reason)
		if code != codes.ResourceExhausted && code != codes.DeadlineExceeded {
			// Whatever else the allocator said, the pod may try again later.
			code = codes.Unavailable
		}
		return rpcerr.New(code, reason, prefix+": "+why, nil)
	}
	if s.cfg.Pool.Draining() {
		return fail(ipledgerv1.Reason_NODE_DRAINING, "the node is being drained and gets no new addresses")
	}
	if s.cfg.Pool.AwaitingRestore() {
		return fail(ipledgerv1.Reason_SERVER_UNREACHABLE,
			"the agent restarted and waits for its first registration with the allocator to learn which addresses running pods hold")
	}
	if s.cfg.Supplier == nil {
		return fail(ipledgerv1.Reason_SERVER_UNREACHABLE, "the pool is empty and no allocator is configured")
	}
	s.mu.Lock()
	last := s.lastErr
	s.mu.Unlock()
	if last == nil {
		return fail(ipledgerv1.Reason_SUPPLY_TIMEOUT, "the allocator did not supply an address in time")
	}
	reason, _ := rpcerr.Info(last)
	msg := status.Convert(last).Message()
	switch reason {
	case ipledgerv1.Reason_REASON_UNSPECIFIED, ipledgerv1.Reason_NOT_LEADER:
		return fail(ipledgerv1.Reason_SERVER_UNREACHABLE, "the allocator cannot be reached: "+msg)
	case ipledgerv1.Reason_SUBNET_EXHAUSTED:
		return fail(reason, "the subnet has no free address: "+msg)
	case ipledgerv1.Reason_BUDGET_EXHAUSTED:
		return fail(reason, "the subnet's budget allows no more addresses: "+msg)
	case ipledgerv1.Reason_NO_FREE_PREFIX_BLOCK:
		return fail(reason, "no free /28 block is left in the subnet: "+msg)
	case ipledgerv1.Reason_NODE_AT_LIMIT:
		return fail(reason, "the node holds the most addresses its instance type allows: "+msg)
	case ipledgerv1.Reason_EC2_THROTTLED:
		return fail(reason, "EC2 is throttling the account: "+msg)
	default:
		return fail(reason, msg)
	}
}
