// Package validate holds the rules for fields that come from pods and container runtimes and
// travel from the CNI plugin through the agent to the server: pod names, namespaces and uids.
// The agent applies them to CNI requests and the server to the agents' usage reports, so a field
// the agent would refuse is refused at the server too. It returns plain errors saying what is
// wrong; callers wrap them in their own status naming the field. It never logs.
package validate

import (
	"errors"
	"fmt"
	"strings"
)

// MaxPodField bounds a pod's namespace, name and uid (a Kubernetes name is at most 253).
const MaxPodField = 253

// ErrControl: the value holds a control character (ESC, BEL, CR, LF, ...), which a terminal
// or a log reader would interpret instead of showing.
var ErrControl = errors.New("contains control characters")

// IsControl reports the characters no identifier from a pod may hold: C0 controls and DEL.
func IsControl(r rune) bool { return r < ' ' || r == 0x7f }

// NoControl refuses a value with control characters.
func NoControl(v string) error {
	if strings.ContainsFunc(v, IsControl) {
		return ErrControl
	}
	return nil
}

// PodField checks a pod's namespace, name or uid: at most MaxPodField bytes, no control
// characters (empty is allowed: runtimes without Kubernetes send none).
func PodField(v string) error {
	if len(v) > MaxPodField {
		return fmt.Errorf("is %d characters long, at most %d allowed", len(v), MaxPodField)
	}
	return NoControl(v)
}
