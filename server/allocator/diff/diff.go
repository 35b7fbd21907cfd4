// Package diff compares what EC2 has with what the ledger records (etcd's records, or the
// leader's copy of them) and names every difference. Its one function, Diff, is the comparison
// the reconciler repairs from, ipledgerctl check (AdminService.Check) reports, and every test's
// consistency check asserts on.
//
// It is pure: it reads only its arguments, does no I/O and decides no repair.
package diff

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/ipledger/ipledger/server/ec2gw"
	"github.com/ipledger/ipledger/server/ledger"
)

// Tags ipledger puts on every ENI it creates.
const (
	TagCluster = "ipledger.io/cluster"
	TagNode    = "ipledger.io/node"
	TagPrewarm = "ipledger.io/prewarm"
)

// Kind is the kind of a difference.
type Kind int

// Kinds of differences. The first group compares the records with EC2; DoubleOnEC2,
// DoubleLease and ForeignLeased name an address with two owners, which must never happen, not
// even for a moment; InUseNotLeased and DoubleUse come from agents' reports (FromConflict).
const (
	// LeasedNotOnEC2: a node's lease (Finding.State says in which state) is not on the ENI the
	// record names on EC2.
	LeasedNotOnEC2 Kind = iota + 1
	// OnEC2NotLeased: EC2 has a secondary address or prefix on a node's ENI that the node's
	// record of that ENI lacks.
	OnEC2NotLeased
	// ENIMissing: a node's ENI is not on EC2.
	ENIMissing
	// ENIAttachment: a node's ENI is on EC2 but not attached to the node's instance.
	ENIAttachment
	// LeakedENI: an ENI tagged for the cluster that no node and no reservation owns.
	LeakedENI
	// ReservedENIAttached: a pre-warm reservation's ENI, not given to any node in the records,
	// is attached to an instance on EC2 (Other is the reservation; an attach whose commit was
	// lost).
	ReservedENIAttached
	// InstanceGone: a node whose instance EC2 says is terminated or does not know (only when
	// the instances were given).
	InstanceGone
	// DoubleOnEC2: EC2 has one address on two ENIs.
	DoubleOnEC2
	// DoubleLease: the records give one address (or prefix, or an address in a leased prefix)
	// to two leases.
	DoubleLease
	// ForeignLeased: a subnet's foreign addresses include one a node holds.
	ForeignLeased
	// InUseNotLeased: an agent reports a pod on an address its node does not lease.
	InUseNotLeased
	// DoubleUse: agents report one address in use by two pods.
	DoubleUse
)

var kindNames = map[Kind]string{
	LeasedNotOnEC2: "leased-not-on-ec2", OnEC2NotLeased: "on-ec2-not-leased", ENIMissing: "eni-missing",
	ENIAttachment: "eni-attachment", LeakedENI: "leaked-eni", ReservedENIAttached: "reserved-eni-attached", InstanceGone: "instance-gone", DoubleOnEC2: "double-on-ec2",
	DoubleLease: "double-lease", ForeignLeased: "foreign-leased", InUseNotLeased: "in-use-not-leased", DoubleUse: "double-use",
}

func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("kind-%d", int(k))
}

// Finding is one difference.
type Finding struct {
	Kind    Kind
	Subnet  string
	Node    string
	ENI     string
	Address string // an address or a /28 prefix
	// State is the lease's state (LeasedNotOnEC2).
	State ledger.LeaseState
	// Other is the other owner: the other ENI (DoubleOnEC2), the other node (DoubleLease), the
	// instance the ENI is attached to (ENIAttachment).
	Other  string
	Detail string
}

// Twice reports whether the finding is an address with two owners.
func (f Finding) Twice() bool {
	return f.Kind == DoubleOnEC2 || f.Kind == DoubleLease || f.Kind == ForeignLeased || f.Kind == DoubleUse
}

// Key identifies the difference across two comparisons (the same difference seen again has the
// same key).
func (f Finding) Key() string {
	return strings.Join([]string{f.Kind.String(), f.Subnet, f.Node, f.ENI, f.Address, string(f.State), f.Other}, "|")
}

func (f Finding) String() string {
	var b strings.Builder
	b.WriteString(f.Kind.String())
	for _, kv := range [][2]string{{"subnet", f.Subnet}, {"node", f.Node}, {"eni", f.ENI}, {"address", f.Address}, {"state", string(f.State)}, {"other", f.Other}} {
		if kv[1] != "" {
			fmt.Fprintf(&b, " %s=%s", kv[0], kv[1])
		}
	}
	if f.Detail != "" {
		b.WriteString(": ")
		b.WriteString(f.Detail)
	}
	return b.String()
}

// Records is what the ledger (or etcd) records.
type Records struct {
	Nodes    []ledger.NodeRecord
	Subnets  []ledger.SubnetRecord
	Prewarms []ledger.PrewarmRecord
}

// RecordsOf lists records kept by name (as the store keeps them), sorted by name.
func RecordsOf(nodes map[string]ledger.NodeRecord, subnets map[string]ledger.SubnetRecord, prewarms map[string]ledger.PrewarmRecord) Records {
	var r Records
	for _, k := range slices.Sorted(maps.Keys(nodes)) {
		r.Nodes = append(r.Nodes, nodes[k])
	}
	for _, k := range slices.Sorted(maps.Keys(subnets)) {
		r.Subnets = append(r.Subnets, subnets[k])
	}
	for _, k := range slices.Sorted(maps.Keys(prewarms)) {
		r.Prewarms = append(r.Prewarms, prewarms[k])
	}
	return r
}

// EC2 is what EC2 has: every ENI of the subnets the records name and every ENI tagged for the
// cluster (an ENI of a recorded subnet that is absent is missing). Instances, when not nil, are
// the nodes' instances as DescribeInstances reports them (absent: unknown to EC2).
type EC2 struct {
	ENIs      []ec2gw.ENI
	Instances []ec2gw.Instance
}

// Diff lists every difference between the records and EC2 for cluster, sorted by kind, then
// subnet, node, ENI and address.
func Diff(cluster string, rec Records, e EC2) []Finding {
	d := differ{cluster: cluster, rec: rec, ec2: e}
	d.index()
	d.ec2Twice()
	d.nodes()
	d.leakedENIs()
	d.reservedAttached()
	d.foreign()
	d.instances()
	sort.Slice(d.out, func(i, j int) bool {
		a, b := d.out[i], d.out[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Key() < b.Key()
	})
	return d.out
}

type differ struct {
	cluster string
	rec     Records
	ec2     EC2
	out     []Finding

	enis     map[string]ec2gw.ENI
	nodeENI  map[string]string // ENI id -> node
	reserved map[string]string // ENI id -> reservation
}

func (d *differ) add(f Finding) { d.out = append(d.out, f) }

func (d *differ) index() {
	d.enis = map[string]ec2gw.ENI{}
	for _, e := range d.ec2.ENIs {
		d.enis[e.ID] = e
	}
	d.nodeENI = map[string]string{}
	for _, n := range d.rec.Nodes {
		for _, e := range n.ENIs {
			d.nodeENI[e.ID] = n.Name
		}
	}
	d.reserved = map[string]string{}
	for _, p := range d.rec.Prewarms {
		for _, e := range p.ENIs {
			if e.ID != "" {
				d.reserved[e.ID] = p.ID
			}
		}
	}
}

// Addresses lists every address EC2 has on an ENI: its primary, secondaries and those of its
// prefixes.
func Addresses(e ec2gw.ENI) []netip.Addr {
	var out []netip.Addr
	if e.PrimaryIP.IsValid() {
		out = append(out, e.PrimaryIP)
	}
	out = append(out, e.SecondaryIPs...)
	for _, p := range e.Prefixes {
		for a := p.Masked().Addr(); p.Contains(a); a = a.Next() {
			out = append(out, a)
		}
	}
	return out
}

// ec2Twice finds addresses EC2 has on two ENIs.
func (d *differ) ec2Twice() {
	on := map[netip.Addr]string{}
	for _, e := range d.ec2.ENIs {
		for _, a := range Addresses(e) {
			if other, ok := on[a]; ok && other != e.ID {
				d.add(Finding{Kind: DoubleOnEC2, Subnet: e.SubnetID, ENI: e.ID, Address: a.String(), Other: other,
					Detail: fmt.Sprintf("EC2 has %s on %s and %s", a, other, e.ID)})
				continue
			}
			on[a] = e.ID
		}
	}
}

// nodes compares every node's ENIs and leases with EC2, and finds leases given twice.
func (d *differ) nodes() {
	leasedBy := map[string]string{} // an address or prefix -> the node leasing it
	leasedAddr := map[netip.Addr]string{}
	leasedPfx := map[netip.Prefix]string{}
	for _, n := range d.rec.Nodes {
		for _, er := range n.ENIs {
			e, onEC2 := d.enis[er.ID]
			switch {
			case !onEC2:
				d.add(Finding{Kind: ENIMissing, Subnet: er.SubnetID, Node: n.Name, ENI: er.ID, Detail: "leased ENI not found on EC2"})
			case e.Attachment == nil:
				d.add(Finding{Kind: ENIAttachment, Subnet: er.SubnetID, Node: n.Name, ENI: er.ID,
					Detail: fmt.Sprintf("not attached, the node's instance is %s", n.InstanceID)})
			case e.Attachment.InstanceID != n.InstanceID:
				d.add(Finding{Kind: ENIAttachment, Subnet: er.SubnetID, Node: n.Name, ENI: er.ID, Other: e.Attachment.InstanceID,
					Detail: fmt.Sprintf("attached to %s, not to the node's instance %s", e.Attachment.InstanceID, n.InstanceID)})
			}
			onENI := map[string]bool{}
			for _, ip := range e.SecondaryIPs {
				onENI[ip.String()] = true
			}
			for _, p := range e.Prefixes {
				onENI[p.String()] = true
			}
			leased := map[string]bool{}
			for _, it := range leaseItems(er) {
				leased[it.item] = true
				if other, ok := leasedBy[it.item]; ok {
					d.add(Finding{Kind: DoubleLease, Subnet: er.SubnetID, Node: n.Name, ENI: er.ID, Address: it.item, Other: other,
						Detail: fmt.Sprintf("leased to %s and %s", other, n.Name)})
				}
				leasedBy[it.item] = n.Name
				if onEC2 && !onENI[it.item] {
					d.add(leasedNotOnEC2(n.Name, er, it.item, it.state))
				}
			}
			for _, ad := range er.Addresses {
				leasedAddr[ad.IP] = n.Name
			}
			for _, p := range er.Prefixes {
				leasedPfx[p.Prefix] = n.Name
			}
			if !onEC2 {
				continue
			}
			for _, item := range Items(e) {
				if !leased[item] {
					d.add(Finding{Kind: OnEC2NotLeased, Subnet: er.SubnetID, Node: n.Name, ENI: er.ID, Address: item,
						Detail: "assigned on EC2 to the node's ENI but not leased"})
				}
			}
		}
	}
	for a, node := range leasedAddr {
		for p, pnode := range leasedPfx {
			if p.Contains(a) {
				d.add(Finding{Kind: DoubleLease, Node: node, Address: a.String(), Other: pnode,
					Detail: fmt.Sprintf("leased to %s and inside the prefix %s leased to %s", node, p, pnode)})
			}
		}
	}
}

// leaseItem is one leased address or prefix of an ENI record.
type leaseItem struct {
	item  string
	state ledger.LeaseState
}

func leaseItems(er ledger.ENIRecord) []leaseItem {
	out := make([]leaseItem, 0, len(er.Addresses)+len(er.Prefixes))
	for _, ad := range er.Addresses {
		out = append(out, leaseItem{ad.IP.String(), ad.State})
	}
	for _, p := range er.Prefixes {
		out = append(out, leaseItem{p.Prefix.String(), p.State})
	}
	return out
}

func leasedNotOnEC2(node string, er ledger.ENIRecord, item string, state ledger.LeaseState) Finding {
	detail := "leased but not assigned to the ENI on EC2"
	if state == ledger.LeaseReleasing {
		detail = "release already done on EC2"
	}
	return Finding{Kind: LeasedNotOnEC2, Subnet: er.SubnetID, Node: node, ENI: er.ID, Address: item, State: state, Detail: detail}
}

// Items lists an ENI's secondary addresses and prefixes as strings (a lease's items), sorted.
func Items(e ec2gw.ENI) []string {
	var out []string
	for _, ip := range e.SecondaryIPs {
		out = append(out, ip.String())
	}
	for _, p := range e.Prefixes {
		out = append(out, p.String())
	}
	slices.Sort(out)
	return out
}

// leakedENIs finds ENIs tagged for the cluster that nobody owns.
func (d *differ) leakedENIs() {
	for _, e := range d.ec2.ENIs {
		if e.Tags[TagCluster] != d.cluster {
			continue
		}
		if _, ok := d.nodeENI[e.ID]; ok {
			continue
		}
		if _, ok := d.reserved[e.ID]; ok {
			continue
		}
		f := Finding{Kind: LeakedENI, Subnet: e.SubnetID, ENI: e.ID, Node: e.Tags[TagNode],
			Detail: fmt.Sprintf("tagged for cluster %s, owned by no node or reservation (status %s)", d.cluster, e.Status)}
		if e.Attachment != nil {
			f.Other = e.Attachment.InstanceID
		}
		d.add(f)
	}
}

// reservedAttached finds reservations' ENIs that are attached on EC2 but given to no node.
func (d *differ) reservedAttached() {
	for _, p := range d.rec.Prewarms {
		for _, pe := range p.ENIs {
			e, ok := d.enis[pe.ID]
			if pe.ID == "" || !ok || e.Attachment == nil || pe.State == ledger.PrewarmENIAttached {
				continue
			}
			if _, owned := d.nodeENI[pe.ID]; owned {
				continue
			}
			d.add(Finding{Kind: ReservedENIAttached, Subnet: e.SubnetID, ENI: e.ID, Other: p.ID,
				Detail: fmt.Sprintf("reservation %s's ENI (%s) is attached to %s on EC2", p.ID, pe.State, e.Attachment.InstanceID)})
		}
	}
}

// foreign finds addresses of nodes that their subnet's foreign set lists.
func (d *differ) foreign() {
	subnets := map[string]ledger.SubnetRecord{}
	for _, s := range d.rec.Subnets {
		subnets[s.ID] = s
	}
	for _, n := range d.rec.Nodes {
		for _, er := range n.ENIs {
			s, ok := subnets[er.SubnetID]
			if !ok || len(s.Foreign) == 0 {
				continue
			}
			if !s.ForeignScannedAt.IsZero() && !n.RegisteredAt.Before(s.ForeignScannedAt) {
				// The scan predates the node: a registration writes only the node's record,
				// and the node's addresses leave the foreign set at the next scan.
				continue
			}
			mine := []netip.Addr{er.PrimaryIP}
			for _, ad := range er.Addresses {
				mine = append(mine, ad.IP)
			}
			for _, p := range er.Prefixes {
				for a := p.Prefix.Masked().Addr(); p.Prefix.Contains(a); a = a.Next() {
					mine = append(mine, a)
				}
			}
			for _, a := range mine {
				for _, r := range s.Foreign {
					if r.First.Compare(a) <= 0 && a.Compare(r.Last) <= 0 {
						d.add(Finding{Kind: ForeignLeased, Subnet: er.SubnetID, Node: n.Name, ENI: er.ID, Address: a.String(),
							Detail: fmt.Sprintf("counted as foreign (range %s-%s) and held by node %s", r.First, r.Last, n.Name)})
					}
				}
			}
		}
	}
}

// instances finds nodes whose instance is gone.
func (d *differ) instances() {
	if d.ec2.Instances == nil {
		return
	}
	state := map[string]string{}
	for _, in := range d.ec2.Instances {
		state[in.ID] = in.State
	}
	for _, n := range d.rec.Nodes {
		switch s, ok := state[n.InstanceID]; {
		case !ok:
			d.add(Finding{Kind: InstanceGone, Subnet: n.SubnetID, Node: n.Name, Other: n.InstanceID, Detail: "instance unknown to EC2"})
		case s == "terminated" || s == "shutting-down":
			d.add(Finding{Kind: InstanceGone, Subnet: n.SubnetID, Node: n.Name, Other: n.InstanceID, Detail: "instance " + s})
		}
	}
}

// FromConflict is the finding of an inconsistency the ledger sees by itself (agents' reports,
// foreign scans).
func FromConflict(c ledger.Conflict) Finding {
	kind := DoubleLease
	switch c.Kind {
	case ledger.ConflictInUseNotLeased:
		kind = InUseNotLeased
	case ledger.ConflictDoubleUse:
		kind = DoubleUse
	case ledger.ConflictForeignOverlap:
		kind = ForeignLeased
	}
	detail := c.Detail
	if c.OtherOwner != "" {
		detail = fmt.Sprintf("%s (other owner: %s)", detail, c.OtherOwner)
	}
	return Finding{Kind: kind, Subnet: c.SubnetID, Node: c.Node, ENI: c.ENI, Address: c.Address, Other: c.OtherOwner, Detail: detail}
}
