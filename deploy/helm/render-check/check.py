"""Checks a rendered chart: every document parses as YAML and has the basic
shape; the values validate against values.schema.json; the ConfigMap's
lineaged config files pass `lineaged check` (when a lineaged binary is given).

usage: check.py RENDERED.yaml VALUES.json [LINEAGED_BINARY]
"""
import json, os, subprocess, sys, tempfile
import yaml, jsonschema

rendered, values_json = sys.argv[1], sys.argv[2]
binary = sys.argv[3] if len(sys.argv) > 3 else None
here = os.path.dirname(os.path.abspath(__file__))
schema = json.load(open(os.path.join(here, "..", "lineaged", "values.schema.json")))
values = json.load(open(values_json))
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=str)
for e in errors:
    print("SCHEMA:", list(e.absolute_path), e.message)

text = open(rendered).read()
manifests = text[text.find("---\n# Source"):]
docs = [d for d in yaml.safe_load_all(manifests) if d]
kinds = []
for d in docs:
    for k in ("apiVersion", "kind", "metadata"):
        assert k in d, f"{k} missing in {d}"
    kinds.append(f"{d['kind']}/{d['metadata']['name']}")
print("documents:", ", ".join(kinds))
cm = next(d for d in docs if d["kind"] == "ConfigMap")
if binary:
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in (cm.get("data") or {}).items():
            keys = os.environ.get("KEYS_DIR")
            if keys:
                content = content.replace("/etc/lineaged-keys", keys)
            with open(os.path.join(tmp, name), "w") as f:
                f.write(content)
        # cosign key referenced by an example policy
        env = dict(os.environ)
        dep = next(d for d in docs if d["kind"] == "Deployment")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        for e in c.get("env", []):
            env[e["name"]] = e.get("value", "dummy-secret")
        env["LINEAGED_DATABASE_URL"] = "postgres://u:p@127.0.0.1:5432/db"
        for extra in os.environ.get("EXTRA_ENV", "").split():
            name, _, value = extra.partition("=")
            env[name] = value or "dummy-secret"
        r = subprocess.run([binary, "check", "-c", tmp], env=env, capture_output=True, text=True)
        print("lineaged check:", r.returncode, (r.stdout + r.stderr).strip().replace(tmp, "/etc/lineaged"))
        if r.returncode != 0:
            errors.append("lineaged check failed")
sys.exit(1 if errors else 0)
