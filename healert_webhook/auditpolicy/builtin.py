"""The apiserver's built-in resources, and the project's stance on a few of them.

Detection rules name resources by their plural only (`deployments`), as the audit event's
`objectRef.resource` does; an audit policy needs the API group as well. This table gives
the group, the scope and the subresources of the built-in resources of Kubernetes 1.37
(alpha-only APIs left out), with the aggregator's `apiservices` and the extension
server's `customresourcedefinitions`; and the groups of a few custom resources of the
tools detection is about (Argo CD, Flux, Kyverno, Gatekeeper). A resource it does not
know is a custom resource whose group only its author knows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    """One built-in resource: where it lives and what hangs off it."""

    group: str
    name: str
    namespaced: bool
    subresources: tuple[str, ...] = ()


def _table() -> tuple[Resource, ...]:
    core, apps, batch = "", "apps", "batch"
    rbac = "rbac.authorization.k8s.io"
    admission = "admissionregistration.k8s.io"
    ns, cluster = True, False
    return (
        Resource(core, "bindings", ns),
        Resource(core, "componentstatuses", cluster),
        Resource(core, "configmaps", ns),
        Resource(core, "endpoints", ns),
        Resource(core, "events", ns),
        Resource(core, "limitranges", ns),
        Resource(core, "namespaces", cluster, ("finalize", "status")),
        Resource(core, "nodes", cluster, ("proxy", "status")),
        Resource(core, "persistentvolumeclaims", ns, ("status",)),
        Resource(core, "persistentvolumes", cluster, ("status",)),
        Resource(core, "pods", ns, ("attach", "binding", "ephemeralcontainers", "eviction",
                                    "exec", "log", "portforward", "proxy", "resize",
                                    "status")),
        Resource(core, "podtemplates", ns),
        Resource(core, "replicationcontrollers", ns, ("scale", "status")),
        Resource(core, "resourcequotas", ns, ("status",)),
        Resource(core, "secrets", ns),
        Resource(core, "serviceaccounts", ns, ("token",)),
        Resource(core, "services", ns, ("proxy", "status")),
        Resource(admission, "mutatingadmissionpolicies", cluster),
        Resource(admission, "mutatingadmissionpolicybindings", cluster),
        Resource(admission, "mutatingwebhookconfigurations", cluster),
        Resource(admission, "validatingadmissionpolicies", cluster, ("status",)),
        Resource(admission, "validatingadmissionpolicybindings", cluster),
        Resource(admission, "validatingwebhookconfigurations", cluster),
        Resource("apiextensions.k8s.io", "customresourcedefinitions", cluster, ("status",)),
        Resource("apiregistration.k8s.io", "apiservices", cluster, ("status",)),
        Resource(apps, "controllerrevisions", ns),
        Resource(apps, "daemonsets", ns, ("status",)),
        Resource(apps, "deployments", ns, ("scale", "status")),
        Resource(apps, "replicasets", ns, ("scale", "status")),
        Resource(apps, "statefulsets", ns, ("scale", "status")),
        Resource("authentication.k8s.io", "selfsubjectreviews", cluster),
        Resource("authentication.k8s.io", "tokenreviews", cluster),
        Resource("authorization.k8s.io", "localsubjectaccessreviews", ns),
        Resource("authorization.k8s.io", "selfsubjectaccessreviews", cluster),
        Resource("authorization.k8s.io", "selfsubjectrulesreviews", cluster),
        Resource("authorization.k8s.io", "subjectaccessreviews", cluster),
        Resource("autoscaling", "horizontalpodautoscalers", ns, ("status",)),
        Resource(batch, "cronjobs", ns, ("status",)),
        Resource(batch, "jobs", ns, ("status",)),
        Resource("certificates.k8s.io", "certificatesigningrequests", cluster,
                 ("approval", "status")),
        Resource("coordination.k8s.io", "leases", ns),
        Resource("discovery.k8s.io", "endpointslices", ns),
        Resource("events.k8s.io", "events", ns),
        Resource("flowcontrol.apiserver.k8s.io", "flowschemas", cluster, ("status",)),
        Resource("flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations", cluster,
                 ("status",)),
        Resource("networking.k8s.io", "ingressclasses", cluster),
        Resource("networking.k8s.io", "ingresses", ns, ("status",)),
        Resource("networking.k8s.io", "ipaddresses", cluster),
        Resource("networking.k8s.io", "networkpolicies", ns),
        Resource("networking.k8s.io", "servicecidrs", cluster, ("status",)),
        Resource("node.k8s.io", "runtimeclasses", cluster),
        Resource("policy", "poddisruptionbudgets", ns, ("status",)),
        Resource(rbac, "clusterrolebindings", cluster),
        Resource(rbac, "clusterroles", cluster),
        Resource(rbac, "rolebindings", ns),
        Resource(rbac, "roles", ns),
        Resource("resource.k8s.io", "deviceclasses", cluster),
        Resource("resource.k8s.io", "resourceclaims", ns, ("status",)),
        Resource("resource.k8s.io", "resourceclaimtemplates", ns),
        Resource("resource.k8s.io", "resourceslices", cluster),
        Resource("scheduling.k8s.io", "priorityclasses", cluster),
        Resource("storage.k8s.io", "csidrivers", cluster),
        Resource("storage.k8s.io", "csinodes", cluster),
        Resource("storage.k8s.io", "csistoragecapacities", ns),
        Resource("storage.k8s.io", "storageclasses", cluster),
        Resource("storage.k8s.io", "volumeattachments", cluster, ("status",)),
        Resource("storage.k8s.io", "volumeattributesclasses", cluster),
    )


BUILTIN: tuple[Resource, ...] = _table()

# Custom resources of the tools detection rules are about (GitOps controllers, policy
# engines), by plural: a rule naming one of these means that tool's, so the policy can
# name its group and stay valid for apiservers that refuse `group: "*"`.
KNOWN_CUSTOM: dict[str, tuple[str, ...]] = {
    "applications": ("argoproj.io",),                     # Argo CD
    "applicationsets": ("argoproj.io",),
    "appprojects": ("argoproj.io",),
    "kustomizations": ("kustomize.toolkit.fluxcd.io",),   # Flux
    "helmreleases": ("helm.toolkit.fluxcd.io",),
    "gitrepositories": ("source.toolkit.fluxcd.io",),
    "ocirepositories": ("source.toolkit.fluxcd.io",),
    "helmrepositories": ("source.toolkit.fluxcd.io",),
    "policyexceptions": ("kyverno.io", "policies.kyverno.io"),  # Kyverno, both families
    "clusterpolicies": ("kyverno.io",),
    "configs": ("config.gatekeeper.sh",),                 # Gatekeeper
    "constrainttemplates": ("templates.gatekeeper.sh",),
}
_BY_NAME: dict[str, tuple[Resource, ...]] = {}
for _res in BUILTIN:
    _BY_NAME[_res.name] = (*_BY_NAME.get(_res.name, ()), _res)

# Every verb of a resource request.
RESOURCE_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete",
                  "deletecollection")
_READ_WRITE = ("get", "update", "patch")
# The verbs a subresource is requested with. Sessions are `get` from kubectl >= 1.30
# (WebSocket) and `create` from older clients; a proxy takes the HTTP method's verb.
_SUBRESOURCE_VERBS = {
    "approval": _READ_WRITE, "attach": ("get", "create"), "binding": ("create",),
    "ephemeralcontainers": _READ_WRITE, "eviction": ("create",), "exec": ("get", "create"),
    "finalize": ("update",), "log": ("get",), "portforward": ("get", "create"),
    "proxy": ("get", "create", "update", "patch", "delete"), "resize": _READ_WRITE,
    "scale": _READ_WRITE, "status": _READ_WRITE, "token": ("create",),
}
# Resources that are only ever created: reviews answer in the response, bindings bind.
_CREATE_ONLY = frozenset({"bindings", "localsubjectaccessreviews", "selfsubjectaccessreviews",
                          "selfsubjectreviews", "selfsubjectrulesreviews",
                          "subjectaccessreviews", "tokenreviews"})

# Requests whose bodies carry credentials: a Secret's data, a token request's token, a
# token review's token. Logged above Metadata, they copy secrets into the audit trail.
SECRET_MATERIAL: frozenset[tuple[str, str]] = frozenset({
    ("", "secrets"),
    ("", "serviceaccounts/token"),
    ("authentication.k8s.io", "tokenreviews"),
})
# What the generated policy never records above Metadata: the secret material above, and
# ConfigMaps, which often hold credentials in practice. A rule needing more of these is
# given Metadata (the generated policy says so), and `check` does not report it.
CAPPED: frozenset[tuple[str, str]] = SECRET_MATERIAL | {("", "configmaps")}

# High-volume traffic no detection rule is about, dropped for everyone even when a rule
# matches any resource: leader-election and node heartbeats (leases, lease candidates)
# and Kubernetes Events (written by every controller for every change they make).
NOISE: tuple[tuple[str, str], ...] = (
    ("", "events"),
    ("coordination.k8s.io", "leasecandidates"),
    ("coordination.k8s.io", "leases"),
    ("events.k8s.io", "events"),
)


def custom_groups(name: str) -> tuple[str, ...]:
    """The groups of a custom resource this table knows (KNOWN_CUSTOM), or ()."""
    return () if name in _BY_NAME else KNOWN_CUSTOM.get(name, ())


def lookup(name: str) -> tuple[Resource, ...]:
    """The built-in resources of that plural name (events lives in two groups), or ()."""
    return _BY_NAME.get(name, ())


def is_namespaced(group: str, name: str) -> bool:
    """Whether requests for that resource carry a namespace; custom ones are assumed to."""
    for res in _BY_NAME.get(name, ()):
        if res.group == group:
            return res.namespaced
    return True


def subresources(group: str, name: str) -> tuple[str, ...]:
    """The known subresources of a built-in resource; () for an unknown one."""
    for res in _BY_NAME.get(name, ()):
        if res.group == group:
            return res.subresources
    return ()


def verbs(group: str, resource: str, subresource: str = "") -> tuple[str, ...]:
    """The verbs such a request can have (every verb for what this table does not know)."""
    if subresource:
        return _SUBRESOURCE_VERBS.get(subresource, RESOURCE_VERBS)
    if resource in _CREATE_ONLY and any(r.group == group for r in _BY_NAME.get(resource, ())):
        return ("create",)
    return RESOURCE_VERBS


def is_capped(group: str, resource: str, subresource: str = "") -> bool:
    """Whether the generated policy keeps this request at Metadata or below."""
    combined = f"{resource}/{subresource}" if subresource else resource
    return (group, combined) in CAPPED


def is_secret_material(group: str, resource: str, subresource: str = "") -> bool:
    """Whether a body of this request holds credentials."""
    combined = f"{resource}/{subresource}" if subresource else resource
    return (group, combined) in SECRET_MATERIAL
