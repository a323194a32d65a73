#!/usr/bin/env bash
# Start etcd, kube-apiserver and both agents on loopback, auditing to the agents both ways
# (webhook and log file), until Ctrl-C. Prints a KUBECONFIG line for every identity.
# Usage: conformance/up.sh [--dir DIR]   (needs .venv from the README's test command)
set -euo pipefail
cd "$(dirname "$0")/.."
HEALERT_CONFORMANCE_BIN="${HEALERT_CONFORMANCE_BIN:-$(conformance/build.sh)}"
export HEALERT_CONFORMANCE_BIN
exec .venv/bin/python -m conformance.harness up "$@"
