"""Which Backstage catalog entity a Kubernetes object belongs to.

The workload name comes, in order of preference, from the object's labels
(`backstage.io/kubernetes-id`, `app.kubernetes.io/name`), its controlling owner reference,
or its name with the suffixes Kubernetes generates removed — only for the kinds Kubernetes
generates names for, and only when the suffix uses the generated-name alphabet, so a
Deployment called `payments-gateway-proxy` keeps its name.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

# k8s.io/apimachinery/pkg/util/rand: consonants and digits that cannot spell words.
_ALPHA = "[bcdfghjklmnpqrstvwxz2456789]"
_DEPLOYMENT_POD = re.compile(rf"^(.+)-{_ALPHA}{{1,10}}-{_ALPHA}{{5}}$")
_OWNED_POD = re.compile(rf"^(.+)-{_ALPHA}{{5}}$")
_STATEFUL_POD = re.compile(r"^(.+)-\d+$")
_REPLICASET = re.compile(rf"^(.+)-{_ALPHA}{{1,10}}$")
# A CronJob's Job is `<cronjob>-<scheduled time in minutes>`: 8+ digits since 1989.
_CRONJOB_JOB = re.compile(r"^(.+)-\d{8,}$")
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_.-]+")
_NOT_NAMESPACE = re.compile(r"[^a-zA-Z0-9_-]+")

LABEL_KEYS = ("backstage.io/kubernetes-id", "app.kubernetes.io/name")
MAX_ENTITY_REF = 200
KIND = "component"


def _strip(pattern: re.Pattern[str], name: str) -> str | None:
    found = pattern.match(name)
    return found.group(1) if found else None


def workload_from_name(resource: str | None, name: str) -> str:
    """Remove the suffixes Kubernetes generates for objects of `resource` named `name`."""
    if resource == "pods":
        base = _strip(_DEPLOYMENT_POD, name)
        if base is not None:
            return base
        owner = _strip(_OWNED_POD, name)
        if owner is not None:  # DaemonSet or Job pod; a CronJob's Job adds minutes too
            return _strip(_CRONJOB_JOB, owner) or owner
        return _strip(_STATEFUL_POD, name) or name
    if resource == "replicasets":
        return _strip(_REPLICASET, name) or name
    if resource == "jobs":
        return _strip(_CRONJOB_JOB, name) or name
    return name


_OWNER_RESOURCE = {"ReplicaSet": "replicasets", "Job": "jobs"}


def _owner_workload(owners: Any) -> str | None:
    if not isinstance(owners, list):
        return None
    chosen = None
    for owner in owners:
        if isinstance(owner, dict) and isinstance(owner.get("name"), str) and owner["name"]:
            if owner.get("kind") == "Node":  # mirror pods: the node is not the workload
                continue
            if chosen is None or owner.get("controller") is True:
                chosen = owner
            if owner.get("controller") is True:
                break
    if chosen is None:
        return None
    return workload_from_name(_OWNER_RESOURCE.get(chosen.get("kind", "")), chosen["name"])


def object_metadata(event: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The kind and metadata of the object the event carries (response first)."""
    for key in ("responseObject", "requestObject"):
        obj = event.get(key)
        if isinstance(obj, dict) and obj.get("kind") != "Status":
            meta = obj.get("metadata")
            if isinstance(meta, dict):
                kind = obj.get("kind")
                return (kind if isinstance(kind, str) else ""), meta
    return None


# Kinds whose names Kubernetes generates from an owner's name.
_GENERATED_KIND = {"pods": "Pod", "replicasets": "ReplicaSet", "jobs": "Job"}


def workload_name(resource: str | None, name: str,
                  carried: tuple[str, dict[str, Any]] | None) -> str:
    """The workload an object belongs to: labels, then owners, then name rules.

    When the event carries the object itself and it has no owner that generates names,
    the name is kept whole (a hand-made pod `test-pod-1` stays itself).
    """
    if carried is not None:
        kind, meta = carried
        labels = meta.get("labels")
        if isinstance(labels, dict):
            for key in LABEL_KEYS:
                value = labels.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
        owner = _owner_workload(meta.get("ownerReferences"))
        if owner:
            return owner
        if not name and isinstance(meta.get("name"), str):
            name = meta["name"]
        # No usable owner (a Node owning a mirror pod does not count): nothing generated
        # the name.
        if name and kind == _GENERATED_KIND.get(resource or "") and meta.get("name") == name:
            return name
    return workload_from_name(resource, name) if name else ""


def entity_ref(namespace: str, workload: str) -> str:
    """A `component:<namespace>/<name>` reference the backend's pattern accepts.

    Characters the backend refuses become '-'; an over-long name is cut and given a short
    hash of the full name so that two long names stay distinct.
    """
    ns = _NOT_NAMESPACE.sub("-", namespace) or "default"
    ns = ns[:63]
    name = _NOT_NAME.sub("-", workload) or "unknown"
    room = MAX_ENTITY_REF - len(KIND) - len(ns) - 2
    if len(name) > room:
        digest = hashlib.blake2b(workload.encode("utf-8", "surrogatepass"),
                                 digest_size=4).hexdigest()
        name = name[: room - 9] + "-" + digest
    return f"{KIND}:{ns}/{name}"
