"""Realistic audit events written for the tests, shaped like the apiserver writes them,
the webhook bodies built from them, and small rules files that match them."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from support.paths import SHARED_FIXTURES

_ids = itertools.count(1)


def audit_event(
    verb: str,
    resource: str | None,
    name: str = "",
    namespace: str = "",
    *,
    subresource: str | None = None,
    user: str = "oidc:jane@example.com",
    groups: tuple[str, ...] = ("oidc:platform", "system:authenticated"),
    stage: str = "ResponseComplete",
    code: int = 200,
    level: str = "Metadata",
    audit_id: str | None = None,
    received: str = "2026-11-26T10:15:30.123456Z",
    user_agent: str = "kubectl/v1.31.2 (linux/amd64) kubernetes/5864a46",
    **extra: Any,
) -> dict[str, Any]:
    """One audit.k8s.io/v1 Event as a webhook EventList item (no kind/apiVersion)."""
    path = f"/api/v1/namespaces/{namespace}/{resource}" if namespace else f"/api/v1/{resource}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    event: dict[str, Any] = {
        "level": level,
        "auditID": audit_id or f"5f0c5c3e-0000-4000-8000-{next(_ids):012d}",
        "stage": stage,
        "requestURI": path,
        "verb": verb,
        "user": {"username": user, "groups": list(groups)} if user else {},
        "sourceIPs": ["10.20.30.40"],
        "userAgent": user_agent,
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": received,
        "stageTimestamp": received,
        "annotations": {"authorization.k8s.io/decision": "allow" if code < 400 else "forbid",
                        "authorization.k8s.io/reason": ""},
    }
    if resource is not None:
        ref: dict[str, Any] = {"resource": resource}
        if namespace:
            ref["namespace"] = namespace
        if name:
            ref["name"] = name
        ref["apiVersion"] = "v1"
        if subresource:
            ref["subresource"] = subresource
        event["objectRef"] = ref
    event.update(extra)
    return go_ordered(event)


# The order Go writes an Event's fields in (its struct's declaration order).
GO_ORDER = ("kind", "apiVersion", "level", "auditID", "stage", "requestURI", "verb", "user",
            "impersonatedUser", "sourceIPs", "userAgent", "objectRef", "responseStatus",
            "requestObject", "responseObject", "requestReceivedTimestamp", "stageTimestamp",
            "annotations")


def go_ordered(event: dict[str, Any]) -> dict[str, Any]:
    """The event's fields in the order the apiserver writes them (others last)."""
    rank = {key: n for n, key in enumerate(GO_ORDER)}
    return {key: event[key] for key in sorted(event, key=lambda k: rank.get(k, len(rank)))}


def exec_ws(pod: str = "payments-api-7d9f8b6c4-xkj2p", ns: str = "payments",
            **kw: Any) -> dict[str, Any]:
    """kubectl >= 1.30: exec over WebSocket, audited as get pods/exec (ResponseStarted)."""
    kw.setdefault("stage", "ResponseStarted")
    return audit_event("get", "pods", pod, ns, subresource="exec", code=101, **kw)


def exec_spdy(pod: str = "payments-api-7d9f8b6c4-xkj2p", ns: str = "payments",
              **kw: Any) -> dict[str, Any]:
    """Older kubectl: exec over SPDY, audited as create pods/exec."""
    kw.setdefault("stage", "ResponseStarted")
    return audit_event("create", "pods", pod, ns, subresource="exec", code=101, **kw)


def port_forward(pod: str = "postgres-0", ns: str = "payments", **kw: Any) -> dict[str, Any]:
    """kubectl port-forward to a StatefulSet pod."""
    kw.setdefault("stage", "ResponseStarted")
    return audit_event("get", "pods", pod, ns, subresource="portforward", code=101, **kw)


def secret_get(name: str = "db-credentials", ns: str = "payments", code: int = 200,
               **kw: Any) -> dict[str, Any]:
    """kubectl get secret, allowed or forbidden."""
    return audit_event("get", "secrets", name, ns, code=code, **kw)


def deployment(name: str, ns: str, *, labels: dict[str, str] | None = None,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A Deployment object as it appears in responseObject."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": "3c1e-77", "generation": 4,
                            "labels": labels or {}, "annotations": annotations or {}}
    return {"kind": "Deployment", "apiVersion": "apps/v1", "metadata": meta,
            "spec": {"replicas": 3}, "status": {"replicas": 3}}


def bypass_patch(name: str = "payments-gateway-proxy", ns: str = "payments",
                 **kw: Any) -> dict[str, Any]:
    """kubectl annotate deployment ... policy.admission.k8s.io/bypass=true."""
    obj = deployment(name, ns, annotations={"policy.admission.k8s.io/bypass": "true"})
    return audit_event(
        "patch", "deployments", name, ns, level="RequestResponse",
        requestObject={"metadata": {"annotations": {"policy.admission.k8s.io/bypass": "true"}}},
        responseObject=obj, **kw)


# -- webhook batches ------------------------------------------------------------------

RULES = """\
rules:
  - name: kubectl-exec
    description: "{actor} opened a shell in {name}"
    severity: high
    ignore_system: true
    match:
      resource: pods
      subresource: exec
      verbs: [create, get]
  - name: port-forward
    description: "{actor} port-forwarded to {name}"
    severity: medium
    ignore_system: true
    match:
      resource: pods
      subresource: portforward
      verbs: [create, get]
"""


def two_rules(prefix: str) -> str:
    """A rules file whose two rules both match every exec: `<prefix>-one`, `<prefix>-two`."""
    return "rules:\n" + "".join(
        f"  - name: {prefix}-{n}\n    severity: low\n    match:\n"
        f"      resource: pods\n      subresource: exec\n" for n in ("one", "two"))


def exec_event(i: int, *, sub: str = "exec", verb: str = "get", tag: str = "a",
               user: str = "alice@example.com", ns: str = "payments",
               pod: str = "payments-api-7d9f8b6c4-xkj2p", pad: int = 0) -> dict[str, Any]:
    """A kubectl exec (WebSocket era: verb get) or port-forward, as the webhook sends it;
    numbered: `i` makes its auditID and its request time (microseconds) its own."""
    stamp = f"2026-11-26T10:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z"
    extra: dict[str, Any] = {}
    if pad:  # RequestResponse-sized events: the object travels along
        extra = {"level": "RequestResponse",
                 "responseObject": {"kind": "Status", "blob": "x" * pad}}
    return audit_event(
        verb, "pods", pod, ns, subresource=sub, user=user,
        groups=("oidc:developers", "system:authenticated"), code=101,
        audit_id=f"{tag}-{i:08d}-4c1d-9a3e-5b6f7d8e9f00", received=stamp,
        user_agent="kubectl/v1.31.2 (linux/amd64)",
        requestURI=f"/api/v1/namespaces/{ns}/pods/{pod}/{sub}?command=sh&stdin=true&tty=true",
        **extra)


def replica(i: int) -> str:
    """The 5-character suffix, in Kubernetes' generated-name alphabet, of replica `i`."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(alphabet[i // len(alphabet) ** n % len(alphabet)] for n in range(5))


def noise_event(i: int) -> dict[str, Any]:
    """A kubelet renewing its lease: the bulk of real audit traffic, matching no rule."""
    return {
        "level": "Metadata", "auditID": f"n-{i:08d}", "stage": "ResponseComplete",
        "requestURI": f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-{i}",
        "verb": "update", "user": {"username": f"system:node:node-{i % 7}"},
        "objectRef": {"resource": "leases", "namespace": "kube-node-lease",
                      "name": f"node-{i % 7}", "apiGroup": "coordination.k8s.io"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": "2026-11-26T10:00:00.000000Z",
    }


def fixture_events() -> list[Any]:
    """Every event in the shared fixtures (JSON lines and single-event files), as items.

    Webhook items carry no kind/apiVersion, so those are dropped; the malformed fixture
    (`{"kind": 0}`) stays in: a bad item must not fail its batch.
    """
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_FIXTURES}")
    events: list[Any] = []
    for path in sorted(SHARED_FIXTURES.rglob("*")):
        if path.suffix not in {".json", ".log", ".ndjson"}:
            continue
        text = path.read_text(encoding="utf-8")
        try:
            docs = [orjson.loads(text)]
        except orjson.JSONDecodeError:
            docs = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        for doc in docs:
            if isinstance(doc, dict) and "auditID" in doc:
                doc.pop("kind", None)
                doc.pop("apiVersion", None)
            events.append(doc)
    return events


def event_list(items: list[Any]) -> bytes:
    """An EventList body exactly as the apiserver sends it; items are events, or their
    JSON already (bytes), which goes in as it is."""
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                         "metadata": {}, "items": [orjson.Fragment(item) if isinstance(
                             item, bytes) else item for item in items]})


def batch_of_400(tag: str = "a") -> tuple[list[Any], int]:
    """400 items: the fixtures, 100 exec/port-forward by people, kubelet noise.

    Returns the items and how many of them are people's exec/port-forward (all detected).
    """
    items = fixture_events()
    # Each into a pod of its own: SPDY sessions of one person on one pod in the same ten
    # seconds are one attempt (kubectl's fallback), and these are a hundred.
    mine = [exec_event(i, sub="exec" if i % 2 else "portforward", verb="get" if i % 3 else
                       "create", tag=tag, pod=f"payments-api-7d9f8b6c4-{replica(i)}")
            for i in range(100)]
    items += mine
    items += [noise_event(i) for i in range(400 - len(items))]
    assert len(items) == 400
    return items, len(mine)


# -- identities, objects and requests for the detection tests -------------------------

def service_account(ns: str, name: str) -> dict[str, Any]:
    """`user` of a request authenticated with a service account token."""
    return {"username": f"system:serviceaccount:{ns}:{name}",
            "uid": "0d9c6f1e-3b7a-4c52-9e41-7f2a6b8c1d05",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}",
                       "system:authenticated"]}


# Access proxies as they appear in `user`, each with the person it impersonates.
PROXIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "rancher": (
        service_account("cattle-impersonation-system", "cattle-impersonation-u-7gkmh"),
        {"username": "u-7gkmh", "groups": ["system:authenticated",
                                           "system:cattle:authenticated"]}),
    "teleport": (
        service_account("teleport-agent", "teleport-kube-agent"),
        {"username": "alice@example.com", "groups": ["developers", "system:authenticated"],
         "extra": {"teleport.dev/user": ["alice@example.com"]}}),
    "pinniped": (
        service_account("pinniped-concierge", "pinniped-concierge-impersonation-proxy"),
        {"username": "pinny@example.com", "groups": ["sre", "system:authenticated"],
         "extra": {"original-user-info.impersonation-proxy.concierge.pinniped.dev": ["{}"]}}),
    "kube-oidc-proxy": (
        service_account("kube-oidc-proxy", "kube-oidc-proxy"),
        {"username": "oidc:jane@example.com", "groups": ["oidc:platform",
                                                         "system:authenticated"],
         "extra": {"remote-client-ip": ["203.0.113.7"]}}),
}


def through_proxy(event: dict[str, Any], proxy: str) -> dict[str, Any]:
    """The same request sent through an access proxy: its account impersonates the person."""
    user, person = PROXIES[proxy]
    return go_ordered({**event, "user": user, "impersonatedUser": person})


def managed_field(manager: str, operation: str = "Apply", *, api_version: str = "apps/v1",
                  subresource: str | None = None) -> dict[str, Any]:
    """One `metadata.managedFields` entry as the apiserver writes it."""
    entry: dict[str, Any] = {"manager": manager, "operation": operation,
                             "apiVersion": api_version, "time": "2026-11-20T08:14:03Z",
                             "fieldsType": "FieldsV1",
                             "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}}}
    if subresource:
        entry["subresource"] = subresource
    return entry


def gitops_deployment(name: str, ns: str, tool: str) -> dict[str, Any]:
    """A Deployment as Argo CD (`argocd`) or Flux (`kustomize`, `helm`) leave it."""
    obj = deployment(name, ns, labels={"app.kubernetes.io/instance": name})
    meta = obj["metadata"]
    if tool == "argocd":
        meta["annotations"]["argocd.argoproj.io/tracking-id"] = \
            f"{name}:apps/Deployment:{ns}/{name}"
        meta["managedFields"] = [managed_field("argocd-controller")]
    elif tool == "kustomize":
        meta["labels"].update({"kustomize.toolkit.fluxcd.io/name": "apps",
                               "kustomize.toolkit.fluxcd.io/namespace": "flux-system"})
        meta["managedFields"] = [managed_field("kustomize-controller")]
    elif tool == "helm":
        meta["labels"].update({"helm.toolkit.fluxcd.io/name": name,
                               "helm.toolkit.fluxcd.io/namespace": ns,
                               "app.kubernetes.io/managed-by": "Helm"})
        meta["managedFields"] = [managed_field("helm-controller", "Update")]
    else:
        raise ValueError(tool)
    meta["managedFields"].append(managed_field("kube-controller-manager", "Update",
                                               subresource="status"))
    return obj


GITOPS_CONTROLLERS = {
    "argocd": (service_account("argocd", "argocd-application-controller"),
               "argocd-controller", "argocd-application-controller/v2.13.1 (linux/amd64)"),
    "kustomize": (service_account("flux-system", "kustomize-controller"),
                  "kustomize-controller", "kustomize-controller/v1.4.0"),
    "helm": (service_account("flux-system", "helm-controller"), "helm-controller",
             "helm-controller/v1.1.0"),
}


def workload_patch(obj: dict[str, Any], *, level: str = "RequestResponse",
                   patch: Any = None, field_manager: str = "kubectl-patch",
                   **kw: Any) -> dict[str, Any]:
    """`kubectl patch` (or a controller's apply) of a workload; the object travels back in
    responseObject at RequestResponse, the patch alone in requestObject."""
    meta = obj["metadata"]
    resource = obj["kind"].lower() + "s"
    event = audit_event("patch", resource, meta["name"], meta["namespace"], level=level, **kw)
    event["requestURI"] = (f"/apis/apps/v1/namespaces/{meta['namespace']}/{resource}/"
                           f"{meta['name']}?fieldManager={field_manager}")
    event["objectRef"]["apiGroup"] = "apps"
    if level in ("Request", "RequestResponse"):
        event["requestObject"] = patch if patch is not None else \
            {"spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "registry.example.com/app:hotfix-3"}]}}}}
    if level == "RequestResponse":
        event["responseObject"] = obj
    return go_ordered(event)


def pod_object(name: str, ns: str, *, generate_name: str | None = None,
               owners: list[dict[str, Any]] | None = None,
               labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A Pod as it appears in requestObject (name may be '') or responseObject."""
    meta: dict[str, Any] = {"namespace": ns}
    if name:
        meta["name"] = name
    if generate_name:
        meta["generateName"] = generate_name
    if labels:
        meta["labels"] = labels
    if owners:
        meta["ownerReferences"] = owners
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta,
            "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}}


def pod_create(obj: dict[str, Any], *, level: str = "RequestResponse",
               generated: str = "", **kw: Any) -> dict[str, Any]:
    """`create pods` at `level`. With generateName the name exists only once the apiserver
    made it: objectRef and requestObject lack it, responseObject has `generated`."""
    meta = obj["metadata"]
    name = meta.get("name", "")
    event = audit_event("create", "pods", name, meta["namespace"], level=level, code=201, **kw)
    if level in ("Request", "RequestResponse"):
        event["requestObject"] = obj
    if level == "RequestResponse":
        made = {**obj, "metadata": {**meta, "name": name or generated,
                                    "uid": "a1b2c3d4-0000-4000-8000-00000000beef"}}
        event["responseObject"] = made
    return event


def owner(kind: str, name: str, *, controller: bool | None = True,
          api_version: str = "apps/v1") -> dict[str, Any]:
    """An ownerReferences entry."""
    ref: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "name": name,
                           "uid": "7e1d2c3b-0000-4000-8000-0000000000aa"}
    if controller is not None:
        ref["controller"] = controller
        ref["blockOwnerDeletion"] = True
    return ref


def smuggling_event(pad: int = 0) -> dict[str, Any]:
    """A request no rule matches whose object holds, as structure, what ends one EventList
    item and starts the next, then a whole kubectl exec by someone, then the start of an
    event that ends where this one does.

    Split at `},{"level":"`, the body would yield pieces that each look like an event the
    apiserver wrote: the request's own head with a fake end, a person's exec that never
    happened, and a tail. Nothing here may come out as a friction event. `pad` bytes of
    string come before the fake boundaries (to put them where a large body is cut into
    groups).
    """
    stamp = "2026-11-26T10:00:00.000000Z"
    fake_end = {"a": {}, "requestReceivedTimestamp": stamp, "stageTimestamp": stamp}
    fake_exec = exec_event(9, tag="smuggled", user="bob@example.com")
    fake_start = {"level": "Metadata", "auditID": "smuggled-tail", "stage": "ResponseComplete",
                  "requestURI": "/api/v1/nodes", "verb": "list",
                  "user": {"username": "system:node:node-1"},
                  "responseStatus": {"metadata": {}, "code": 200}, "requestObject": {"y": 1}}
    event = audit_event("patch", "configmaps", "settings", "payments",
                        user="system:serviceaccount:payments:settings-writer",
                        level="Request")
    data: dict[str, Any] = {"pad": "p" * pad} if pad else {}
    data["x"] = [fake_end, fake_exec, fake_start]
    event["requestObject"] = {"data": data}
    return go_ordered(event)


def as_log_line(event: dict[str, Any]) -> bytes:
    """`event` as the apiserver writes it to its log: kind and apiVersion first, no newline."""
    return orjson.dumps({"kind": "Event", "apiVersion": "audit.k8s.io/v1", **event})
