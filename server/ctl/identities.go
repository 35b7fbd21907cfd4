package ctl

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"sort"
	"time"

	"github.com/spf13/cobra"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

func init() {
	register("", identitiesCmd)
	register("node", forgetIdentityCmd)
}

func identitiesCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "identities",
		Short: "List the node attestations the server recorded (one per instance)",
		Long: `
A row per attested instance, ordered by node name: METHOD is how it proved itself (aws-iid: its
EC2 instance identity document), ACCOUNT and REGION are the document's, ATTESTED is the first
attestation, CERT-EXPIRES the expiry of the last certificate issued, RENEWALS how many were
issued since, KEY the first 12 hex digits of the SHA-256 of the node's public key (the key never
leaves the node). Nodes with certificates from files have no attestation and are not listed.
A record goes with its instance; 'node forget-identity' removes one for a node whose key was lost.`,
	}
	return c.leaf(cmd, 0, 0, func(ctx context.Context, args []string) error {
		resp, err := call(ctx, c, "list identities", func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.ListIdentitiesResponse, error) {
			return a.ListIdentities(ctx, &ipledgerv1.ListIdentitiesRequest{})
		})
		if err != nil {
			return err
		}
		docs := make([]Identity, 0, len(resp.GetIdentities()))
		for _, r := range resp.GetIdentities() {
			docs = append(docs, identityDoc(r))
		}
		sort.Slice(docs, func(i, j int) bool {
			if docs[i].NodeName != docs[j].NodeName {
				return docs[i].NodeName < docs[j].NodeName
			}
			return docs[i].InstanceID < docs[j].InstanceID
		})
		now := time.Now()
		return c.emit(docs, func(w io.Writer) {
			row(w, "NODE", "INSTANCE", "METHOD", "ACCOUNT", "REGION", "ATTESTED", "CERT-EXPIRES", "RENEWALS", "KEY")
			for _, d := range docs {
				row(w, orDash(d.NodeName), d.InstanceID, orDash(d.Method), orDash(d.AccountID), orDash(d.Region), ago(d.AttestedAt, now),
					until(d.CertificateNotAfter, now), d.Renewals, keyShort(d.KeySHA256))
			}
			if len(docs) == 0 {
				row(w, "(none: no agent has attested)")
			}
		})
	})
}

// instanceIDRE is what an EC2 instance id looks like (the server checks it too).
var instanceIDRE = regexp.MustCompile(`^i-[0-9a-f]{8,17}$`)

func forgetIdentityCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:               "forget-identity NODE",
		ValidArgsFunction: c.completeArgs(completeNodes),
		Short:             "Delete a node's attestation so that its instance may attest again with a new key",
		Long: `
For a node whose key was lost (its disk replaced): the server refuses a second attestation of an
instance with another key (INSTANCE_ALREADY_ATTESTED) until the first is gone with its instance
or forgotten here. Name the node, or its instance with --instance i-... (for an instance whose
node name is unknown or reused). Certificates already issued stay valid until they expire (at
most --node-cert-lifetime, 24h by default). Prints the forgotten attestation (see 'help
identities'); an unknown node or instance is exit 1 (NotFound).`,
	}
	instance := cmd.Flags().String("instance", "", "the instance id (i-...) instead of the node name")
	return c.leaf(cmd, 0, 1, func(ctx context.Context, args []string) error {
		const path = "node forget-identity"
		req := &ipledgerv1.ForgetIdentityRequest{InstanceId: *instance}
		switch {
		case len(args) == 1 && *instance != "":
			return usagef(path, "%s: give NODE or --instance, not both", path)
		case len(args) == 0 && *instance == "":
			return usagef(path, "%s: give NODE or --instance i-...", path)
		case *instance != "" && !instanceIDRE.MatchString(*instance):
			return usagef(path, "%s: --instance %q is not an instance id: want i- and 8 to 17 hex digits (i-0123456789abcdef0)", path, *instance)
		case len(args) == 1:
			req.NodeName = args[0]
		}
		what := "forget the identity of node " + req.GetNodeName()
		if req.GetInstanceId() != "" {
			what = "forget the identity of instance " + req.GetInstanceId()
		}
		r, err := call(ctx, c, what, func(ctx context.Context, a ipledgerv1.AdminServiceClient) (*ipledgerv1.NodeIdentity, error) {
			return a.ForgetIdentity(ctx, req)
		})
		if err != nil {
			return err
		}
		doc := identityDoc(r)
		now := time.Now()
		return c.emit(doc, func(w io.Writer) {
			row(w, fmt.Sprintf("forgot the attestation of node %s (instance %s): it may attest again with a new key", orDash(doc.NodeName), doc.InstanceID))
			row(w, "Method:", orDash(doc.Method))
			row(w, "Account:", fmt.Sprintf("%s, %s", orDash(doc.AccountID), orDash(doc.Region)))
			row(w, "Key:", orDash(doc.KeySHA256))
			row(w, "Attested:", ago(doc.AttestedAt, now))
			row(w, "Renewals:", doc.Renewals)
			row(w, "Certificate:", fmt.Sprintf("serial %s, valid until %s (%s): issued certificates are not revoked",
				orDash(doc.CertificateSerial), timeText(doc.CertificateNotAfter), until(doc.CertificateNotAfter, now)))
		})
	})
}

// timeText is an RFC 3339 time ("-" when unset).
func timeText(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Format(time.RFC3339)
}
