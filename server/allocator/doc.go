// Package allocator is the leader's control loop: it registers nodes (verified against EC2),
// keeps every node's pool at its policy's target by placing addresses in the ledger and assigning
// them through the EC2 gateway, commits every lease change to etcd before telling the node's
// agent, releases surplus only through the handshake with the agent, deletes ENIs nobody needs,
// cleans up after terminated instances and reconciles with EC2. It runs only on the leader and
// never calls EC2 except through the gateway.
package allocator
