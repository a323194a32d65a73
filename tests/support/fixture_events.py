"""The audit events kept as fixtures, one JSON document each, for equivalence tests."""

from __future__ import annotations

from pathlib import Path

import orjson

SUFFIXES = {".json", ".log", ".ndjson", ".jsonl"}


def event_lines(*folders: Path) -> list[bytes]:
    """Every event in the files below `folders` (a folder that is not there is skipped):
    a file holding one pretty-printed event gives it on one line, any other file its
    non-blank lines."""
    lines: list[bytes] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if path.suffix not in SUFFIXES:
                continue
            text = path.read_bytes()
            try:
                lines.append(orjson.dumps(orjson.loads(text)))
            except orjson.JSONDecodeError:
                lines.extend(line for line in text.splitlines() if line.strip())
    return lines
