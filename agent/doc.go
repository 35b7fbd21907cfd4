// Package agent is the ipledger node agent: it discovers its instance through IMDS, registers
// with the allocator, keeps the node's leased pool over one sync stream, hands addresses to pods
// through CNIService on a unix socket, checkpoints every assignment and keeps the node's ENI
// routing. It never calls EC2.
package agent
