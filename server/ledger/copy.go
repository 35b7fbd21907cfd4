package ledger

import (
	"maps"
	"slices"
)

// Deep copies: records go in and out of the ledger by value, never sharing slices or maps
// with the caller.

func copySubnet(r SubnetRecord) SubnetRecord {
	r.Tags = maps.Clone(r.Tags)
	r.Foreign = slices.Clone(r.Foreign)
	return r
}

func copyNode(r NodeRecord) NodeRecord {
	r.Labels = maps.Clone(r.Labels)
	if r.ENIs != nil {
		enis := make([]ENIRecord, len(r.ENIs))
		for i, e := range r.ENIs {
			e.Addresses = slices.Clone(e.Addresses)
			e.Prefixes = slices.Clone(e.Prefixes)
			enis[i] = e
		}
		r.ENIs = enis
	}
	if r.Proposal != nil {
		p := *r.Proposal
		p.Items = slices.Clone(p.Items)
		r.Proposal = &p
	}
	return r
}

func copyPrewarm(r PrewarmRecord) PrewarmRecord {
	if r.ENIs != nil {
		enis := make([]PrewarmENI, len(r.ENIs))
		for i, e := range r.ENIs {
			e.Addresses = slices.Clone(e.Addresses)
			enis[i] = e
		}
		r.ENIs = enis
	}
	return r
}
