"""Minimal CustomResourceDefinitions of the GitOps and policy tools, and objects of them.

No controller of these tools runs: the apiserver only stores the objects, which is all the
audit trail needs. Each definition is structural with a `spec` (and `status`) that keeps
unknown fields, so any real manifest of the tool is accepted, and server-side apply,
merge patches and JSON patches work on them as on the real definitions.

- Kyverno `PolicyException` (kyverno.io/v2, namespaced)
- Gatekeeper `Config` (config.gatekeeper.sh/v1alpha1, namespaced; the one named `config`
  in `gatekeeper-system` is the one Gatekeeper reads)
- Flux `Kustomization` (kustomize.toolkit.fluxcd.io/v1) and `HelmRelease`
  (helm.toolkit.fluxcd.io/v2), namespaced
- Argo CD `Application` (argoproj.io/v1alpha1, namespaced; Argo CD reads them in its own
  namespace, `argocd`)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Definition:
    """One custom resource: its group, version, kind, plural and short names."""

    group: str
    version: str
    kind: str
    plural: str
    short_names: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The CRD's own name, `<plural>.<group>`."""
        return f"{self.plural}.{self.group}"

    @property
    def api_version(self) -> str:
        """The objects' apiVersion."""
        return f"{self.group}/{self.version}"

    def crd(self) -> dict[str, Any]:
        """The CustomResourceDefinition object."""
        loose = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": self.name},
            "spec": {
                "group": self.group, "scope": "Namespaced",
                "names": {"kind": self.kind, "plural": self.plural,
                          "singular": self.kind.lower(), "listKind": f"{self.kind}List",
                          "shortNames": list(self.short_names)},
                "versions": [{"name": self.version, "served": True, "storage": True,
                              "subresources": {"status": {}},
                              "schema": {"openAPIV3Schema": {
                                  "type": "object",
                                  "properties": {"spec": loose, "status": loose}}}}],
            },
        }

    def object(self, namespace: str, name: str, spec: dict[str, Any], *,
               labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """An object of this kind."""
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if labels:
            meta["labels"] = labels
        if annotations:
            meta["annotations"] = annotations
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": meta,
                "spec": spec}


POLICY_EXCEPTION = Definition("kyverno.io", "v2", "PolicyException", "policyexceptions",
                              ("polex",))
GATEKEEPER_CONFIG = Definition("config.gatekeeper.sh", "v1alpha1", "Config", "configs")
KUSTOMIZATION = Definition("kustomize.toolkit.fluxcd.io", "v1", "Kustomization",
                           "kustomizations", ("ks",))
HELM_RELEASE = Definition("helm.toolkit.fluxcd.io", "v2", "HelmRelease", "helmreleases",
                          ("hr",))
APPLICATION = Definition("argoproj.io", "v1alpha1", "Application", "applications",
                         ("app", "apps"))
ALL = (POLICY_EXCEPTION, GATEKEEPER_CONFIG, KUSTOMIZATION, HELM_RELEASE, APPLICATION)

FLUX_NS = "flux-system"
ARGOCD_NS = "argocd"
GATEKEEPER_NS = "gatekeeper-system"


def kustomization(name: str, path: str) -> dict[str, Any]:
    """A Flux Kustomization applying `path` of the `flux-system` GitRepository."""
    return KUSTOMIZATION.object(FLUX_NS, name, {
        "interval": "10m", "path": path, "prune": True,
        "sourceRef": {"kind": "GitRepository", "name": "flux-system"}})


def helm_release(namespace: str, name: str, chart: str) -> dict[str, Any]:
    """A Flux HelmRelease of `chart` from a HelmRepository."""
    return HELM_RELEASE.object(namespace, name, {
        "interval": "10m", "chart": {"spec": {
            "chart": chart, "version": "16.x",
            "sourceRef": {"kind": "HelmRepository", "name": "bitnami",
                          "namespace": FLUX_NS}}}})


def application(name: str, target_namespace: str, *, automated: bool = True) -> dict[str, Any]:
    """An Argo CD Application syncing `apps/<name>` to `target_namespace`, with automated
    sync (prune and self-heal) unless `automated` is false."""
    sync: dict[str, Any] = {"syncOptions": ["CreateNamespace=true"]}
    if automated:
        sync["automated"] = {"prune": True, "selfHeal": True}
    return APPLICATION.object(ARGOCD_NS, name, {
        "project": "default",
        "source": {"repoURL": "https://git.invalid/platform/apps.git",
                   "targetRevision": "main", "path": f"apps/{name}"},
        "destination": {"server": "https://kubernetes.default.svc",
                        "namespace": target_namespace},
        "syncPolicy": sync})


def policy_exception(namespace: str, name: str, target_namespace: str) -> dict[str, Any]:
    """A Kyverno PolicyException letting pods of `target_namespace` skip two policies."""
    return POLICY_EXCEPTION.object(namespace, name, {
        "exceptions": [{"policyName": "disallow-privileged-containers",
                        "ruleNames": ["privileged-containers"]},
                       {"policyName": "disallow-host-path", "ruleNames": ["host-path"]}],
        "match": {"any": [{"resources": {"kinds": ["Pod"],
                                         "namespaces": [target_namespace]}}]}})


def gatekeeper_config(excluded: list[str]) -> dict[str, Any]:
    """Gatekeeper's Config exempting `excluded` namespaces from every process."""
    return GATEKEEPER_CONFIG.object(GATEKEEPER_NS, "config", {
        "match": [{"excludedNamespaces": excluded, "processes": ["*"]}],
        "sync": {"syncOnly": [{"group": "", "version": "v1", "kind": "Namespace"}]}})
