package cniserver

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/ipledger/ipledger/agent/internal/rpcerr"
	"github.com/ipledger/ipledger/internal/validate"
	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
)

// Limits of request fields.
const (
	maxContainerID = 256
	maxIfName      = 15 // IFNAMSIZ - 1
	maxNetNS       = 4096
	// MaxWait is the longest wait an Add may ask for.
	MaxWait = 5 * time.Minute
)

// invalid is the INVALID_ARGUMENT status for a bad field.
func invalid(field, format string, args ...any) error {
	return rpcerr.New(codes.InvalidArgument, ipledgerv1.Reason_INVALID_ARGUMENT,
		field+": "+fmt.Sprintf(format, args...), map[string]string{"field": field})
}

// validContainerID: non-empty, at most 256 characters of [A-Za-z0-9_.-] (the CNI spec's rule).
func validContainerID(field, id string) error {
	if id == "" {
		return invalid(field, "is empty")
	}
	if len(id) > maxContainerID {
		return invalid(field, "is %d characters long, at most %d allowed", len(id), maxContainerID)
	}
	for i, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '.' || r == '-') {
			return invalid(field, "has %q at position %d; only letters, digits, '_', '.' and '-' are allowed", r, i)
		}
	}
	return nil
}

// validIfName: a name Linux accepts for an interface: 1..15 bytes, not "." or "..", no '/',
// ':', whitespace or control characters.
func validIfName(field, name string) error {
	switch {
	case name == "":
		return invalid(field, "is empty")
	case len(name) > maxIfName:
		return invalid(field, "%q is longer than %d bytes", name, maxIfName)
	case name == "." || name == "..":
		return invalid(field, "%q is not an interface name", name)
	}
	for _, r := range name {
		if r == '/' || r == ':' || r == ' ' || validate.IsControl(r) {
			return invalid(field, "%q contains %q", name, r)
		}
	}
	return nil
}

func validPodField(field, v string) error {
	if err := validate.PodField(v); err != nil {
		return invalid(field, "%v", err)
	}
	return nil
}

func validateAttachment(prefix, containerID, ifname string) error {
	if err := validContainerID(prefix+"container_id", containerID); err != nil {
		return err
	}
	return validIfName(prefix+"ifname", ifname)
}

func validateAdd(req *ipledgerv1.CNIAddRequest) error {
	if err := validateAttachment("", req.GetContainerId(), req.GetIfname()); err != nil {
		return err
	}
	if ns := req.GetNetns(); ns != "" {
		if !filepath.IsAbs(ns) {
			return invalid("netns", "%q is not an absolute path", ns)
		}
		if len(ns) > maxNetNS || strings.ContainsRune(ns, 0) {
			return invalid("netns", "is not a usable path")
		}
	}
	for _, f := range [...]struct{ name, v string }{
		{"pod_namespace", req.GetPodNamespace()}, {"pod_name", req.GetPodName()}, {"pod_uid", req.GetPodUid()},
	} {
		if err := validPodField(f.name, f.v); err != nil {
			return err
		}
	}
	if w := req.GetWait(); w != nil {
		if err := w.CheckValid(); err != nil {
			return invalid("wait", "%v", err)
		}
		if d := w.AsDuration(); d < 0 || d > MaxWait {
			return invalid("wait", "%v is outside 0..%v", d, MaxWait)
		}
	}
	return nil
}
