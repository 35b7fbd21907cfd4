package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/ipledger/ipledger/e2e/vpccni"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// SystemIPLedger is ipledger's name in reports; the VPC CNI's are vpccni's setting names.
const SystemIPLedger = "ipledger"

// ErrUnknownSystem is returned for a system name the bench does not know.
var ErrUnknownSystem = errors.New("bench: unknown system")

// AllSystems lists every system, ipledger first.
func AllSystems() []string {
	return []string{SystemIPLedger, vpccni.NameDefault, vpccni.NameWarmIP, vpccni.NameMin5, vpccni.NamePrefix}
}

// ParseSystems reads a comma-separated list of system names.
func ParseSystems(s string) ([]string, error) {
	var out []string
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if name != SystemIPLedger && name != SystemIPLedgerK8s {
			if _, err := vpccni.SettingsByName(name); err != nil {
				return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknownSystem, name, strings.Join(AllSystems(), ", "))
			}
		}
		out = append(out, name)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: empty list", ErrUnknownSystem)
	}
	return out, nil
}

// role is what a node is for in a trace. Most nodes run the system's own settings; the prefix
// trace mixes nodes in secondary-IP mode (the VPC CNI's default settings there) and nodes in
// prefix mode.
type role int

const (
	roleDefault role = iota
	roleSecondary
	rolePrefix
)

// system is one system under test on one simulator: it starts nodes and tears down.
type system interface {
	Name() string
	// StartNode starts the system's node software for a running instance; the node works in
	// the background until Close.
	StartNode(ctx context.Context, inst ec2sim.InstanceInfo, r role) (node, error)
	// Resources measures the system's central components (nil fields when it has none). It is
	// called before Close.
	Resources(ctx context.Context) Resources
	// Close stops every node and component and removes what the system created.
	Close() error
}

// node is one node of a system as the kubelet sees it.
type node interface {
	// Ready: the node can start a pod now (its software runs and holds a free address).
	Ready() bool
	// Add is one CNI ADD attempt; waited says the address had to come from EC2 during the call.
	Add(ctx context.Context, pod string) (waited bool, err error)
	// Del is the CNI DEL of a pod.
	Del(ctx context.Context, pod string) error
}

// Resources are the central components' costs.
type Resources struct {
	ServerCPUSeconds *float64
	ServerPeakRSSMB  *float64
	EtcdDBBytes      *int64
	// ServerExits: why the server process exited during the trace (it was restarted each time).
	ServerExits []string
}

// systemEnv is what every system gets to start on.
type systemEnv struct {
	sim       *ec2sim.Server
	timeScale float64
	workDir   string
	serverBin string
	subnets   []string
	logDir    string
	// ipledgerFloor, when > 0, is the adaptive floor of ipledger's default policy.
	ipledgerFloor int
	// podSubnets are the trace's pod subnets per zone (custom-networking): ipledger's policy
	// names them all, the VPC CNI's ENIConfig of a zone the first.
	podSubnets map[string][]string
	// extraServerArgs are added to ipledger-server's flags (ipledger-k8s: --kubeconfig).
	extraServerArgs []string
}
