package policy

import (
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/ipledger/ipledger/server/instancetypes"
	"github.com/ipledger/ipledger/server/ledger"
)

// LaunchInputs is what a launch hint is computed from.
type LaunchInputs struct {
	Policy Policy
	Type   instancetypes.Type
	// FirstMinute is how many pods a new node of the policy starts in its first minute: the
	// median of the policy's observed new nodes (Observed of them), or what the caller expects
	// (Expected).
	FirstMinute int
	Observed    int
	Expected    bool
	// Subnets are where the policy's nodes run (or, before any does, every subnet the cluster
	// knows), for the fragmentation check.
	Subnets []LaunchSubnet
}

// LaunchSubnet is what fragmentation depends on in one subnet.
type LaunchSubnet struct {
	ID string
	// Free addresses and free whole /28 blocks.
	Free, FreeBlocks int
	// PrefixNodes are the nodes in prefix mode in the subnet.
	PrefixNodes int
}

// LaunchHint is what a new node of a policy and instance type should carry on its primary
// interface at launch, so that it is ready when its agent registers and its first minute of
// pod starts needs no EC2 call.
type LaunchHint struct {
	Policy       string
	InstanceType string
	// Mode is what the node will run in: what it launches with decides (ModeForLaunch).
	Mode ledger.AddressMode
	// SecondaryAddresses (SecondaryPrivateIpAddressCount) or Prefixes (Ipv4PrefixCount, /28s):
	// one of them is set, as EC2 takes one or the other on an interface.
	SecondaryAddresses int
	Prefixes           int
	// PodAddresses is what the launch gives the node's pods (a prefix counts 16).
	PodAddresses int
	// Want is the pod addresses the policy wants a node to hold after its first minute.
	Want int
	// InterfaceLimit is how many secondary addresses, or prefixes, the type's primary interface
	// takes (IPv4 per ENI - 1); Capped says the hint was cut to it.
	InterfaceLimit int
	Capped         bool
	// PreferPrefixes: the policy says secondary IPs, but the subnets need whole /28 blocks kept
	// whole, so the hint is in prefixes.
	PreferPrefixes bool
	FirstMinute    int
	Observed       int
	Reasons        []string
	Warnings       []string
	// Labels are the policy's selector labels: the EC2 tags the node group must launch its
	// instances with (policies match the instance's tags).
	Labels map[string]string
}

// Whole /28 blocks are scarce in a subnet when fewer than this many are free, or when they hold
// less than a quarter of its free addresses.
const (
	scarceBlocks       = 8
	scarceShareDivisor = 4
)

// ComputeLaunchHint turns a policy's targets and its new nodes' first-minute starts into what a
// launch template should put on the primary interface: the policy's target for a node running
// its first minute's pods (so none of them waits for an EC2 call, nor does the refill after
// them), capped by what the primary interface takes. Where the subnets are shared with
// prefix-mode nodes or their whole /28 blocks are scarce, a Nitro type is given prefixes: EC2
// places a launch's secondary addresses at random, each may break a whole block.
func ComputeLaunchHint(in LaunchInputs) LaunchHint {
	p, t := in.Policy, in.Type
	h := LaunchHint{Policy: p.Name, InstanceType: t.Name, FirstMinute: in.FirstMinute, Observed: in.Observed, Labels: maps.Clone(p.Selector.Labels)}
	switch {
	case in.Expected:
		h.Reasons = append(h.Reasons, fmt.Sprintf("expecting %d pod start(s) in a new node's first minute (given)", in.FirstMinute))
	case in.Observed > 0:
		h.Reasons = append(h.Reasons, fmt.Sprintf("new nodes of policy %s started a median of %d pod(s) in their first minute (%d node(s) observed)", p.Name, in.FirstMinute, in.Observed))
	default:
		h.Reasons = append(h.Reasons, fmt.Sprintf("no new node of policy %s has run its first minute under this leader yet: the hint is the policy's target for an empty node; ask again once some have, or give the pods you expect", p.Name))
	}
	nitro := t.PrefixDelegation()
	policyPrefix := p.Mode == ledger.ModePrefix && nitro
	mode := ledger.ModeSecondaryIP
	if policyPrefix {
		mode = ledger.ModePrefix
	}
	tgt := Compute(p, ShapeOf(t, mode), Inputs{InUse: in.FirstMinute, StartPrior: in.FirstMinute}, 0)
	h.Want = tgt.WantAddresses
	h.Reasons = append(h.Reasons, fmt.Sprintf("policy %s's target for a node running %d pod(s): %d pod address(es)", p.Name, in.FirstMinute, h.Want))
	if p.Mode == ledger.ModePrefix && !nitro {
		h.Warnings = append(h.Warnings, fmt.Sprintf("policy %s says prefixes, but %s is not Nitro-based: it takes secondary addresses only", p.Name, t.Name))
	}
	if p.WarmENITarget != nil && *p.WarmENITarget > 0 && !policyPrefix {
		h.Warnings = append(h.Warnings, fmt.Sprintf("policy %s keeps %d whole warm ENI(s) (warm_eni_target): a launch fills the primary interface only, so each new node still creates and attaches its warm ENI(s) (EC2 calls); an adaptive policy or warm_ip_target needs none", p.Name, *p.WarmENITarget))
	}
	if len(p.Selector.InstanceTypes) > 0 && !slices.Contains(p.Selector.InstanceTypes, t.Name) {
		h.Warnings = append(h.Warnings, fmt.Sprintf("policy %s selects instance types %s, not %s: nodes of this type get another policy", p.Name, strings.Join(p.Selector.InstanceTypes, ", "), t.Name))
	}

	// Fragmentation: the subnets' whole /28 blocks.
	var shared, scarce []string
	prefixNodes := 0
	for _, s := range in.Subnets {
		if s.PrefixNodes > 0 {
			shared = append(shared, s.ID)
			prefixNodes += s.PrefixNodes
		}
		if s.Free > 0 && (s.FreeBlocks < scarceBlocks || s.FreeBlocks*16*scarceShareDivisor < s.Free) {
			scarce = append(scarce, fmt.Sprintf("%s (%d whole /28 block(s) free for %d free addresses)", s.ID, s.FreeBlocks, s.Free))
		}
	}
	sort.Strings(shared)
	sort.Strings(scarce)
	var why []string
	if len(shared) > 0 {
		why = append(why, fmt.Sprintf("subnet(s) %s are shared with %d prefix-mode node(s)", strings.Join(shared, ", "), prefixNodes))
	}
	if len(scarce) > 0 {
		why = append(why, "whole /28 blocks are scarce in "+strings.Join(scarce, ", "))
	}
	const random = "EC2 places a launch's secondary addresses at random in the subnet (ipledger packs its own assignments into blocks already broken, a launch it cannot), so each may break a whole /28 block that prefix-mode nodes need"
	if len(why) > 0 && !policyPrefix {
		if nitro {
			mode = ledger.ModePrefix
			h.PreferPrefixes = true
			h.Warnings = append(h.Warnings, fmt.Sprintf("prefixes preferred: %s; %s. A /28 prefix takes a block that is whole already. The node runs in prefix mode (what a node launches with decides its mode), although policy %s says secondary IPs",
				strings.Join(why, "; "), random, p.Name))
		} else {
			h.Warnings = append(h.Warnings, fmt.Sprintf("%s; %s. %s is not Nitro-based and cannot take prefixes: keep the count small or use a Nitro type", strings.Join(why, "; "), random, t.Name))
		}
	}
	h.Mode = mode

	h.InterfaceLimit = max(t.IPv4PerENI-1, 0)
	if mode == ledger.ModePrefix {
		n := CeilDiv(h.Want, 16)
		if n > h.InterfaceLimit {
			n, h.Capped = h.InterfaceLimit, true
		}
		h.Prefixes, h.PodAddresses = n, 16*n
		if len(scarce) > 0 {
			least := -1
			for _, s := range in.Subnets {
				if least < 0 || s.FreeBlocks < least {
					least = s.FreeBlocks
				}
			}
			h.Warnings = append(h.Warnings, fmt.Sprintf("with as few as %d whole /28 block(s) free, launches fail (InsufficientFreeAddressesInSubnet) once %d node(s) of %d prefix(es) have taken them", least, least/max(n, 1), n))
		}
	} else {
		n := h.Want
		if n > h.InterfaceLimit {
			n, h.Capped = h.InterfaceLimit, true
		}
		h.SecondaryAddresses, h.PodAddresses = n, n
	}
	unit := "secondary addresses"
	if mode == ledger.ModePrefix {
		unit = "/28 prefixes"
	}
	h.Reasons = append(h.Reasons, fmt.Sprintf("%s's primary interface takes %d %s (IPv4 per ENI %d, less its primary address)", t.Name, h.InterfaceLimit, unit, t.IPv4PerENI))
	if h.Capped {
		h.Warnings = append(h.Warnings, fmt.Sprintf("the policy wants %d pod addresses, the primary interface takes %d: the rest is supplied after registration on another ENI (EC2 calls)", h.Want, h.PodAddresses))
	}
	if h.PodAddresses == 0 {
		h.Warnings = append(h.Warnings, "the hint is 0: a new node of this policy needs no address at launch")
	}
	return h
}
