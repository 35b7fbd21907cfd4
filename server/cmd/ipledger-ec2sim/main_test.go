package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/ipledger/ipledger/internal/version"
	"github.com/ipledger/ipledger/server/ec2sim"
)

// TestRun starts the simulator as the binary would, reads the endpoints it prints, calls the
// EC2 and IMDS endpoints, and stops it by cancelling the context.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"--listen", "127.0.0.1:0", "--seed", "7", "--throttle=off", "--time-scale", "10", "--scenario", "../../ec2sim/testdata/scenario.json"}, pw, io.Discard)
		pw.Close()
		done <- err
	}()
	sc := bufio.NewScanner(pr)
	var ec2, imds []string
	for len(imds) < 2 && sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 2 && f[0] == "ec2":
			ec2 = append(ec2, f[1])
		case len(f) == 3 && f[0] == "imds" && strings.HasPrefix(f[1], "i-"):
			imds = append(imds, f[2])
		default:
			t.Fatalf("unexpected output line %q", sc.Text())
		}
	}
	if len(ec2) != 1 || len(imds) != 2 {
		cancel()
		t.Fatalf("endpoints: ec2 %v imds %v (%v)", ec2, imds, <-done)
	}
	go func() { _, _ = io.Copy(io.Discard, pr) }()

	resp, err := http.PostForm(ec2[0], url.Values{"Action": {"DescribeSubnets"}, "Version": {"2016-11-15"}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.Count(string(body), "<subnetId>") != 2 {
		t.Fatalf("DescribeSubnets: %d %s", resp.StatusCode, body)
	}
	resp, err = http.Get(imds[0] + "/latest/meta-data/instance-id")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("IMDS without a token: %d", resp.StatusCode)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not stop after cancel")
	}
	if _, err := http.Get(ec2[0] + "/_sim/state"); err == nil {
		t.Fatal("endpoint still answers after stop")
	}
}

func TestRunRefusesBadInput(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"all interfaces", []string{"--listen", ":4566"}, "not loopback"},
		{"public address", []string{"--listen", "192.0.2.1:4566"}, "not loopback"},
		{"bad throttle", []string{"--throttle=maybe"}, "want on or off"},
		{"bad time scale", []string{"--listen", "127.0.0.1:0", "--time-scale", "0.5"}, "time scale"},
		{"missing scenario", []string{"--listen", "127.0.0.1:0", "--scenario", "/nonexistent.yaml"}, "load scenario"},
		{"stray argument", []string{"extra"}, "unexpected arguments"},
		{"unknown profile", []string{"--listen", "127.0.0.1:0", "--ec2-profile", "sluggish"}, "unknown ec2 profile"},
		{"bad lag share", []string{"--listen", "127.0.0.1:0", "--ec2-profile", "realistic", "--describe-lag-share", "2"}, "share 2 must be between 0 and 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := run(t.Context(), tc.args, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
	err := run(t.Context(), []string{"--listen", ":4566"}, io.Discard, io.Discard)
	if !errors.Is(err, ec2sim.ErrNotLoopback) {
		t.Fatalf("not wrapping ErrNotLoopback: %v", err)
	}
}

// TestRunProfile: --ec2-profile and the describe-lag flags choose the simulator's clock, which
// the control API reports.
func TestRunProfile(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		name      string
		lagShare  float64
		assignP50 time.Duration
	}{
		{nil, ec2sim.ProfileInstant, 0, 0},
		{[]string{"--ec2-profile", "realistic"}, ec2sim.ProfileRealistic, 0.1, 350 * time.Millisecond},
		{[]string{"--ec2-profile", "realistic", "--describe-lag-share", "0.5", "--describe-lag-mean", "2s"}, ec2sim.ProfileRealistic, 0.5, 350 * time.Millisecond},
		{[]string{"--describe-lag-share", "0.3"}, ec2sim.ProfileInstant, 0.3, 0},
	} {
		ctx, cancel := context.WithCancel(t.Context())
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := run(ctx, append([]string{"--listen", "127.0.0.1:0", "--time-scale", "100"}, tc.args...), pw, io.Discard)
			pw.Close()
			done <- err
		}()
		sc := bufio.NewScanner(pr)
		if !sc.Scan() || !strings.HasPrefix(sc.Text(), "ec2 ") {
			cancel()
			t.Fatalf("%v: first line %q (%v)", tc.args, sc.Text(), <-done)
		}
		ep := strings.TrimPrefix(sc.Text(), "ec2 ")
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		resp, err := http.Get(ep + "/_sim/profile")
		if err != nil {
			t.Fatal(err)
		}
		var p ec2sim.Profile
		err = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if p.Name != tc.name || p.DescribeLag.Share != tc.lagShare || p.Calls["AssignPrivateIpAddresses"].P50 != tc.assignP50 {
			t.Errorf("%v: profile %+v", tc.args, p)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("%v: run: %v", tc.args, err)
		}
	}
}

func TestVersion(t *testing.T) {
	var out strings.Builder
	if err := run(t.Context(), []string{"--version"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if want := version.String("ipledger-ec2sim"); strings.TrimSpace(out.String()) != want {
		t.Errorf("--version printed %q, want %q", out.String(), want)
	}
}
