package ec2sim

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"sync"
	"time"
)

// ErrNoIMDS is returned by IMDSEndpoint for an instance without a metadata listener (unknown,
// terminated, or the server is closed).
var ErrNoIMDS = errors.New("ec2sim: no IMDS listener for instance")

// Server runs a Sim over HTTP: the EC2 endpoint on the listen address and one IMDS listener
// per running instance on 127.0.0.1.
type Server struct {
	sim      *Sim
	endpoint string
	httpSrv  *http.Server
	serveWG  sync.WaitGroup // Serve goroutines

	mu       sync.Mutex
	closed   bool
	inflight sync.WaitGroup // handlers; Add only under mu while !closed
	imds     map[string]*imdsListener
}

var _ instanceHooks = (*Server)(nil)

type imdsListener struct {
	srv      *http.Server
	endpoint string
}

// Start builds a Sim from cfg and serves it on listen (e.g. "127.0.0.1:0"), with an IMDS
// listener for every running instance.
func Start(cfg Config, listen string) (*Server, error) {
	sim, err := New(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("ec2sim: listen on %s: %w", listen, err)
	}
	s := &Server{
		sim:      sim,
		endpoint: "http://" + ln.Addr().String(),
		imds:     map[string]*imdsListener{},
	}
	s.httpSrv = &http.Server{Handler: s.track(sim.Handler()), ReadHeaderTimeout: 10 * time.Second}
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			sim.log.Error("ec2 endpoint stopped", "err", err)
		}
	}()
	sim.setHooks(s)
	for _, id := range sim.runningInstanceIDs() {
		s.instanceStarted(id)
	}
	sim.log.Info("ec2 simulator listening", "endpoint", s.endpoint, "profile", sim.Profile().Name, "time_scale", sim.scale)
	return s, nil
}

// Endpoint is the EC2 endpoint, "http://127.0.0.1:PORT".
func (s *Server) Endpoint() string { return s.endpoint }

// Sim is the simulator the server serves.
func (s *Server) Sim() *Sim { return s.sim }

// IMDSEndpoint is the metadata endpoint of a running instance, "http://127.0.0.1:PORT".
func (s *Server) IMDSEndpoint(instanceID string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.imds[instanceID]
	if !ok {
		return "", fmt.Errorf("%w %s", ErrNoIMDS, instanceID)
	}
	return l.endpoint, nil
}

// IMDSEndpoints maps every running instance to its metadata endpoint.
func (s *Server) IMDSEndpoints() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.imds))
	for id, l := range s.imds {
		out[id] = l.endpoint
	}
	return out
}

// Close stops every listener and waits for running handlers; pending injected latencies end
// at once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	listeners := s.imds
	s.imds = map[string]*imdsListener{}
	s.mu.Unlock()

	s.sim.setHooks(nil)
	s.sim.close()
	err := s.httpSrv.Close()
	ids := make([]string, 0, len(listeners))
	for id := range listeners {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		if cerr := listeners[id].srv.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	s.serveWG.Wait()
	s.inflight.Wait()
	if err != nil {
		return fmt.Errorf("ec2sim: close: %w", err)
	}
	return nil
}

// track counts running handlers so Close can wait for them.
func (s *Server) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			http.Error(w, "ec2sim: server closed", http.StatusServiceUnavailable)
			return
		}
		s.inflight.Add(1)
		s.mu.Unlock()
		defer s.inflight.Done()
		h.ServeHTTP(w, r)
	})
}

// instanceStarted opens the instance's IMDS listener.
func (s *Server) instanceStarted(id string) {
	s.mu.Lock()
	if s.closed || s.imds[id] != nil {
		s.mu.Unlock()
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.mu.Unlock()
		s.sim.log.Error("imds listen", "instance", id, "err", err)
		return
	}
	l := &imdsListener{endpoint: "http://" + ln.Addr().String()}
	l.srv = &http.Server{Handler: s.track(newIMDSHandler(s.sim, id)), ReadHeaderTimeout: 10 * time.Second}
	s.imds[id] = l
	s.serveWG.Add(1)
	go func() {
		defer s.serveWG.Done()
		if err := l.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.sim.log.Error("imds stopped", "instance", id, "err", err)
		}
	}()
	s.mu.Unlock()
	if !s.sim.setIMDSEndpoint(id, l.endpoint) {
		s.instanceStopped(id) // terminated meanwhile
		return
	}
	s.sim.log.Info("imds listening", "instance", id, "endpoint", l.endpoint)
}

// instanceStopped closes the instance's IMDS listener.
func (s *Server) instanceStopped(id string) {
	s.mu.Lock()
	l := s.imds[id]
	delete(s.imds, id)
	s.mu.Unlock()
	if l != nil {
		_ = l.srv.Close()
	}
}

func (s *Sim) runningInstanceIDs() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for _, id := range s.instOrder {
		if s.instances[id].state == "running" {
			out = append(out, id)
		}
	}
	return out
}

func (s *Sim) setIMDSEndpoint(id, endpoint string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	in, ok := s.instances[id]
	if !ok || in.state == "terminated" {
		return false
	}
	in.imdsEndpoint = endpoint
	return true
}

// ErrNotLoopback is returned by CheckLoopback for an address other machines could reach.
var ErrNotLoopback = errors.New("ec2sim: listen address is not loopback")

// CheckLoopback accepts listen addresses on 127.0.0.0/8, ::1 or localhost only: the simulator
// must not be reachable from other machines unless its operator insists.
func CheckLoopback(listen string) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("ec2sim: listen address %q: %w", listen, err)
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%w: %q", ErrNotLoopback, listen)
	}
	return nil
}
