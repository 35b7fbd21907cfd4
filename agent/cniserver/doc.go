// Package cniserver serves CNIService (cni.proto) to the ipledger CNI plugin on a unix socket:
// Add hands out an address from the node's pool (waiting, with one shared urgent request to the
// allocator, when the pool is empty), Del takes it back, Check and GC look after attachments,
// Status says whether an address can be had.
//
// It validates every request before touching anything (bad input gets INVALID_ARGUMENT with an
// ErrorInfo naming the field and changes nothing), answers failures with ErrorInfo reasons the
// plugin maps to CNI codes, and never returns an address before its assignment is on disk. It
// owns the socket file and nothing else: no routes, links or rules (the plugin and netconf do
// those), no state besides who is waiting.
package cniserver
