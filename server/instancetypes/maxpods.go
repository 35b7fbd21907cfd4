package instancetypes

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// The kubelet's max-pods for ipledger's address modes, computed as EKS's max-pods calculator
// (amazon-eks-ami's max-pods-calculator.sh) computes it for the Amazon VPC CNI:
//
//	ENIs for pods  = the ENIs ipledger attaches, minus the primary with custom networking
//	IP mode        = ENIs for pods x (IPv4 per ENI - 1) + 2
//	prefix mode    = ENIs for pods x (IPv4 per ENI - 1) x 16 + 2
//	recommended    = min(that, 110) for types with at most 30 vCPUs, min(that, 250) above
//
// The "- 1" is each ENI's own primary address; the "+ 2" are the host-network pods every node
// runs anyway (the agent and kube-proxy, as aws-node and kube-proxy for the VPC CNI), which
// take no address. The ceiling is the calculator's (and managed node groups'): the kubelet's
// own overhead per pod, not addresses, limits small nodes.
//
// Two ways ipledger differs from the calculator's input, both from what ipledger attaches:
// ipledger puts every ENI on network card 0, so a type with several network cards counts card
// 0's share of its ENIs (the calculator counts them all: on such types it overstates what
// ipledger can address); and bare-metal types, which report no hypervisor, do support
// prefixes (the calculator treats them as not Nitro; their vCPU count puts both at the 250
// ceiling in practice).

// Ceilings of the recommended max-pods, by vCPU count.
const (
	MaxPodsCeilingLowCPU  = 110
	MaxPodsCeilingHighCPU = 250
	// HighCPUThreshold: more vCPUs than this get the high ceiling.
	HighCPUThreshold = 30
	// AddressesPerPrefix is the size of a /28 prefix.
	AddressesPerPrefix = 16
	// HostNetworkPods are the pods that take no address (agent, kube-proxy).
	HostNetworkPods = 2
)

// Sentinel errors of MaxPods.
var (
	// ErrNoPrefixes: prefix mode on a type that cannot hold prefixes (Xen).
	ErrNoPrefixes = errors.New("instancetypes: the instance type does not support prefix delegation")
	// ErrNoPodENIs: custom networking on a type whose only ENI is the primary.
	ErrNoPodENIs = errors.New("instancetypes: no ENI is left for pods")
)

// MaxPodsOptions are ipledger's address modes.
type MaxPodsOptions struct {
	// Prefix: /28 prefixes (ADDRESS_MODE_PREFIX) instead of secondary addresses.
	Prefix bool
	// CustomNetworking: pods use secondary ENIs only (their own subnet); the primary ENI
	// holds no pods.
	CustomNetworking bool
	// VCPUs of the type, when the caller knows them (DescribeInstanceTypes' DefaultVCpus);
	// 0 estimates them from the size in the name (EstimateVCPUs).
	VCPUs int
}

// MaxPods is the kubelet's max-pods for one type and mode, with how it was reached.
type MaxPods struct {
	Type string
	// ENIs that carry pods, and the pod addresses they hold.
	ENIs         int
	PodAddresses int
	// MaxAllowed is PodAddresses + 2: what the addresses allow (the calculator's
	// --show-max-allowed).
	MaxAllowed int
	// VCPUs used for the ceiling; VCPUsEstimated when they come from the name.
	VCPUs          int
	VCPUsEstimated bool
	Ceiling        int
	// Recommended is min(MaxAllowed, Ceiling): the value for the kubelet's --max-pods.
	Recommended int
}

// MaxPods computes the kubelet's max-pods of the type in ipledger's mode o.
func (t Type) MaxPods(o MaxPodsOptions) (MaxPods, error) {
	if o.Prefix && !t.PrefixDelegation() {
		return MaxPods{}, fmt.Errorf("%w: %s is %s-based; use secondary-IP mode", ErrNoPrefixes, t.Name, t.Hypervisor)
	}
	enis := t.MaxENIsPerCard()
	if o.CustomNetworking {
		enis--
	}
	if enis < 1 {
		return MaxPods{}, fmt.Errorf("%w: %s attaches %d ENI(s) on card 0 and custom networking keeps the primary ENI free of pods", ErrNoPodENIs, t.Name, t.MaxENIsPerCard())
	}
	m := MaxPods{Type: t.Name, ENIs: enis, PodAddresses: enis * t.SecondaryIPsPerENI(), VCPUs: o.VCPUs}
	if o.Prefix {
		m.PodAddresses *= AddressesPerPrefix
	}
	m.MaxAllowed = m.PodAddresses + HostNetworkPods
	if m.VCPUs <= 0 {
		m.VCPUs, m.VCPUsEstimated = EstimateVCPUs(t.Name), true
	}
	m.Ceiling = MaxPodsCeilingLowCPU
	if m.VCPUs > HighCPUThreshold {
		m.Ceiling = MaxPodsCeilingHighCPU
	}
	m.Recommended = min(m.MaxAllowed, m.Ceiling)
	return m, nil
}

var sizeRE = regexp.MustCompile(`^(\d*)xlarge$|^metal-(\d+)xl$`)

// EstimateVCPUs estimates a type's vCPUs from its size, since the embedded data has no vCPU
// count: large 2, xlarge 4, Nxlarge 4N (AWS's naming: one xlarge is 4 vCPUs), medium 1 (2 for
// the burstable t families), nano/micro/small 1 (2 for t3, t3a, t4g), metal-Nxl 4N, and
// metal the largest size of its family. 0 means unknown (a family with only a metal size),
// which gets the low ceiling: a lower max-pods never promises addresses a node cannot give.
//
// The estimate only decides the ceiling (above 30 vCPUs or not). Where AWS's count departs from
// the naming (c5.9xlarge 36, c4.8xlarge 36, m4.10xlarge 40, i3.metal 72 against i3.16xlarge's
// 64, mac1.metal 12), it stays on the same side of 30.
func EstimateVCPUs(name string) int {
	family, size, ok := strings.Cut(name, ".")
	if !ok {
		return 0
	}
	burstable := strings.HasPrefix(family, "t")
	switch size {
	case "nano", "micro", "small":
		if burstable && family != "t2" {
			return 2
		}
		return 1
	case "medium":
		if burstable {
			return 2
		}
		return 1
	case "large":
		return 2
	case "metal":
		best := 0
		for _, t := range All() {
			if f, s, _ := strings.Cut(t.Name, "."); f == family && s != "metal" {
				best = max(best, EstimateVCPUs(t.Name))
			}
		}
		return best
	}
	m := sizeRE.FindStringSubmatch(size)
	if m == nil {
		return 0
	}
	n := 1
	for _, g := range m[1:] {
		if g != "" {
			n, _ = strconv.Atoi(g)
		}
	}
	return 4 * n
}
