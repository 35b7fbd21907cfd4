package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ipledger/ipledger/agent/attest"
	"github.com/ipledger/ipledger/deploy/cniinstall"
	"github.com/ipledger/ipledger/internal/mtls"
)

// ensureIdentity attests (or finds the certificate on disk) and checks that it names this node.
// A refusal is logged and tried again; a certificate for another node name is an error (the
// server names nodes after their instance: --attest-node-name must match the kubelet's name).
func (a *Agent) ensureIdentity(ctx context.Context, nodeName string) error {
	for {
		name, err := a.attest.Ensure(ctx)
		if err == nil {
			if name != nodeName {
				return fmt.Errorf("agent: the server attested this instance as node %s, but this node is %s: the server's --attest-node-name must name nodes as the kubelet does", name, nodeName)
			}
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, attest.ErrRefused) {
			return fmt.Errorf("agent: attestation: %w", err)
		}
		a.log.Error("the server refused this node's attestation; the node stays without network config until it accepts", "err", err, "retry_in", a.cfg.AttestRetry)
		t := time.NewTimer(a.cfg.AttestRetry)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// installConflist installs the CNI network config once (when --cni-conf-dir is set): the
// container runtime, and with it the kubelet, report the node ready for pods only from then on.
// A failure is logged and tried again with the next pool.
func (a *Agent) installConflist() {
	ic, ok := a.cfg.cniInstall()
	if !ok || a.cniDone.Load() {
		return
	}
	ic.Logger = a.log.With("component", "cni-install")
	res, err := cniinstall.InstallConflist(ic)
	if err != nil {
		a.log.Error("installing the CNI network config failed; the node stays not ready; retrying with the next pool", "err", err)
		return
	}
	if res.AgentSocket != a.cfg.SocketPath {
		a.log.Warn("the installed conflist sends the plugin to another socket than this agent's", "conflist_socket", res.AgentSocket, "socket", a.cfg.SocketPath)
	}
	a.cniDone.Store(true)
	a.log.Info("the node can serve pods: CNI network config installed", "conflist", res.ConflistPath)
}

// IdentityView is the agent's certificate as /v1/pool shows it.
type IdentityView struct {
	// Method is "aws-iid" (attested), "certificate" (files) or "" (plaintext).
	Method   string    `json:"method"`
	NotAfter time.Time `json:"not_after,omitzero"`
	Serial   string    `json:"serial,omitempty"`
	Renewals int       `json:"renewals"`
}

func (a *Agent) identityView() IdentityView {
	if a.tls == nil {
		return IdentityView{}
	}
	v := IdentityView{Method: "certificate"}
	if a.attest != nil {
		v.Method, v.Renewals = "aws-iid", a.attest.Renewals()
	}
	if leaf := a.tls.Leaf(); leaf != nil {
		v.NotAfter, v.Serial = leaf.NotAfter, leaf.SerialNumber.String()
		if _, ok := mtls.AttestedInstanceOf(leaf); ok {
			v.Method = "aws-iid"
		}
	}
	return v
}

// ConflistInstalled says whether the agent installed the CNI network config.
func (a *Agent) ConflistInstalled() bool { return a.cniDone.Load() }
