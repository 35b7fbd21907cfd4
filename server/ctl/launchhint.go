package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/instancetypes"
)

func init() { register("", launchHintCmd) }

// Snippet formats of launch-hint's -o, besides table, json and yaml.
const (
	FormatLaunchTemplate = "launch-template"
	FormatCLI            = "cli"
	FormatEksctl         = "eksctl"
	FormatTerraform      = "terraform"
)

// SnippetFormats are launch-hint's snippet formats, in the order the docs show them.
var SnippetFormats = []string{FormatLaunchTemplate, FormatCLI, FormatEksctl, FormatTerraform}

// LaunchHintDoc is the output of launch-hint: what a new node of a policy and instance type
// should carry on its primary interface at launch.
type LaunchHintDoc struct {
	Policy       string `json:"policy"`
	InstanceType string `json:"instance_type"`
	// Mode is "secondary_ip" or "prefix": what the node will run in.
	Mode string `json:"mode"`
	// One of the two is set.
	SecondaryPrivateIPAddressCount int               `json:"secondary_private_ip_address_count"`
	IPv4PrefixCount                int               `json:"ipv4_prefix_count"`
	PodAddresses                   int               `json:"pod_addresses"`
	Want                           int               `json:"want"`
	InterfaceLimit                 int               `json:"interface_limit"`
	Capped                         bool              `json:"capped"`
	PreferPrefixes                 bool              `json:"prefer_prefixes"`
	FirstMinuteStarts              int               `json:"first_minute_starts"`
	ObservedNodes                  int               `json:"observed_nodes"`
	NodeLabels                     map[string]string `json:"node_labels,omitempty"`
	Reasons                        []string          `json:"reasons"`
	Warnings                       []string          `json:"warnings"`
	// Karpenter says what to do for nodes Karpenter launches (it cannot carry the hint).
	Karpenter string `json:"karpenter"`
}

// KarpenterNote is launch-hint's note for Karpenter-launched nodes.
const KarpenterNote = "Karpenter cannot carry this hint: its EC2NodeClass (karpenter.k8s.aws/v1) builds its own " +
	"launch templates and has no field for an interface's address or prefix count (aws/karpenter-provider-aws " +
	"PRs #3819 and #4353, which proposed networkInterfaces, were closed unmerged; EC2NodeClass exposes only " +
	"associatePublicIPAddress), in no version so far. For Karpenter-launched nodes use ipledger's pre-warm " +
	"('ipledgerctl prewarm create', AdminService.Prewarm): tagged ENIs with their addresses made before the " +
	"nodes, one attach per node start; the NodeClaim lookahead (issue #15) is to pre-warm from Karpenter's " +
	"NodeClaims by itself."

// launchHintDoc converts the server's answer.
func launchHintDoc(r *ipledgerv1.LaunchHintResponse) LaunchHintDoc {
	d := LaunchHintDoc{
		Policy: r.GetPolicy(), InstanceType: r.GetInstanceType(), Mode: modeName(r.GetMode()),
		SecondaryPrivateIPAddressCount: int(r.GetSecondaryPrivateIpAddressCount()), IPv4PrefixCount: int(r.GetIpv4PrefixCount()),
		PodAddresses: int(r.GetPodAddresses()), Want: int(r.GetWant()), InterfaceLimit: int(r.GetInterfaceLimit()),
		Capped: r.GetCapped(), PreferPrefixes: r.GetPreferPrefixes(), FirstMinuteStarts: int(r.GetFirstMinuteStarts()),
		ObservedNodes: int(r.GetObservedNodes()), NodeLabels: r.GetNodeLabels(),
		Reasons: append([]string{}, r.GetReasons()...), Warnings: append([]string{}, r.GetWarnings()...),
		Karpenter: KarpenterNote,
	}
	return d
}

// SnippetOptions are the values a snippet needs that ipledger does not know.
type SnippetOptions struct {
	// SecurityGroups of the nodes (a launch template with NetworkInterfaces takes them there,
	// not in SecurityGroupIds); empty: a placeholder.
	SecurityGroups []string
}

const (
	placeholderSG       = "NODE_SECURITY_GROUP_ID"
	placeholderTemplate = "LAUNCH_TEMPLATE_ID"
	placeholderGroup    = "NODEGROUP_NAME"
)

// launchInterface is a launch template's NetworkInterfaces entry, in the order AWS documents it.
type launchInterface struct {
	DeviceIndex                    int      `json:"DeviceIndex"`
	SecondaryPrivateIPAddressCount int      `json:"SecondaryPrivateIpAddressCount,omitempty"`
	IPv4PrefixCount                int      `json:"Ipv4PrefixCount,omitempty"`
	Groups                         []string `json:"Groups"`
	DeleteOnTermination            bool     `json:"DeleteOnTermination"`
}

// launchTemplateData is the part of a launch template's data a hint fills in: the primary
// interface and, when the policy selects by tags, the instances' tags (policies match the
// instance's EC2 tags, so a node launched without them gets another policy).
type launchTemplateData struct {
	NetworkInterfaces []launchInterface `json:"NetworkInterfaces"`
	TagSpecifications []tagSpec         `json:"TagSpecifications,omitempty"`
}

type tagSpec struct {
	ResourceType string   `json:"ResourceType"`
	Tags         []ec2Tag `json:"Tags"`
}

type ec2Tag struct {
	Key   string `json:"Key"`
	Value string `json:"Value"`
}

// instanceTags are the policy's selector labels as the tags of a launch's instances.
func instanceTags(d LaunchHintDoc) []tagSpec {
	if len(d.NodeLabels) == 0 {
		return nil
	}
	var tags []ec2Tag
	for _, k := range sortedKeys(d.NodeLabels) {
		tags = append(tags, ec2Tag{Key: k, Value: d.NodeLabels[k]})
	}
	return []tagSpec{{ResourceType: "instance", Tags: tags}}
}

func (o SnippetOptions) groups() []string {
	if len(o.SecurityGroups) == 0 {
		return []string{placeholderSG}
	}
	return o.SecurityGroups
}

// RenderSnippet renders a launch hint in one of SnippetFormats; the docs' snippets are rendered
// by the same code (docs_test.go).
func RenderSnippet(d LaunchHintDoc, format string, o SnippetOptions) (string, error) {
	ni := launchInterface{Groups: o.groups(), DeleteOnTermination: true}
	count, field := d.SecondaryPrivateIPAddressCount, "SecondaryPrivateIpAddressCount"
	tfField := "ipv4_address_count"
	if d.IPv4PrefixCount > 0 {
		ni.IPv4PrefixCount = d.IPv4PrefixCount
		count, field, tfField = d.IPv4PrefixCount, "Ipv4PrefixCount", "ipv4_prefix_count"
	} else {
		ni.SecondaryPrivateIPAddressCount = d.SecondaryPrivateIPAddressCount
	}
	var b strings.Builder
	switch format {
	case FormatLaunchTemplate:
		out, err := json.MarshalIndent(launchTemplateData{NetworkInterfaces: []launchInterface{ni}, TagSpecifications: instanceTags(d)}, "", "  ")
		if err != nil {
			return "", fmt.Errorf("encode launch template: %w", err)
		}
		b.Write(out)
		b.WriteString("\n")
	case FormatCLI:
		fmt.Fprintf(&b, "# A new version of the node group's launch template; with NetworkInterfaces the security\n")
		fmt.Fprintf(&b, "# groups go in Groups, not SecurityGroupIds.\n")
		tags := ""
		if ts := instanceTags(d); len(ts) > 0 {
			fmt.Fprintf(&b, "# Policy %s selects nodes by these instance tags; TagSpecifications replaces the source\n", d.Policy)
			fmt.Fprintf(&b, "# version's, so list its other tags there too.\n")
			var kv []string
			for _, t := range ts[0].Tags {
				kv = append(kv, fmt.Sprintf("{Key=%s,Value=%s}", t.Key, t.Value))
			}
			tags = fmt.Sprintf(",TagSpecifications=[{ResourceType=instance,Tags=[%s]}]", strings.Join(kv, ","))
		}
		fmt.Fprintf(&b, "aws ec2 create-launch-template-version --launch-template-id %s --source-version '$Latest' \\\n", placeholderTemplate)
		fmt.Fprintf(&b, "  --launch-template-data 'NetworkInterfaces=[{DeviceIndex=0,%s=%d,Groups=[%s],DeleteOnTermination=true}]%s'\n",
			field, count, strings.Join(ni.Groups, ","), tags)
	case FormatEksctl:
		fmt.Fprintf(&b, "# eksctl has no field for an interface's address count: the managed node group takes it from\n")
		fmt.Fprintf(&b, "# a launch template carrying the NetworkInterfaces block (launch-hint -o %s).\n", FormatLaunchTemplate)
		fmt.Fprintf(&b, "managedNodeGroups:\n")
		fmt.Fprintf(&b, "  - name: %s\n", placeholderGroup)
		fmt.Fprintf(&b, "    instanceType: %s\n", d.InstanceType)
		fmt.Fprintf(&b, "    launchTemplate:\n")
		fmt.Fprintf(&b, "      id: %s\n", placeholderTemplate)
		if len(d.NodeLabels) > 0 {
			// Policies match the instance's EC2 tags, which a managed node group's instances
			// get from its launch template (eksctl's own tags and labels do not reach them).
			fmt.Fprintf(&b, "    # policy %s selects nodes by their EC2 tags %s: the launch template's\n", d.Policy, tagList(d.NodeLabels))
			fmt.Fprintf(&b, "    # TagSpecifications (ResourceType instance) must carry them (launch-hint -o %s).\n", FormatLaunchTemplate)
		}
	case FormatTerraform:
		name := "ipledger_" + strings.ReplaceAll(d.Policy, "-", "_")
		sgs := "[var.node_security_group_id]"
		if len(o.SecurityGroups) > 0 {
			q := make([]string, len(o.SecurityGroups))
			for i, s := range o.SecurityGroups {
				q[i] = fmt.Sprintf("%q", s)
			}
			sgs = "[" + strings.Join(q, ", ") + "]"
		}
		fmt.Fprintf(&b, "resource \"aws_launch_template\" %q {\n", name)
		fmt.Fprintf(&b, "  name_prefix   = %q\n", "ipledger-"+d.Policy+"-")
		fmt.Fprintf(&b, "  instance_type = %q\n\n", d.InstanceType)
		fmt.Fprintf(&b, "  network_interfaces {\n")
		fmt.Fprintf(&b, "    device_index          = 0\n")
		fmt.Fprintf(&b, "    %-21s = %d\n", tfField, count)
		fmt.Fprintf(&b, "    security_groups       = %s\n", sgs)
		fmt.Fprintf(&b, "    delete_on_termination = true\n")
		fmt.Fprintf(&b, "  }\n")
		if len(d.NodeLabels) > 0 {
			fmt.Fprintf(&b, "\n  # policy %s selects nodes by these instance tags\n", d.Policy)
			fmt.Fprintf(&b, "  tag_specifications {\n")
			fmt.Fprintf(&b, "    resource_type = \"instance\"\n")
			fmt.Fprintf(&b, "    tags = {\n")
			for _, k := range sortedKeys(d.NodeLabels) {
				fmt.Fprintf(&b, "      %q = %q\n", k, d.NodeLabels[k])
			}
			fmt.Fprintf(&b, "    }\n  }\n")
		}
		fmt.Fprintf(&b, "}\n")
	default:
		return "", fmt.Errorf("unknown snippet format %q (want one of %s)", format, strings.Join(SnippetFormats, ", "))
	}
	return b.String(), nil
}

// tagList is "k=v, k=v" in key order.
func tagList(m map[string]string) string {
	var kv []string
	for _, k := range sortedKeys(m) {
		kv = append(kv, k+"="+m[k])
	}
	return strings.Join(kv, ", ")
}

func launchHintTable(w io.Writer, d LaunchHintDoc) {
	launch := fmt.Sprintf("%d secondary address(es) on the primary interface (SecondaryPrivateIpAddressCount)", d.SecondaryPrivateIPAddressCount)
	mode := "secondary IP"
	if d.IPv4PrefixCount > 0 {
		launch = fmt.Sprintf("%d /28 prefix(es) on the primary interface (Ipv4PrefixCount)", d.IPv4PrefixCount)
		mode = "prefix"
	}
	row(w, "Policy:", d.Policy)
	row(w, "Instance type:", d.InstanceType)
	row(w, "Launch with:", launch)
	row(w, "Mode:", mode)
	if len(d.NodeLabels) > 0 {
		row(w, "Instance tags:", tagList(d.NodeLabels)+" (policy "+d.Policy+" selects nodes by these EC2 tags: launch them with these)")
	}
	row(w, "Pod addresses:", fmt.Sprintf("%d at launch; the policy wants %d after the first minute; the interface takes %d", d.PodAddresses, d.Want, d.InterfaceLimit))
	for _, r := range d.Reasons {
		row(w, "Why:", r)
	}
	for _, r := range d.Warnings {
		row(w, "Warning:", r)
	}
	row(w, "Karpenter:", d.Karpenter)
	row(w, "Snippets:", "-o "+strings.Join(SnippetFormats, " | -o "))
}

func launchHintCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "launch-hint",
		Short: "What a new node of a policy should carry at launch (a launch template's NetworkInterfaces), and the snippets to paste",
		Long: `
A node that EC2 launches with secondary addresses or /28 prefixes on its primary interface is
ready when its agent registers: ipledger adopts them into its lease, with no EC2 call. The hint
is the policy's target for a node running what the policy's new nodes start in their first
minute (learned by the leader; --expected-pods gives it instead), capped by the instance type's
primary interface, in prefixes where the subnets are shared with prefix-mode nodes or whole /28
blocks are scarce (Nitro types). -o launch-template, cli, eksctl and terraform print the
snippet to paste; --security-group fills in the nodes' security groups. docs/operations.md
explains each form and Karpenter's limits.`,
		Annotations: map[string]string{outputsAnnotation: strings.Join(SnippetFormats, ",")},
	}
	fs := cmd.Flags()
	pol := fs.String("policy", "", "the node group policy (required; 'default' is the built-in one)")
	itype := fs.String("instance-type", "", "the node group's EC2 instance type, e.g. m5.large (required)")
	expected := fs.Int("expected-pods", -1, "pods a new node starts in its first minute, instead of what the policy's new nodes were seen to start")
	sgs := fs.StringSlice("security-group", nil, "the nodes' security group id (repeatable) for the snippets; default a placeholder")
	_ = cmd.RegisterFlagCompletionFunc("policy", c.completeFlag(completePolicies))
	_ = cmd.RegisterFlagCompletionFunc("instance-type", func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		var out []cobra.Completion
		for _, t := range instancetypes.All() {
			out = append(out, t.Name)
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	})
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		const path = "launch-hint"
		switch {
		case *pol == "":
			return usagef(path, "launch-hint: --policy is required (see 'ipledgerctl policies')")
		case *itype == "":
			return usagef(path, "launch-hint: --instance-type is required (e.g. --instance-type m5.large)")
		case cmd.Flags().Changed("expected-pods") && (*expected < 0 || *expected > 4096):
			return usagef(path, "launch-hint: --expected-pods %d: want 0..4096", *expected)
		}
		if _, ok := instancetypes.Lookup(*itype); !ok {
			msg := fmt.Sprintf("launch-hint: --instance-type %q is not an EC2 instance type ipledger knows", *itype)
			if s := closeTypes(*itype, 3); len(s) > 0 {
				msg += " (did you mean " + strings.Join(s, ", ") + "?)"
			}
			return usagef(path, "%s", msg)
		}
		for _, sg := range *sgs {
			if !sgRE.MatchString(sg) {
				return usagef(path, "launch-hint: --security-group %q is not a security group id (sg-...)", sg)
			}
		}
		req := &ipledgerv1.LaunchHintRequest{Policy: *pol, InstanceType: *itype}
		if cmd.Flags().Changed("expected-pods") {
			n := uint32(*expected)
			req.ExpectedPods = &n
		}
		resp, err := call(ctx, c, "launch hint", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.LaunchHintResponse, error) {
			return a.LaunchHint(ctx, req)
		})
		if err != nil {
			return err
		}
		doc := launchHintDoc(resp)
		for _, f := range SnippetFormats {
			if c.g.output == f {
				s, err := RenderSnippet(doc, f, SnippetOptions{SecurityGroups: *sgs})
				if err != nil {
					return err
				}
				// Line by line: what came from the server cannot reach the terminal unescaped.
				lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
				for i, l := range lines {
					lines[i] = escapeText(l)
				}
				_, err = io.WriteString(c.stdout, strings.Join(lines, "\n")+"\n")
				return err
			}
		}
		return c.emit(doc, func(w io.Writer) { launchHintTable(w, doc) })
	})
}

var sgRE = regexp.MustCompile(`^sg-[0-9a-f]{8,17}$`)
