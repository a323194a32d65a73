#!/usr/bin/env bash
# Build the helm CLI the chart tests use, from the Go module proxy, and cache it.
#
#   HELM="$(.ci/build-helm.sh)"
#
# Prints only the absolute path of the helm binary on stdout; progress goes to stderr.
# The binary lands in ${HEALERT_CI_CACHE:-$HOME/.cache/healert-ci}/helm-<version>/helm
# and is reused on later runs. Needs the Go toolchain (helm v3.22 wants go >= 1.26) and
# a working GOPROXY; GOMODCACHE and GOCACHE are honoured as usual.
set -euo pipefail

version="${HELM_VERSION:-v3.22.0}"
cache="${HEALERT_CI_CACHE:-$HOME/.cache/healert-ci}"
dir="$cache/helm-$version"
bin="$dir/helm"
# Bump when the way the binary is built changes, so older cached builds are replaced.
recipe="recipe=2"

log() { echo "build-helm: $*" >&2; }

# Reuse a cached binary built by this recipe that runs and reports the expected version.
if [[ -x "$bin" && -f "$dir/BUILD" ]] && grep -qx "$version $recipe .*" "$dir/BUILD" \
   && "$bin" version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
  log "using cached $bin ($(cat "$dir/BUILD"))"
  printf '%s\n' "$bin"
  exit 0
fi

command -v go >/dev/null 2>&1 || { log "the Go toolchain (go) is not on PATH"; exit 1; }

mkdir -p "$dir"
work="$(mktemp -d "$dir/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

# helm's Makefile stamps the Kubernetes version it reports to charts
# (.Capabilities.KubeVersion, kubeVersion checks, lint deprecations) from the client-go
# it is built with; a plain `go install` would leave it at v1.20. Read that version from
# helm's own go.mod, as the Makefile does.
gomod="$(go mod download -json "helm.sh/helm/v3@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
[[ -f "$gomod" ]] || { log "could not download helm.sh/helm/v3@$version"; exit 1; }
client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")"
[[ "$client_go" =~ ^v0\.([0-9]+)\. ]] || { log "unexpected client-go version: $client_go"; exit 1; }
k8s_major=1
k8s_minor="${BASH_REMATCH[1]}"

ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  ldflags+=" -X $pkg.k8sVersionMajor=$k8s_major -X $pkg.k8sVersionMinor=$k8s_minor"
done

log "building helm.sh/helm/v3/cmd/helm@$version (Kubernetes $k8s_major.$k8s_minor) with $(go version)"
# `go install mod@version` builds in module-aware mode from the proxy, outside any
# local go.mod.
GOBIN="$work" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
  go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$version" >&2

"$work/helm" version --template '{{.Version}}' | grep -qx "$version" \
  || { log "the built binary does not report $version"; exit 1; }
# Rename into place, so an interrupted run never leaves half a binary behind.
mv -f "$work/helm" "$bin"
echo "$version $recipe kubernetes=$k8s_major.$k8s_minor" > "$dir/BUILD"
log "built $bin in $((SECONDS - started)) s"
printf '%s\n' "$bin"
