#!/usr/bin/env bash
# Run the scenarios and write their audit events to tests/fixtures/apiserver-1.37/ (one
# JSON-lines file per scenario, and the README listing them), and the objects the
# controller-manager made to tests/fixtures/apiserver-1.37-objects/ (kubectl get -o json).
# `record-fixtures.sh objects` writes the objects only (the audit events stay as they are).
# Review the diff before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
events=tests/fixtures/apiserver-1.37
objects=tests/fixtures/apiserver-1.37-objects
HEALERT_CONFORMANCE_BIN="${HEALERT_CONFORMANCE_BIN:-$(conformance/build.sh)}"
export HEALERT_CONFORMANCE_BIN
mkdir -p "$events" "$objects"
rm -f "$objects"/*.json
tests=(conformance/tests/test_15_controllers.py)
if [ "${1:-}" != objects ]; then
  rm -f "$events"/*.jsonl
  tests=(conformance/tests/test_10_scenarios.py "${tests[@]}")
fi
HEALERT_CONFORMANCE_FIXTURES="$PWD/$events" HEALERT_CONFORMANCE_OBJECTS="$PWD/$objects" \
  .venv/bin/python -m pytest "${tests[@]}" -q -p no:cacheprovider || true
ls -l "$events" "$objects"
