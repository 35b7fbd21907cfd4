package cni

import (
	"crypto/sha1" //nolint:gosec // a name, not a secret: the VPC CNI derives veth names the same way
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// podArgs are the CNI_ARGS keys kubelet's runtime passes.
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the CNI_ARGS key
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // the CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive // the CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive // the CNI_ARGS key
}

// attachment is one validated invocation: who the runtime attaches, where.
type attachment struct {
	ContainerID string
	IfName      string
	// Netns is the pod's network namespace path ("" on a DEL without one).
	Netns        string
	PodNamespace string
	PodName      string
	PodUID       string
}

func invalidEnv(format string, args ...any) *types.Error {
	return types.NewError(types.ErrInvalidEnvironmentVariables, "ipledger: "+fmt.Sprintf(format, args...), "")
}

// parseAttachment validates CNI_CONTAINERID, CNI_IFNAME, CNI_NETNS (required when needNetns) and
// CNI_ARGS. Errors are CNI code 4, "invalid environment variables".
func parseAttachment(args *skel.CmdArgs, needNetns bool) (*attachment, error) {
	if err := utils.ValidateContainerID(args.ContainerID); err != nil {
		return nil, invalidEnv("CNI_CONTAINERID %q: %s", args.ContainerID, err.Msg)
	}
	if err := utils.ValidateInterfaceName(args.IfName); err != nil {
		return nil, invalidEnv("CNI_IFNAME %q: %s", args.IfName, err.Msg)
	}
	if args.IfName == "lo" {
		return nil, invalidEnv("CNI_IFNAME %q is the pod's loopback", args.IfName)
	}
	switch {
	case args.Netns == "" && needNetns:
		return nil, invalidEnv("CNI_NETNS is missing")
	case args.Netns != "" && !filepath.IsAbs(args.Netns):
		return nil, invalidEnv("CNI_NETNS %q is not an absolute path", args.Netns)
	}
	pa := podArgs{}
	if args.Args != "" {
		if err := types.LoadArgs(args.Args, &pa); err != nil {
			return nil, invalidEnv("CNI_ARGS %q: %v", args.Args, err)
		}
	}
	return &attachment{
		ContainerID:  args.ContainerID,
		IfName:       args.IfName,
		Netns:        args.Netns,
		PodNamespace: string(pa.K8S_POD_NAMESPACE),
		PodName:      string(pa.K8S_POD_NAME),
		PodUID:       string(pa.K8S_POD_UID),
	}, nil
}

// openNetns opens the pod's namespace; a path that is missing, not a network namespace or the
// plugin's own (the node's) namespace is CNI code 4 naming CNI_NETNS.
func openNetns(path string) (ns.NetNS, error) {
	n, err := ns.GetNS(path)
	if err == nil {
		var pod, self unix.Stat_t
		if unix.Fstat(int(n.Fd()), &pod) == nil && unix.Stat("/proc/thread-self/ns/net", &self) == nil &&
			pod.Dev == self.Dev && pod.Ino == self.Ino {
			_ = n.Close()
			return nil, invalidEnv("CNI_NETNS %s is the node's own network namespace, not a pod's", path)
		}
		return n, nil
	}
	var notExist ns.NSPathNotExistErr
	var notNS ns.NSPathNotNSErr
	switch {
	case errors.As(err, &notExist):
		return nil, invalidEnv("CNI_NETNS %s does not exist", path)
	case errors.As(err, &notNS):
		return nil, invalidEnv("CNI_NETNS %s is not a network namespace", path)
	}
	return nil, invalidEnv("CNI_NETNS %s cannot be opened: %v", path, err)
}

// pod names the attachment for messages: the Kubernetes pod when the runtime said which.
func (a *attachment) pod() string {
	if a.PodName != "" {
		return a.PodNamespace + "/" + a.PodName
	}
	return "container " + a.ContainerID
}

// HostVethName is the node-side name of an attachment's veth: prefix and the first 11 hex
// characters of sha1(containerID + "." + ifname), at most 15 characters.
func HostVethName(prefix, containerID, ifname string) string {
	sum := sha1.Sum([]byte(containerID + "." + ifname)) //nolint:gosec // a name, not a secret
	return prefix + hex.EncodeToString(sum[:])[:11]
}
