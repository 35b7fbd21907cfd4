package store

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// RecordType names a kind of record under the cluster prefix.
type RecordType string

// The record types and the key folder each lives in.
const (
	RecordNode    RecordType = "node"    // nodes/<node-name>
	RecordSubnet  RecordType = "subnet"  // subnets/<subnet-id>
	RecordPolicy  RecordType = "policy"  // policies/<policy-name>
	RecordPrewarm RecordType = "prewarm" // prewarm/<reservation-id>
	// RecordIdentity is a node's attestation (identities/<instance-id>).
	RecordIdentity RecordType = "identity"
)

// Key folders below /ipledger/<cluster>/, as documented in ARCHITECTURE.md.
const (
	rootPrefix     = "/ipledger/"
	electionFolder = "election"
	nodesFolder    = "nodes/"
	subnetsFolder  = "subnets/"
	policiesFolder = "policies/"
	prewarmFolder  = "prewarm/"
	identityFolder = "identities/"
)

// maxNameLen bounds record names (node names are DNS subdomains: 253 bytes).
const maxNameLen = 253

var folders = map[RecordType]string{
	RecordNode:     nodesFolder,
	RecordSubnet:   subnetsFolder,
	RecordPolicy:   policiesFolder,
	RecordPrewarm:  prewarmFolder,
	RecordIdentity: identityFolder,
}

// keyspace builds and parses the keys of one cluster.
type keyspace struct {
	prefix string // "/ipledger/<cluster>/"
}

func newKeyspace(cluster string) keyspace {
	return keyspace{prefix: rootPrefix + cluster + "/"}
}

// election is the prefix concurrency.NewElection takes (it appends the "/").
func (k keyspace) election() string { return k.prefix + electionFolder }

// electionDir is the folder holding the candidates' keys.
func (k keyspace) electionDir() string { return k.prefix + electionFolder + "/" }

func (k keyspace) record(t RecordType, name string) string { return k.prefix + folders[t] + name }

// parse splits a key under the prefix into its record type and name. ok is false for keys that
// are not records (the election folder, folders a newer version may add); err is set for a key
// in a record folder whose name is not valid.
func (k keyspace) parse(key string) (t RecordType, name string, ok bool, err error) {
	rest, found := strings.CutPrefix(key, k.prefix)
	if !found {
		return "", "", false, nil
	}
	for rt, folder := range folders {
		if n, found := strings.CutPrefix(rest, folder); found {
			if err := validName(rt, n); err != nil {
				return "", "", false, fmt.Errorf("key %q: %w", key, err)
			}
			return rt, n, true, nil
		}
	}
	return "", "", false, nil
}

// validName checks a record name used as the last element of a key.
func validName(t RecordType, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty %s name", ErrInvalid, t)
	case len(name) > maxNameLen:
		return fmt.Errorf("%w: %s name longer than %d bytes", ErrInvalid, t, maxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %s name %q", ErrInvalid, t, name)
	case !utf8.ValidString(name):
		return fmt.Errorf("%w: %s name %q is not UTF-8", ErrInvalid, t, name)
	}
	for _, r := range name {
		if r == '/' || unicode.IsSpace(r) || !unicode.IsPrint(r) {
			return fmt.Errorf("%w: %s name %q contains %q", ErrInvalid, t, name, r)
		}
	}
	return nil
}

// validClusterName checks a DNS-1123 label: 1-63 of [a-z0-9-], alphanumeric at both ends.
func validClusterName(name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("cluster name %q: must be 1 to 63 characters", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' || i == 0 || i == len(name)-1) {
			return fmt.Errorf("cluster name %q: must be a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit)", name)
		}
	}
	return nil
}
