package store

import (
	"context"
	"log/slog"
	"slices"
	"sort"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newZapLogger returns a zap logger (what etcd's client and server log through) that forwards
// entries at min or above to the slog logger.
// quiet, when set and true, demotes every entry to debug (an embedded etcd shutting down
// reports its closed listeners as errors).
func newZapLogger(ctx context.Context, logger *slog.Logger, min zapcore.Level, quiet func() bool) *zap.Logger {
	// zap gives no context with an entry; the handler gets the caller's context values
	// without its cancellation.
	return zap.New(&slogCore{ctx: context.WithoutCancel(ctx), logger: logger, min: min, quiet: quiet})
}

// benign are etcd warnings that say nothing useful about a loopback dev/test member.
var benign = map[string]bool{
	"Running http and grpc server on single port. This is not recommended for production.": true,
	"simple token is not cryptographically signed":                                         true,
}

type slogCore struct {
	ctx    context.Context
	logger *slog.Logger
	min    zapcore.Level
	quiet  func() bool
	attrs  []slog.Attr
}

var _ zapcore.Core = (*slogCore)(nil)

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return l >= c.min || c.logger.Enabled(c.ctx, slog.LevelDebug)
}

// level is the slog level an entry is logged at, and whether it is logged at all.
func (c *slogCore) level(ent zapcore.Entry) (slog.Level, bool) {
	if ent.Level < c.min || benign[ent.Message] || c.quiet != nil && c.quiet() {
		return slog.LevelDebug, ent.Level >= zapcore.InfoLevel && c.logger.Enabled(c.ctx, slog.LevelDebug)
	}
	l := slogLevel(ent.Level)
	return l, c.logger.Enabled(c.ctx, l)
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	clone := *c
	clone.attrs = append(slices.Clip(c.attrs), fieldAttrs(fields)...)
	return &clone
}

func (c *slogCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if _, ok := c.level(ent); ok {
		return ce.AddCore(ent, c)
	}
	return ce
}

func (c *slogCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	l, _ := c.level(ent)
	r := slog.NewRecord(ent.Time, l, ent.Message, 0)
	r.AddAttrs(c.attrs...)
	if ent.LoggerName != "" {
		r.AddAttrs(slog.String("logger", ent.LoggerName))
	}
	r.AddAttrs(fieldAttrs(fields)...)
	return c.logger.Handler().Handle(c.ctx, r)
}

func (c *slogCore) Sync() error { return nil }

func fieldAttrs(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range fields {
		f.AddTo(enc)
	}
	keys := make([]string, 0, len(enc.Fields))
	for k := range enc.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	attrs := make([]slog.Attr, 0, len(keys))
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, enc.Fields[k]))
	}
	return attrs
}
