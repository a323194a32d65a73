#!/usr/bin/env bash
# The conformance suite as CI runs it (.ci/run calls this after the README's test command):
# build kube-apiserver, kubectl and etcd unless cached under $HEALERT_CI_CACHE, then run
# conformance/tests against a real control plane. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
export HEALERT_CI_CACHE="${HEALERT_CI_CACHE:-$HOME/.cache/healert-ci}"
mkdir -p "$HEALERT_CI_CACHE"
command -v go >/dev/null || { echo "conformance: go is needed to build the binaries" >&2; exit 1; }
[ -x .venv/bin/python ] || { echo "conformance: .venv is missing (run the README's test command)" >&2; exit 1; }

# Go's build cache (about 3 GiB for these binaries) is of no use once the binaries are
# cached, so a build here uses a throwaway one. The module cache is left where it is.
gocache=$(mktemp -d "${TMPDIR:-/tmp}/healert-conformance-gocache.XXXXXX")
work=$(mktemp -d "${TMPDIR:-/tmp}/healert-conformance.XXXXXX")
trap 'rm -rf "$gocache"' EXIT
bin=$(GOCACHE="$gocache" conformance/build.sh)
rm -rf "$gocache"
echo "conformance: binaries in $bin (after $((SECONDS - started)) s)"

status=0
HEALERT_CONFORMANCE_BIN="$bin" HEALERT_CONFORMANCE_WORK="$work/run" \
  .venv/bin/python -m pytest conformance/tests -q -rxXfE --durations=8 -p no:cacheprovider || status=$?
if [ "$status" -ne 0 ]; then
  echo "conformance: failed ($status); the last lines of each log under $work/run:" >&2
  find "$work/run" -name '*.log' -path '*/logs/*' | sort | while read -r log; do
    echo "--- $log" >&2
    tail -n 25 "$log" >&2
  done
fi
echo "conformance: done after $((SECONDS - started)) s"
exit "$status"
