"""The cluster's starting state: what an administrator and the controllers create.

Applied by the bootstrap identity (`system:conformance-bootstrap`, in `system:masters`), an
internal actor, before the first scenario. The controller-manager runs, so Deployments,
StatefulSets and DaemonSets get real ReplicaSets and pods with real owner references; no
scheduler or kubelet runs, so the bootstrap binds one pod of each workload to a Node whose
kubelet port nothing listens on (as the scheduler would) and reports it Running (as a
kubelet would). exec/attach/port-forward requests then pass authentication, authorization
and admission and fail reaching the kubelet, which is enough for them to be audited.
"""

from __future__ import annotations

from typing import Any

NAMESPACES = ("payments", "shop", "access-system", "healert-system")
NODE = "conformance-node"
PEOPLE = ("alice", "bob")        # developers in payments and shop
NO_RIGHTS = "eve"                # authenticated, bound to nothing
PROXY_NS, PROXY_SA = "access-system", "access-proxy"
DEPLOYER_SA = "deployer"         # a service account in payments that alice may impersonate
DEVELOPER_ROLE = "healert-conformance:developer"
IMPERSONATOR_ROLE = "healert-conformance:impersonator"
PROXY_ROLE = "healert-conformance:access-proxy"
# The agent's identity for reading the cluster (issue 24's cluster view): the service account
# the manifests give it, and the ClusterRole they will bind to it.
AGENT_NS, AGENT_SA = "healert-system", "healert-webhook"
AGENT_USER = f"system:serviceaccount:{AGENT_NS}:{AGENT_SA}"
AGENT_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{AGENT_NS}")
CLUSTER_VIEW_ROLE = "healert-webhook-cluster-view"
# What the cluster view caches: (API group, resources), with get, list and watch.
CLUSTER_VIEW_RESOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("", ("pods", "namespaces")),
    ("apps", ("replicasets", "deployments", "statefulsets", "daemonsets")),
    ("batch", ("jobs", "cronjobs")),
)
# What it caches but never reads by name (HPAs, for what each scales): list and watch.
CLUSTER_VIEW_LISTED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("autoscaling", ("horizontalpodautoscalers",)),
)


def _meta(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta.update(extra)
    return meta


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
                  "metadata": _meta(AGENT_SA, AGENT_NS)})
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
    items.extend(cluster_view_rbac())
    return items


def cluster_view_rbac() -> list[dict[str, Any]]:
    """The agent's ClusterRole for its cluster view (get/list/watch on exactly what it
    caches, list/watch only on what it never reads by name) and its binding to the
    agent's service account."""
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": _meta(CLUSTER_VIEW_ROLE),
            "rules": [_rule([group], list(resources), ["get", "list", "watch"])
                      for group, resources in CLUSTER_VIEW_RESOURCES]
            + [_rule([group], list(resources), ["list", "watch"])
               for group, resources in CLUSTER_VIEW_LISTED]}
    binding = _cluster_binding(CLUSTER_VIEW_ROLE, CLUSTER_VIEW_ROLE,
                               {"kind": "ServiceAccount", "name": AGENT_SA,
                                "namespace": AGENT_NS})
    return [role, binding]


def _cluster_binding(name: str, role: str, subject: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": _meta(name), "subjects": [subject],
            "roleRef": {"kind": "ClusterRole", "name": role,
                        "apiGroup": "rbac.authorization.k8s.io"}}


# The workloads whose pods the scenarios act on: (namespace, kind, name). The bootstrap binds
# one pod of each to NODE and reports it Running (`ControlPlane.run_pod`).
RUNNING_WORKLOADS: tuple[tuple[str, str, str], ...] = (
    ("payments", "Deployment", "payments-api"),
    ("payments", "StatefulSet", "postgres"),
    ("payments", "DaemonSet", "nvidia-dcgm"),
    ("shop", "Deployment", "checkout"),
)
IMAGE = "registry.invalid/conformance/app:1"


def pod_template(labels: dict[str, str]) -> dict[str, Any]:
    """A one-container pod template (nothing will ever pull its image)."""
    return {"metadata": {"labels": labels}, "spec": {"containers": [
        {"name": "main", "image": IMAGE, "ports": [{"containerPort": 8080}]}]}}


def deployment(namespace: str, name: str, *, labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None,
               pod_labels: dict[str, str] | None = None, replicas: int = 1) -> dict[str, Any]:
    """A Deployment selecting `app: <name>`; its pods also carry `pod_labels`."""
    meta = _meta(name, namespace)
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    selector = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
        "replicas": replicas, "selector": {"matchLabels": selector},
        "template": pod_template({**selector, **(pod_labels or {})}),
    }}


def stateful_set(namespace: str, name: str, replicas: int = 1) -> dict[str, Any]:
    """A StatefulSet (pods `<name>-0`...); OnDelete, so its controller never replaces a pod."""
    selector = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(name, namespace),
            "spec": {"replicas": replicas, "serviceName": name,
                     "selector": {"matchLabels": selector},
                     "updateStrategy": {"type": "OnDelete"},
                     "template": pod_template(selector)}}


def daemon_set(namespace: str, name: str,
               node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    """A DaemonSet: one pod per Node (per Node with `node_selector`'s labels, if given)."""
    selector = {"app": name}
    template = pod_template(selector)
    if node_selector:
        template["spec"]["nodeSelector"] = node_selector
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(name, namespace),
            "spec": {"selector": {"matchLabels": selector}, "template": template}}


def job(namespace: str, name: str = "", *, generate_name: str = "") -> dict[str, Any]:
    """A one-pod Job, named or with `metadata.generateName`; its pod never runs."""
    meta = _meta(name, namespace) if name else {"generateName": generate_name,
                                                 "namespace": namespace}
    template = pod_template({})
    template["spec"]["restartPolicy"] = "Never"
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
            "spec": {"backoffLimit": 0, "template": template}}


def cron_job(namespace: str, name: str, schedule: str = "0 0 1 1 *") -> dict[str, Any]:
    """A CronJob (by default due once a year: its Jobs are made by hand with
    `kubectl create job --from=cronjob/<name>`)."""
    spec = job(namespace, name)["spec"]
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": _meta(name, namespace),
            "spec": {"schedule": schedule, "jobTemplate": {"spec": spec}}}


def node(name: str, kubelet_port: int, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Node object with no kubelet behind it (its kubelet port answers nothing), with
    the Ready status a kubelet would report."""
    meta = _meta(name)
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta,
            "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
                       "conditions": [{"type": "Ready", "status": "True",
                                       "reason": "KubeletReady"}]}}


ARGO_TRACKING = "argocd.argoproj.io/tracking-id"


def workloads() -> list[dict[str, Any]]:
    """The workloads, Secrets and ConfigMaps the scenarios act on."""
    items: list[dict[str, Any]] = [deployment("payments", "payments-api")]
    items.append(deployment(
        "shop", "checkout", labels={"app.kubernetes.io/name": "checkout"},
        annotations={ARGO_TRACKING: "shop:apps/Deployment:shop/checkout"},
        pod_labels={"backstage.io/kubernetes-id": "shop-checkout"}))
    items.append(stateful_set("payments", "postgres"))
    items.append(daemon_set("payments", "nvidia-dcgm"))
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
