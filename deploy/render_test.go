package deploy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// This file renders a kustomization without kubectl: the subset of kustomize that deploy/ uses,
// and nothing else. The kustomization is decoded strictly, so a field this renderer does not
// implement (replacements, components, namePrefix, hash suffixes, ...) fails the tests instead of
// being ignored; TestRenderMatchesKubectlKustomize compares the result with the real kustomize
// when kubectl is installed.

// kustomization is the supported subset of kustomize.config.k8s.io/v1beta1 Kustomization.
type kustomization struct {
	APIVersion         string      `json:"apiVersion"`
	Kind               string      `json:"kind"`
	Resources          []string    `json:"resources"`
	Images             []image     `json:"images"`
	ConfigMapGenerator []generator `json:"configMapGenerator"`
	SecretGenerator    []generator `json:"secretGenerator"`
	Patches            []patchRef  `json:"patches"`
}

type image struct {
	Name    string `json:"name"`
	NewName string `json:"newName"`
	NewTag  string `json:"newTag"`
}

type generator struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Type      string   `json:"type"`
	Literals  []string `json:"literals"`
	// Files are [key=]path, relative to the kustomization's directory (the key is the file's
	// base name unless given).
	Files   []string `json:"files"`
	Options struct {
		// Required: this renderer does not rewrite references to hashed names.
		DisableNameSuffixHash bool `json:"disableNameSuffixHash"`
	} `json:"options"`
}

type patchRef struct {
	// Path of a strategic-merge patch naming its target by apiVersion, kind, name, namespace.
	Path string `json:"path"`
}

// doc is one rendered object as generic JSON values.
type doc = map[string]any

// renderKustomization renders the kustomization in dir.
func renderKustomization(dir string) ([]doc, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(raw, &k); err != nil {
		return nil, fmt.Errorf("%s/kustomization.yaml uses something this renderer does not support: %w", dir, err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		return nil, fmt.Errorf("%s: not a v1beta1 Kustomization", dir)
	}
	var out []doc
	for _, r := range k.Resources {
		p := filepath.Join(dir, r)
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("%s: resource %s: %w", dir, r, err)
		}
		var docs []doc
		if fi.IsDir() {
			docs, err = renderKustomization(p)
		} else {
			docs, err = readYAMLFile(p)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, docs...)
	}
	for _, g := range k.ConfigMapGenerator {
		d, err := generate("ConfigMap", g, dir)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		out = append(out, d)
	}
	for _, g := range k.SecretGenerator {
		d, err := generate("Secret", g, dir)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", dir, err)
		}
		out = append(out, d)
	}
	if err := checkUnique(out); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	for _, p := range k.Patches {
		if err := applyPatchFile(out, filepath.Join(dir, p.Path)); err != nil {
			return nil, fmt.Errorf("%s: patch %s: %w", dir, p.Path, err)
		}
	}
	for _, img := range k.Images {
		if n := setImage(out, img); n == 0 {
			return nil, fmt.Errorf("%s: image %q matches no container", dir, img.Name)
		}
	}
	return out, nil
}

// readYAMLFile splits a multi-document YAML file into objects (empty documents are skipped).
func readYAMLFile(path string) ([]doc, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return splitYAML(b, path)
}

func splitYAML(b []byte, name string) ([]doc, error) {
	var out []doc
	for i, part := range splitDocuments(b) {
		j, err := yaml.YAMLToJSONStrict(part) // duplicate keys are errors
		if err != nil {
			return nil, fmt.Errorf("%s: document %d: %w", name, i, err)
		}
		if bytes.Equal(bytes.TrimSpace(j), []byte("null")) {
			continue
		}
		var d doc
		if err := json.Unmarshal(j, &d); err != nil {
			return nil, fmt.Errorf("%s: document %d is not an object: %w", name, i, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// splitDocuments cuts YAML at lines that are exactly "---".
func splitDocuments(b []byte) [][]byte {
	var out [][]byte
	var cur []byte
	for line := range bytes.SplitAfterSeq(b, []byte("\n")) {
		if string(bytes.TrimRight(line, "\r\n")) == "---" {
			out = append(out, cur)
			cur = nil
			continue
		}
		cur = append(cur, line...)
	}
	return append(out, cur)
}

func generate(kind string, g generator, dir string) (doc, error) {
	if !g.Options.DisableNameSuffixHash {
		return nil, fmt.Errorf("%s generator %s: set options.disableNameSuffixHash (hashed names are not supported here)", kind, g.Name)
	}
	data := map[string]any{}
	for _, l := range g.Literals {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%s generator %s: literal %q is not key=value", kind, g.Name, l)
		}
		if strings.HasPrefix(v, `"`) || strings.HasPrefix(v, `'`) {
			return nil, fmt.Errorf("%s generator %s: quoted literal %q is not supported", kind, g.Name, l)
		}
		if kind == "Secret" {
			v = base64.StdEncoding.EncodeToString([]byte(v))
		}
		data[k] = v
	}
	for _, f := range g.Files {
		k, path, ok := strings.Cut(f, "=")
		if !ok {
			k, path = filepath.Base(f), f
		}
		b, err := os.ReadFile(filepath.Join(dir, path))
		if err != nil {
			return nil, fmt.Errorf("%s generator %s: file %s: %w", kind, g.Name, f, err)
		}
		if _, dup := data[k]; dup {
			return nil, fmt.Errorf("%s generator %s: key %s twice", kind, g.Name, k)
		}
		v := string(b)
		if kind == "Secret" {
			v = base64.StdEncoding.EncodeToString(b)
		}
		data[k] = v
	}
	meta := map[string]any{"name": g.Name}
	if g.Namespace != "" {
		meta["namespace"] = g.Namespace
	}
	d := doc{"apiVersion": "v1", "kind": kind, "metadata": meta, "data": data}
	if kind == "Secret" {
		t := g.Type
		if t == "" {
			t = "Opaque"
		}
		d["type"] = t
	} else if g.Type != "" {
		return nil, fmt.Errorf("ConfigMap generator %s: type is for Secrets", g.Name)
	}
	return d, nil
}

// id names an object as kustomize does: apiVersion's group, kind, namespace, name.
func id(d doc) string {
	return fmt.Sprintf("%s/%s/%s", d["kind"], str(d, "metadata", "namespace"), str(d, "metadata", "name"))
}

func checkUnique(docs []doc) error {
	seen := map[string]bool{}
	for _, d := range docs {
		if seen[id(d)] {
			return fmt.Errorf("%s defined twice", id(d))
		}
		seen[id(d)] = true
	}
	return nil
}

// applyPatchFile applies a strategic-merge patch made only of objects (maps). For maps, a
// strategic merge is a JSON merge patch (RFC 7386); lists would need the types' merge keys, so a
// patch with a list is refused rather than merged wrongly.
func applyPatchFile(docs []doc, path string) error {
	patches, err := readYAMLFile(path)
	if err != nil {
		return err
	}
	if len(patches) != 1 {
		return fmt.Errorf("want exactly one object, got %d", len(patches))
	}
	p := patches[0]
	if hasList(p) {
		return fmt.Errorf("lists in patches are not supported by this renderer (use maps or a plain resource)")
	}
	for _, d := range docs {
		if id(d) == id(p) && d["apiVersion"] == p["apiVersion"] {
			mergePatch(d, p)
			return nil
		}
	}
	return fmt.Errorf("target %s not found", id(p))
}

func hasList(v any) bool {
	switch x := v.(type) {
	case []any:
		return true
	case map[string]any:
		for _, e := range x {
			if hasList(e) {
				return true
			}
		}
	}
	return false
}

func mergePatch(dst, patch map[string]any) {
	for k, pv := range patch {
		if pv == nil {
			delete(dst, k)
			continue
		}
		pm, ok := pv.(map[string]any)
		if !ok {
			dst[k] = pv
			continue
		}
		dm, ok := dst[k].(map[string]any)
		if !ok {
			dm = map[string]any{}
			dst[k] = dm
		}
		mergePatch(dm, pm)
	}
}

// setImage rewrites the image of every container and init container whose image name (without
// tag or digest) is img.Name, as kustomize's images transformer does. It returns how many.
func setImage(docs []doc, img image) int {
	n := 0
	for _, d := range docs {
		spec := podSpecOf(d)
		if spec == nil {
			continue
		}
		for _, field := range []string{"initContainers", "containers"} {
			cs, _ := spec[field].([]any)
			for _, c := range cs {
				cm, _ := c.(map[string]any)
				ref, _ := cm["image"].(string)
				name, tag := splitImage(ref)
				if name != img.Name {
					continue
				}
				if img.NewName != "" {
					name = img.NewName
				}
				if img.NewTag != "" {
					tag = ":" + img.NewTag
				}
				cm["image"] = name + tag
				n++
			}
		}
	}
	return n
}

// splitImage cuts "repo/name:tag" (or "@digest") into name and the ":tag"/"@digest" suffix.
func splitImage(ref string) (name, suffix string) {
	if i := strings.Index(ref, "@"); i >= 0 {
		return ref[:i], ref[i:]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i], ref[i:]
	}
	return ref, ""
}

// podSpecOf returns spec.template.spec of a workload, or nil.
func podSpecOf(d doc) map[string]any {
	if !slices.Contains([]string{"Deployment", "DaemonSet", "StatefulSet", "Job"}, fmt.Sprint(d["kind"])) {
		return nil
	}
	spec, _ := d["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	ps, _ := tmpl["spec"].(map[string]any)
	return ps
}

func str(d map[string]any, path ...string) string {
	var cur any = d
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return ""
		}
		cur = m[p]
	}
	s, _ := cur.(string)
	return s
}

// normalize makes two renderings comparable: Secret data decoded (kubectl wraps base64 lines).
func normalize(d doc) doc {
	b, _ := json.Marshal(d)
	var out doc
	_ = json.Unmarshal(b, &out)
	if out["kind"] == "Secret" {
		if data, ok := out["data"].(map[string]any); ok {
			for k, v := range data {
				s, _ := v.(string)
				dec, err := base64.StdEncoding.DecodeString(s)
				if err == nil {
					data[k] = string(dec)
				}
			}
		}
	}
	return out
}

// diffRenderings compares two renderings object by object.
func diffRenderings(a, b []doc) []string {
	index := func(ds []doc) map[string]doc {
		m := map[string]doc{}
		for _, d := range ds {
			m[id(d)] = normalize(d)
		}
		return m
	}
	am, bm := index(a), index(b)
	var diffs []string
	for k, av := range am {
		bv, ok := bm[k]
		switch {
		case !ok:
			diffs = append(diffs, k+": only in ours")
		case !reflect.DeepEqual(av, bv):
			aj, _ := json.MarshalIndent(av, "", " ")
			bj, _ := json.MarshalIndent(bv, "", " ")
			diffs = append(diffs, fmt.Sprintf("%s differs:\nours:\n%s\nkustomize:\n%s", k, aj, bj))
		}
	}
	for k := range bm {
		if _, ok := am[k]; !ok {
			diffs = append(diffs, k+": only in kustomize's")
		}
	}
	slices.Sort(diffs)
	return diffs
}
