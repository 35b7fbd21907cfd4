// Package cniinstall installs ipledger's CNI plugin binary and network config list on a node; it
// is the logic of ipledger-cni-install, the init container of the agent DaemonSet (which, with
// --binary-only, installs the binary alone), and of the agent, which installs the conflist
// (InstallConflist) once it holds an identity and a pool: the container runtime reports the
// node's network ready, and the kubelet the node Ready, only when its agent can serve pods.
//
// It owns the copy: it validates the conflist with the plugin's own parser (package cni), refuses
// a chain whose other plugins are missing from the CNI bin directory (every pod ADD would fail),
// writes each file atomically (a temporary file in the target directory, fsync, rename, fsync of
// the directory) so the container runtime never runs a half-written binary or reads a
// half-written config, installs the binary before the config that names it, and reports the
// config files the runtime would pick before ours.
//
// It must never delete or rewrite a file it does not install (another network's config, other
// plugins) and never write outside the two target directories.
package cniinstall
