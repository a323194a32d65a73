"""What rules match names and GitOps ownership with: values a rules file compiles into,
read by the checks of each candidate event."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NameMatch:
    """User or group names: exact names, and prefixes (written with a trailing `*`)."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]

    def matches(self, value: str) -> bool:
        """True when `value` is one of the names or starts with one of the prefixes."""
        return value in self.exact or (bool(self.prefixes) and value.startswith(self.prefixes))

    def any_of(self, values: Iterable[str]) -> bool:
        """True when any of `values` matches."""
        return any(self.matches(value) for value in values)

    def text(self) -> str:
        """The patterns as written in the file, sorted."""
        return "|".join(sorted(self.exact) + sorted(p + "*" for p in self.prefixes))


@dataclass(frozen=True, slots=True)
class GitOps:
    """What marks an object as managed by a GitOps tool, and the tools' own identities.

    An object is GitOps-managed when it carries one of `annotations` or `labels` (with a
    non-empty value) or lists one of `field_managers` in `metadata.managedFields`. A write
    by one of `controllers` is the tool applying Git, never drift.
    """

    annotations: tuple[str, ...]
    labels: tuple[str, ...]
    field_managers: frozenset[str]
    controllers: NameMatch


# Argo CD's tracking annotation (its default tracking method since 3.0), Flux's
# kustomize-controller and helm-controller labels, and the field managers all three
# apply with. `app.kubernetes.io/instance` is left out: Helm sets it too.
DEFAULT_GITOPS = GitOps(
    annotations=("argocd.argoproj.io/tracking-id",),
    labels=("kustomize.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/name"),
    field_managers=frozenset({"argocd-controller", "kustomize-controller", "helm-controller"}),
    controllers=NameMatch(frozenset({
        "system:serviceaccount:argocd:argocd-application-controller",
        "system:serviceaccount:flux-system:kustomize-controller",
        "system:serviceaccount:flux-system:helm-controller",
    }), ()),
)
