package bench

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"

	"github.com/ipledger/ipledger/e2e/vpccni"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// vpccniSystem runs one modelled ipamd per node, each with its own SDK client (they share an
// HTTP connection pool only).
type vpccniSystem struct {
	name     string
	settings vpccni.Settings
	env      systemEnv
	hc       *http.Client
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

var _ system = (*vpccniSystem)(nil)

func newVPCCNISystem(ctx context.Context, name string, env systemEnv) (*vpccniSystem, error) {
	s, err := vpccni.SettingsByName(name)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &vpccniSystem{name: name, settings: s, env: env, hc: vpccni.NewHTTPClient(), ctx: rctx, cancel: cancel}, nil
}

func (s *vpccniSystem) Name() string { return s.name }

// StartNode starts a modelled ipamd with the system's settings; in the prefix trace the
// prefix-mode nodes run the prefix settings and the secondary-IP nodes the default settings.
func (s *vpccniSystem) StartNode(ctx context.Context, inst ec2sim.InstanceInfo, r role) (node, error) {
	settings := s.settings
	switch r {
	case roleSecondary:
		settings = vpccni.Default()
	case rolePrefix:
		settings = vpccni.Prefix()
	}
	client, err := vpccni.NewEC2Client(vpccni.ClientConfig{Endpoint: s.env.sim.Endpoint(), TimeScale: s.env.timeScale, HTTPClient: s.hc})
	if err != nil {
		return nil, err
	}
	var eniConfig *vpccni.ENIConfig
	if settings.CustomNetworking {
		// One ENIConfig per zone, naming one subnet (the zone's first pod subnet); its
		// security groups left out: the primary ENI's.
		ids := s.env.podSubnets[inst.AvailabilityZone]
		if len(ids) == 0 {
			return nil, fmt.Errorf("bench: %s: no pod subnet in %s for the ENIConfig", s.name, inst.AvailabilityZone)
		}
		eniConfig = &vpccni.ENIConfig{Subnet: ids[0]}
	}
	n, err := vpccni.New(vpccni.Config{Settings: settings, Timers: vpccni.DefaultTimers().Scaled(s.env.timeScale), EC2: client, InstanceID: inst.ID, IMDSEndpoint: inst.IMDSEndpoint, ENIConfig: eniConfig})
	if err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = n.Run(s.ctx)
	}()
	return &vpccniNode{n: n}, nil
}

func (s *vpccniSystem) Resources(context.Context) Resources { return Resources{} }

func (s *vpccniSystem) Close() error {
	s.cancel()
	s.wg.Wait()
	s.hc.CloseIdleConnections()
	return nil
}

type vpccniNode struct{ n *vpccni.Node }

func (v *vpccniNode) Ready() bool {
	select {
	case <-v.n.Ready():
		return v.n.Counts().Free > 0
	default:
		return false
	}
}

func (v *vpccniNode) Add(_ context.Context, pod string) (bool, error) {
	_, err := v.n.Add(pod)
	return false, err
}

func (v *vpccniNode) Del(_ context.Context, pod string) error {
	_, err := v.n.Del(pod)
	if errors.Is(err, vpccni.ErrUnknownPod) {
		return nil
	}
	return err
}
