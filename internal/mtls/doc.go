// Package mtls owns the transport security of ipledger's gRPC: the identities a certificate
// carries (a URI SAN ipledger://node/<node-name>, ipledger://admin/<name> or ipledger://server),
// TLS configurations for the server (mutual TLS, client certificate required) and for its
// clients (the agent, ipledgerctl), certificate and CA files that are re-read when they change
// on disk (cert-manager rotates them in place), and the development CA that ipledger-server --dev
// creates in its data directory; the issuer that signs node certificates for attested agents
// (their key stays on the node: the issuer only sees a CSR), with a second URI SAN
// aws-iid://<account>/<region>/<instance-id> naming the instance; and server TLS that may let
// clients without a certificate complete the handshake (for attestation only: server/api
// decides what such a caller may call).
//
// Clients verify the server by its identity (the chain to the configured CA and the URI SAN
// ipledger://server), not by host name: agents reach replicas at addresses that change (pod IPs
// of the leader, a Service), and one certificate serves every replica.
//
// It decides who a peer is, never what the peer may do: authorization belongs to server/api.
// It never writes outside the directory it is given, and writes private keys with mode 0600.
package mtls
