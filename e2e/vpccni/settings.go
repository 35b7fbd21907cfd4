package vpccni

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Setting names as the benchmark reports them.
const (
	NameDefault = "vpc-cni-default"
	NameWarmIP  = "vpc-cni-warm-ip"
	NameMin5    = "vpc-cni-min5"
	NamePrefix  = "vpc-cni-prefix"
	NameCustom  = "vpc-cni-custom"
)

// ErrUnknownSettings is returned by SettingsByName for a name it does not know.
var ErrUnknownSettings = errors.New("vpccni: unknown settings")

// Settings are ipamd's environment variables that shape the warm pool. A zero target is unset
// (ipamd's own meaning of 0 for WARM_IP_TARGET and MINIMUM_IP_TARGET).
type Settings struct {
	// Name is how the benchmark reports the system.
	Name string
	// WarmENITarget (WARM_ENI_TARGET) applies when neither WarmIPTarget nor MinimumIPTarget is
	// set and PrefixMode is off.
	WarmENITarget int
	// WarmIPTarget (WARM_IP_TARGET) and MinimumIPTarget (MINIMUM_IP_TARGET).
	WarmIPTarget    int
	MinimumIPTarget int
	// PrefixMode (ENABLE_PREFIX_DELEGATION) with WarmPrefixTarget (WARM_PREFIX_TARGET).
	PrefixMode       bool
	WarmPrefixTarget int
	// CustomNetworking (AWS_VPC_K8S_CNI_CUSTOM_NETWORK_CFG=true): secondary ENIs go to the
	// subnet and security groups of the node's zone's ENIConfig (Config.ENIConfig), and the
	// primary ENI holds no pod addresses.
	CustomNetworking bool
}

// ENIConfig is the VPC CNI's ENIConfig resource of a zone: one subnet and its security groups
// (none: the primary ENI's).
type ENIConfig struct {
	Subnet         string
	SecurityGroups []string
}

// Default is the VPC CNI's default: WARM_ENI_TARGET=1.
func Default() Settings { return Settings{Name: NameDefault, WarmENITarget: 1} }

// WarmIP is WARM_IP_TARGET=2 with MINIMUM_IP_TARGET=10.
func WarmIP() Settings { return Settings{Name: NameWarmIP, WarmIPTarget: 2, MinimumIPTarget: 10} }

// Min5 is MINIMUM_IP_TARGET=5 (the seed's tuned node).
func Min5() Settings { return Settings{Name: NameMin5, MinimumIPTarget: 5} }

// Prefix is prefix delegation with WARM_PREFIX_TARGET=1.
func Prefix() Settings { return Settings{Name: NamePrefix, PrefixMode: true, WarmPrefixTarget: 1} }

// Custom is the default (WARM_ENI_TARGET=1) with custom networking: one ENIConfig per zone.
func Custom() Settings { return Settings{Name: NameCustom, WarmENITarget: 1, CustomNetworking: true} }

var presets = map[string]func() Settings{NameDefault: Default, NameWarmIP: WarmIP, NameMin5: Min5, NamePrefix: Prefix, NameCustom: Custom}

// Names lists the preset names, sorted.
func Names() []string {
	out := make([]string, 0, len(presets))
	for n := range presets {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// SettingsByName returns a preset.
func SettingsByName(name string) (Settings, error) {
	f, ok := presets[name]
	if !ok {
		return Settings{}, fmt.Errorf("%w %q (known: %s)", ErrUnknownSettings, name, strings.Join(Names(), ", "))
	}
	return f(), nil
}

// warmIPMode: WARM_IP_TARGET or MINIMUM_IP_TARGET is set, which overrides WARM_ENI_TARGET and
// WARM_PREFIX_TARGET.
func (s Settings) warmIPMode() bool { return s.WarmIPTarget > 0 || s.MinimumIPTarget > 0 }

// Validate reports settings ipamd refuses or the model does not cover.
func (s Settings) Validate() error {
	if s.WarmENITarget < 0 || s.WarmIPTarget < 0 || s.MinimumIPTarget < 0 || s.WarmPrefixTarget < 0 {
		return fmt.Errorf("vpccni: settings %q: targets must not be negative", s.Name)
	}
	if s.PrefixMode && !s.warmIPMode() && s.WarmPrefixTarget == 0 {
		return fmt.Errorf("vpccni: settings %q: prefix mode needs WARM_PREFIX_TARGET or WARM_IP_TARGET/MINIMUM_IP_TARGET (ipamd does not support all zero)", s.Name)
	}
	if s.PrefixMode && s.warmIPMode() {
		return fmt.Errorf("vpccni: settings %q: the model covers prefix mode with WARM_PREFIX_TARGET only", s.Name)
	}
	if !s.PrefixMode && !s.warmIPMode() && s.WarmENITarget == 0 {
		return fmt.Errorf("vpccni: settings %q: WARM_ENI_TARGET=0 with no WARM_IP_TARGET keeps no pool", s.Name)
	}
	return nil
}

// Timers are ipamd's time constants. Scaled divides them for a time-scaled run.
type Timers struct {
	// PoolLoop is the period of the pool reconciliation (5 s).
	PoolLoop time.Duration
	// ReleaseInterval is the least time between a pool change and a release (30 s).
	ReleaseInterval time.Duration
	// Cooldown is how long an address a pod gave back waits before reuse (30 s).
	Cooldown time.Duration
	// SubnetErrorPause stops growth after InsufficientCidrBlocks or
	// InsufficientFreeAddressesInSubnet (120 s).
	SubnetErrorPause time.Duration
	// DetachWait is how long ipamd waits between DetachNetworkInterface and the first
	// DeleteNetworkInterface (2 s: "it does take awhile for EC2 to detach ENI from instance").
	DetachWait time.Duration
	// RetryMin and RetryMax bound the backoff of ipamd's DeleteNetworkInterface retries (500 ms
	// doubling, at most 1 min, 12 tries).
	RetryMin, RetryMax time.Duration
	// IMDSWaitMin is the first pause while ipamd waits for an attached ENI to appear in IMDS
	// before its addresses go to the datastore (100 ms doubling, at most RetryMax, 12 tries).
	IMDSWaitMin time.Duration
}

// retries is ipamd's maxENIEC2APIRetries (and its tries of the IMDS wait).
const retries = 12

// DefaultTimers are ipamd's values.
func DefaultTimers() Timers {
	return Timers{PoolLoop: 5 * time.Second, ReleaseInterval: 30 * time.Second, Cooldown: 30 * time.Second, SubnetErrorPause: 120 * time.Second,
		DetachWait: 2 * time.Second, RetryMin: 500 * time.Millisecond, RetryMax: time.Minute, IMDSWaitMin: 100 * time.Millisecond}
}

// withDefaults fills the detach and IMDS timers left zero with ipamd's values.
func (t Timers) withDefaults() Timers {
	d := DefaultTimers()
	for _, f := range []struct{ v, def *time.Duration }{{&t.DetachWait, &d.DetachWait}, {&t.RetryMin, &d.RetryMin}, {&t.RetryMax, &d.RetryMax}, {&t.IMDSWaitMin, &d.IMDSWaitMin}} {
		if *f.v == 0 {
			*f.v = *f.def
		}
	}
	return t
}

// Scaled divides every timer by f (f <= 1 leaves them).
func (t Timers) Scaled(f float64) Timers {
	if f <= 1 {
		return t
	}
	d := func(x time.Duration) time.Duration { return time.Duration(float64(x) / f) }
	return Timers{PoolLoop: d(t.PoolLoop), ReleaseInterval: d(t.ReleaseInterval), Cooldown: d(t.Cooldown), SubnetErrorPause: d(t.SubnetErrorPause),
		DetachWait: d(t.DetachWait), RetryMin: d(t.RetryMin), RetryMax: d(t.RetryMax), IMDSWaitMin: d(t.IMDSWaitMin)}
}
