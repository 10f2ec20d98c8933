#!/usr/bin/env python3
"""Validates YAML files against a JSON Schema (draft 2020-12) with the
`jsonschema` package (Debian: python3-jsonschema, python3-yaml): an
implementation independent of the Rust code that generated the schema.

usage: validate_schema.py SCHEMA FILE...
Prints `FILE: ok` or `FILE: PATH: message` per problem; exit 1 on any.
"""
import json
import sys

import jsonschema
import yaml


def main() -> int:
    schema = json.load(open(sys.argv[1]))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    bad = 0
    for path in sys.argv[2:]:
        doc = yaml.safe_load(open(path))
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        if not errors:
            print(f"{path}: ok")
        for e in errors:
            bad += 1
            where = "/".join(str(p) for p in e.path) or "(top)"
            print(f"{path}: {where}: {e.message}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
