"""The cluster's starting state: what controllers and an administrator would have created.

Applied by the bootstrap identity (`system:conformance-bootstrap`, in `system:masters`), an
internal actor, before the first scenario. Without a controller-manager nothing creates the
`default` service accounts, ReplicaSets or pods, so they are written here; pods are bound to
a Node whose kubelet port nothing listens on, so exec/attach/port-forward requests pass
authentication, authorization and admission and then fail reaching the kubelet, which is
enough for them to be audited.
"""

from __future__ import annotations

from typing import Any

NAMESPACES = ("payments", "shop", "access-system")
NODE = "conformance-node"
PEOPLE = ("alice", "bob")        # developers in payments and shop
NO_RIGHTS = "eve"                # authenticated, bound to nothing
PROXY_NS, PROXY_SA = "access-system", "access-proxy"
DEPLOYER_SA = "deployer"         # a service account in payments that alice may impersonate
DEVELOPER_ROLE = "healert-conformance:developer"
IMPERSONATOR_ROLE = "healert-conformance:impersonator"
PROXY_ROLE = "healert-conformance:access-proxy"
FAKE_UID = "00000000-0000-4000-8000-{:012d}"


def _meta(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta.update(extra)
    return meta


def _owner(kind: str, name: str, number: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": kind, "name": name, "controller": True,
            "blockOwnerDeletion": True, "uid": FAKE_UID.format(number)}


def _rule(groups: list[str], resources: list[str], verbs: list[str],
          names: list[str] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"apiGroups": groups, "resources": resources, "verbs": verbs}
    if names:
        rule["resourceNames"] = names
    return rule


def identities_and_rbac() -> list[dict[str, Any]]:
    """Namespaces, service accounts, roles and bindings (applied first)."""
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(ns)} for ns in NAMESPACES]
    for ns in ("default", *NAMESPACES):
        items.append({"apiVersion": "v1", "kind": "ServiceAccount",
                      "metadata": _meta("default", ns)})
    items.append({"apiVersion": "v1", "kind": "ServiceAccount",
                  "metadata": _meta(PROXY_SA, PROXY_NS)})
    items.append({"apiVersion": "v1", "kind": "ServiceAccount",
                  "metadata": _meta(DEPLOYER_SA, "payments")})
    rw = ["get", "list", "watch", "create", "update", "patch", "delete"]
    items.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                  "metadata": _meta(DEVELOPER_ROLE), "rules": [
                      _rule([""], ["pods", "pods/exec", "pods/attach", "pods/portforward",
                                   "pods/ephemeralcontainers", "pods/log", "configmaps"], rw),
                      _rule([""], ["secrets"], ["get", "list"]),
                      _rule(["apps"], ["deployments", "deployments/scale", "replicasets"], rw),
                  ]})
    subjects = [{"kind": "User", "name": p, "apiGroup": "rbac.authorization.k8s.io"}
                for p in PEOPLE]
    for ns in ("payments", "shop"):
        bound = list(subjects)
        if ns == "payments":
            bound.append({"kind": "ServiceAccount", "name": DEPLOYER_SA, "namespace": ns})
        items.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                      "metadata": _meta("developers", ns), "subjects": bound,
                      "roleRef": {"kind": "ClusterRole", "name": DEVELOPER_ROLE,
                                  "apiGroup": "rbac.authorization.k8s.io"}})
    items.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                  "metadata": _meta(IMPERSONATOR_ROLE), "rules": [
                      _rule([""], ["users"], ["impersonate"], ["bob"]),
                      _rule([""], ["serviceaccounts"], ["impersonate"], [DEPLOYER_SA]),
                  ]})
    items.append(_cluster_binding("alice-impersonates", IMPERSONATOR_ROLE,
                                  {"kind": "User", "name": "alice",
                                   "apiGroup": "rbac.authorization.k8s.io"}))
    items.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                  "metadata": _meta(PROXY_ROLE), "rules": [
                      _rule([""], ["users", "groups"], ["impersonate"]),
                  ]})
    items.append(_cluster_binding(PROXY_ROLE, PROXY_ROLE,
                                  {"kind": "ServiceAccount", "name": PROXY_SA,
                                   "namespace": PROXY_NS}))
    return items


def _cluster_binding(name: str, role: str, subject: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": _meta(name), "subjects": [subject],
            "roleRef": {"kind": "ClusterRole", "name": role,
                        "apiGroup": "rbac.authorization.k8s.io"}}


# Pods as controllers would have made them: (namespace, name, owner kind, owner, labels).
PODS: tuple[tuple[str, str, str, str, dict[str, str]], ...] = (
    ("payments", "payments-api-7d9f8b6c4d-xkj2p", "ReplicaSet", "payments-api-7d9f8b6c4d", {}),
    ("payments", "postgres-0", "StatefulSet", "postgres", {}),
    ("payments", "nvidia-dcgm-x7k2p", "DaemonSet", "nvidia-dcgm", {}),
    ("shop", "checkout-7b9c5d4f8-q2w8z", "ReplicaSet", "checkout-7b9c5d4f8",
     {"backstage.io/kubernetes-id": "shop-checkout"}),
)


def pod(namespace: str, name: str, owner_kind: str, owner: str, *, labels: dict[str, str],
        number: int) -> dict[str, Any]:
    """A pod bound to the conformance node, owned like a controller's pod."""
    meta = _meta(name, namespace, ownerReferences=[_owner(owner_kind, owner, number)])
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {
        "nodeName": NODE,
        "containers": [{"name": "main", "image": "registry.invalid/conformance/app:1",
                        "ports": [{"containerPort": 8080}]}],
    }}


def deployment(namespace: str, name: str, *, labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A one-replica Deployment; nothing will run it."""
    meta = _meta(name, namespace)
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    selector = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
        "replicas": 1, "selector": {"matchLabels": selector},
        "template": {"metadata": {"labels": selector}, "spec": {"containers": [
            {"name": "main", "image": "registry.invalid/conformance/app:1"}]}},
    }}


ARGO_TRACKING = "argocd.argoproj.io/tracking-id"


def workloads(kubelet_port: int) -> list[dict[str, Any]]:
    """The node, pods, Deployments, Secrets and ConfigMaps the scenarios act on."""
    items: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Node", "metadata": _meta(NODE),
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                   "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}}},
    }]
    for number, (ns, name, kind, owner, labels) in enumerate(PODS, start=1):
        items.append(pod(ns, name, kind, owner, labels=labels, number=number))
    items.append(deployment("payments", "payments-api"))
    items.append(deployment(
        "shop", "checkout", labels={"app.kubernetes.io/name": "checkout"},
        annotations={ARGO_TRACKING: "shop:apps/Deployment:shop/checkout"}))
    for ns, name in (("payments", "payments-db"), ("shop", "checkout-stripe")):
        items.append({"apiVersion": "v1", "kind": "Secret", "metadata": _meta(name, ns),
                      "type": "Opaque", "stringData": {"password": "not-a-real-secret"}})
    items.append({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": _meta("app-config", "payments"), "data": {"mode": "test"}})
    return items


GITOPS_MANAGER = "argocd-controller"


def gitops_owned() -> list[dict[str, Any]]:
    """A Deployment whose fields Argo CD's controller manages (server-side apply as
    `argocd-controller`): ownership shows in metadata.managedFields only."""
    return [deployment("payments", "ledger")]


def running_status() -> dict[str, Any]:
    """A pod status a kubelet would report for a running single-container pod."""
    return {"status": {"phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": [{
                           "name": "main", "ready": True, "restartCount": 0,
                           "image": "registry.invalid/conformance/app:1", "imageID": "",
                           "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}


def as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    """A v1 List of `items`, the shape `kubectl apply -f` reads."""
    return {"apiVersion": "v1", "kind": "List", "items": items}
