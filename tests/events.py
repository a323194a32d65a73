"""Realistic audit events written for the tests, shaped like the apiserver writes them."""

from __future__ import annotations

import itertools
from typing import Any

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
