// Package server is the ipledger allocator process: it wires configuration, etcd (embedded or
// external), leader election, the EC2 gateway, the allocator loop, the gRPC services and the HTTP
// endpoints together. The logic lives in its subpackages; this package only assembles them.
package server
