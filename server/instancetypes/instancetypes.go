// Package instancetypes owns AWS's published ENI and IPv4-per-ENI limits for every EC2 instance
// type, embedded from instance-types.csv (copied from ../shared/data). The EC2 simulator serves
// DescribeInstanceTypes from it; the allocator uses it only as a fallback when EC2 cannot be
// asked. It never changes at run time and never talks to the network.
package instancetypes

import (
	_ "embed"
	"encoding/csv"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
)

//go:embed instance-types.csv
var csvData string

// Type holds the network limits of one instance type.
type Type struct {
	Name string
	// MaxENIs is the number of network interfaces the type can attach.
	MaxENIs int
	// IPv4PerENI is the number of private IPv4 addresses per ENI, the ENI's primary included.
	// Secondary addresses and /28 prefixes together count against it.
	IPv4PerENI int
	// Hypervisor is "nitro", "xen" or "unknown" (bare metal types report no hypervisor).
	Hypervisor string
	BareMetal  bool
	// NetworkCards is the number of network cards (ENIs are spread over them).
	NetworkCards int
}

// PrefixDelegation reports whether the type supports /28 prefix delegation (Nitro-based,
// which includes bare metal).
func (t Type) PrefixDelegation() bool {
	return t.Hypervisor == "nitro" || t.BareMetal
}

// SecondaryIPsPerENI is how many pod addresses one ENI can carry in secondary-IP mode.
func (t Type) SecondaryIPsPerENI() int { return t.IPv4PerENI - 1 }

// MaxENIsPerCard is how many ENIs one network card takes: ipledger attaches every ENI to
// card 0, so types with several cards are used up to card 0's share.
func (t Type) MaxENIsPerCard() int {
	cards := max(t.NetworkCards, 1)
	return (t.MaxENIs + cards - 1) / cards
}

// MaxPodAddresses is the most pod addresses the type can hold in the given mode across all its
// ENIs: ENIs x (IPv4 per ENI - 1), times 16 in prefix mode.
func (t Type) MaxPodAddresses(prefixMode bool) int {
	n := t.MaxENIs * (t.IPv4PerENI - 1)
	if prefixMode {
		n *= 16
	}
	return n
}

var (
	loadOnce sync.Once
	byName   map[string]Type
	loadErr  error
)

func load() {
	r := csv.NewReader(strings.NewReader(csvData))
	rows, err := r.ReadAll()
	if err != nil {
		loadErr = fmt.Errorf("instancetypes: parse embedded csv: %w", err)
		return
	}
	if len(rows) < 2 {
		loadErr = fmt.Errorf("instancetypes: embedded csv has no rows")
		return
	}
	byName = make(map[string]Type, len(rows)-1)
	for i, row := range rows[1:] {
		if len(row) != 6 {
			loadErr = fmt.Errorf("instancetypes: line %d: want 6 fields, got %d", i+2, len(row))
			return
		}
		enis, err1 := strconv.Atoi(row[1])
		ips, err2 := strconv.Atoi(row[2])
		cards, err3 := strconv.Atoi(row[5])
		if err1 != nil || err2 != nil || err3 != nil || enis < 1 || ips < 1 {
			loadErr = fmt.Errorf("instancetypes: line %d: bad numbers in %q", i+2, row)
			return
		}
		byName[row[0]] = Type{
			Name:         row[0],
			MaxENIs:      enis,
			IPv4PerENI:   ips,
			Hypervisor:   row[3],
			BareMetal:    row[4] == "true",
			NetworkCards: cards,
		}
	}
}

// Lookup returns the limits of the named type.
func Lookup(name string) (Type, bool) {
	loadOnce.Do(load)
	if loadErr != nil {
		return Type{}, false
	}
	t, ok := byName[name]
	return t, ok
}

// All returns every known type, sorted by name.
func All() []Type {
	loadOnce.Do(load)
	out := make([]Type, 0, len(byName))
	for _, t := range byName {
		out = append(out, t)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Err reports a problem with the embedded data (nil when it loaded).
func Err() error {
	loadOnce.Do(load)
	return loadErr
}
