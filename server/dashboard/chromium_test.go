package dashboard_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"image/png"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/html"
	"google.golang.org/protobuf/types/known/durationpb"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/api"
	"github.com/ipledger/ipledger/server/dashboard"
	"github.com/ipledger/ipledger/server/servertest"
)

const (
	windowW, windowH = 1280, 1000
	chromiumTimeout  = 90 * time.Second
)

// findChromium returns Debian's chromium ($IPLEDGER_CHROMIUM first), or "" when it is not
// installed.
func findChromium() string {
	for _, p := range []string{os.Getenv("IPLEDGER_CHROMIUM"), "/usr/bin/chromium"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p
	}
	return ""
}

// chromiumBinary returns chromium, or skips the test when it is not installed (make test
// installs it).
func chromiumBinary(t *testing.T) string {
	t.Helper()
	bin := findChromium()
	if bin == "" {
		t.Skip("chromium is not installed (apt-get install chromium, or set IPLEDGER_CHROMIUM): the browser test of the dashboard cannot run")
	}
	return bin
}

// runChromium runs headless chromium on pageURL with extra (--screenshot=... or --dump-dom)
// and returns its standard output. Nothing may leave loopback: every name but 127.0.0.1 fails
// to resolve and every non-loopback request goes to a proxy that does not exist. Chromium and
// its helpers are killed when they overrun.
func runChromium(t *testing.T, bin, pageURL string, extra ...string) []byte {
	t.Helper()
	args := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
		"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
		"--proxy-server=http://127.0.0.1:9",
		"--user-data-dir=" + t.TempDir(),
		fmt.Sprintf("--window-size=%d,%d", windowW, windowH),
		"--virtual-time-budget=5000",
	}
	args = append(append(args, extra...), pageURL)
	ctx, cancel := context.WithTimeout(t.Context(), chromiumTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its own process group: helpers die with it
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	start := time.Now()
	err := cmd.Run()
	if cmd.Process != nil {
		// Helpers that outlive the browser (its group only: the group is chromium's own).
		if kerr := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); kerr != nil && !errors.Is(kerr, syscall.ESRCH) {
			t.Logf("kill chromium's process group: %v", kerr)
		}
	}
	if ctx.Err() != nil {
		t.Fatalf("chromium overran %s and was killed; stderr:\n%s", chromiumTimeout, tail(stderr.String(), 3000))
	}
	if err != nil {
		t.Fatalf("chromium %v: %v; stderr:\n%s", extra, err, tail(stderr.String(), 3000))
	}
	t.Logf("chromium %v took %s", extra, time.Since(start).Round(time.Millisecond))
	return stdout.Bytes()
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// dom is the parsed page with small query helpers.
type dom struct{ root *html.Node }

func parseDOM(t *testing.T, b []byte) dom {
	t.Helper()
	root, err := html.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("parse the dumped DOM: %v", err)
	}
	return dom{root}
}

func attr(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

func hasClass(n *html.Node, c string) bool {
	v, _ := attr(n, "class")
	for _, f := range strings.Fields(v) {
		if f == c {
			return true
		}
	}
	return false
}

// all returns the element nodes under n (n included) for which match holds.
func all(n *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	var walk func(*html.Node)
	walk = func(x *html.Node) {
		if x.Type == html.ElementNode && match(x) {
			out = append(out, x)
		}
		for c := x.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return out
}

func withAttr(tag, key, val string) func(*html.Node) bool {
	return func(n *html.Node) bool {
		v, ok := attr(n, key)
		return (tag == "" || n.Data == tag) && ok && v == val
	}
}

// text is the text under n, its text nodes joined by spaces.
func text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(x *html.Node) {
		if x.Type == html.TextNode {
			b.WriteString(x.Data)
			b.WriteString(" ")
		}
		for c := x.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return b.String()
}

// checkOnlyRelativeURLs fails when any element points outside the page's own origin.
func checkOnlyRelativeURLs(t *testing.T, d dom) {
	t.Helper()
	urlAttrs := map[string]bool{"src": true, "href": true, "action": true, "formaction": true, "poster": true, "data": true, "xlink:href": true, "srcset": true, "background": true}
	for _, n := range all(d.root, func(*html.Node) bool { return true }) {
		for _, a := range n.Attr {
			key := a.Key
			if a.Namespace != "" {
				key = a.Namespace + ":" + a.Key
			}
			v := strings.TrimSpace(a.Val)
			if key == "style" && strings.Contains(v, "url(") {
				t.Errorf("<%s style=%q> loads a resource", n.Data, v)
			}
			if !urlAttrs[key] && !urlAttrs[a.Key] {
				continue
			}
			u, err := url.Parse(v)
			if err != nil || u.IsAbs() || u.Host != "" || strings.HasPrefix(v, "//") || strings.HasPrefix(v, "/") {
				t.Errorf("<%s %s=%q> is not a relative URL", n.Data, key, v)
			}
		}
	}
}

// checkScreenshot decodes the PNG and fails when it is not the window's size or is blank.
func checkScreenshot(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s is not a PNG: %v", path, err)
	}
	if b := img.Bounds(); b.Dx() != windowW || b.Dy() != windowH {
		t.Fatalf("screenshot is %dx%d, want the window's %dx%d", b.Dx(), b.Dy(), windowW, windowH)
	}
	colours := map[uint32]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			r, g, bl, _ := img.At(x, y).RGBA()
			colours[(r>>8)<<16|(g>>8)<<8|bl>>8]++
		}
	}
	most, total := 0, (b.Dx()/2)*(b.Dy()/2)
	for _, n := range colours {
		most = max(most, n)
	}
	if len(colours) < 32 || float64(most) > 0.97*float64(total) {
		t.Fatalf("screenshot looks blank: %d colours, the commonest covers %d of %d sampled pixels", len(colours), most, total)
	}
	// The budget bars use the in-use blue: some of it must be on screen.
	if !hasColour(img, 0x25, 0x63, 0xeb) {
		t.Error("no in-use blue (#2563eb) anywhere in the screenshot: the budget bars were not drawn")
	}
}

func hasColour(img image.Image, r8, g8, b8 uint32) bool {
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			if r>>8 == r8 && g>>8 == g8 && bl>>8 == b8 {
				return true
			}
		}
	}
	return false
}

// keepArtifact copies a file to $IPLEDGER_ARTIFACTS_DIR when it is set.
func keepArtifact(t *testing.T, path string) {
	t.Helper()
	dir := os.Getenv("IPLEDGER_ARTIFACTS_DIR")
	if dir == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, filepath.Base(path))
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("kept %s", dst)
}

func TestPageInHeadlessChromium(t *testing.T) {
	bin := chromiumBinary(t)
	s := startDev(t)
	base, dash, requested := serveDashboard(t, s, 200*time.Millisecond)
	// Spread the work over a few intervals, so the chart shows calls over time.
	samples := func() int { return len(dash.Document(t.Context()).EC2.Samples) }
	later := func() {
		n := samples()
		servertest.WaitFor(t, 10*time.Second, "two more samples", func() bool { return samples() >= n+2 })
	}
	conn := servertest.Dial(t, s.GRPCAddr())
	admin := ipledgerv1.NewAdminServiceClient(conn)
	var agents []*agent
	for _, in := range servertest.Instances(s) {
		agents = append(agents, startAgent(t, conn, in))
	}
	for _, a := range agents {
		servertest.WaitFor(t, 15*time.Second, "a warm address on "+a.Name(), func() bool { return len(a.active()) >= 1 })
	}
	// Some pods, a budget cap and a pre-warm reservation, so every part of the bars shows.
	later()
	agents[1].runPods(4)
	later()
	agents[3].runPods(7)
	later()
	agents[1].runPods(2) // two pods end: the surplus goes back through the handshake
	later()
	if _, err := admin.SetSubnetBudget(t.Context(), &ipledgerv1.SetSubnetBudgetRequest{SubnetId: agents[3].Inst.SubnetID, MaxHeld: 96, KeepFree: 16}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Prewarm(t.Context(), &ipledgerv1.PrewarmRequest{
		SubnetId: agents[0].Inst.SubnetID, InstanceType: "m5.large", NodeCount: 2, AddressesPerNode: 5, Expiry: durationpb.New(time.Hour),
	}); err != nil {
		t.Fatal(err)
	}
	var doc *dashboard.Document
	var seen string
	defer func() {
		if t.Failed() {
			t.Logf("last document: %s", seen)
		}
	}()
	servertest.WaitFor(t, 30*time.Second, "pods, the pre-warm and a few samples in the document", func() bool {
		doc, _ = getDocument(t, base+"/api/dashboard.json")
		var inUse, prewarm uint32
		for _, sb := range doc.Subnets {
			inUse += sb.InUse
			prewarm += sb.PrewarmReserved
		}
		seen = fmt.Sprintf("in use %d, pre-warm reserved %d, %d reservations, %d samples", inUse, prewarm, len(doc.Prewarms), len(doc.EC2.Samples))
		return inUse == 9 && prewarm > 0 && len(doc.Prewarms) == 1 && len(doc.EC2.Samples) >= 10
	})

	pngPath := filepath.Join(t.TempDir(), "dashboard.png")
	runChromium(t, bin, base+"/", "--screenshot="+pngPath)
	keepArtifact(t, pngPath)
	checkScreenshot(t, pngPath)

	dumped := runChromium(t, bin, base+"/", "--dump-dom")
	if dir := os.Getenv("IPLEDGER_ARTIFACTS_DIR"); dir != "" {
		domPath := filepath.Join(t.TempDir(), "dashboard.html")
		if err := os.WriteFile(domPath, dumped, 0o644); err != nil {
			t.Fatal(err)
		}
		keepArtifact(t, domPath)
	}
	d := parseDOM(t, dumped)
	body := all(d.root, func(n *html.Node) bool { return n.Data == "body" })
	if len(body) != 1 {
		t.Fatal("no body in the dumped DOM")
	}
	if v, _ := attr(body[0], "data-renders"); v == "" || v == "0" {
		t.Fatalf("the page's script never rendered the document (data-renders=%q)", v)
	}

	// A bar per subnet whose segments carry the document's numbers, with the numbers in text.
	bars := all(d.root, func(n *html.Node) bool { return hasClass(n, "bar") })
	if len(bars) != len(doc.Subnets) {
		t.Fatalf("%d budget bars, want one per subnet (%d)", len(bars), len(doc.Subnets))
	}
	for _, sb := range doc.Subnets {
		bar := all(d.root, func(n *html.Node) bool { v, _ := attr(n, "data-subnet"); return v == sb.SubnetID && hasClass(n, "bar") })
		if len(bar) != 1 {
			t.Fatalf("no bar for %s", sb.SubnetID)
		}
		if label, _ := attr(bar[0], "aria-label"); !strings.Contains(label, sb.SubnetID) || !strings.Contains(label, "free "+comma(sb.Free)) {
			t.Errorf("bar of %s: aria-label %q", sb.SubnetID, label)
		}
		want := map[string]uint32{"reserved": sb.Reserved, "foreign": sb.Foreign, "eni_primary": sb.ENIPrimary, "in_use": sb.InUse,
			"idle": sb.Idle, "prewarm_reserved": sb.PrewarmReserved, "free": sb.Free}
		segs := all(bar[0], func(n *html.Node) bool { return hasClass(n, "seg") })
		if len(segs) != len(want) {
			t.Fatalf("bar of %s has %d segments, want %d", sb.SubnetID, len(segs), len(want))
		}
		for _, seg := range segs {
			kind, _ := attr(seg, "data-kind")
			v, _ := attr(seg, "data-value")
			if n, err := strconv.ParseUint(v, 10, 32); err != nil || uint32(n) != want[kind] {
				t.Errorf("%s: segment %s shows %q, want %d", sb.SubnetID, kind, v, want[kind])
			}
		}
		card := all(d.root, func(n *html.Node) bool {
			v, _ := attr(n, "data-subnet")
			return v == sb.SubnetID && n.Data == "article"
		})
		if len(card) != 1 {
			t.Fatalf("no card for %s", sb.SubnetID)
		}
		txt := strings.Join(strings.Fields(text(card[0])), " ")
		for _, wantText := range []string{sb.CIDR, sb.AvailabilityZone, "free " + comma(sb.Free), "in use by pods " + comma(sb.InUse),
			comma(sb.FreePrefixes) + " / " + comma(sb.TotalPrefixes), "headroom " + comma(sb.Headroom), "budget cap " + comma(sb.BudgetCap)} {
			if !strings.Contains(txt, wantText) {
				t.Errorf("card of %s lacks %q: %s", sb.SubnetID, wantText, txt)
			}
		}
	}

	// A row per node with its numbers.
	for _, n := range doc.Nodes {
		rows := all(d.root, withAttr("tr", "data-node", n.NodeName))
		if len(rows) != 1 {
			t.Fatalf("%d rows for node %s", len(rows), n.NodeName)
		}
		var cells []string
		for _, c := range all(rows[0], func(x *html.Node) bool { return x.Data == "td" || x.Data == "th" }) {
			cells = append(cells, strings.TrimSpace(text(c)))
		}
		want := []string{n.NodeName, n.InstanceType, n.AvailabilityZone, n.SubnetID, comma(n.ENIs), comma(n.Held), comma(n.InUse), comma(n.Idle), comma(n.TargetFree), comma(n.Deficit), "yes", "no"}
		if strings.Join(cells, "|") != strings.Join(want, "|") {
			t.Errorf("row of %s: %v, want %v", n.NodeName, cells, want)
		}
	}
	if ths := all(d.root, withAttr("th", "scope", "col")); len(ths) < 12 {
		t.Errorf("%d column headers, want the node table's 12 at least", len(ths))
	}
	if rows := all(d.root, withAttr("tr", "data-prewarm", doc.Prewarms[0].ID)); len(rows) != 1 {
		t.Error("no row for the pre-warm reservation")
	}

	// The EC2 chart with bars by action.
	charts := all(d.root, withAttr("svg", "id", "ec2-chart"))
	if len(charts) != 1 {
		t.Fatal("no EC2 chart")
	}
	if v, _ := attr(charts[0], "data-samples"); v == "" || v == "0" {
		t.Fatalf("the chart drew no samples (data-samples=%q)", v)
	}
	if rects := all(charts[0], func(n *html.Node) bool { _, ok := attr(n, "data-action"); return n.Data == "rect" && ok }); len(rects) == 0 {
		t.Fatal("the chart has no bars of calls")
	}
	if rows := all(d.root, withAttr("tr", "data-action", "AssignPrivateIpAddresses")); len(rows) != 1 {
		t.Error("no totals row for AssignPrivateIpAddresses")
	}
	state := all(d.root, withAttr("p", "id", "ec2-state"))
	if len(state) != 1 || !strings.Contains(text(state[0]), "leads") {
		t.Errorf("EC2 state line: %v", state)
	}

	// Offline: relative URLs only, and only the page's own resources were asked for.
	checkOnlyRelativeURLs(t, d)
	allowed := map[string]bool{"/": true, "/static/dashboard.css": true, "/static/dashboard.js": true, "/api/dashboard.json": true, "/favicon.ico": true}
	var sawDoc bool
	for _, p := range requested() {
		if !allowed[p] {
			t.Errorf("the browser asked for %s", p)
		}
		sawDoc = sawDoc || p == "/api/dashboard.json"
	}
	if !sawDoc {
		t.Error("the browser never fetched the document")
	}
}

// comma formats n as the page does (en-US thousands separators).
func comma(n uint32) string {
	s := strconv.FormatUint(uint64(n), 10)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// TestPageKeepsItsDataWhenARefreshFails: the document is served once, then the replica
// answers 503; the page keeps what it drew, says the refresh failed and raises an alert.
func TestPageKeepsItsDataWhenARefreshFails(t *testing.T) {
	bin := chromiumBinary(t)
	s := startDev(t)
	h := dashboard.New(api.NewAdminServer(s), dashboard.Options{Logger: servertest.Logger(t)}).Handler()
	var mu sync.Mutex
	docs := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/dashboard.json" {
			mu.Lock()
			docs++
			n := docs
			mu.Unlock()
			if n > 1 {
				http.Error(w, "dashboard test: replica gone", http.StatusServiceUnavailable)
				return
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)

	d := parseDOM(t, runChromium(t, bin, srv.URL+"/", "--dump-dom"))
	mu.Lock()
	fetched := docs
	mu.Unlock()
	if fetched < 2 {
		t.Fatalf("the page fetched the document %d times in 5 s of virtual time, want a refresh", fetched)
	}
	refresh := all(d.root, withAttr("p", "id", "refresh"))
	if len(refresh) != 1 || !hasClass(refresh[0], "stale") || !strings.Contains(text(refresh[0]), "Refresh failed") || !strings.Contains(text(refresh[0]), "HTTP 503") {
		t.Fatalf("refresh line: %v", text(refresh[0]))
	}
	alert := all(d.root, withAttr("p", "id", "errors"))
	if len(alert) != 1 || !strings.Contains(text(alert[0]), "Refresh failed") {
		t.Fatal("no alert about the failed refresh")
	}
	if _, hidden := attr(alert[0], "hidden"); hidden {
		t.Fatal("the alert is hidden")
	}
	if bars := all(d.root, func(n *html.Node) bool { return hasClass(n, "bar") }); len(bars) != 6 {
		t.Fatalf("%d bars after a failed refresh, want the 6 drawn before", len(bars))
	}
}
