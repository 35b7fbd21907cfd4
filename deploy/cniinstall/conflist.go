package cniinstall

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// InstallConflist installs only the network config list, after the plugin binary is in place:
// what the agent does once it can serve pods (an identity and a pool), so that the container
// runtime, and with it the kubelet, calls the node's network ready only then. It checks the
// list as Install does, refuses when the plugin binary or a required chained plugin is missing
// from BinDir, and never rewrites an identical file. PluginSource is not read.
func InstallConflist(cfg Config) (Result, error) {
	if cfg.PluginSource == "" {
		cfg.PluginSource = DefaultPluginSource // not read; keeps Validate's path check meaningful
	}
	if err := cfg.Validate(); err != nil {
		return Result{}, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var res Result
	if fi, err := os.Stat(cfg.ConfDir); err != nil {
		return res, fmt.Errorf("cniinstall: target directory: %w", err)
	} else if !fi.IsDir() {
		return res, fmt.Errorf("cniinstall: target %s is not a directory", cfg.ConfDir)
	}
	conflist, err := cfg.conflistBytes()
	if err != nil {
		return res, err
	}
	if res.AgentSocket, res.Chained, err = checkConflist(conflist, cfg.PluginName); err != nil {
		return res, fmt.Errorf("%s: %w", cfg.ConflistSource, err)
	}
	res.PluginPath = filepath.Join(cfg.BinDir, cfg.PluginName)
	if fi, err := os.Stat(res.PluginPath); err != nil || !fi.Mode().IsRegular() {
		return res, fmt.Errorf("%w: the plugin %s is not installed (the init container ipledger-cni-install --binary-only installs it)", ErrMissingPlugin, res.PluginPath)
	}
	for _, t := range res.Chained {
		fi, err := os.Stat(filepath.Join(cfg.BinDir, t))
		if err != nil || !fi.Mode().IsRegular() {
			res.MissingChained = append(res.MissingChained, t)
		}
	}
	if len(res.MissingChained) > 0 && cfg.RequireChained {
		return res, fmt.Errorf("%w: the config chains %s but %s has no such plugin; install the CNI reference plugins there (EKS AMIs ship them)",
			ErrMissingPlugin, strings.Join(res.MissingChained, ", "), cfg.BinDir)
	}
	name := cfg.conflistName()
	res.ConflistPath = filepath.Join(cfg.ConfDir, name)
	if res.ConflistChanged, err = writeAtomic(res.ConflistPath, conflist, 0o644); err != nil {
		return res, err
	}
	if res.Shadowing, err = shadowing(cfg.ConfDir, name); err != nil {
		return res, err
	}
	log.Info("CNI network config installed", "conflist", res.ConflistPath, "changed", res.ConflistChanged, "agent_socket", res.AgentSocket)
	for _, f := range res.Shadowing {
		log.Warn("another CNI config sorts before ours; the runtime uses it instead of ipledger until it is removed",
			"file", filepath.Join(cfg.ConfDir, f), "ours", name)
	}
	return res, nil
}

// RemoveConflist removes the installed network config list when it is still exactly what
// InstallConflist writes (a file someone changed or replaced is left alone, with ok false).
// A missing file is success.
func RemoveConflist(cfg Config) (removed bool, err error) {
	want, err := cfg.conflistBytes()
	if err != nil {
		return false, err
	}
	path := filepath.Join(cfg.ConfDir, cfg.conflistName())
	got, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cniinstall: %w", err)
	}
	if string(got) != string(want) {
		return false, nil
	}
	if err := os.Remove(path); err != nil {
		return false, fmt.Errorf("cniinstall: remove %s: %w", path, err)
	}
	return true, syncDir(cfg.ConfDir)
}

// conflistBytes is the list as it is installed (with CNIVersion applied).
func (c Config) conflistBytes() ([]byte, error) {
	b, err := os.ReadFile(c.ConflistSource)
	if err != nil {
		return nil, fmt.Errorf("cniinstall: read conflist: %w", err)
	}
	if c.CNIVersion != "" {
		if b, err = withCNIVersion(b, c.CNIVersion); err != nil {
			return nil, fmt.Errorf("%s: %w", c.ConflistSource, err)
		}
	}
	return b, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("cniinstall: %w", err)
	}
	defer d.Close()
	_ = d.Sync()
	return nil
}
