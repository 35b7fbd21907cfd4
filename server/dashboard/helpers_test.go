package dashboard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/config"
	"github.com/ipledger/ipledger/server/dashboard"
	"github.com/ipledger/ipledger/server/ec2sim"
	"github.com/ipledger/ipledger/server/servertest"
)

// startDev starts servertest's dev replica without instance checks' fast pace (the dashboard
// tests keep their nodes) and waits until it leads.
func startDev(t *testing.T) *server.Server {
	t.Helper()
	return servertest.StartDev(t, func(c *config.Config) { c.InstanceCheckInterval = config.Duration(time.Minute) })
}

// serveDashboard runs a dashboard of its own over the replica's AdminServer (sampling every
// sampleEvery) on a loopback listener. It returns the base URL and the paths a browser
// (a Chrome user agent) requested of it.
func serveDashboard(t *testing.T, s *server.Server, sampleEvery time.Duration) (string, *dashboard.Dashboard, func() []string) {
	t.Helper()
	d := dashboard.New(api.NewAdminServer(s), dashboard.Options{SampleEvery: sampleEvery, History: time.Hour, Logger: servertest.Logger(t)})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	var mu sync.Mutex
	var paths []string
	h := d.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.UserAgent(), "Chrome") {
			mu.Lock()
			paths = append(paths, r.URL.Path)
			mu.Unlock()
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, d, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), paths...)
	}
}

// startSim starts an EC2 simulator of the default scenario without throttling.
func startSim(t *testing.T) *ec2sim.Server {
	t.Helper()
	sim, err := ec2sim.Start(ec2sim.Config{Scenario: ec2sim.DefaultScenario(), Logger: servertest.Logger(t)}, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

// agent is servertest's agent, registered and syncing from the start.
type agent struct{ *servertest.Agent }

func startAgent(t *testing.T, conn *grpc.ClientConn, inst ec2sim.InstanceInfo) *agent {
	t.Helper()
	a := servertest.NewAgent(t, conn, inst)
	a.Register()
	a.Sync()
	return &agent{a}
}

// active returns the pool's ACTIVE secondary addresses, sorted.
func (a *agent) active() []string {
	return servertest.Addresses(a.Pool(), ipledgerv1.LeaseState_LEASE_STATE_ACTIVE)
}

// runPods makes n pods use addresses on the agent's node (it is told only the count): when the
// pool is short they wait first and take addresses as it grows. Fewer pods than before free
// addresses without a moment where none is in use.
func (a *agent) runPods(n int) {
	a.T.Helper()
	if len(a.active()) < n {
		a.ReportIPs(nil, n)
		servertest.WaitFor(a.T, 15*time.Second, fmt.Sprintf("%d addresses on %s", n, a.Name()), func() bool { return len(a.active()) >= n })
	}
	a.ReportIPs(a.active()[:n], 0)
}

// getDocument fetches and decodes the JSON document twice: as the typed Document and as plain
// maps (to check the field names themselves).
func getDocument(t *testing.T, url string) (*dashboard.Document, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET %s: %d %s: %s", url, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	var doc dashboard.Document
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	return &doc, raw
}

func get(t *testing.T, url string) (int, http.Header, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, string(b)
}
