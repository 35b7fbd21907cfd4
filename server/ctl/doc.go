// Package ctl is ipledgerctl, the admin CLI of ipledger: a thin client of AdminService.
//
// It owns the command line (a cobra command tree: one file per command or group, each
// registering its builder; help; cobra's generated bash/zsh/fish completion, which asks the
// server for node, subnet, policy and reservation names), the translation of
// AdminService answers into its own output documents (table, JSON and YAML with stable,
// documented snake_case field names: see docs/ipledgerctl.md; table cells and messages escaped
// so that no server string reaches a terminal raw), the exit codes, the precedence of flags,
// IPLEDGER_* variables and the context of ctlconfig's file, telling the user what a failed
// first contact means (no port, mutual TLS wanted, plaintext server), and following a
// NOT_LEADER answer once to the leader's address.
//
// Adding a command is one file: a builder func(*cli) *cobra.Command (c.leaf gives it its
// argument check and the --timeout deadline; call and emit do the asking and the printing) and
// an init function that registers it under its parent, e.g. register("node", forgetCmd) for
// "node forget-identity". Help, completion and the docs test pick it up from the tree.
//
// It must never keep state of its own, talk to etcd or EC2, or decide anything the server
// decides (validation of policies and budgets is the server's; ctl only checks that a request
// is well formed). Everything it prints comes from AdminService's answers.
package ctl
