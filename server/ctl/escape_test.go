package ctl

import (
	"bytes"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"sigs.k8s.io/yaml"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/servertest"
)

// hostile are names a forged usage report (or any server string) could carry: terminal
// escapes (7-bit ESC and 8-bit CSI), a carriage return and a line feed that forge a row, a tab
// that forges a column, BEL, DEL, NEL, a bidirectional override, a zero-width space, a line
// separator and a byte that is not UTF-8.
var hostile = []string{
	"web-0\x1b[2J\x1b[1;1H",
	"web-1\rkube-system  coredns-fake",
	"web-2\nkube-system\tfake-pod\t10.0.0.1",
	"bell\a", "del\x7f",
	"csi\u009b31m", "nel\u0085x",
	"\u202eevil", "zero\u200bwidth", "line\u2028sep",
	"bad\xffutf8",
}

// rawControl reports the first rune of out that a terminal would act on (line feeds between
// lines excepted), or -1.
func rawControl(out string) rune {
	for _, line := range strings.Split(out, "\n") {
		if !utf8.ValidString(line) {
			return utf8.RuneError
		}
		for _, r := range line {
			if !strconv.IsPrint(r) {
				return r
			}
		}
	}
	return -1
}

func TestCellAndEscapeText(t *testing.T) {
	for _, s := range []string{"ip-10-0-1-23.eu-west-1.compute.internal", "web-0", "held 3, in use 2", "ünïcödé", "-", ""} {
		if cell(s) != s || escapeText(s) != s {
			t.Errorf("%q is printable and must be left alone: cell %q, escapeText %q", s, cell(s), escapeText(s))
		}
	}
	for _, s := range hostile {
		c, e := cell(s), escapeText(s)
		if r := rawControl(c); r != -1 || strings.Contains(c, "\n") {
			t.Errorf("cell(%q) = %q keeps %U", s, c, r)
		}
		if r := rawControl(e); r != -1 || strings.Contains(e, "\n") {
			t.Errorf("escapeText(%q) = %q keeps %U", s, e, r)
		}
		// A cell is Go's quoted form: unambiguous, and it reads back as the exact value.
		if back, err := strconv.Unquote(c); err != nil || back != s {
			t.Errorf("cell(%q) = %s does not unquote to the value: %q %v", s, c, back, err)
		}
	}
	if got := escapeText("a\x1b[31mb\nc\xff\u202e"); got != `a\x1b[31mb\nc\xff\u202e` {
		t.Errorf("escapeText: %s", got)
	}
}

// The node table with pods whose names and namespaces are hostile: each pod stays one row
// of five cells, nothing reaches the terminal raw, and JSON and YAML carry the exact values.
func TestNodeTableEscapesServerStrings(t *testing.T) {
	d := &ipledgerv1.NodeDetail{
		Summary: &ipledgerv1.NodeSummary{NodeName: "node\x1b]0;owned\a", InstanceId: "i-0123456789abcdef0", Policy: "default\r"},
		Labels:  map[string]string{"team": "a\x1b[8m"},
	}
	for i, name := range hostile {
		d.Pods = append(d.Pods, &ipledgerv1.PodAddress{Ip: "10.0.0." + strconv.Itoa(i+10), PodNamespace: "ns\t" + strconv.Itoa(i), PodName: name, ContainerId: "c\x1b" + strconv.Itoa(i), Ifname: "eth0"})
	}
	doc := nodeDetailDoc(d)
	var out bytes.Buffer
	tw := newTable(&out)
	nodeTable(tw, doc, time.Now())
	tw.Flush()
	table := out.String()
	if r := rawControl(table); r != -1 {
		t.Fatalf("the table sends %U to the terminal:\n%s", r, table)
	}
	pods := tableRows(t, table, "NAMESPACE", "POD", "IP", "CONTAINER", "IFNAME")
	if len(pods) != len(hostile) {
		t.Fatalf("%d pods became %d rows (a forged row or a swallowed one):\n%s", len(hostile), len(pods), table)
	}
	for _, p := range doc.Pods {
		if want := cell(p.Name); !strings.Contains(table, want) {
			t.Errorf("pod %q is not shown as %s:\n%s", p.Name, want, table)
		}
	}
	for _, want := range []string{`"node\x1b]0;owned\a"`, `"default\r"`, `"team=a\x1b[8m"`} {
		if !strings.Contains(table, want) {
			t.Errorf("the table does not show %s:\n%s", want, table)
		}
	}

	// JSON and YAML stay exact.
	for _, format := range []string{"json", "yaml"} {
		var buf bytes.Buffer
		c := &cli{stdout: &buf, g: globals{output: format}}
		if err := c.emit(doc, func(w io.Writer) { t.Fatal("table for " + format) }); err != nil {
			t.Fatal(err)
		}
		var back NodeDetail
		var err error
		if format == "json" {
			err = json.Unmarshal(buf.Bytes(), &back)
		} else {
			err = yaml.Unmarshal(buf.Bytes(), &back)
		}
		if err != nil {
			t.Fatalf("%s: %v\n%s", format, err, buf.String())
		}
		if back.NodeName != doc.NodeName || back.Labels["team"] != "a\x1b[8m" {
			t.Errorf("%s changed the node: %q %v", format, back.NodeName, back.Labels)
		}
		if len(back.Pods) != len(doc.Pods) {
			t.Fatalf("%s has %d pods, want %d", format, len(back.Pods), len(doc.Pods))
		}
		for i := range back.Pods {
			want := doc.Pods[i].Name
			if !utf8.ValidString(want) {
				// JSON cannot carry bytes that are not UTF-8 (nor can protobuf strings, so the
				// server never sends them): encoding/json writes U+FFFD.
				want = strings.ToValidUTF8(want, "\ufffd")
			}
			if back.Pods[i].Name != want || back.Pods[i].Namespace != doc.Pods[i].Namespace || back.Pods[i].ContainerID != doc.Pods[i].ContainerID {
				t.Errorf("%s changed pod %q into %q", format, doc.Pods[i].Name, back.Pods[i].Name)
			}
		}
		if strings.ContainsRune(buf.String(), 0x1b) || strings.ContainsRune(buf.String(), 0x9b) {
			t.Errorf("%s carries a raw ESC or CSI:\n%s", format, buf.String())
		}
		if format == "json" {
			if r := rawControl(buf.String()); r != -1 {
				t.Errorf("JSON carries a raw %U", r)
			}
		}
	}
}

// End to end: the server refuses C0 controls in usage reports but not every character a
// terminal acts on (8-bit CSI, NEL, bidirectional overrides pass); ipledgerctl node escapes
// them, and its JSON has them exactly.
func TestNodeCommandEscapesWhatTheServerAccepts(t *testing.T) {
	s := startDev(t)
	addr := s.GRPCAddr()
	inst := servertest.Instances(s)[0]
	a := newTestAgent(t, servertest.Dial(t, addr), inst)
	a.Register()
	a.Sync()
	ips := a.waitAddresses(1)
	names := []string{"csi\u009b2J", "\u202eevil", "nel\u0085row"}
	a.Report([]*ipledgerv1.PodAddress{
		{Ip: ips[0], ContainerId: "c0", Ifname: "eth0", PodNamespace: "default", PodName: names[0]},
		{Ip: ips[0], ContainerId: "c1", Ifname: "eth1", PodNamespace: names[1], PodName: names[2]},
	}, 0)
	var d NodeDetail
	servertest.WaitFor(t, 10*time.Second, "the report", func() bool {
		r := ctl(t, addr, "node", a.Name(), "-o", "json")
		d = NodeDetail{}
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &d) == nil && len(d.Pods) == 2
	})
	got := map[string]bool{}
	for _, p := range d.Pods {
		got[p.Namespace], got[p.Name] = true, true
	}
	for _, n := range names {
		if !got[n] {
			t.Fatalf("JSON lost %q: %+v", n, d.Pods)
		}
	}
	r := mustCtl(t, 0, addr, "node", a.Name())
	if c := rawControl(r.stdout); c != -1 {
		t.Fatalf("ipledgerctl node sends %U to the terminal:\n%s", c, r.stdout)
	}
	for _, n := range names {
		if !strings.Contains(r.stdout, strconv.Quote(n)) {
			t.Errorf("the table does not show %q as %s:\n%s", n, strconv.Quote(n), r.stdout)
		}
	}
	if rows := tableRows(t, r.stdout, "NAMESPACE", "POD", "IP"); len(rows) != 2 {
		t.Errorf("two pods, %d rows:\n%s", len(rows), r.stdout)
	}
	// The server's error messages repeat what they were given: escaped on stderr too.
	for _, args := range [][]string{{"node", "x\x1b[2J\u009b1m"}, {"policy", "delete", "p\x1b]0;t\a"}} {
		r := ctl(t, addr, args...)
		if r.code == 0 || rawControl(r.stderr) != -1 || !strings.Contains(r.stderr, `\x1b`) {
			t.Errorf("%q: want a refusal with the escape shown: %s", args, r)
		}
	}
}
