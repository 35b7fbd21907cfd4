package ctl

import (
	"context"
	"io"
	"time"

	"github.com/spf13/cobra"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Event is something the leader did or refused that an admin should see (ListEvents).
type Event struct {
	FirstTime *time.Time `json:"first_time"`
	LastTime  *time.Time `json:"last_time"`
	Count     uint32     `json:"count"`
	// Type is "Normal" or "Warning"; Reason CamelCase ("PodSubnetSpillover", "NoPodSubnet").
	Type     string `json:"type"`
	Reason   string `json:"reason"`
	NodeName string `json:"node_name"`
	SubnetID string `json:"subnet_id"`
	Message  string `json:"message"`
}

func eventsCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events",
		Short: "List the leader's recent events: pod subnet spill-over, nodes refused for want of a pod subnet",
		Long: `
Events live in the leader's memory (a standby sends this to the leader), oldest first; repeats
within five minutes are folded (COUNT, LAST). --node and --subnet filter.`,
	}
	node := cmd.Flags().String("node", "", "only events about this node")
	subnet := cmd.Flags().String("subnet", "", "only events about this subnet")
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		resp, err := call(ctx, c, "list events", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.ListEventsResponse, error) {
			return a.ListEvents(ctx, &ipledgerv1.ListEventsRequest{NodeName: *node, SubnetId: *subnet})
		})
		if err != nil {
			return err
		}
		docs := make([]Event, 0, len(resp.GetEvents()))
		for _, e := range resp.GetEvents() {
			docs = append(docs, Event{FirstTime: timePtr(e.GetFirstTime()), LastTime: timePtr(e.GetLastTime()), Count: e.GetCount(),
				Type: e.GetType(), Reason: e.GetReason(), NodeName: e.GetNodeName(), SubnetID: e.GetSubnetId(), Message: e.GetMessage()})
		}
		now := time.Now()
		return c.emit(docs, func(w io.Writer) {
			row(w, "LAST", "TYPE", "REASON", "COUNT", "NODE", "SUBNET", "MESSAGE")
			for _, e := range docs {
				row(w, ago(e.LastTime, now), e.Type, e.Reason, e.Count, orDash(e.NodeName), orDash(e.SubnetID), e.Message)
			}
		})
	})
}

func init() { register("", eventsCmd) }
