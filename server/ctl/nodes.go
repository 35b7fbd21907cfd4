package ctl

import (
	"context"
	"fmt"
	"github.com/spf13/cobra"
	"io"
	"sort"
	"strings"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func nodesCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List registered nodes with their pod addresses and targets",
		Long: `
HELD, IN-USE and FREE count pod addresses (ENI primaries excluded); TARGET is the number of free
addresses the server aims to keep on the node and DEFICIT what it lacks to reach its target.
CONNECTED says whether the node's agent has its sync stream open to the leader (a standby
cannot know and says no). IDENTITY is how the agent proved its node: aws-iid (attested with the
instance identity document), certificate (a certificate of the client CA), "-" when unknown
(plaintext, or not seen yet); CERT-EXPIRES is when its certificate expires.
With a Kubernetes client on the server, BOUND-NO-IP counts the pods the scheduler bound to the
node that hold no address yet (the server assigns for them before their CNI ADD), and WAITING
those of them bound for 5 s or more: they wait, and carry a Kubernetes Event with the reason
('ipledgerctl node NODE' lists them). "-" when the server reads no Kubernetes API or does not
lead.`,
	}
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		resp, err := call(ctx, c, "list nodes", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.ListNodesResponse, error) {
			return a.ListNodes(ctx, &ipledgerv1.ListNodesRequest{})
		})
		if err != nil {
			return err
		}
		docs := make([]NodeSummary, 0, len(resp.GetNodes()))
		for _, n := range resp.GetNodes() {
			docs = append(docs, nodeSummaryDoc(n))
		}
		sort.Slice(docs, func(i, j int) bool { return docs[i].NodeName < docs[j].NodeName })
		now := time.Now()
		return c.emit(docs, func(w io.Writer) {
			row(w, "NODE", "INSTANCE", "TYPE", "AZ", "SUBNET", "MODE", "POLICY", "ENIS", "HELD", "IN-USE", "FREE", "TARGET", "DEFICIT", "BOUND-NO-IP", "WAITING", "CONNECTED", "DRAINING", "LAST-REPORT", "CAPACITY", "POD-SUBNETS", "IDENTITY", "CERT-EXPIRES")
			for _, n := range docs {
				podSubnets := "-"
				if len(n.PodSubnetIDs) > 0 {
					podSubnets = strings.Join(n.PodSubnetIDs, ",")
				}
				bound, waiting := "-", "-"
				if n.Kubernetes {
					bound, waiting = fmt.Sprint(n.PodsBoundWithoutAddress), fmt.Sprint(n.PodsWaiting)
				}
				row(w, n.NodeName, n.InstanceID, n.InstanceType, n.AZ, n.SubnetID, n.Mode, n.Policy, n.ENIs, n.Held, n.InUse, n.Idle,
					n.TargetFree, n.Deficit, bound, waiting, yesNo(n.Connected), yesNo(n.Draining), ago(n.LastReport, now),
					n.PodCapacity, podSubnets, orDash(n.IdentityMethod), until(n.CertificateNotAfter, now))
			}
		})
	})
}

func nodeCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "node NODE",
		ValidArgsFunction: c.completeArgs(completeNodes),
		Short:             "Show one node: ENIs, leased addresses and prefixes, pods, policy, supply problem",
		Long: `
With a Kubernetes client on the server, the last table lists the pods bound to the node that
hold no address yet: STATE is address-on-its-way for a pod bound less than 5 s ago, or
waiting:<reason> (SubnetExhausted, EC2Throttled, RefillInFlight, NodeDraining, NodeAtLimit: the
reason of the pod's Kubernetes Event) for one bound longer.`,
	}
	return c.leaf(cmd, 1, 1, func(ctx context.Context, args []string) error {
		d, err := call(ctx, c, "get node "+args[0], func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.NodeDetail, error) {
			return a.GetNode(ctx, &ipledgerv1.GetNodeRequest{NodeName: args[0]})
		})
		if err != nil {
			return err
		}
		doc := nodeDetailDoc(d)
		return c.emit(doc, func(w io.Writer) { nodeTable(w, doc, time.Now()) })
	})
}

func nodeTable(w io.Writer, d NodeDetail, now time.Time) {
	row(w, "Node:", d.NodeName)
	row(w, "Instance:", fmt.Sprintf("%s (%s, %s)", d.InstanceID, d.InstanceType, d.AZ))
	row(w, "Subnet:", d.SubnetID)
	row(w, "Mode:", d.Mode)
	pol := d.Policy
	if d.PolicyDetail != nil {
		pol += ": " + d.PolicyDetail.targets()
	}
	row(w, "Policy:", pol)
	row(w, "Labels:", kv(d.Labels))
	row(w, "Addresses:", fmt.Sprintf("held %d, in use %d, free %d (max %d)", d.Held, d.InUse, d.Idle, d.MaxAddresses))
	row(w, "Target:", fmt.Sprintf("%d free, deficit %d", d.TargetFree, d.Deficit))
	supply := "ok"
	if d.SupplyProblem != "" {
		supply = d.SupplyProblem + ": " + d.SupplyMessage
	} else if d.SupplyMessage != "" {
		supply = d.SupplyMessage
	}
	row(w, "Supply:", supply)
	row(w, "Connected:", fmt.Sprintf("%s (last report %s)", yesNo(d.Connected), ago(d.LastReport, now)))
	row(w, "Draining:", yesNo(d.Draining))
	identity := "unknown (plaintext, or the agent has not connected to this replica)"
	if d.IdentityMethod != "" {
		identity = d.IdentityMethod
		if d.CertificateNotAfter != nil {
			identity += fmt.Sprintf(", certificate expires %s (%s)", d.CertificateNotAfter.Format(time.RFC3339), until(d.CertificateNotAfter, now))
		}
	}
	row(w, "Identity:", identity)
	registered := "-"
	if d.Registered != nil {
		registered = fmt.Sprintf("%s (%s)", d.Registered.Format(time.RFC3339), ago(d.Registered, now))
	}
	row(w, "Registered:", registered)
	row(w, "Generation:", d.Generation)
	row(w)
	row(w, "DEVICE", "ENI", "SUBNET", "PRIMARY-IP", "ADDRESSES", "PREFIXES")
	for _, it := range d.Interfaces {
		dev := fmt.Sprint(it.DeviceIndex)
		if it.NetworkCardIndex != 0 {
			dev = fmt.Sprintf("%d/%d", it.NetworkCardIndex, it.DeviceIndex)
		}
		row(w, dev, it.ENIID, fmt.Sprintf("%s (%s)", it.SubnetID, orDash(it.SubnetCIDR)), it.PrimaryIP, len(it.Addresses), len(it.Prefixes))
	}
	row(w)
	row(w, "ENI", "LEASED", "STATE")
	leased := 0
	for _, it := range d.Interfaces {
		for _, a := range it.Addresses {
			row(w, it.ENIID, a.IP, a.State)
			leased++
		}
		for _, p := range it.Prefixes {
			row(w, it.ENIID, p.CIDR, p.State)
			leased++
		}
	}
	if leased == 0 {
		row(w, "(none)")
	}
	row(w)
	row(w, "NAMESPACE", "POD", "IP", "CONTAINER", "IFNAME")
	for _, p := range d.Pods {
		cid := p.ContainerID
		if len(cid) > 12 {
			cid = cid[:12]
		}
		row(w, orDash(p.Namespace), orDash(p.Name), p.IP, orDash(cid), orDash(p.Ifname))
	}
	if len(d.Pods) == 0 {
		row(w, "(none)")
	}
	if !d.Kubernetes {
		return
	}
	row(w)
	row(w, "NAMESPACE", "BOUND-POD", "UID", "BOUND", "STATE")
	for _, p := range d.BoundPods {
		state := "address-on-its-way"
		if p.Waiting {
			state = "waiting:" + p.WaitReason
		}
		row(w, orDash(p.Namespace), orDash(p.Name), orDash(p.UID), ago(p.BoundAt, now), state)
	}
	if len(d.BoundPods) == 0 {
		row(w, "(none)")
	}
}

func drainCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "drain NODE",
		ValidArgsFunction: c.completeArgs(completeNodes),
		Short:             "Stop giving a node addresses and release what no pod uses (--undo ends it)",
		Long: `
A drained node gets no new addresses; everything it holds that no pod uses is released through
the release handshake. --undo ends the drain. Prints the node afterwards (see 'help node').`,
	}
	fs := cmd.Flags()
	undo := fs.Bool("undo", false, "end the drain")
	return c.leaf(cmd, 1, 1, func(ctx context.Context, args []string) error {
		what := "drain node " + args[0]
		if *undo {
			what = "undrain node " + args[0]
		}
		d, err := call(ctx, c, what, func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.NodeDetail, error) {
			return a.DrainNode(ctx, &ipledgerv1.DrainNodeRequest{NodeName: args[0], Undo: *undo})
		})
		if err != nil {
			return err
		}
		doc := nodeDetailDoc(d)
		return c.emit(doc, func(w io.Writer) {
			state := "draining: it gets no new addresses; unused ones are being released"
			if !doc.Draining {
				state = "no longer draining"
			}
			fmt.Fprintf(w, "node %s is %s\n", cell(doc.NodeName), strings.TrimSpace(state))
		})
	})
}

func init() { register("", nodesCmd, nodeCmd, drainCmd) }
