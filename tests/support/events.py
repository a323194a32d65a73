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
        ref: dict[str, Any] = {"resource": resource, "apiVersion": "v1"}
        if namespace:
            ref["namespace"] = namespace
        if name:
            ref["name"] = name
        if subresource:
            ref["subresource"] = subresource
        event["objectRef"] = ref
    event.update(extra)
    return event


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
    """A kubectl exec (WebSocket era: verb get) or port-forward, as the webhook sends it."""
    event: dict[str, Any] = {
        "level": "Metadata", "auditID": f"{tag}-{i:08d}-4c1d-9a3e-5b6f7d8e9f00",
        "stage": "ResponseComplete",
        "requestURI": f"/api/v1/namespaces/{ns}/pods/{pod}/{sub}?command=sh&stdin=true&tty=true",
        "verb": verb,
        "user": {"username": user, "groups": ["oidc:developers", "system:authenticated"]},
        "sourceIPs": ["10.20.30.40"], "userAgent": "kubectl/v1.31.2 (linux/amd64)",
        "objectRef": {"resource": "pods", "namespace": ns, "name": pod, "apiVersion": "v1",
                      "subresource": sub},
        "responseStatus": {"metadata": {}, "code": 101},
        "requestReceivedTimestamp": f"2026-11-26T10:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z",
        "stageTimestamp": f"2026-11-26T10:{i // 60 % 60:02d}:{i % 60:02d}.{i:06d}Z",
        "annotations": {"authorization.k8s.io/decision": "allow",
                        "authorization.k8s.io/reason": ""},
    }
    if pad:  # RequestResponse-sized events: the object travels along
        event["level"] = "RequestResponse"
        event["responseObject"] = {"kind": "Status", "blob": "x" * pad}
    return event


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
    """An EventList body exactly as the apiserver sends it."""
    return orjson.dumps({"kind": "EventList", "apiVersion": "audit.k8s.io/v1",
                         "metadata": {}, "items": items})


def batch_of_400(tag: str = "a") -> tuple[list[Any], int]:
    """400 items: the fixtures, 100 exec/port-forward by people, kubelet noise.

    Returns the items and how many of them are people's exec/port-forward (all detected).
    """
    items = fixture_events()
    mine = [exec_event(i, sub="exec" if i % 2 else "portforward", verb="get" if i % 3 else
                       "create", tag=tag) for i in range(100)]
    items += mine
    items += [noise_event(i) for i in range(400 - len(items))]
    assert len(items) == 400
    return items, len(mine)
