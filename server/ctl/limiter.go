package ctl

import (
	"context"
	"fmt"
	"github.com/spf13/cobra"
	"io"
	"strings"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func limiterCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "limiter",
		Short: "Show the one EC2 limiter: buckets, queue by priority, throttles, calls",
		Long: `
Only the leader calls EC2, so a standby sends this to the leader. Buckets mirror EC2's token
buckets: REFILL/S is EC2's rate, EFFECTIVE/S the rate the server paces itself at (lower after
RequestLimitExceeded, recovering gradually). The queue lists calls waiting per priority, highest
first. Calls are counted by action and outcome ("ok", "throttled" or the EC2 error code).`,
	}
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		st, err := call(ctx, c, "get limiter", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.LimiterState, error) {
			return a.GetLimiter(ctx, &ipledgerv1.GetLimiterRequest{})
		})
		if err != nil {
			return err
		}
		doc := limiterDoc(st)
		return c.emit(doc, func(w io.Writer) { limiterTable(w, doc, time.Now()) })
	})
}

func limiterTable(w io.Writer, l Limiter, now time.Time) {
	row(w, "BUCKET", "CAPACITY", "REFILL/S", "EFFECTIVE/S", "TOKENS", "ACTIONS")
	for _, b := range l.Buckets {
		row(w, b.Name, b.Capacity, rate(b.RefillPerSecond), rate(b.EffectiveRefillPerSecond), fmt.Sprintf("%.1f", b.Tokens), actionsText(b.Actions))
	}
	row(w)
	row(w, "PRIORITY", "WAITING")
	for _, q := range l.Queue {
		row(w, q.Priority, q.Waiting)
	}
	row(w)
	row(w, "THROTTLED", "ACTION")
	for _, t := range l.RecentThrottles {
		row(w, ago(t.Time, now), t.Action)
	}
	if len(l.RecentThrottles) == 0 {
		row(w, "(none recently)")
	}
	row(w, fmt.Sprintf("throttled in total: %d", l.ThrottledTotal))
	row(w)
	row(w, "ACTION", "OUTCOME", "CALLS")
	for _, cc := range l.Calls {
		row(w, cc.Action, cc.Outcome, cc.Count)
	}
	if len(l.Calls) == 0 {
		row(w, "(no calls yet)")
	}
}

// actionsText keeps a bucket's action list short in tables.
func actionsText(actions []string) string {
	const show = 3
	if len(actions) == 0 {
		return "-"
	}
	if len(actions) <= show {
		return strings.Join(actions, ",")
	}
	return fmt.Sprintf("%s,... (%d)", strings.Join(actions[:show], ","), len(actions))
}
func init() { register("", limiterCmd) }
