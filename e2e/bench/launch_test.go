package bench

import (
	"testing"
	"time"

	"github.com/ipledger/ipledger/e2e/vpccni"
)

// TestBurstLaunchSmall: nodes launched over the SDK from the template the server's launch hint
// gives are ready without one mutating EC2 call by ipledger, nothing is throttled, and Check is
// clean afterwards with no address leased twice; the VPC CNI model on the same launches still
// calls EC2 for its warm ENI.
func TestBurstLaunchSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server and agents")
	}
	env := Env{ServerBin: serverBin(t), WorkDir: t.TempDir()}
	rep, err := Run(t.Context(), TraceParams{Trace: TraceBurstLaunch, Nodes: 60, TimeScale: 10, Duration: 300 * time.Second,
		Systems: []string{SystemIPLedger, vpccni.NameDefault}}, env)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Systems) != 2 {
		t.Fatalf("%d systems", len(rep.Systems))
	}
	ipl, vpc := rep.Systems[0], rep.Systems[1]
	if ipl.LaunchTemplate == nil || ipl.LaunchTemplate.Source != "server" || ipl.LaunchTemplate.SecondaryPrivateIPAddressCount != 2 {
		t.Fatalf("ipledger's launch template: %+v", ipl.LaunchTemplate)
	}
	if vpc.LaunchTemplate == nil || *vpc.LaunchTemplate != (LaunchTemplate{Policy: "default", SecondaryPrivateIPAddressCount: 2, Source: "computed"}) {
		t.Fatalf("the VPC CNI's launch template: %+v", vpc.LaunchTemplate)
	}
	if ipl.NodesNeverReady != 0 || ipl.NodesReadyS == nil || ipl.NodeReadyAfterLaunchMaxS == nil || ipl.PodsNotRunning != 0 {
		t.Fatalf("ipledger's nodes: never ready %d, ready %v, after launch %v, pods not running %d", ipl.NodesNeverReady, ipl.NodesReadyS, ipl.NodeReadyAfterLaunchMaxS, ipl.PodsNotRunning)
	}
	if ipl.MutatingCalls != 0 || ipl.Throttled != 0 || ipl.LaunchCalls == 0 {
		t.Fatalf("ipledger: %d mutating calls (%v), %d throttled, %d launches", ipl.MutatingCalls, ipl.EC2Calls, ipl.Throttled, ipl.LaunchCalls)
	}
	c := ipl.Check
	if c == nil || !c.OK || len(c.Findings) != 0 || c.LeasedTwice != 0 || c.Foreign != 0 || c.Leased != 60*2 {
		t.Fatalf("check after the burst: %+v", c)
	}
	if vpc.MutatingCalls == 0 || vpc.EC2Calls["CreateNetworkInterface"] == 0 || vpc.Check != nil {
		t.Fatalf("the VPC CNI model made no warm-ENI calls: %v", vpc.EC2Calls)
	}
}
