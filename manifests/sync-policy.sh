#!/usr/bin/env bash
# Regenerate manifests/apiserver/audit-policy.yaml from the top-level rules.yaml with
# `healert-webhook policy`, so the policy the apiserver runs records exactly what the
# shipped rules need, and copy it to the chart (charts/healert-webhook/files/).
#
#   manifests/sync-policy.sh            rewrite the policy and the chart's copy
#   manifests/sync-policy.sh --check    exit 1 if either differs from what `policy` prints
#   manifests/sync-policy.sh --rules PATH [--out PATH] [--chart-copy PATH] [-- POLICY ARGS]
#
# Arguments after `--` go to `healert-webhook policy` (e.g. --cluster-view off, --proxy
# USER, --group RESOURCE=GROUP). The command is the repository's .venv/bin/healert-webhook,
# else healert-webhook on PATH; HEALERT_WEBHOOK names another.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rules="$here/../rules.yaml"
out="$here/apiserver/audit-policy.yaml"
chart_copy=""
custom=false
check=false
extra=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --rules) rules="$2"; custom=true; shift 2 ;;
    --out) out="$2"; custom=true; shift 2 ;;
    --chart-copy) chart_copy="$2"; shift 2 ;;
    --check) check=true; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "sync-policy.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

# The chart's copy is kept by default; with --rules or --out only when --chart-copy says
# where (so trying the script on other files never touches the chart).
if [[ -z "$chart_copy" && "$custom" == false ]]; then
  chart_copy="$here/../charts/healert-webhook/files/audit-policy.yaml"
fi

agent="${HEALERT_WEBHOOK:-}"
if [[ -z "$agent" ]]; then
  if [[ -x "$here/../.venv/bin/healert-webhook" ]]; then
    agent="$here/../.venv/bin/healert-webhook"
  else
    agent="$(command -v healert-webhook || true)"
  fi
fi
[[ -n "$agent" ]] || { echo "sync-policy.sh: no healert-webhook command (set HEALERT_WEBHOOK)" >&2; exit 2; }
[[ -f "$rules" ]] || { echo "sync-policy.sh: no rules file at $rules" >&2; exit 2; }

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
# RULES_PATH and the like must not pick other rules than --rules says.
env -u RULES_PATH "$agent" policy --rules "$rules" ${extra[@]+"${extra[@]}"} > "$tmp"

if [[ "$check" == true ]]; then
  status=0
  for target in "$out" ${chart_copy:+"$chart_copy"}; do
    if ! cmp -s "$tmp" "$target"; then
      echo "sync-policy.sh: $target is not the policy the rules need; run manifests/sync-policy.sh" >&2
      status=1
    fi
  done
  exit "$status"
fi

install_copy() {
  local target="$1" staged
  mkdir -p "$(dirname "$target")"
  staged="$(mktemp "${target}.XXXXXX")"
  cp "$tmp" "$staged"
  chmod 0644 "$staged"
  mv "$staged" "$target"
  echo "wrote $target from $rules"
}
install_copy "$out"
[[ -z "$chart_copy" ]] || install_copy "$chart_copy"
