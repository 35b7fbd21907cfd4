package store

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	ipledgerv1 "github.com/ipledger/ipledger/proto/ipledger/v1"
	"github.com/ipledger/ipledger/server/ledger"
)

// The key layout is part of the on-disk format documented in ARCHITECTURE.md.
func TestKeyLayout(t *testing.T) {
	k := newKeyspace("prod")
	tests := []struct{ got, want string }{
		{k.prefix, "/ipledger/prod/"},
		{k.election(), "/ipledger/prod/election"},
		{k.electionDir(), "/ipledger/prod/election/"},
		{k.record(RecordNode, "ip-10-0-1-7.ec2.internal"), "/ipledger/prod/nodes/ip-10-0-1-7.ec2.internal"},
		{k.record(RecordSubnet, "subnet-0abc"), "/ipledger/prod/subnets/subnet-0abc"},
		{k.record(RecordPolicy, "default"), "/ipledger/prod/policies/default"},
		{k.record(RecordPrewarm, "pw-1"), "/ipledger/prod/prewarm/pw-1"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("key %q, want %q", tt.got, tt.want)
		}
	}
}

func TestParseKey(t *testing.T) {
	k := newKeyspace("prod")
	tests := []struct {
		key     string
		typ     RecordType
		name    string
		ok, err bool
	}{
		{key: "/ipledger/prod/nodes/n1", typ: RecordNode, name: "n1", ok: true},
		{key: "/ipledger/prod/subnets/subnet-1", typ: RecordSubnet, name: "subnet-1", ok: true},
		{key: "/ipledger/prod/policies/p", typ: RecordPolicy, name: "p", ok: true},
		{key: "/ipledger/prod/prewarm/x", typ: RecordPrewarm, name: "x", ok: true},
		{key: "/ipledger/prod/election/694d7d1a2b3c"},
		{key: "/ipledger/prod/future/thing"},
		{key: "/ipledger/other/nodes/n1"},
		{key: "/ipledger/prod/nodes/a/b", err: true},
		{key: "/ipledger/prod/nodes/", err: true},
	}
	for _, tt := range tests {
		typ, name, ok, err := k.parse(tt.key)
		if (err != nil) != tt.err || ok != tt.ok || typ != tt.typ || name != tt.name {
			t.Errorf("parse(%q) = %q, %q, %v, %v; want %q, %q, %v, error %v", tt.key, typ, name, ok, err, tt.typ, tt.name, tt.ok, tt.err)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("parse(%q): error %v is not ErrInvalid", tt.key, err)
		}
	}
}

func TestValidName(t *testing.T) {
	good := []string{"n1", "ip-10-0-1-7.ec2.internal", "subnet-0123456789abcdef0", "A_b:c", strings.Repeat("x", maxNameLen)}
	bad := []string{"", ".", "..", "a/b", "/", "a b", "tab\t", "nl\n", "\x00", "\x7f", "\xff", strings.Repeat("x", maxNameLen+1)}
	for _, n := range good {
		if err := validName(RecordNode, n); err != nil {
			t.Errorf("validName(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range bad {
		if err := validName(RecordNode, n); !errors.Is(err, ErrInvalid) {
			t.Errorf("validName(%q) = %v, want ErrInvalid", n, err)
		}
	}
}

func TestValidClusterName(t *testing.T) {
	for _, n := range []string{"a", "prod", "prod-eu-1", "0", strings.Repeat("a", 63)} {
		if err := validClusterName(n); err != nil {
			t.Errorf("validClusterName(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range []string{"", "-a", "a-", "Prod", "a_b", "a.b", "a/b", strings.Repeat("a", 64)} {
		if err := validClusterName(n); err == nil {
			t.Errorf("validClusterName(%q) = nil, want an error", n)
		}
	}
}

func TestOpConstructorsRejectBadInput(t *testing.T) {
	node := ledger.NodeRecord{Name: "n1", InstanceID: "i-1", SubnetID: "subnet-1", Mode: ledger.ModeSecondaryIP}
	noMode := node
	noMode.Mode = ""
	tests := []struct {
		name string
		op   Op
		bad  bool
	}{
		{"valid node", PutNode(node), false},
		{"node failing Validate", PutNode(noMode), true},
		{"node without name", PutNode(ledger.NodeRecord{}), true},
		{"node name with slash", DeleteNode("a/b"), true},
		{"subnet without CIDR", PutSubnet(ledger.SubnetRecord{ID: "subnet-1"}), true},
		{"valid subnet", PutSubnet(ledger.SubnetRecord{ID: "subnet-1", CIDR: netip.MustParsePrefix("10.0.0.0/24")}), false},
		{"subnet without id", PutSubnet(ledger.SubnetRecord{CIDR: netip.MustParsePrefix("10.0.0.0/24")}), true},
		{"nil policy", PutPolicy(nil), true},
		{"policy without name", PutPolicy(&ipledgerv1.NodePolicy{}), true},
		{"valid policy", PutPolicy(&ipledgerv1.NodePolicy{Name: "default"}), false},
		{"prewarm without id", PutPrewarm(ledger.PrewarmRecord{}), true},
		{"empty delete", DeletePrewarm(""), true},
		{"valid delete", DeleteSubnet("subnet-1"), false},
	}
	for _, tt := range tests {
		if tt.bad && !errors.Is(tt.op.err, ErrInvalid) {
			t.Errorf("%s: err %v, want ErrInvalid", tt.name, tt.op.err)
		}
		if !tt.bad && tt.op.err != nil {
			t.Errorf("%s: err %v, want nil", tt.name, tt.op.err)
		}
	}
}
