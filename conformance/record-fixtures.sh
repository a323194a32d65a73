#!/usr/bin/env bash
# Run the scenarios and write their audit events to tests/fixtures/apiserver-1.37/ (one
# JSON-lines file per scenario, and the README listing them), and the objects the
# controller-manager made to tests/fixtures/apiserver-1.37-objects/ (kubectl get -o json).
# `record-fixtures.sh objects` writes the objects only (the audit events stay as they are).
# `record-fixtures.sh breadth` writes only the breadth cases' audit events to
# tests/fixtures/apiserver-1.37-breadth/, recorded under
# conformance/policies/request-response-everywhere.yaml (every body but Secrets'), and the
# objects the entity cases act on to tests/fixtures/apiserver-1.37-entity-objects/.
# Review the diff before committing.
set -euo pipefail
cd "$(dirname "$0")/.."
events=tests/fixtures/apiserver-1.37
objects=tests/fixtures/apiserver-1.37-objects
breadth=tests/fixtures/apiserver-1.37-breadth
entity_objects=tests/fixtures/apiserver-1.37-entity-objects
HEALERT_CONFORMANCE_BIN="${HEALERT_CONFORMANCE_BIN:-$(conformance/build.sh)}"
export HEALERT_CONFORMANCE_BIN
if [ "${1:-}" = breadth ]; then
  mkdir -p "$breadth" "$entity_objects"
  rm -f "$entity_objects"/*.json
  HEALERT_CONFORMANCE_BREADTH_POLICY="$PWD/conformance/policies/request-response-everywhere.yaml" \
  HEALERT_CONFORMANCE_BREADTH_FIXTURES="$PWD/$breadth" \
  HEALERT_CONFORMANCE_ENTITY_OBJECTS="$PWD/$entity_objects" \
    .venv/bin/python -m pytest conformance/tests/test_60_breadth.py \
      conformance/tests/test_65_entity.py::test_record_the_objects_the_cases_act_on \
      -q -p no:cacheprovider || true
  ls -l "$breadth" "$entity_objects"
  exit 0
fi
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
