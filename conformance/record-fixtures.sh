#!/usr/bin/env bash
# Run the scenarios and write their audit events to tests/fixtures/apiserver-1.37/ (one
# JSON-lines file per scenario, and the README listing them). Review the diff before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
target=tests/fixtures/apiserver-1.37
HEALERT_CONFORMANCE_BIN="${HEALERT_CONFORMANCE_BIN:-$(conformance/build.sh)}"
export HEALERT_CONFORMANCE_BIN
mkdir -p "$target"
rm -f "$target"/*.jsonl
HEALERT_CONFORMANCE_FIXTURES="$PWD/$target" \
  .venv/bin/python -m pytest conformance/tests/test_10_scenarios.py -q -p no:cacheprovider || true
ls -l "$target"
