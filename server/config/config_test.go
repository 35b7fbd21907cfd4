package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestDevNeedsNothing(t *testing.T) {
	c, err := Load("ipledger-server", []string{"--dev", "--data-dir", t.TempDir()}, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterName != "dev" || c.Region != "eu-west-1" || !c.SimThrottle {
		t.Fatalf("dev defaults not applied: %+v", c)
	}
}

func TestPrecedenceDefaultsFileEnvFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	os.WriteFile(file, []byte("cluster_name: fromfile\nregion: eu-west-1\nrelease_delay: 10s\netcd_endpoints: [http://127.0.0.1:1]\ngrpc_listen: 127.0.0.1:9000\n"), 0o600)
	c, err := Load("s", []string{"--config", file, "--grpc-listen", "127.0.0.1:9100"},
		env(map[string]string{"IPLEDGER_RELEASE_DELAY": "20s", "IPLEDGER_GRPC_LISTEN": "127.0.0.1:9050"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.ClusterName != "fromfile" {
		t.Errorf("file not applied: %q", c.ClusterName)
	}
	if c.ReleaseDelay.D() != 20*time.Second {
		t.Errorf("env must beat file: %s", c.ReleaseDelay.D())
	}
	if c.GRPCListen != "127.0.0.1:9100" {
		t.Errorf("flag must beat env: %s", c.GRPCListen)
	}
	if len(c.EtcdEndpoints) != 1 || c.EtcdEndpoints[0] != "http://127.0.0.1:1" {
		t.Errorf("list from file: %v", c.EtcdEndpoints)
	}
	if c.ReleaseCooldown.D() != 30*time.Second {
		t.Errorf("default lost: %s", c.ReleaseCooldown.D())
	}
}

func TestInvalidConfigNamesTheSetting(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "u.yaml")
	os.WriteFile(unknown, []byte("cluster_name: a\nno_such_setting: 1\n"), 0o600)
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"bad cluster name", []string{"--dev", "--cluster-name", "Bad_Name"}, nil, "cluster-name"},
		{"no region outside dev", []string{"--cluster-name", "c", "--etcd-endpoints", "http://127.0.0.1:2379"}, nil, "region"},
		{"bad listen", []string{"--dev", "--grpc-listen", "nonsense"}, nil, "grpc-listen"},
		{"bad duration env", []string{"--dev"}, map[string]string{"IPLEDGER_RELEASE_COOLDOWN": "soon"}, "IPLEDGER_RELEASE_COOLDOWN"},
		{"zero cooldown", []string{"--dev", "--release-cooldown", "0s"}, nil, "release-cooldown"},
		{"fractional ttl", []string{"--dev", "--session-ttl", "1500ms"}, nil, "session-ttl"},
		{"unknown file key", []string{"--dev", "--config", unknown}, nil, "no_such_setting"},
		{"bad sg", []string{"--dev", "--security-groups", "default"}, nil, "security-groups"},
		{"time scale without sim", []string{"--cluster-name", "c", "--region", "eu-west-1", "--time-scale", "10"}, nil, "time-scale"},
		{"stray argument", []string{"--dev", "extra"}, nil, "unexpected argument"},
		{"cert without key", []string{"--dev", "--etcd-cert-file", "/x"}, nil, "etcd-cert-file"},
		{"tls cert alone", []string{"--dev", "--tls-cert-file", "/s.crt"}, nil, "--tls-key-file, --tls-client-ca-file missing"},
		{"tls without client ca", []string{"--dev", "--tls-cert-file", "/s.crt", "--tls-key-file", "/s.key"}, nil, "tls-client-ca-file"},
		{"tls and insecure", []string{"--dev", "--insecure", "--tls-cert-file", "/s.crt", "--tls-key-file", "/s.key", "--tls-client-ca-file", "/ca.crt"}, nil, "exclude each other"},
		{"plaintext on all interfaces", []string{"--cluster-name", "c", "--region", "eu-west-1", "--grpc-listen", "0.0.0.0:7400"}, nil, "not a loopback address and gRPC has no TLS"},
		{"plaintext on a node address", []string{"--cluster-name", "c", "--region", "eu-west-1", "--grpc-listen", "10.0.0.5:7400"}, nil, "--insecure"},
		{"dev certificates on all interfaces", []string{"--dev", "--grpc-listen", ":7400"}, nil, ""},
		{"dev insecure on all interfaces", []string{"--dev", "--insecure", "--grpc-listen", ":7400"}, nil, ""},
		{"zero rate", []string{"--dev", "--node-rate-limit", "0"}, nil, "node-rate-limit"},
		{"zero burst", []string{"--dev", "--node-rate-burst", "0"}, nil, "node-rate-burst"},
		// --dev's simulated account is new at every start; an external etcd would keep state
		// about it. With a simulator of one's own (tests' shared replicas) both outlive a start.
		{"dev with external etcd", []string{"--dev", "--etcd-endpoints", "http://127.0.0.1:2379"}, nil,
			"invalid setting etcd-endpoints: --dev runs embedded etcd (in --data-dir) with an in-process EC2 simulator"},
		{"dev with external etcd from the environment", []string{"--dev"}, map[string]string{"IPLEDGER_ETCD_ENDPOINTS": "http://127.0.0.1:2379"},
			"Leave out --etcd-endpoints for --dev"},
		{"dev with external etcd and simulator", []string{"--dev", "--etcd-endpoints", "http://127.0.0.1:2379", "--ec2-endpoint", "http://127.0.0.1:9"}, nil, ""},
		// One port for both listeners fails in validation, before etcd starts.
		{"same port", []string{"--dev", "--grpc-listen", "127.0.0.1:7400", "--http-listen", "127.0.0.1:7400"}, nil,
			`invalid setting http-listen: "127.0.0.1:7400" uses the port of --grpc-listen "127.0.0.1:7400": gRPC and HTTP need a port each`},
		{"same port, all addresses", []string{"--dev", "--grpc-listen", "0.0.0.0:7400", "--http-listen", "127.0.0.1:7400"}, nil, "uses the port of --grpc-listen"},
		{"same port, localhost", []string{"--dev", "--grpc-listen", "localhost:7401", "--http-listen", "127.0.0.1:7401"}, nil, "uses the port of --grpc-listen"},
		{"same port, other hosts", []string{"--dev", "--grpc-listen", "127.0.0.1:7400", "--http-listen", "127.0.0.2:7400"}, nil, ""},
		{"both ephemeral", []string{"--dev", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load("s", append(tc.args, "--data-dir", dir), env(tc.env))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("want no error, got %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want error naming %q, got %v", tc.want, err)
			}
		})
	}
}

func TestAdvertise(t *testing.T) {
	c := Default()
	if got := c.Advertise("127.0.0.1:7400", env(nil)); got != "127.0.0.1:7400" {
		t.Fatal(got)
	}
	if got := c.Advertise("0.0.0.0:7400", env(map[string]string{"POD_IP": "10.1.2.3"})); got != "10.1.2.3:7400" {
		t.Fatal(got)
	}
	c.AdvertiseAddress = "srv:1"
	if got := c.Advertise("0.0.0.0:7400", env(nil)); got != "srv:1" {
		t.Fatal(got)
	}
}

// gRPC is mutual TLS with the TLS files, else with --dev's certificates, else plaintext, which
// is allowed on loopback or with --insecure only.
func TestTransport(t *testing.T) {
	tlsArgs := []string{"--tls-cert-file", "/s.crt", "--tls-key-file", "/s.key", "--tls-client-ca-file", "/ca.crt"}
	prod := []string{"--cluster-name", "c", "--region", "eu-west-1", "--etcd-endpoints", "https://etcd:2379"}
	for _, tc := range []struct {
		name string
		args []string
		want Transport
	}{
		{"dev generates certificates", []string{"--dev"}, TransportDevCerts},
		{"dev with files uses them", append([]string{"--dev"}, tlsArgs...), TransportTLSFiles},
		{"dev insecure", []string{"--dev", "--insecure"}, TransportPlaintext},
		{"production with files on all interfaces", append(append([]string{"--grpc-listen", "0.0.0.0:7400"}, prod...), tlsArgs...), TransportTLSFiles},
		{"production plaintext on loopback", append([]string{"--grpc-listen", "127.0.0.1:7400"}, prod...), TransportPlaintext},
		{"production plaintext on localhost", append([]string{"--grpc-listen", "localhost:7400"}, prod...), TransportPlaintext},
		{"production plaintext on ::1", append([]string{"--grpc-listen", "[::1]:7400"}, prod...), TransportPlaintext},
		{"production insecure on all interfaces", append([]string{"--grpc-listen", "0.0.0.0:7400", "--insecure"}, prod...), TransportPlaintext},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load("s", append(tc.args, "--data-dir", t.TempDir()), env(nil))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Transport(); got != tc.want {
				t.Fatalf("transport %v, want %v", got, tc.want)
			}
		})
	}
	// The Go helper for in-process tests keeps plain loopback gRPC.
	if c := DevConfig(t.TempDir()); c.Transport() != TransportPlaintext || c.Validate() != nil {
		t.Fatalf("DevConfig: %v, %v", c.Transport(), c.Validate())
	}
}

// --help says what the code does with the region: required outside --dev, eu-west-1 with it,
// and AWS's own configuration is not read for it.
func TestRegionHelpTellsTheTruth(t *testing.T) {
	f := FlagSet("ipledger-server").Lookup("region")
	if f == nil || !strings.Contains(f.Usage, "required") || !strings.Contains(f.Usage, "does not read AWS_REGION") || !strings.Contains(f.Usage, "eu-west-1") {
		t.Fatalf("--region's help: %q", f.Usage)
	}
	if _, err := Load("s", []string{"--cluster-name", "c", "--data-dir", t.TempDir()}, env(map[string]string{"AWS_REGION": "us-east-1"})); err == nil || !strings.Contains(err.Error(), "invalid setting region: required") {
		t.Fatalf("without --region, with AWS_REGION: %v", err)
	}
	cfg, err := Load("s", []string{"--dev", "--data-dir", t.TempDir()}, env(nil))
	if err != nil || cfg.Region != "eu-west-1" {
		t.Fatalf("--dev's region %q %v", cfg.Region, err)
	}
}
