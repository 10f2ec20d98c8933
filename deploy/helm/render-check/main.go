// A small stand-in for `helm template`, for checking this chart where helm
// cannot be installed: Go text/template + sprig + Helm's extra functions
// (include, tpl, toYaml, fromYaml, toJson, required, fail, lookup), values
// coalescing (user files over values.yaml, null deletes) and the same
// template naming as Helm. Not a replacement for `helm lint`/`helm template`.
//
// Usage: render CHART_DIR [-f values.yaml]... [-n namespace] [-r release]
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

type Chart struct {
	Name, Version, AppVersion, Description string
}

type Release struct {
	Name, Namespace, Service string
	IsInstall, IsUpgrade     bool
	Revision                 int
}

// normalize turns yaml.v2 output into JSON-like values: string keys, float64 numbers.
func normalize(v interface{}) interface{} {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := map[string]interface{}{}
		for k, val := range t {
			m[fmt.Sprint(k)] = normalize(val)
		}
		return m
	case map[string]interface{}:
		for k, val := range t {
			t[k] = normalize(val)
		}
		return t
	case []interface{}:
		for i := range t {
			t[i] = normalize(t[i])
		}
		return t
	case int:
		return float64(t)
	case int64:
		return float64(t)
	case uint64:
		return float64(t)
	default:
		return v
	}
}

func readYAML(path string) (map[string]interface{}, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var v interface{}
	if err := yaml.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if v == nil {
		return map[string]interface{}{}, nil
	}
	m, ok := normalize(v).(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: not a map", path)
	}
	return m, nil
}

// coalesce merges src (user) over dst (defaults) like Helm: maps merge
// deeply, other values replace, a null in src deletes the key.
func coalesce(dst, src map[string]interface{}) map[string]interface{} {
	for k, sv := range src {
		if sv == nil {
			delete(dst, k)
			continue
		}
		dv, ok := dst[k]
		sm, sIsMap := sv.(map[string]interface{})
		dm, dIsMap := dv.(map[string]interface{})
		if ok && sIsMap && dIsMap {
			dst[k] = coalesce(dm, sm)
		} else {
			if ok && dIsMap && !sIsMap {
				fmt.Fprintf(os.Stderr, "warning: destination for %s is a table. Ignoring non-table value (%v)\n", k, sv)
				continue
			}
			dst[k] = sv
		}
	}
	return dst
}

func toYAML(v interface{}) string {
	j, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var obj interface{}
	if err := yaml.Unmarshal(j, &obj); err != nil {
		return ""
	}
	out, err := yaml.Marshal(obj)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(out), "\n")
}

func fromYAML(s string) map[string]interface{} {
	var v interface{}
	if err := yaml.Unmarshal([]byte(s), &v); err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	// Helm goes through JSON: round-trip to get the same types.
	j, _ := json.Marshal(normalize(v))
	m := map[string]interface{}{}
	_ = json.Unmarshal(j, &m)
	return m
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: render CHART_DIR [-f values.yaml]... [-n ns] [-r release]")
		os.Exit(2)
	}
	dir := os.Args[1]
	var files []string
	ns, rel := "default", "lineaged"
	for i := 2; i < len(os.Args); i++ {
		switch os.Args[i] {
		case "-f":
			i++
			files = append(files, os.Args[i])
		case "-n":
			i++
			ns = os.Args[i]
		case "-r":
			i++
			rel = os.Args[i]
		}
	}
	meta, err := readYAML(filepath.Join(dir, "Chart.yaml"))
	check(err)
	chart := Chart{
		Name:       fmt.Sprint(meta["name"]),
		Version:    fmt.Sprint(meta["version"]),
		AppVersion: fmt.Sprint(meta["appVersion"]),
	}
	vals, err := readYAML(filepath.Join(dir, "values.yaml"))
	check(err)
	for _, f := range files {
		u, err := readYAML(f)
		check(err)
		vals = coalesce(vals, u)
	}
	if os.Getenv("DUMP_VALUES") != "" {
		j, _ := json.Marshal(vals)
		check(os.WriteFile(os.Getenv("DUMP_VALUES"), j, 0o644))
	}

	root := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includedNames := map[string]int{}
	funcs["include"] = func(name string, data interface{}) (string, error) {
		includedNames[name]++
		defer func() { includedNames[name]-- }()
		if includedNames[name] > 1000 {
			return "", errors.New("recursion")
		}
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	funcs["tpl"] = func(s string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(s)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return buf.String(), err
	}
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["toJson"] = func(v interface{}) string { b, _ := json.Marshal(v); return string(b) }
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return v, errors.New(msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	funcs["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	root.Funcs(funcs)

	tdir := filepath.Join(dir, "templates")
	entries, err := os.ReadDir(tdir)
	check(err)
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(tdir, e.Name()))
		check(err)
		name := chart.Name + "/templates/" + e.Name()
		_, err = root.New(name).Parse(string(b))
		check(err)
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		base := filepath.Base(name)
		if strings.HasPrefix(base, "_") {
			continue
		}
		data := map[string]interface{}{
			"Values":  vals,
			"Chart":   chart,
			"Release": Release{Name: rel, Namespace: ns, Service: "Helm", IsInstall: true, Revision: 1},
			"Template": map[string]interface{}{
				"Name":     name,
				"BasePath": chart.Name + "/templates",
			},
			"Capabilities": map[string]interface{}{},
		}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, name, data); err != nil {
			fmt.Fprintf(os.Stderr, "Error: %v\n", err)
			os.Exit(1)
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(out) == "" {
			continue
		}
		if base == "NOTES.txt" {
			fmt.Printf("#### NOTES.txt\n%s\n", out)
			continue
		}
		fmt.Printf("---\n# Source: %s\n%s\n", name, out)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
