#!/usr/bin/env python3
"""Validate FHIR resources with an independent library: the PyPI package fhir.resources, R4B models.

Usage: validate_fhir.py FILE...
  FILE ending in .ndjson: one resource per line (FHIR bulk NDJSON).
  any other FILE: one JSON resource (an AuditEvent or a Bundle).

A Bundle is validated as a Bundle, which validates each entry's resource by its resourceType; when it fails,
its entries are validated one by one to name the one at fault.
Exits 0 and prints "validated N resources" when all are valid; exits 1 naming the first invalid resource
(file, line or entry, resourceType/id) and the library's error; exits 2 when fhir.resources is missing.

R4B is the newest FHIR 4 model fhir.resources ships (8.x defaults to R5); AuditEvent and Bundle are the same
in R4 (4.0.1) and R4B (4.3.0).
"""

import json
import sys

try:
    from fhir.resources.R4B.auditevent import AuditEvent
    from fhir.resources.R4B.bundle import Bundle
except ImportError as exc:  # pragma: no cover - depends on the machine
    print(
        f"fhir.resources with R4B models is not installed ({exc}); "
        "install it with: python3 -m pip install 'fhir.resources==8.3.0'",
        file=sys.stderr,
    )
    sys.exit(2)

MODELS = {"AuditEvent": AuditEvent, "Bundle": Bundle}


def resources(path):
    """Yields (where, resource) for each resource in a file."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(".ndjson"):
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path}:{number}", json.loads(line)
        else:
            yield path, json.load(f)


def check(where, resource):
    """Validates one resource; returns how many resources it held (itself plus bundle entries)."""
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    model = MODELS.get(rtype)
    name = f"{where} {rtype}/{resource.get('id') if isinstance(resource, dict) else '?'}"
    if model is None:
        fail(name, f"unexpected resourceType {rtype!r}")
    entries = (resource.get("entry") or []) if rtype == "Bundle" else []
    try:
        model.model_validate(resource)
    except Exception as exc:  # noqa: BLE001 - any validation error fails the resource
        for i, entry in enumerate(entries):
            check(f"{where} entry[{i}]", entry.get("resource") if isinstance(entry, dict) else entry)
        fail(name, exc)
    return 1 + len(entries)


def fail(name, error):
    print(f"INVALID {name}: {error}", file=sys.stderr)
    sys.exit(1)


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    count = 0
    for path in paths:
        for where, resource in resources(path):
            count += check(where, resource)
    print(f"validated {count} resources")


if __name__ == "__main__":
    main(sys.argv[1:])
