// Package e2e holds ipledger's end-to-end tests, the benchmark and the demo driver. Everything
// here talks only to loopback and to network namespaces it created itself.
package e2e
