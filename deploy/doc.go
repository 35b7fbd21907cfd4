// Package deploy holds ipledger's production deployment: the Helm chart (helm/ipledger), the
// kustomize base rendered from it and the overlays (kustomize/), the Dockerfiles (docker/), the sample IAM policy (iam-policy.json) and, in
// cniinstall and cmd/ipledger-cni-install, the agent DaemonSet's CNI install step. The Go
// package itself only has tests: they render the chart (with the helm pinned in e2e/tools) and
// the kustomizations (without kubectl), decode every
// manifest strictly into Kubernetes API types and check the wiring against the binaries' real
// flags, the images' layout and the server's policy validation.
//
// Nothing here may reach a cluster, a registry or AWS: the tests read files and run the
// configuration parsers only.
package deploy
