"""Needs written by hand for the shipped rules.yaml's rules, enabled and optional ones."""

from __future__ import annotations

from healert_webhook.auditpolicy.document import Level
from healert_webhook.auditpolicy.needs import ANY, PEOPLE, Actor, Need, Target

# rules.yaml's config.ignore_namespaces
IGNORED = frozenset({"kube-system", "kube-public", "kube-node-lease", "cert-manager",
                     "istio-system", "monitoring", "argocd", "vault"})
WRITES = frozenset({"create", "update", "patch"})
# config.gitops.controllers' defaults: their writes are never drift
GITOPS_CONTROLLERS = ("system:serviceaccount:argocd:argocd-application-controller",
                      "system:serviceaccount:flux-system:kustomize-controller",
                      "system:serviceaccount:flux-system:helm-controller")
WORKLOADS_APPS = ("deployments", "statefulsets", "daemonsets", "replicasets")


def _need(rule: str, *targets: Target, level: Level = Level.METADATA, **kw: object) -> Need:
    return Need(rule, targets, level, ignore_namespaces=IGNORED, **kw)  # type: ignore[arg-type]


def enabled_needs() -> tuple[Need, ...]:
    """What today's five enabled rules need, read off rules.yaml by hand."""
    drift_excluded = frozenset({"exec", "attach", "portforward", "proxy",
                                "ephemeralcontainers", "eviction"})
    return (
        # resource: pods, subresource: exec; no verb (kubectl >= 1.30 sends get)
        _need("kubectl-exec", Target("pods", subresources=frozenset({"exec"}))),
        # verbs: patch, update, create; annotation on any object: the body is read
        # (responseObject: a JSON patch's requestObject does not show the annotation)
        _need("pipeline-skip", Target(ANY, WRITES, subresources=None),
              level=Level.REQUEST_RESPONSE),
        # workloads, create/update/patch, any subresource but the session ones
        _need("config-drift", *(Target(name, WRITES, subresources=None,
                                       excluded_subresources=drift_excluded)
                                for name in ("pods", *WORKLOADS_APPS, "jobs", "cronjobs"))),
        _need("port-forward", Target("pods", subresources=frozenset({"portforward"}))),
        # resource: secrets, verb: get (no subresource named: any)
        _need("emergency-access", Target("secrets", frozenset({"get"}), subresources=None)),
    )


def gitops_drift_need() -> Need:
    """The optional gitops-drift: workload updates and patches, objects with managedFields."""
    return _need("gitops-drift", *(Target(name, frozenset({"update", "patch"}),
                                          subresources=None,
                                          excluded_subresources=frozenset({"status"}))
                                   for name in ("deployments", "statefulsets", "daemonsets",
                                                "cronjobs")),
                 level=Level.REQUEST_RESPONSE, managed_fields=True)


def optional_needs() -> tuple[Need, ...]:
    """What the optional rules need, gitops-drift first (as rules.yaml lists them)."""
    one = frozenset
    deletes = one({"delete"})
    changes = WRITES | deletes
    return (
        gitops_drift_need(),
        _need("kubectl-attach", Target("pods", subresources=one({"attach"}))),
        _need("ephemeral-debug", Target("pods", WRITES, one({"ephemeralcontainers"}))),
        _need("pod-log-access", Target("pods", one({"get"}), one({"log"}))),
        _need("hpa-drift", Target("horizontalpodautoscalers", WRITES, None)),
        _need("production-secret-access", Target("secrets", one({"get"}), None),
              namespace_contains="production"),
        _need("secret-deletion", Target("secrets", deletes, None)),
        _need("configmap-drift", Target("configmaps", changes, None)),
        _need("namespace-creation", Target("namespaces", one({"create"}), None)),
        # ignore_system: false: controllers' RBAC changes count too
        _need("rbac-change", *(Target(name, changes, None)
                               for name in ("clusterroles", "clusterrolebindings", "roles",
                                            "rolebindings")),
              actors=PEOPLE | {Actor.SYSTEM}),
        _need("node-access", Target("nodes", one({"patch", "update"}), None)),
        _need("ingress-drift", Target("ingresses", changes, None)),
        _need("network-policy-deletion", Target("networkpolicies", deletes, None)),
        _need("pv-deletion", Target("persistentvolumes", deletes, None)),
    )
