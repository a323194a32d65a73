#!/usr/bin/env bash
# Build the helm CLI the chart tests use, from the Go module proxy, and cache it.
#
#   HELM="$(.ci/build-helm.sh)"
#
# Prints only the absolute path of the helm binary on stdout; progress goes to stderr.
# The binary lands in ${HEALERT_CI_CACHE:-$HOME/.cache/healert-ci}/helm-<version>/helm
# and is reused on later runs. Needs the Go toolchain (go 1.24 or newer) and a
# working GOPROXY; GOMODCACHE and GOCACHE are honoured as usual.
set -euo pipefail

version="${HELM_VERSION:-v3.22.0}"
cache="${HEALERT_CI_CACHE:-$HOME/.cache/healert-ci}"
dir="$cache/helm-$version"
bin="$dir/helm"

log() { echo "build-helm: $*" >&2; }

# Reuse a cached binary that runs and reports the expected version.
if [[ -x "$bin" ]] && "$bin" version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
  log "using cached $bin"
  printf '%s\n' "$bin"
  exit 0
fi

command -v go >/dev/null 2>&1 || { log "the Go toolchain (go) is not on PATH"; exit 1; }

mkdir -p "$dir"
work="$(mktemp -d "$dir/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

started=$SECONDS
log "building helm.sh/helm/v3/cmd/helm@$version with $(go version) (first run only)"
# `go install mod@version` builds in module-aware mode from the proxy, outside any
# local go.mod. The ldflags set the version `helm version` prints, as helm's own
# Makefile does; without them it reports a development version.
GOBIN="$work" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
  "helm.sh/helm/v3/cmd/helm@$version" >&2

"$work/helm" version --template '{{.Version}}' | grep -qx "$version" \
  || { log "the built binary does not report $version"; exit 1; }
# Rename into place atomically, so a concurrent or interrupted run never sees half a file.
mv -f "$work/helm" "$bin"
log "built $bin in $((SECONDS - started)) s"
printf '%s\n' "$bin"
