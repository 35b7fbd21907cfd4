package server

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
)

// Refusals over a rate limit are logged at most once a second; other failures every time.
func TestRateLimitedCallsAreLoggedSparingly(t *testing.T) {
	var buf bytes.Buffer
	l := slogAdapter(slog.New(slog.NewTextHandler(&buf, nil)))
	for range 1000 {
		l.Log(context.Background(), logging.LevelWarn, "finished call", "grpc.method", "Sync", "grpc.code", "ResourceExhausted")
	}
	for range 3 {
		l.Log(context.Background(), logging.LevelWarn, "finished call", "grpc.method", "RegisterNode", "grpc.code", "Unavailable")
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var limited, other int
	for _, ln := range lines {
		switch {
		case strings.Contains(ln, "ResourceExhausted"):
			limited++
			if !strings.Contains(ln, "not logged") {
				t.Errorf("the one rate-limited line does not say that others are dropped: %s", ln)
			}
		case strings.Contains(ln, "Unavailable"):
			other++
		}
	}
	if limited != 1 || other != 3 {
		t.Fatalf("logged %d rate-limited and %d other failures, want 1 and 3:\n%s", limited, other, buf.String())
	}
}
