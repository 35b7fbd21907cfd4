package server

import (
	"context"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpHandler serves /metrics, /healthz (the process answers), /readyz (etcd has quorum and
// a leader is known, or this replica leads), open to anyone (Prometheus, probes), and the
// dashboard and its JSON (everything else), for loopback clients or a bearer token only.
func (s *Server) httpHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := s.storeHealth(ctx); err != nil {
			http.Error(w, "not ready: etcd: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		if !s.IsLeader() && s.LeaderAddress() == "" {
			http.Error(w, "not ready: no leader known", http.StatusServiceUnavailable)
			return
		}
		role := "standby"
		if s.IsLeader() {
			role = "leader"
		}
		w.Write([]byte("ready (" + role + ")\n"))
	})
	mux.Handle("/", s.dashboardGuard(s.dash.Handler()))
	return mux
}
