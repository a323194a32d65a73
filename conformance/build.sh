#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kubectl (k8s.io/kubernetes) and etcd (go.etcd.io/etcd/server/v3) from the
# Go modules pinned in gomod/*/go.mod, once: the binaries are cached in a folder named after the
# pinned versions and rebuilt only when a pin changes. Prints that folder's bin/ on stdout.
#
# Cache root: $HEALERT_CI_CACHE when set (CI), else conformance/.cache (gitignored).
# Honors GOMODCACHE, GOCACHE and GOFLAGS like any go build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Bump when the build commands below change in a way that should invalidate cached binaries.
build_rev=3

pin() { awk -v m="$2" '($1 == "require" && $2 == m) || $1 == m { print ($1 == "require" ? $3 : $2); exit }' "$1"; }
kube_version=$(pin "$here/gomod/kube/go.mod" k8s.io/kubernetes)
etcd_version=$(pin "$here/gomod/etcd/go.mod" go.etcd.io/etcd/server/v3)
[ -n "$kube_version" ] && [ -n "$etcd_version" ] || { echo "build.sh: cannot read the pins" >&2; exit 2; }
digest=$( { echo "rev=$build_rev"; cat "$here"/gomod/kube/go.mod "$here"/gomod/kube/go.sum \
  "$here"/gomod/etcd/go.mod "$here"/gomod/etcd/go.sum "$here"/gomod/etcd/main.go; } |
  sha256sum | cut -c1-10)
root=${HEALERT_CI_CACHE:-$here/.cache}
dest="$root/conformance-kube-$kube_version-etcd-$etcd_version-$digest"

if [ -x "$dest/bin/kube-apiserver" ] && [ -x "$dest/bin/kube-controller-manager" ] &&
  [ -x "$dest/bin/kubectl" ] && [ -x "$dest/bin/etcd" ]; then
  echo "$dest/bin"
  exit 0
fi

mkdir -p "$root"
tmp=$(mktemp -d "$root/.building.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin"
started=$SECONDS
minor=${kube_version#v1.}
minor=${minor%%.*}
# The version a release build stamps in (kubectl's User-Agent and `version` come from these).
ldflags="-s -w"
for v in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $v.gitVersion=$kube_version -X $v.gitMajor=1 -X $v.gitMinor=$minor"
  ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
done
export CGO_ENABLED=0
echo "build.sh: building kube-apiserver, kube-controller-manager and kubectl $kube_version, etcd $etcd_version" >&2
(cd "$here/gomod/kube" && go build -buildvcs=false -trimpath -ldflags "$ldflags" -o "$tmp/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl)
echo "build.sh: kube binaries done after $((SECONDS - started)) s" >&2
(cd "$here/gomod/etcd" && go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$tmp/bin/etcd" .)
elapsed=$((SECONDS - started))
{
  echo "kubernetes=$kube_version etcd=$etcd_version digest=$digest"
  echo "built_on=$(date -u +%Y-%m-%dT%H:%M:%SZ) seconds=$elapsed go=$(go env GOVERSION)"
  (cd "$tmp/bin" && du -sh -- *) | sed "s/^/size /"
} > "$tmp/build-info.txt"
echo "build.sh: all built in $elapsed s" >&2
rm -rf "$dest"
mv "$tmp" "$dest"
# Older pins' builds are of no further use.
for old in "$root"/conformance-kube-*; do
  [ "$old" = "$dest" ] || rm -rf "$old"
done
trap - EXIT
echo "$dest/bin"
