package agent

import (
	"flag"
	"fmt"
	"net/netip"
	"regexp"

	"github.com/ipledger/ipledger/agent/netconf"
	"github.com/ipledger/ipledger/internal/conf"
)

// SNATConfig is the source NAT of pods' traffic that leaves the VPC (netconf.SNAT), with the
// VPC CNI's switches.
type SNATConfig struct {
	// ExternalSNAT turns the agent's source NAT off (--external-snat; the VPC CNI's
	// AWS_VPC_K8S_CNI_EXTERNALSNAT): a NAT gateway or the like translates pods' addresses, and
	// the agent removes what it programmed before.
	ExternalSNAT bool
	// SNATExcludeCIDRs are destinations beyond the VPC's own CIDR blocks that keep the pod's
	// address (--snat-exclude-cidrs; the VPC CNI's AWS_VPC_K8S_CNI_EXCLUDE_SNAT_CIDRS): peered
	// VPCs, on-premises ranges over Direct Connect.
	SNATExcludeCIDRs []string
	// VethPrefix is the prefix of the pods' host-side veths, the plugin's vethPrefix
	// (--veth-prefix; the two must match): traffic arriving on them is pods' traffic.
	VethPrefix string
}

// DefaultVethPrefix is the plugin's default vethPrefix.
const DefaultVethPrefix = "eni"

// vethPrefixRE is the plugin's rule for vethPrefix.
var vethPrefixRE = regexp.MustCompile(`^[a-z]{1,4}$`)

func (c *SNATConfig) registerFlags(fs *flag.FlagSet) {
	fs.BoolVar(&c.ExternalSNAT, "external-snat", c.ExternalSNAT, "leave pods' traffic to outside the VPC untranslated (a NAT gateway translates it); the agent removes its source NAT")
	fs.Var(conf.ListValue{P: &c.SNATExcludeCIDRs}, "snat-exclude-cidrs", "CIDRs beyond the VPC's own that pods reach with their own address, comma-separated")
	fs.StringVar(&c.VethPrefix, "veth-prefix", c.VethPrefix, "prefix of pods' host-side veths: the plugin's vethPrefix")
}

func (c SNATConfig) validate(bad func(flag, format string, args ...any)) {
	for _, s := range c.SNATExcludeCIDRs {
		if p, err := netip.ParsePrefix(s); err != nil || !p.Addr().Is4() {
			bad("snat-exclude-cidrs", "%q is not an IPv4 CIDR", s)
		}
	}
	if !vethPrefixRE.MatchString(c.VethPrefix) {
		bad("veth-prefix", "%q is not 1 to 4 lower-case letters (the plugin's vethPrefix)", c.VethPrefix)
	}
}

// snat is the source NAT the node needs: its primary address, and the VPC's blocks plus the
// exclusions kept untranslated.
func (c SNATConfig) snat(in Instance) (netconf.SNAT, error) {
	node, err := netip.ParseAddr(in.LocalIPv4)
	if err != nil {
		return netconf.SNAT{}, fmt.Errorf("agent: source NAT: node address %q: %w", in.LocalIPv4, err)
	}
	s := netconf.SNAT{NodeIP: node, PodLinkPrefix: c.VethPrefix}
	for _, b := range append(append([]string(nil), in.VPCCIDRs...), c.SNATExcludeCIDRs...) {
		p, err := netip.ParsePrefix(b)
		if err != nil {
			return netconf.SNAT{}, fmt.Errorf("agent: source NAT: %q: %w", b, err)
		}
		s.Exclude = append(s.Exclude, p)
	}
	return s, nil
}
