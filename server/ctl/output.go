package ctl

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"
)

// emit writes doc as JSON or YAML, or calls table with an aligned writer for -o table.
func (c *cli) emit(doc any, table func(w io.Writer)) error {
	switch c.g.output {
	case "json":
		b, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
		_, err = fmt.Fprintf(c.stdout, "%s\n", escapeJSON(b))
		return err
	case "yaml":
		// From the JSON document, as sigs.k8s.io/yaml.Marshal does, but with the characters the
		// YAML reader refuses or changes (C1 controls such as U+009B; NEL, which it reads as a
		// line break) escaped first, so that every value is kept exactly.
		b, err := json.Marshal(doc)
		if err != nil {
			return fmt.Errorf("encode YAML: %w", err)
		}
		if b, err = yaml.JSONToYAML(escapeJSON(b)); err != nil {
			return fmt.Errorf("encode YAML: %w", err)
		}
		_, err = c.stdout.Write(b)
		return err
	default:
		tw := newTable(c.stdout)
		table(tw)
		return tw.Flush()
	}
}

// escapeJSON writes each rune of a JSON document that is not printable as its \u escape.
// encoding/json already escapes C0 controls and U+2028/U+2029; this adds the C1 controls, DEL,
// the bidirectional and other format characters. Outside strings a JSON document is ASCII, so
// only string contents change, and their values stay the same.
func escapeJSON(b []byte) []byte {
	if printable(string(b)) {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		switch {
		case r < 0x7f && r >= ' ' || r == '\n' || r == '\t' || r == '\r' || (r >= utf8.RuneSelf && strconv.IsPrint(r)):
			out = append(out, b[i:i+size]...)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		default:
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += size
	}
	return out
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
}

// row writes one tab-separated table row. Every cell is made safe for a terminal (cell): a
// pod name or any other string from the server cannot end the row, add a column or send the
// terminal an escape sequence.
func row(w io.Writer, cells ...any) {
	parts := make([]string, len(cells))
	for i, c := range cells {
		parts[i] = cell(fmt.Sprint(c))
	}
	fmt.Fprintln(w, strings.Join(parts, "\t"))
}

// printable reports whether s can go to a terminal as it is: valid UTF-8 of printable runes
// only (strconv.IsPrint: no C0 or C1 controls, DEL, tab, line or paragraph separators, nor
// format characters such as the bidirectional overrides U+202A..U+202E or zero-width spaces).
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return false
		}
	}
	return true
}

// cell is a table cell as it is printed: s itself when it is printable, else s in Go's quoted
// form ("web-0\x1b[2J", "a\nb", "\u202eevil"), so the escape shows instead of acting and the
// quotes tell it from a name that really contains a backslash. JSON and YAML output is never
// changed: their encoders escape control characters and keep the value exact.
func cell(s string) string {
	if printable(s) {
		return s
	}
	return strconv.Quote(s)
}

// escapeText makes free text (a message, an error from the server) safe for a terminal: each
// rune that is not printable, and each byte that is not UTF-8, is written as its escape
// (\x1b, \n, \u202e, \xff); the rest is unchanged.
func escapeText(s string) string {
	if printable(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !strconv.IsPrint(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

// enumName turns a proto enum name into the lower snake case ctl prints ("ADDRESS_MODE_PREFIX"
// with prefix "ADDRESS_MODE_" is "prefix").
func enumName(full, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(full, prefix))
}

func timePtr(ts *timestamppb.Timestamp) *time.Time {
	if ts == nil {
		return nil
	}
	t := ts.AsTime().UTC()
	return &t
}

func seconds(d *durationpb.Duration) float64 {
	if d == nil {
		return 0
	}
	return d.AsDuration().Seconds()
}

// human formats a duration with at most two units: "45s", "12m", "3h20m", "2d4h".
func human(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Second:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		m := int(d / time.Minute)
		if s := int((d % time.Minute) / time.Second); s != 0 && m < 10 {
			return fmt.Sprintf("%dm%ds", m, s)
		}
		return fmt.Sprintf("%dm", m)
	case d < 24*time.Hour:
		h, m := int(d/time.Hour), int((d%time.Hour)/time.Minute)
		if m == 0 {
			return fmt.Sprintf("%dh", h)
		}
		return fmt.Sprintf("%dh%dm", h, m)
	default:
		days, h := int(d/(24*time.Hour)), int((d%(24*time.Hour))/time.Hour)
		if h == 0 {
			return fmt.Sprintf("%dd", days)
		}
		return fmt.Sprintf("%dd%dh", days, h)
	}
}

// ago formats a past time relative to now ("-" when unset).
func ago(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	if d := now.Sub(*t); d >= 0 {
		return human(d) + " ago"
	}
	return "in " + human(t.Sub(now))
}

// until formats a future time relative to now ("-" when unset).
func until(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	if d := t.Sub(now); d > 0 {
		return "in " + human(d)
	}
	return human(now.Sub(*t)) + " ago"
}

// rate formats a float compactly ("5", "2.5", "0.125").
func rate(f float64) string {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return "-"
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// dash prints 0 as "-" (for optional limits).
func dash(n uint32) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatUint(uint64(n), 10)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// kv formats a map as sorted k=v pairs ("-" when empty).
func kv(m map[string]string) string {
	if len(m) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		parts = append(parts, k+"="+m[k])
	}
	return strings.Join(parts, ",")
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// nonNil keeps empty lists as [] rather than null in JSON and YAML.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
