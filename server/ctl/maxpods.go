package ctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ipledger/ipledger/server/instancetypes"
)

func init() { register("", maxPodsCmd) }

// MaxPodsDoc is the output of max-pods: the kubelet's max-pods for one instance type in one of
// ipledger's modes, how it was reached, and where to set it.
type MaxPodsDoc struct {
	InstanceType string `json:"instance_type"`
	// Mode is "secondary_ip" or "prefix".
	Mode             string `json:"mode"`
	CustomNetworking bool   `json:"custom_networking"`
	// ENIs that carry pods (on network card 0; the primary left out with custom networking),
	// with IPv4PerENI addresses each, the ENI's own primary included.
	ENIs       int `json:"enis"`
	IPv4PerENI int `json:"ipv4_per_eni"`
	// NetworkCards of the type (ipledger attaches every ENI to card 0).
	NetworkCards int `json:"network_cards"`
	PodAddresses int `json:"pod_addresses"`
	// MaxAllowed is PodAddresses + 2 (the host-network pods: the agent and kube-proxy).
	MaxAllowed     int  `json:"max_allowed"`
	VCPUs          int  `json:"vcpus"`
	VCPUsEstimated bool `json:"vcpus_estimated"`
	// Ceiling is 110 up to 30 vCPUs, 250 above (EKS's max-pods calculator's).
	Ceiling int `json:"ceiling"`
	// Recommended is min(MaxAllowed, Ceiling): the kubelet's --max-pods.
	Recommended int `json:"recommended"`
	// WhereToSet is the setting, with this value, for each way nodes are made.
	WhereToSet []MaxPodsSetting `json:"where_to_set"`
}

// MaxPodsSetting is where one kind of node takes its max-pods.
type MaxPodsSetting struct {
	// Target is "al2023_launch_template", "al2_launch_template", "bottlerocket",
	// "eks_managed_node_group" or "karpenter".
	Target  string `json:"target"`
	Setting string `json:"setting"`
}

func maxPodsSettings(n int) []MaxPodsSetting {
	v := strconv.Itoa(n)
	return []MaxPodsSetting{
		{"al2023_launch_template", "user data NodeConfig (node.eks.aws/v1alpha1): spec.kubelet.config.maxPods: " + v},
		{"al2_launch_template", "user data: /etc/eks/bootstrap.sh <cluster> --use-max-pods false --kubelet-extra-args '--max-pods=" + v + "'"},
		{"bottlerocket", "user data (TOML): settings.kubernetes.max-pods = " + v},
		{"eks_managed_node_group", "a launch template whose user data carries one of the above (without one, EKS sizes maxPods for the VPC CNI)"},
		{"karpenter", "EC2NodeClass spec.kubelet.maxPods: " + v + " (v1; v0.3x: NodePool spec.template.spec.kubelet.maxPods)"},
	}
}

var targetNames = map[string]string{
	"al2023_launch_template": "Launch template, Amazon Linux 2023",
	"al2_launch_template":    "Launch template, Amazon Linux 2",
	"bottlerocket":           "Bottlerocket",
	"eks_managed_node_group": "EKS managed node group",
	"karpenter":              "Karpenter",
}

func maxPodsCmd(c *cli) *cobra.Command {
	cmd := local(&cobra.Command{
		Use:   "max-pods",
		Short: "The kubelet's max-pods for an instance type in ipledger's modes, and where to set it",
		Long: `
As EKS's max-pods calculator does for the VPC CNI, from AWS's ENI and address limits (embedded;
no server is asked): pod addresses are ENIs x (IPv4 per ENI - 1), times 16 with --prefix (/28
prefixes), with one ENI fewer with --custom-networking (pods on secondary ENIs only); max
allowed is that + 2 (the agent and kube-proxy use the host network); recommended is at most 110
for types with up to 30 vCPUs and 250 above. ipledger attaches every ENI to network card 0, so
types with several cards count card 0's share. vCPUs are estimated from the size in the name
unless --vcpus gives them. docs/max-pods.md explains each number.`,
	})
	fs := cmd.Flags()
	itype := fs.String("instance-type", "", "the EC2 instance type, e.g. m5.large (required)")
	prefix := fs.Bool("prefix", false, "prefix mode (ADDRESS_MODE_PREFIX: /28 prefixes instead of secondary addresses)")
	custom := fs.Bool("custom-networking", false, "custom networking: pods on secondary ENIs only, the primary ENI holds none")
	vcpus := fs.Int("vcpus", 0, "the type's vCPUs (DescribeInstanceTypes' DefaultVCpus) instead of the estimate from its name")
	_ = cmd.RegisterFlagCompletionFunc("instance-type", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, t := range instancetypes.All() {
			out = append(out, t.Name)
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	})
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		const path = "max-pods"
		if *itype == "" {
			return usagef(path, "max-pods: --instance-type is required (e.g. --instance-type m5.large)")
		}
		if *vcpus < 0 {
			return usagef(path, "max-pods: --vcpus %d: want the type's vCPU count, 1 or more (0: estimate it)", *vcpus)
		}
		if err := instancetypes.Err(); err != nil {
			return err
		}
		t, ok := instancetypes.Lookup(*itype)
		if !ok {
			msg := fmt.Sprintf("max-pods: --instance-type %q is not an EC2 instance type ipledger knows", *itype)
			if s := closeTypes(*itype, 3); len(s) > 0 {
				msg += " (did you mean " + strings.Join(s, ", ") + "?)"
			}
			return usagef(path, "%s", msg)
		}
		m, err := t.MaxPods(instancetypes.MaxPodsOptions{Prefix: *prefix, CustomNetworking: *custom, VCPUs: *vcpus})
		switch {
		case errors.Is(err, instancetypes.ErrNoPrefixes):
			return usagef(path, "max-pods: --prefix: %v", err)
		case errors.Is(err, instancetypes.ErrNoPodENIs):
			return usagef(path, "max-pods: --custom-networking: %v", err)
		case err != nil:
			return err
		}
		doc := MaxPodsDoc{
			InstanceType: m.Type, Mode: "secondary_ip", CustomNetworking: *custom, ENIs: m.ENIs, IPv4PerENI: t.IPv4PerENI,
			NetworkCards: max(t.NetworkCards, 1), PodAddresses: m.PodAddresses, MaxAllowed: m.MaxAllowed, VCPUs: m.VCPUs,
			VCPUsEstimated: m.VCPUsEstimated, Ceiling: m.Ceiling, Recommended: m.Recommended, WhereToSet: maxPodsSettings(m.Recommended),
		}
		if *prefix {
			doc.Mode = "prefix"
		}
		return c.emit(doc, func(w io.Writer) { maxPodsTable(w, doc) })
	})
}

func maxPodsTable(w io.Writer, d MaxPodsDoc) {
	cards := ""
	if d.NetworkCards > 1 {
		cards = fmt.Sprintf(" of network card 0 (of %d cards)", d.NetworkCards)
	}
	vcpus := fmt.Sprintf("%d vCPUs", d.VCPUs)
	if d.VCPUsEstimated {
		vcpus += " (estimated from the name; --vcpus gives the real count)"
	}
	mode := "secondary IP"
	formula := fmt.Sprintf("%d ENIs x (%d - 1)", d.ENIs, d.IPv4PerENI)
	if d.Mode == "prefix" {
		mode = "prefix (/28)"
		formula += " x 16"
	}
	if d.CustomNetworking {
		mode += ", custom networking (the primary ENI holds no pods)"
	}
	row(w, "Instance type:", fmt.Sprintf("%s: %d ENIs%s for pods, %d IPv4 addresses each; %s", d.InstanceType, d.ENIs, cards, d.IPv4PerENI, vcpus))
	row(w, "Mode:", mode)
	row(w, "Pod addresses:", fmt.Sprintf("%s = %d", formula, d.PodAddresses))
	row(w, "Max allowed:", fmt.Sprintf("%d (the addresses + 2 host-network pods)", d.MaxAllowed))
	rec := fmt.Sprintf("%d", d.Recommended)
	if d.Recommended < d.MaxAllowed {
		rec += fmt.Sprintf(" (the ceiling for %s 30 vCPUs is %d)", map[bool]string{true: "more than", false: "at most"}[d.VCPUs > instancetypes.HighCPUThreshold], d.Ceiling)
	}
	row(w, "Recommended:", rec)
	row(w)
	row(w, "WHERE", "SET")
	for _, s := range d.WhereToSet {
		row(w, targetNames[s.Target], s.Setting)
	}
}

// closeTypes are the known instance types nearest to name: within two edits, else of the same
// family (its sizes), at most n.
func closeTypes(name string, n int) []string {
	name = strings.ToLower(strings.TrimSpace(name))
	type cand struct {
		name string
		d    int
	}
	var near, family []cand
	fam, _, _ := strings.Cut(name, ".")
	for _, t := range instancetypes.All() {
		if d := editDistance(name, t.Name); d <= 2 {
			near = append(near, cand{t.Name, d})
		} else if f, _, _ := strings.Cut(t.Name, "."); f == fam {
			family = append(family, cand{t.Name, d})
		}
	}
	list := near
	if len(list) == 0 {
		list = family
	}
	sort.Slice(list, func(i, j int) bool {
		if list[i].d != list[j].d {
			return list[i].d < list[j].d
		}
		return list[i].name < list[j].name
	})
	var out []string
	for _, c := range list {
		if len(out) == n {
			break
		}
		out = append(out, c.name)
	}
	return out
}

// editDistance is the Levenshtein distance of two strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
