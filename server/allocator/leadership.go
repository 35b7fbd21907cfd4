package allocator

import "github.com/ipledger/ipledger/server/store"

// Leadership is the leadership this allocator writes under (the identity service fences its
// attestation records with it).
func (a *Allocator) Leadership() *store.Leadership { return a.lead }
