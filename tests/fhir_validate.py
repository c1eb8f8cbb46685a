#!/usr/bin/env python3
"""Validate AuditEvents (NDJSON, one per line, from files or stdin) with an independent FHIR
model: fhir.resources' R4B AuditEvent, which is R4's AuditEvent. Extra elements (anything not in
R4, e.g. an `identifier`) are rejected. Exit 1 and print each failure if any event is invalid."""
import json
import sys

from fhir.resources.R4B.auditevent import AuditEvent


def main() -> int:
    paths = sys.argv[1:] or ["-"]
    count = 0
    failures = 0
    for path in paths:
        stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
        for lineno, line in enumerate(stream, 1):
            line = line.strip()
            if not line:
                continue
            count += 1
            try:
                AuditEvent.model_validate(json.loads(line))
            except Exception as exc:  # noqa: BLE001 - report every kind of failure
                failures += 1
                print(f"{path}:{lineno}: {exc}", file=sys.stderr)
    print(f"validated {count} AuditEvents with fhir.resources R4B: {failures} invalid")
    return 1 if failures or count == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
