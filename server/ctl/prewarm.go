package ctl

import (
	"context"
	"fmt"
	"github.com/spf13/cobra"
	"io"
	"math"
	"sort"
	"time"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"google.golang.org/protobuf/types/known/durationpb"
)

// DefaultPrewarmExpiry is how long a reservation lasts unless --expiry says otherwise.
const DefaultPrewarmExpiry = 30 * time.Minute

// placeFlags are --subnet / --az, of which exactly one is needed.
type placeFlags struct {
	subnet, az *string
}

func (c *cli) addPlaceFlags(cmd *cobra.Command, subnetUsage, azUsage string) placeFlags {
	fs := cmd.Flags()
	p := placeFlags{subnet: fs.String("subnet", "", subnetUsage), az: fs.String("az", "", azUsage)}
	_ = cmd.RegisterFlagCompletionFunc("subnet", c.completeFlag(completeSubnets))
	_ = cmd.RegisterFlagCompletionFunc("az", c.completeFlag(completeZones))
	return p
}

func (p placeFlags) check(cmd string) error {
	switch {
	case *p.subnet == "" && *p.az == "":
		return usagef(cmd, "%s: give --subnet or --az", cmd)
	case *p.subnet != "" && *p.az != "":
		return usagef(cmd, "%s: give --subnet or --az, not both", cmd)
	}
	return nil
}

// count checks a required positive count flag.
func count(cmd, name string, v uint) (uint32, error) {
	switch {
	case v == 0:
		return 0, usagef(cmd, "%s: --%s is required and must be at least 1", cmd, name)
	case v > math.MaxUint32:
		return 0, usagef(cmd, "%s: --%s %d is too large", cmd, name, v)
	}
	return uint32(v), nil
}

func prewarmCreateCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Reserve budget and pre-create ENIs for nodes that do not exist yet",
		Long: `
Reserves budget in a subnet (--subnet) or the availability zone's subnet with the most headroom
(--az) for --nodes nodes of --instance-type and, paced under the EC2 limit, pre-creates tagged
ENIs with --addresses-per-node addresses each. A node that registers there with that instance
type gets one attached instead of a create + assign. Unused reservations expire after --expiry
and their ENIs are deleted. Prints the reservation.`,
	}
	fs := cmd.Flags()
	place := c.addPlaceFlags(cmd, "subnet to reserve in", "availability zone: the server picks its subnet with the most headroom")
	itype := fs.String("instance-type", "", "instance type of the nodes to come (required)")
	nodes := fs.Uint("nodes", 0, "nodes to prepare for (required)")
	perNode := fs.Uint("addresses-per-node", 0, "pod addresses to pre-assign per node (required)")
	expiry := fs.Duration("expiry", DefaultPrewarmExpiry, "how long the reservation lasts if no node uses it")
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		const cmd = "prewarm create"
		if err := place.check(cmd); err != nil {
			return err
		}
		if *itype == "" {
			return usagef(cmd, "%s: --instance-type is required", cmd)
		}
		n, err := count(cmd, "nodes", *nodes)
		if err != nil {
			return err
		}
		k, err := count(cmd, "addresses-per-node", *perNode)
		if err != nil {
			return err
		}
		if *expiry <= 0 {
			return usagef(cmd, "%s: --expiry %s must be positive", cmd, *expiry)
		}
		req := &ipledgerv1.PrewarmRequest{
			SubnetId: *place.subnet, AvailabilityZone: *place.az, InstanceType: *itype,
			NodeCount: n, AddressesPerNode: k, Expiry: durationpb.New(*expiry),
		}
		r, err := call(ctx, c, "create pre-warm reservation", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.PrewarmReservation, error) {
			return a.Prewarm(ctx, req)
		})
		if err != nil {
			return err
		}
		doc := reservationDoc(r)
		return c.emit(doc, func(w io.Writer) { reservationTable(w, []Reservation{doc}, time.Now()) })
	})
}

func prewarmListCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List pre-warm reservations",
	}
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		resp, err := call(ctx, c, "list pre-warm reservations", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.ListPrewarmsResponse, error) {
			return a.ListPrewarms(ctx, &ipledgerv1.ListPrewarmsRequest{})
		})
		if err != nil {
			return err
		}
		docs := make([]Reservation, 0, len(resp.GetReservations()))
		for _, r := range resp.GetReservations() {
			docs = append(docs, reservationDoc(r))
		}
		sort.Slice(docs, func(i, j int) bool { return docs[i].ID < docs[j].ID })
		return c.emit(docs, func(w io.Writer) { reservationTable(w, docs, time.Now()) })
	})
}

func prewarmCancelCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "cancel ID",
		ValidArgsFunction: c.completeArgs(completeReservations),
		Short:             "End a pre-warm reservation now; its unused ENIs are deleted",
	}
	return c.leaf(cmd, 1, 1, func(ctx context.Context, args []string) error {
		r, err := call(ctx, c, "cancel pre-warm reservation "+args[0], func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.PrewarmReservation, error) {
			return a.CancelPrewarm(ctx, &ipledgerv1.CancelPrewarmRequest{Id: args[0]})
		})
		if err != nil {
			return err
		}
		doc := reservationDoc(r)
		return c.emit(doc, func(w io.Writer) { reservationTable(w, []Reservation{doc}, time.Now()) })
	})
}

func reservationTable(w io.Writer, docs []Reservation, now time.Time) {
	row(w, "ID", "SUBNET", "AZ", "TYPE", "NODES", "ADDR/NODE", "RESERVED", "ENIS", "STATE", "CREATED", "EXPIRES")
	for _, r := range docs {
		byState := map[string]int{}
		for _, e := range r.ENIs {
			byState[e.State]++
		}
		enis := fmt.Sprint(len(r.ENIs))
		if len(byState) > 0 {
			enis += " (" + kvInts(byState) + ")"
		}
		row(w, r.ID, r.SubnetID, r.AZ, r.InstanceType, r.NodeCount, r.AddressesPerNode, r.ReservedAddresses, enis, r.State,
			ago(r.CreatedAt, now), until(r.ExpiresAt, now))
	}
	if len(docs) == 0 {
		row(w, "(no reservations)")
	}
}

func kvInts(m map[string]int) string {
	s := ""
	for i, k := range sortedKeys(m) {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%d %s", m[k], k)
	}
	return s
}

func canfitCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "canfit",
		Short: "Ask whether the budget holds more nodes, and why not (exit 3 when not)",
		Long: `
Asks the server whether --nodes nodes with --pods-per-node pods each fit in a subnet (--subnet)
or in the cluster's subnets of an availability zone (--az), counting pod addresses, ENI
primaries and the warm floor; with --instance-type, per-node limits of the type are checked too.
With --policy naming a policy with pod subnets (needs --instance-type), the nodes' own addresses
count in their subnet(s) and their pods' ENIs, each whole, in the policy's pod subnets of the
zone, spilling over from one to the next as supply does; the ENIs each pod subnet would take
are printed. Exits 0 when they fit and 3 when they do not, printing the reasons.`,
	}
	fs := cmd.Flags()
	place := c.addPlaceFlags(cmd, "subnet of the nodes", "availability zone of the nodes: all the cluster's subnets in it count")
	nodes := fs.Uint("nodes", 0, "nodes (required)")
	pods := fs.Uint("pods-per-node", 0, "pods per node")
	itype := fs.String("instance-type", "", "instance type (optional: also checks per-node limits)")
	pol := fs.String("policy", "", "the nodes' policy (optional: its pod subnets take the pods' ENIs)")
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		const cmd = "canfit"
		if err := place.check(cmd); err != nil {
			return err
		}
		n, err := count(cmd, "nodes", *nodes)
		if err != nil {
			return err
		}
		if *pods > math.MaxUint32 {
			return usagef(cmd, "%s: --pods-per-node %d is too large", cmd, *pods)
		}
		req := &ipledgerv1.CanFitRequest{SubnetId: *place.subnet, AvailabilityZone: *place.az, NodeCount: n, PodsPerNode: uint32(*pods), InstanceType: *itype, Policy: *pol}
		resp, err := call(ctx, c, "canfit", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.CanFitResponse, error) {
			return a.CanFit(ctx, req)
		})
		if err != nil {
			return err
		}
		doc := fitDoc(resp)
		err = c.emit(doc, func(w io.Writer) {
			verdict := "fits"
			if !doc.Fits {
				verdict = "does not fit"
			}
			fmt.Fprintf(w, "%d nodes x %d pods %s: needs %d addresses, the budget allows %d\n", n, *pods, verdict, doc.Needed, doc.Available)
			for _, r := range doc.Reasons {
				fmt.Fprintf(w, "  - %s\n", escapeText(r))
			}
			for i, id := range doc.PodSubnetIDs {
				fmt.Fprintf(w, "  pod subnet %s takes %d ENIs\n", escapeText(id), doc.PodSubnetENIs[i])
			}
			if len(doc.Subnets) > 0 {
				fmt.Fprintln(w)
				subnetTable(w, doc.Subnets, len(doc.Subnets) > 1)
			}
		})
		if err != nil {
			return err
		}
		if !doc.Fits {
			return errNoFit
		}
		return nil
	})
}

func init() {
	register("prewarm", prewarmCreateCmd, prewarmListCmd, prewarmCancelCmd)
	register("", canfitCmd)
}
