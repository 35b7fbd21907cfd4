package allocator

import (
	"context"
	"log/slog"
	"slices"
	"time"
)

// Event types, as Kubernetes Events'.
const (
	EventNormal  = "Normal"
	EventWarning = "Warning"
)

// Event reasons.
const (
	// ReasonPodSubnetSpillover: a pod subnet had no room, so a new ENI went to the next one.
	ReasonPodSubnetSpillover = "PodSubnetSpillover"
	// ReasonPodSubnetsExhausted: every pod subnet of a node's zone is out of room.
	ReasonPodSubnetsExhausted = "PodSubnetsExhausted"
	// ReasonNoPodSubnet: a node's policy gives its zone no pod subnet; the node is refused.
	ReasonNoPodSubnet = "NoPodSubnet"
)

// Event is something the leader did or refused that an admin should see. Repeats (same type,
// reason, node, subnet) within eventFold are folded into one (Count, LastTime).
type Event struct {
	FirstTime, LastTime time.Time
	Count               int
	Type, Reason        string
	Node, Subnet        string
	Message             string
}

const (
	eventFold = 5 * time.Minute
	maxEvents = 512
)

// events is the leader's recent events, oldest first (a leaf lock).
type events struct {
	mu   mutex
	list []Event
}

// record adds an event (or folds it into a recent repeat) and logs it.
func (a *Allocator) record(typ, reason, node, subnet, msg string) {
	now := a.now()
	level := slog.LevelInfo
	if typ == EventWarning {
		level = slog.LevelWarn
	}
	a.log.Log(context.Background(), level, msg, "event", reason, "node", node, "subnet", subnet)
	a.events.mu.Lock()
	defer a.events.mu.Unlock()
	for i := len(a.events.list) - 1; i >= 0; i-- {
		e := &a.events.list[i]
		if now.Sub(e.LastTime) > eventFold {
			break
		}
		if e.Type == typ && e.Reason == reason && e.Node == node && e.Subnet == subnet {
			e.Count++
			e.LastTime, e.Message = now, msg
			return
		}
	}
	a.events.list = append(a.events.list, Event{FirstTime: now, LastTime: now, Count: 1, Type: typ, Reason: reason, Node: node, Subnet: subnet, Message: msg})
	if len(a.events.list) > maxEvents {
		a.events.list = slices.Delete(a.events.list, 0, len(a.events.list)-maxEvents)
	}
}

// Events returns the recent events about a node and/or subnet ("" for any), oldest first.
func (a *Allocator) Events(node, subnet string) []Event {
	a.events.mu.Lock()
	defer a.events.mu.Unlock()
	var out []Event
	for _, e := range a.events.list {
		if (node == "" || e.Node == node) && (subnet == "" || e.Subnet == subnet) {
			out = append(out, e)
		}
	}
	slices.SortStableFunc(out, func(x, y Event) int { return x.LastTime.Compare(y.LastTime) })
	return out
}
