package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/api"
)

// Source is what the dashboard reads: the read methods of AdminService, answered by this
// replica.
type Source interface {
	ListSubnets(context.Context, *ipledgerv1.ListSubnetsRequest) (*ipledgerv1.ListSubnetsResponse, error)
	ListNodes(context.Context, *ipledgerv1.ListNodesRequest) (*ipledgerv1.ListNodesResponse, error)
	GetLimiter(context.Context, *ipledgerv1.GetLimiterRequest) (*ipledgerv1.LimiterState, error)
	GetClusterStatus(context.Context, *ipledgerv1.GetClusterStatusRequest) (*ipledgerv1.ClusterStatus, error)
	ListPrewarms(context.Context, *ipledgerv1.ListPrewarmsRequest) (*ipledgerv1.ListPrewarmsResponse, error)
}

var _ Source = (*api.AdminServer)(nil)

// Defaults and bounds of Options.
const (
	DefaultSampleEvery = 5 * time.Second
	DefaultHistory     = time.Hour
	// MaxSamples bounds the history's memory: a History longer than MaxSamples intervals is
	// shortened to MaxSamples intervals.
	MaxSamples = 10000
	// RefreshEvery is how often the page fetches the document again.
	RefreshEvery = 3 * time.Second
	// readTimeout bounds each read of the Source.
	readTimeout = 5 * time.Second
)

// Options configure a Dashboard; zero values take the defaults.
type Options struct {
	// SampleEvery is the interval of the EC2 call history (default 5 s).
	SampleEvery time.Duration
	// History is how long the EC2 call history reaches back (default 1 h).
	History time.Duration
	// Now is the clock (default time.Now).
	Now    func() time.Time
	Logger *slog.Logger
}

// Dashboard serves the page and keeps the EC2 call history.
type Dashboard struct {
	src         Source
	now         func() time.Time
	log         *slog.Logger
	sampleEvery time.Duration
	history     time.Duration
	index       []byte
	static      fs.FS

	mu        sync.Mutex
	hist      *history
	lastState string
}

//go:embed web
var webFS embed.FS

// New returns a dashboard reading from src. Its history is empty until Run samples.
func New(src Source, opts Options) *Dashboard {
	if opts.SampleEvery <= 0 {
		opts.SampleEvery = DefaultSampleEvery
	}
	if opts.History <= 0 {
		opts.History = DefaultHistory
	}
	if opts.History < opts.SampleEvery {
		opts.History = opts.SampleEvery
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	capacity := int((opts.History + opts.SampleEvery - 1) / opts.SampleEvery)
	if capacity > MaxSamples {
		capacity = MaxSamples
	}
	index, err := webFS.ReadFile("web/index.html")
	if err != nil {
		panic(fmt.Sprintf("dashboard: embedded page missing: %v", err)) // a build error, not a runtime one
	}
	static, err := fs.Sub(webFS, "web/static")
	if err != nil {
		panic(fmt.Sprintf("dashboard: embedded assets missing: %v", err))
	}
	return &Dashboard{
		src: src, now: opts.Now, log: opts.Logger, sampleEvery: opts.SampleEvery,
		history: time.Duration(capacity) * opts.SampleEvery,
		index:   index, static: static,
		hist: newHistory(capacity, opts.Now()),
	}
}

// Run samples the EC2 limiter every SampleEvery until ctx ends; it returns nil then.
func (d *Dashboard) Run(ctx context.Context) error {
	d.mu.Lock()
	d.hist.lastAt = d.now() // the first interval starts now
	d.mu.Unlock()
	t := time.NewTicker(d.sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.sample(ctx)
		}
	}
}

// sample reads the limiter once and records the interval.
func (d *Dashboard) sample(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, readTimeout)
	st, err := d.src.GetLimiter(rctx, &ipledgerv1.GetLimiterRequest{})
	cancel()
	if ctx.Err() != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	state := d.hist.add(d.now(), st, err)
	if state != d.lastState {
		switch state {
		case StateUnavailable:
			d.log.Warn("dashboard: cannot read the EC2 limiter", "err", err)
		case StateStandby:
			d.log.Info("dashboard: standby; EC2 calls are made by the leader", "leader", leaderOf(err))
		default:
			d.log.Info("dashboard: sampling EC2 calls", "every", d.sampleEvery)
		}
		d.lastState = state
	}
}

// Handler serves the page, its assets and the JSON document.
func (d *Dashboard) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.serveIndex)
	mux.Handle("GET /static/", http.StripPrefix("/static/", noCache(http.FileServerFS(d.static))))
	mux.HandleFunc("GET /api/dashboard.json", d.serveJSON)
	return secure(mux)
}

// secure adds headers that keep the page from loading anything but its own assets.
func secure(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

func noCache(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

func (d *Dashboard) serveIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	w.Write(d.index)
}

func (d *Dashboard) serveJSON(w http.ResponseWriter, r *http.Request) {
	doc := d.Document(r.Context())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	if err := enc.Encode(doc); err != nil {
		d.log.Debug("dashboard: write document", "err", err)
	}
}

// Document is the JSON document of /api/dashboard.json (see the package doc).
type Document struct {
	GeneratedAt    time.Time `json:"generated_at"`
	RefreshSeconds float64   `json:"refresh_seconds"`
	Cluster        Cluster   `json:"cluster"`
	Subnets        []Subnet  `json:"subnets"`
	Nodes          []Node    `json:"nodes"`
	Prewarms       []Prewarm `json:"prewarms"`
	EC2            EC2       `json:"ec2"`
	Errors         []string  `json:"errors"`
}

// Cluster says which replica answered and who leads.
type Cluster struct {
	Name         string `json:"name"`
	Replica      string `json:"replica"`
	IsLeader     bool   `json:"is_leader"`
	Leader       string `json:"leader"`
	StoreHealthy bool   `json:"store_healthy"`
	StoreMessage string `json:"store_message"`
	Revision     int64  `json:"revision"`
	Version      string `json:"version"`
	Nodes        uint32 `json:"nodes"`
	Subnets      uint32 `json:"subnets"`
}

// Subnet is one subnet's budget.
type Subnet struct {
	SubnetID         string   `json:"subnet_id"`
	Name             string   `json:"name"`
	AvailabilityZone string   `json:"availability_zone"`
	CIDR             string   `json:"cidr"`
	Size             uint32   `json:"size"`
	Reserved         uint32   `json:"reserved"`
	Foreign          uint32   `json:"foreign"`
	Held             uint32   `json:"held"`
	ENIPrimary       uint32   `json:"eni_primary"`
	InUse            uint32   `json:"in_use"`
	Idle             uint32   `json:"idle"`
	PrewarmReserved  uint32   `json:"prewarm_reserved"`
	Free             uint32   `json:"free"`
	FreePrefixes     uint32   `json:"free_prefixes"`
	TotalPrefixes    uint32   `json:"total_prefixes"`
	MaxHeld          uint32   `json:"max_held"`
	BudgetCap        uint32   `json:"budget_cap"`
	KeepFree         uint32   `json:"keep_free"`
	Headroom         uint32   `json:"headroom"`
	Forecast         Forecast `json:"forecast"`
	// PodSubnetOf are the policies (and zones) whose nodes put their pods' ENIs here.
	PodSubnetOf []PodSubnetRole `json:"pod_subnet_of"`
}

// PodSubnetRole says that a subnet is a pod subnet of a policy in a zone.
type PodSubnetRole struct {
	Policy           string `json:"policy"`
	AvailabilityZone string `json:"availability_zone"`
}

// Forecast is the trend of a subnet's held addresses.
type Forecast struct {
	HeldPerHour             float64  `json:"held_per_hour"`
	TimeToExhaustionSeconds *float64 `json:"time_to_exhaustion_seconds"`
	WindowSeconds           float64  `json:"window_seconds"`
}

// Node is one registered node.
type Node struct {
	NodeName         string     `json:"node_name"`
	InstanceID       string     `json:"instance_id"`
	InstanceType     string     `json:"instance_type"`
	AvailabilityZone string     `json:"availability_zone"`
	SubnetID         string     `json:"subnet_id"`
	Mode             string     `json:"mode"`
	Policy           string     `json:"policy"`
	ENIs             uint32     `json:"enis"`
	Held             uint32     `json:"held"`
	InUse            uint32     `json:"in_use"`
	Idle             uint32     `json:"idle"`
	TargetFree       uint32     `json:"target_free"`
	Deficit          uint32     `json:"deficit"`
	Connected        bool       `json:"connected"`
	Draining         bool       `json:"draining"`
	LastReport       *time.Time `json:"last_report"`
	RegisteredAt     *time.Time `json:"registered_at"`
}

// Prewarm is one pre-warm reservation.
type Prewarm struct {
	ID                string     `json:"id"`
	SubnetID          string     `json:"subnet_id"`
	AvailabilityZone  string     `json:"availability_zone"`
	InstanceType      string     `json:"instance_type"`
	NodeCount         uint32     `json:"node_count"`
	AddressesPerNode  uint32     `json:"addresses_per_node"`
	State             string     `json:"state"`
	ReservedAddresses uint32     `json:"reserved_addresses"`
	ENIs              int        `json:"enis"`
	ENIsReady         int        `json:"enis_ready"`
	ExpiresAt         *time.Time `json:"expires_at"`
}

// EC2 is the limiter's state and the history of calls.
type EC2 struct {
	State              string      `json:"state"`
	Leader             string      `json:"leader"`
	Message            string      `json:"message"`
	SampleEverySeconds float64     `json:"sample_every_seconds"`
	HistorySeconds     float64     `json:"history_seconds"`
	Actions            []string    `json:"actions"`
	Samples            []Sample    `json:"samples"`
	Totals             []CallCount `json:"totals"`
	ThrottledInHistory uint64      `json:"throttled_in_history"`
	ThrottledTotal     uint64      `json:"throttled_total"`
	Buckets            []Bucket    `json:"buckets"`
	Queue              []Queue     `json:"queue"`
	RecentThrottles    []Throttle  `json:"recent_throttles"`
}

// Sample is one interval of the history.
type Sample struct {
	Time      time.Time         `json:"time"`
	Seconds   float64           `json:"seconds"`
	State     string            `json:"state"`
	Calls     map[string]uint64 `json:"calls"`
	Total     uint64            `json:"total"`
	Throttled uint64            `json:"throttled"`
	Errors    uint64            `json:"errors"`
}

// CallCount is a number of calls of one action with one outcome.
type CallCount struct {
	Action  string `json:"action"`
	Outcome string `json:"outcome"`
	Count   uint64 `json:"count"`
}

// Bucket is one of the limiter's token buckets.
type Bucket struct {
	Name                     string   `json:"name"`
	Capacity                 uint32   `json:"capacity"`
	Tokens                   float64  `json:"tokens"`
	RefillPerSecond          float64  `json:"refill_per_second"`
	EffectiveRefillPerSecond float64  `json:"effective_refill_per_second"`
	Actions                  []string `json:"actions"`
}

// Queue is how many calls wait at one priority.
type Queue struct {
	Priority string `json:"priority"`
	Waiting  uint32 `json:"waiting"`
}

// Throttle is one throttled call.
type Throttle struct {
	Time   time.Time `json:"time"`
	Action string    `json:"action"`
}

// Document reads the Source and the history into a document. Parts that cannot be read are
// named in Errors and left empty.
func (d *Dashboard) Document(ctx context.Context) *Document {
	ctx, cancel := context.WithTimeout(ctx, readTimeout)
	defer cancel()
	doc := &Document{
		GeneratedAt: d.now().UTC(), RefreshSeconds: RefreshEvery.Seconds(),
		Subnets: []Subnet{}, Nodes: []Node{}, Prewarms: []Prewarm{}, Errors: []string{},
	}
	fail := func(part string, err error) { doc.Errors = append(doc.Errors, part+": "+err.Error()) }

	if cs, err := d.src.GetClusterStatus(ctx, &ipledgerv1.GetClusterStatusRequest{}); err != nil {
		fail("cluster", err)
	} else {
		doc.Cluster = Cluster{
			Name: cs.GetClusterName(), Replica: cs.GetReplica(), IsLeader: cs.GetIsLeader(), Leader: cs.GetLeader(),
			StoreHealthy: cs.GetStoreHealthy(), StoreMessage: cs.GetStoreMessage(), Revision: cs.GetRevision(),
			Version: cs.GetVersion(), Nodes: cs.GetNodes(), Subnets: cs.GetSubnets(),
		}
	}
	if resp, err := d.src.ListSubnets(ctx, &ipledgerv1.ListSubnetsRequest{}); err != nil {
		fail("subnets", err)
	} else {
		for _, b := range resp.GetSubnets() {
			doc.Subnets = append(doc.Subnets, subnet(b))
		}
		sort.Slice(doc.Subnets, func(i, j int) bool { return doc.Subnets[i].SubnetID < doc.Subnets[j].SubnetID })
	}
	if resp, err := d.src.ListNodes(ctx, &ipledgerv1.ListNodesRequest{}); err != nil {
		fail("nodes", err)
	} else {
		for _, n := range resp.GetNodes() {
			doc.Nodes = append(doc.Nodes, node(n))
		}
		sort.Slice(doc.Nodes, func(i, j int) bool { return doc.Nodes[i].NodeName < doc.Nodes[j].NodeName })
	}
	if resp, err := d.src.ListPrewarms(ctx, &ipledgerv1.ListPrewarmsRequest{}); err != nil {
		fail("prewarms", err)
	} else {
		for _, p := range resp.GetReservations() {
			doc.Prewarms = append(doc.Prewarms, prewarm(p))
		}
	}
	d.fillEC2(ctx, doc)
	return doc
}

// fillEC2 reads the limiter now and copies the history.
func (d *Dashboard) fillEC2(ctx context.Context, doc *Document) {
	e := &doc.EC2
	e.SampleEverySeconds = d.sampleEvery.Seconds()
	e.HistorySeconds = d.history.Seconds()
	e.Buckets, e.Queue, e.RecentThrottles = []Bucket{}, []Queue{}, []Throttle{}
	st, err := d.src.GetLimiter(ctx, &ipledgerv1.GetLimiterRequest{})
	switch {
	case err == nil:
		e.State = StateLeader
		e.Leader = doc.Cluster.Replica
		e.Message = "this replica leads and makes every EC2 call"
		e.ThrottledTotal = st.GetThrottledTotal()
		for _, b := range st.GetBuckets() {
			e.Buckets = append(e.Buckets, Bucket{
				Name: b.GetName(), Capacity: b.GetCapacity(), Tokens: b.GetTokens(), RefillPerSecond: b.GetRefillPerSecond(),
				EffectiveRefillPerSecond: b.GetEffectiveRefillPerSecond(), Actions: append([]string{}, b.GetActions()...),
			})
		}
		for _, q := range st.GetQueue() {
			e.Queue = append(e.Queue, Queue{Priority: enumName(q.GetPriority().String(), "PRIORITY_"), Waiting: q.GetWaiting()})
		}
		for _, t := range st.GetRecentThrottles() {
			e.RecentThrottles = append(e.RecentThrottles, Throttle{Time: t.GetTime().AsTime(), Action: t.GetAction()})
		}
	case isNotLeader(err):
		e.State = StateStandby
		e.Leader = leaderOf(err)
		if e.Leader == "" {
			e.Leader = doc.Cluster.Leader
		}
		if e.Leader == "" {
			e.Message = "standby; no leader is known right now"
		} else {
			e.Message = "standby — EC2 calls are made by the leader at " + e.Leader
		}
	default:
		e.State = StateUnavailable
		e.Leader = doc.Cluster.Leader
		e.Message = "the EC2 limiter cannot be read: " + err.Error()
		doc.Errors = append(doc.Errors, "ec2: "+err.Error())
	}
	d.mu.Lock()
	d.hist.fill(e)
	d.mu.Unlock()
}

func subnet(b *ipledgerv1.SubnetBudget) Subnet {
	s := Subnet{
		SubnetID: b.GetSubnetId(), Name: b.GetTags()["Name"], AvailabilityZone: b.GetAvailabilityZone(), CIDR: b.GetCidr(),
		Size: b.GetSize(), Reserved: b.GetReserved(), Foreign: b.GetForeign(), Held: b.GetHeld(),
		ENIPrimary: b.GetEniPrimary(), InUse: b.GetInUse(), Idle: b.GetIdle(), PrewarmReserved: b.GetPrewarmReserved(),
		Free: b.GetFree(), FreePrefixes: b.GetFreePrefixes(), TotalPrefixes: totalPrefixes(b.GetCidr()),
		MaxHeld: b.GetMaxHeld(), BudgetCap: b.GetMaxHeld(), KeepFree: b.GetKeepFree(), Headroom: b.GetHeadroom(),
	}
	if s.BudgetCap == 0 {
		s.BudgetCap = s.Size
	}
	s.PodSubnetOf = []PodSubnetRole{}
	for _, r := range b.GetPodSubnetOf() {
		s.PodSubnetOf = append(s.PodSubnetOf, PodSubnetRole{Policy: r.GetPolicy(), AvailabilityZone: r.GetAvailabilityZone()})
	}
	if f := b.GetForecast(); f != nil {
		s.Forecast.HeldPerHour = f.GetHeldPerHour()
		s.Forecast.WindowSeconds = f.GetWindow().AsDuration().Seconds()
		if f.GetTimeToExhaustion() != nil {
			secs := f.GetTimeToExhaustion().AsDuration().Seconds()
			s.Forecast.TimeToExhaustionSeconds = &secs
		}
	}
	return s
}

// totalPrefixes is the number of aligned /28 blocks in an IPv4 CIDR (0 when it is smaller or
// not IPv4).
func totalPrefixes(cidr string) uint32 {
	p, err := netip.ParsePrefix(cidr)
	if err != nil || !p.Addr().Is4() || p.Bits() > 28 {
		return 0
	}
	return 1 << (28 - p.Bits())
}

func node(n *ipledgerv1.NodeSummary) Node {
	out := Node{
		NodeName: n.GetNodeName(), InstanceID: n.GetInstanceId(), InstanceType: n.GetInstanceType(),
		AvailabilityZone: n.GetAvailabilityZone(), SubnetID: n.GetSubnetId(),
		Mode: enumName(n.GetMode().String(), "ADDRESS_MODE_"), Policy: n.GetPolicy(), ENIs: n.GetEnis(),
		Held: n.GetHeld(), InUse: n.GetInUse(), Idle: n.GetIdle(), TargetFree: n.GetTargetFree(), Deficit: n.GetDeficit(),
		Connected: n.GetConnected(), Draining: n.GetDraining(),
	}
	if n.GetLastReport() != nil {
		t := n.GetLastReport().AsTime()
		out.LastReport = &t
	}
	if n.GetRegisteredAt() != nil {
		t := n.GetRegisteredAt().AsTime()
		out.RegisteredAt = &t
	}
	return out
}

func prewarm(p *ipledgerv1.PrewarmReservation) Prewarm {
	out := Prewarm{
		ID: p.GetId(), SubnetID: p.GetSubnetId(), AvailabilityZone: p.GetAvailabilityZone(), InstanceType: p.GetInstanceType(),
		NodeCount: p.GetNodeCount(), AddressesPerNode: p.GetAddressesPerNode(), State: p.GetState(),
		ReservedAddresses: p.GetReservedAddresses(), ENIs: len(p.GetEnis()),
	}
	for _, e := range p.GetEnis() {
		if e.GetState() == "ready" {
			out.ENIsReady++
		}
	}
	if p.GetExpiresAt() != nil {
		t := p.GetExpiresAt().AsTime()
		out.ExpiresAt = &t
	}
	return out
}

// enumName turns ADDRESS_MODE_SECONDARY_IP into secondary_ip.
func enumName(s, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(s, prefix))
}
