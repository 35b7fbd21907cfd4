package cni

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ipledger/ipledger/agent/netconf"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// SupportedVersions are the CNI spec versions the plugin speaks. GC and STATUS exist from 1.1.0.
func SupportedVersions() version.PluginInfo {
	return version.PluginSupports("0.4.0", "1.0.0", "1.1.0")
}

// undoTimeout bounds the calls that give an address back after a failed ADD.
const undoTimeout = 5 * time.Second

// Funcs returns the plugin's commands for skel.PluginMainFuncs. ctx ends the work of a command
// early (the process was told to stop).
func Funcs(ctx context.Context) skel.CNIFuncs {
	p := &plugin{ctx: ctx}
	return skel.CNIFuncs{Add: p.add, Del: p.del, Check: p.check, GC: p.gc, Status: p.status}
}

type plugin struct {
	ctx context.Context
}

// invocation is what every command sets up: the config, the log, the node's netlink.
type invocation struct {
	conf  *NetConf
	log   *slog.Logger
	close func()
}

func (p *plugin) start(cmd string, args *skel.CmdArgs) (*invocation, error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, err
	}
	log, closeLog := conf.openLog()
	log = log.With("cmd", cmd, "network", conf.Name)
	if args.ContainerID != "" {
		log = log.With("container_id", args.ContainerID, "ifname", args.IfName)
	}
	return &invocation{conf: conf, log: log, close: closeLog}, nil
}

// add: an address from the agent, then the veth pair, the pod's side, the host's side and the
// rules. Every failure after the agent answered undoes what was done and gives the address back.
func (p *plugin) add(args *skel.CmdArgs) (err error) {
	inv, err := p.start("ADD", args)
	if err != nil {
		return err
	}
	defer inv.close()
	conf, log := inv.conf, inv.log
	defer func() {
		if err != nil {
			log.Error("ADD failed", "error", err)
		}
	}()

	att, err := parseAttachment(args, true)
	if err != nil {
		return err
	}
	podNS, err := openNetns(att.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close() //nolint:errcheck // read-only handle
	node, err := newNodeSide()
	if err != nil {
		return err
	}
	defer node.h.Close()
	pod, err := newPodSide(podNS)
	if err != nil {
		return err
	}
	defer pod.h.Close()
	nc, err := netconf.New(netconf.Config{Logger: log})
	if err != nil {
		return err
	}
	defer nc.Close() //nolint:errcheck // nothing to flush

	agent, err := dialAgent(conf.AgentSocket)
	if err != nil {
		return err
	}
	defer agent.Close()

	ctx, cancel := context.WithTimeout(p.ctx, conf.AddTimeout)
	defer cancel()
	start := time.Now()
	resp, err := agent.Add(ctx, &ipledgerv1.CNIAddRequest{
		ContainerId:  att.ContainerID,
		Ifname:       att.IfName,
		Netns:        att.Netns,
		PodNamespace: att.PodNamespace,
		PodName:      att.PodName,
		PodUid:       att.PodUID,
		Wait:         durationpb.New(conf.agentWait()),
	})
	if err != nil {
		if !agentAnswered(err) {
			// The agent may have assigned an address we never heard of: give it back.
			p.giveBack(agent, att, log)
		}
		return agentCallError("add", conf.AgentSocket, att.pod(), err)
	}
	log = log.With("ip", resp.GetIp(), "eni", resp.GetEniId(), "table", resp.GetRouteTable())
	log.Info("agent assigned address", "waited", resp.GetWaited(), "took", time.Since(start))

	hostName := HostVethName(conf.VethPrefix, att.ContainerID, att.IfName)
	var (
		ip          netip.Addr
		hostLink    netlink.Link
		podLink     netlink.Link
		vethCreated bool
	)
	defer func() {
		if err == nil {
			return
		}
		if vethCreated {
			if derr := deleteLink(node.h, hostLink); derr != nil {
				log.Error("undo ADD: delete veth", "veth", hostName, "error", derr)
			}
		}
		if ip.IsValid() {
			if derr := nc.DelPodRules(ip); derr != nil {
				log.Error("undo ADD: delete rules", "error", derr)
			}
		}
		p.giveBack(agent, att, log)
	}()

	ip, err = netip.ParseAddr(resp.GetIp())
	if err != nil || !ip.Is4() {
		ip = netip.Addr{}
		return types.NewError(types.ErrInternal, fmt.Sprintf("ipledger: agent answered ADD for %s with an invalid address %q", att.pod(), resp.GetIp()), "")
	}
	table := int(resp.GetRouteTable())
	if table == 0 {
		table = netconf.TableForDevice(int(resp.GetDeviceIndex()))
	}
	if err := nc.EnableIPv4Forwarding(); err != nil {
		return err
	}
	// A host veth of this attachment that already routes the address the agent answered with is
	// left by an earlier ADD of the same attachment (a runtime retrying ADD, the agent returning
	// the attachment's address again): replace it, so the retry neither fails nor, undoing
	// itself, takes the working pod's address and rules away.
	if old, err := linkByName(node.h, hostName); err != nil {
		return err
	} else if old != nil && old.Type() == "veth" {
		ips, err := podIPsVia(node, old)
		if err != nil {
			return err
		}
		if slices.Contains(ips, ip) {
			if err := deleteLink(node.h, old); err != nil {
				return fmt.Errorf("ipledger: ADD %s: replace the veth of an earlier ADD: %w", att.pod(), err)
			}
			log.Info("replaced the host veth of an earlier ADD of this attachment", "veth", hostName)
		}
	}
	hostLink, podLink, err = createVeth(node, pod, hostName, att.IfName, conf.MTU)
	if err != nil {
		return fmt.Errorf("ipledger: ADD %s: %w", att.pod(), err)
	}
	vethCreated = true
	disableIPv6(hostName)
	if err := configurePod(pod, podLink, ip, hostLink.Attrs().HardwareAddr); err != nil {
		return fmt.Errorf("ipledger: ADD %s: %w", att.pod(), err)
	}
	if err := configureHost(node, hostLink, ip); err != nil {
		return fmt.Errorf("ipledger: ADD %s: %w", att.pod(), err)
	}
	if err := nc.AddPodRules(netconf.PodRoute{IP: ip, HostVeth: hostName, Table: table}); err != nil {
		return fmt.Errorf("ipledger: ADD %s: %w", att.pod(), err)
	}
	log.Info("pod attached", "veth", hostName, "took", time.Since(start))

	result := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: hostName, Mac: hostLink.Attrs().HardwareAddr.String()},
			{Name: att.IfName, Mac: podLink.Attrs().HardwareAddr.String(), Sandbox: att.Netns},
		},
		IPs: []*types100.IPConfig{{
			Interface: types100.Int(1),
			Address:   *hostNet(ip),
			Gateway:   net.IP(GatewayIP.AsSlice()),
		}},
		Routes: []*types.Route{{Dst: *defaultDst, GW: net.IP(GatewayIP.AsSlice())}},
		DNS:    conf.DNS,
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// giveBack asks the agent to take an attachment's address back after a failed ADD.
func (p *plugin) giveBack(agent *agentConn, att *attachment, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(p.ctx, undoTimeout)
	defer cancel()
	resp, err := agent.Del(ctx, &ipledgerv1.CNIDelRequest{ContainerId: att.ContainerID, Ifname: att.IfName})
	if err != nil {
		log.Error("undo ADD: give the address back", "error", err)
		return
	}
	log.Info("undo ADD: address given back", "released", resp.GetIp())
}

// del is idempotent: a missing netns, a missing veth and an attachment the agent does not know
// are success. The node side is cleaned first (rules, then the veth, which takes its route and
// the pod's side with it), then the agent takes the address back.
func (p *plugin) del(args *skel.CmdArgs) (err error) {
	inv, err := p.start("DEL", args)
	if err != nil {
		return err
	}
	defer inv.close()
	conf, log := inv.conf, inv.log
	defer func() {
		if err != nil {
			log.Error("DEL failed", "error", err)
		}
	}()
	att, err := parseAttachment(args, false)
	if err != nil {
		return err
	}
	node, err := newNodeSide()
	if err != nil {
		return err
	}
	defer node.h.Close()
	nc, err := netconf.New(netconf.Config{Logger: log})
	if err != nil {
		return err
	}
	defer nc.Close() //nolint:errcheck // nothing to flush

	hostName := HostVethName(conf.VethPrefix, att.ContainerID, att.IfName)
	var cleaned []netip.Addr
	link, err := linkByName(node.h, hostName)
	if err != nil {
		return err
	}
	if link != nil {
		ips, err := podIPsVia(node, link)
		if err != nil {
			return err
		}
		for _, ip := range ips {
			if err := nc.DelPodRules(ip); err != nil {
				return err
			}
			cleaned = append(cleaned, ip)
		}
		// Deleting the host end deletes the pair: the pod's interface and the /32 route go too.
		// The host name is derived from this attachment, so it is never another plugin's.
		if err := deleteLink(node.h, link); err != nil {
			return err
		}
		log.Info("deleted veth", "veth", hostName, "ips", cleaned)
	}

	agent, err := dialAgent(conf.AgentSocket)
	if err != nil {
		return err
	}
	defer agent.Close()
	ctx, cancel := context.WithTimeout(p.ctx, conf.AddTimeout)
	defer cancel()
	resp, err := agent.Del(ctx, &ipledgerv1.CNIDelRequest{ContainerId: att.ContainerID, Ifname: att.IfName})
	if err != nil {
		return agentCallError("del", conf.AgentSocket, att.pod(), err)
	}
	if s := resp.GetIp(); s != "" {
		// The veth may have been gone already (an earlier DEL, a crashed ADD): the rules of the
		// address the agent took back still go. It cools down before reuse, so they are ours.
		if ip, perr := netip.ParseAddr(s); perr == nil && !slices.Contains(cleaned, ip) {
			if err := nc.DelPodRules(ip); err != nil {
				return err
			}
		}
	}
	log.Info("DEL done", "released", resp.GetIp())
	return nil
}

// check compares the node and the pod with what the agent says the attachment has.
func (p *plugin) check(args *skel.CmdArgs) (err error) {
	inv, err := p.start("CHECK", args)
	if err != nil {
		return err
	}
	defer inv.close()
	conf, log := inv.conf, inv.log
	defer func() {
		if err != nil {
			log.Error("CHECK failed", "error", err)
		}
	}()
	att, err := parseAttachment(args, true)
	if err != nil {
		return err
	}
	podNS, err := openNetns(att.Netns)
	if err != nil {
		return err
	}
	defer podNS.Close() //nolint:errcheck // read-only handle
	agent, err := dialAgent(conf.AgentSocket)
	if err != nil {
		return err
	}
	defer agent.Close()
	ctx, cancel := context.WithTimeout(p.ctx, conf.AddTimeout)
	defer cancel()
	resp, err := agent.Check(ctx, &ipledgerv1.CNICheckRequest{ContainerId: att.ContainerID, Ifname: att.IfName})
	if err != nil {
		if st, ok := status.FromError(err); ok && st.Code() == codes.NotFound {
			return types.NewError(types.ErrUnknownContainer,
				fmt.Sprintf("ipledger: CHECK %s: the agent holds no address for container %s interface %s", att.pod(), att.ContainerID, att.IfName), st.Message())
		}
		return agentCallError("check", conf.AgentSocket, att.pod(), err)
	}
	ip, err := netip.ParseAddr(resp.GetIp())
	if err != nil || !ip.Is4() {
		return fmt.Errorf("ipledger: CHECK %s: the agent answered with an invalid address %q", att.pod(), resp.GetIp())
	}
	if err := checkPrevResult(&conf.PluginConf, ip, att); err != nil {
		return err
	}
	fail := func(format string, a ...any) error {
		return fmt.Errorf("ipledger: CHECK %s (%s): %s", att.pod(), ip, fmt.Sprintf(format, a...))
	}

	node, err := newNodeSide()
	if err != nil {
		return err
	}
	defer node.h.Close()
	hostName := HostVethName(conf.VethPrefix, att.ContainerID, att.IfName)
	host, err := linkByName(node.h, hostName)
	if err != nil {
		return err
	}
	if host == nil {
		return fail("host veth %s is missing", hostName)
	}
	if host.Attrs().Flags&net.FlagUp == 0 {
		return fail("host veth %s is down", hostName)
	}
	ips, err := podIPsVia(node, host)
	if err != nil {
		return err
	}
	if !slices.Contains(ips, ip) {
		return fail("the node has no route %s/32 dev %s", ip, hostName)
	}
	nc, err := netconf.New(netconf.Config{Logger: log})
	if err != nil {
		return err
	}
	defer nc.Close() //nolint:errcheck // nothing to flush
	rules, err := nc.Rules()
	if err != nil {
		return err
	}
	wantTable := int(resp.GetRouteTable())
	if wantTable == 0 {
		wantTable = netconf.MainTable
	}
	idx := slices.IndexFunc(rules, func(r netconf.PodRoute) bool { return r.IP == ip })
	switch {
	case idx < 0:
		return fail("the node has no policy rule `to %s lookup main`", ip)
	case rules[idx].Table != wantTable:
		return fail("the node routes the pod's traffic through table %d, the agent says table %d", rules[idx].Table, wantTable)
	}

	pod, err := newPodSide(podNS)
	if err != nil {
		return err
	}
	defer pod.h.Close()
	if _, err := checkPod(pod, att.IfName, ip, host.Attrs().HardwareAddr); err != nil {
		return fail("%v", err)
	}
	log.Info("CHECK passed", "ip", ip.String())
	return nil
}

// checkPrevResult verifies, when the runtime passed one, that the previous result names the
// address the agent holds.
func checkPrevResult(conf *types.PluginConf, ip netip.Addr, att *attachment) error {
	if conf.RawPrevResult == nil {
		return nil
	}
	if err := version.ParsePrevResult(conf); err != nil {
		return types.NewError(types.ErrDecodingFailure, "ipledger: CHECK: prevResult does not decode", err.Error())
	}
	prev, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "ipledger: CHECK: prevResult cannot be converted", err.Error())
	}
	for _, c := range prev.IPs {
		if a, ok := netip.AddrFromSlice(c.Address.IP.To4()); ok && a == ip {
			return nil
		}
	}
	return fmt.Errorf("ipledger: CHECK %s: the runtime's previous result does not list the agent's address %s", att.pod(), ip)
}

// gc hands the runtime's valid attachments to the agent, which takes back every other address;
// then it removes the rules of the released addresses and every host veth of ours that belongs
// to no valid attachment (left by a plugin killed mid-ADD, for example).
func (p *plugin) gc(args *skel.CmdArgs) (err error) {
	inv, err := p.start("GC", args)
	if err != nil {
		return err
	}
	defer inv.close()
	conf, log := inv.conf, inv.log
	defer func() {
		if err != nil {
			log.Error("GC failed", "error", err)
		}
	}()
	valid := make(map[string]bool, len(conf.ValidAttachments))
	req := &ipledgerv1.CNIGCRequest{}
	for _, a := range conf.ValidAttachments {
		req.ValidAttachments = append(req.ValidAttachments, &ipledgerv1.Attachment{ContainerId: a.ContainerID, Ifname: a.IfName})
		valid[HostVethName(conf.VethPrefix, a.ContainerID, a.IfName)] = true
	}
	agent, err := dialAgent(conf.AgentSocket)
	if err != nil {
		return err
	}
	defer agent.Close()
	ctx, cancel := context.WithTimeout(p.ctx, conf.AddTimeout)
	defer cancel()
	resp, err := agent.GC(ctx, req)
	if err != nil {
		return agentCallError("gc", conf.AgentSocket, "the node", err)
	}

	node, err := newNodeSide()
	if err != nil {
		return err
	}
	defer node.h.Close()
	nc, err := netconf.New(netconf.Config{Logger: log})
	if err != nil {
		return err
	}
	defer nc.Close() //nolint:errcheck // nothing to flush
	var errs []error
	for _, r := range resp.GetReleased() {
		if ip, perr := netip.ParseAddr(r.GetIp()); perr == nil {
			errs = append(errs, nc.DelPodRules(ip))
		}
	}
	links, err := node.h.LinkList()
	if err != nil {
		return fmt.Errorf("ipledger: GC: list links: %w", err)
	}
	removed := 0
	for _, l := range links {
		if !isHostVeth(l, conf.VethPrefix) || valid[l.Attrs().Name] {
			continue
		}
		ips, err := podIPsVia(node, l)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, ip := range ips {
			errs = append(errs, nc.DelPodRules(ip))
		}
		errs = append(errs, deleteLink(node.h, l))
		removed++
		log.Info("GC removed stale veth", "veth", l.Attrs().Name, "ips", ips)
	}
	log.Info("GC done", "valid", len(req.ValidAttachments), "released", len(resp.GetReleased()), "veths_removed", removed)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("ipledger: GC: %w", err)
	}
	return nil
}

// status is ready when the agent answers and can hand out an address; otherwise CNI code 50,
// "plugin not available", with the agent's reason.
func (p *plugin) status(args *skel.CmdArgs) (err error) {
	inv, err := p.start("STATUS", args)
	if err != nil {
		return err
	}
	defer inv.close()
	conf, log := inv.conf, inv.log
	notAvailable := func(msg, details string) error {
		log.Warn("STATUS: not available", "reason", msg)
		return types.NewError(types.ErrPluginNotAvailable, "ipledger: "+msg, details)
	}
	agent, err := dialAgent(conf.AgentSocket)
	if err != nil {
		var te *types.Error
		if errors.As(err, &te) {
			return notAvailable(strings.TrimPrefix(te.Msg, "ipledger: "), te.Details)
		}
		return err
	}
	defer agent.Close()
	ctx, cancel := context.WithTimeout(p.ctx, conf.AddTimeout)
	defer cancel()
	resp, err := agent.Status(ctx, &ipledgerv1.CNIStatusRequest{})
	if err != nil {
		te := agentCallError("status", conf.AgentSocket, "the node", err)
		return notAvailable(strings.TrimPrefix(te.Msg, "ipledger: "), te.Details)
	}
	if !resp.GetReady() {
		why := reasonText[resp.GetReason()]
		if why == "" {
			why = resp.GetReason().String()
		}
		msg := fmt.Sprintf("agent is not ready: %s", why)
		if resp.GetMessage() != "" {
			msg += ": " + resp.GetMessage()
		}
		return notAvailable(msg, fmt.Sprintf("free=%d server_connected=%t", resp.GetFree(), resp.GetServerConnected()))
	}
	log.Debug("STATUS: ready", "free", resp.GetFree(), "server_connected", resp.GetServerConnected())
	return nil
}
