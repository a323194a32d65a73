"""How the apiserver names resources and subresources in audit events, and how people
miswrite them (`pod`, `deploy`, `PolicyException`, `port-forward`): read by the rule
loader, which warns as it reads `resources`, and by the rule linter."""

from __future__ import annotations

# Names people write for resources and subresources, and what the apiserver writes instead.
_RESOURCE_FIXES = {
    "pod": "pods", "po": "pods", "secret": "secrets", "deployment": "deployments",
    "deploy": "deployments", "statefulset": "statefulsets", "sts": "statefulsets",
    "daemonset": "daemonsets", "ds": "daemonsets", "replicaset": "replicasets",
    "rs": "replicasets", "job": "jobs", "cronjob": "cronjobs", "cj": "cronjobs",
    "configmap": "configmaps", "cm": "configmaps", "namespace": "namespaces",
    "ns": "namespaces", "node": "nodes", "no": "nodes", "service": "services",
    "svc": "services", "ingress": "ingresses", "ing": "ingresses", "role": "roles",
    "rolebinding": "rolebindings", "clusterrole": "clusterroles",
    "clusterrolebinding": "clusterrolebindings", "serviceaccount": "serviceaccounts",
    "sa": "serviceaccounts", "persistentvolume": "persistentvolumes",
    "pv": "persistentvolumes", "persistentvolumeclaim": "persistentvolumeclaims",
    "pvc": "persistentvolumeclaims", "networkpolicy": "networkpolicies",
    "netpol": "networkpolicies", "horizontalpodautoscaler": "horizontalpodautoscalers",
    "hpa": "horizontalpodautoscalers", "endpoint": "endpoints", "event": "events",
    "ev": "events", "lease": "leases", "customresourcedefinition":
    "customresourcedefinitions", "crd": "customresourcedefinitions",
}
SUBRESOURCE_FIXES = {
    "port-forward": "portforward", "port_forward": "portforward", "logs": "log",
    "ephemeral-containers": "ephemeralcontainers", "ephemeralcontainer":
    "ephemeralcontainers", "debug": "ephemeralcontainers", "evict": "eviction",
}

def resource_hint(resource: str) -> str | None:
    """How to write a resource the apiserver would audit, or None when it looks right.

    The apiserver writes the resource's plural in lower case (`pods`, a custom resource's
    `spec.names.plural`: `policyexceptions`), never the kind (`PolicyException`)."""
    if "/" in resource:
        base, _, sub = resource.partition("/")
        return f"write resource: {base} and subresource: {sub}"
    lower = resource.lower()
    fix = _RESOURCE_FIXES.get(lower)
    if fix is None and lower == resource and lower.endswith("s"):
        return None
    return ("the apiserver writes the plural, lower-case name (did you mean "
            f"{fix or plural(lower)!r}?)")


def plural(name: str) -> str:
    """The plural Kubernetes gives a lower-case kind (`policyexception` ->
    `policyexceptions`, `networkpolicy` -> `networkpolicies`); a name that already ends in
    `s` is taken as plural."""
    if name.endswith("s"):
        return name
    if name.endswith("y") and name[-2:-1] not in ("a", "e", "i", "o", "u", ""):
        return name[:-1] + "ies"
    if name.endswith(("x", "z", "ch", "sh")):
        return name + "es"
    return name + "s"
