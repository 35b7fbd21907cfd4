// Package serverconn is the node agent's connection to the allocator (NodeService): it registers
// the node (retrying with backoff and jitter; the registration's pool, then the pods the server
// says the node last reported, go to the Handler), keeps one Sync stream to the leader (SyncHello,
// debounced and periodic usage reports, release acks; pools and release proposals in), follows
// NOT_LEADER redirects, re-registers after UNKNOWN_NODE, and makes the urgent RequestAddresses
// call for pods that wait.
//
// It owns no pool state: everything it receives goes to the agent's Handler, and a release ack
// is sent only after the Handler has made its locks durable. It must never retry a call so fast
// that a down server is hammered (every retry waits a jittered, growing backoff), and it never
// talks to anything but the configured servers and the leaders they name.
package serverconn
