"""Which Backstage catalog entity a Kubernetes object belongs to.

The workload is, in order:

1. the label `backstage.io/kubernetes-id`, then `app.kubernetes.io/name`, of the object the
   event carries (responseObject, else requestObject);
2. that object's controlling owner reference, else its only owner reference (a Node,
   which owns static pods' mirrors, is not a workload and does not count);
3. the object's name with the suffixes Kubernetes generates removed, only for the kinds
   it generates names for (pods, replicasets, jobs) and only when the suffix uses the
   generated-name alphabet. `metadata.generateName`, when the carried object has it, is
   that name with its suffix already known.

Step 3 is the same whether or not the event carries the object, so a pod's create and an
exec into it are charged alike at every audit level. An event that names no object at
all (a Metadata-level create whose name the apiserver generates) has no workload.

This is what the event alone tells. With a view of the cluster, detection asks
cluster/resolve.py first and comes here only when the view cannot answer (`Entity`
says which way the name was found). The label keys are a setting; LABEL_KEYS are
their default.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

# k8s.io/apimachinery/pkg/util/rand: consonants and digits that cannot spell words.
_ALPHA = "[bcdfghjklmnpqrstvwxz2456789]"
# A Deployment's pod: <deployment>-<pod-template-hash>-<5>. The hash is a 32-bit number
# written in the alphabet above, 6 to 10 characters long, so a shorter middle part
# (`nvidia-dcgm-x7k2p`, `kube-flannel-ds-4x8kz`) belongs to the name of a DaemonSet or
# Job, whose pods are <owner>-<5>.
_DEPLOYMENT_POD = re.compile(rf"(.+)-{_ALPHA}{{6,10}}-{_ALPHA}{{5}}", re.ASCII)
_OWNED_POD = re.compile(rf"(.+)-{_ALPHA}{{5}}", re.ASCII)
_STATEFUL_POD = re.compile(r"(.+)-[0-9]+", re.ASCII)
_REPLICASET = re.compile(rf"(.+)-{_ALPHA}{{6,10}}", re.ASCII)
# A CronJob's Job is `<cronjob>-<scheduled time in minutes>`: 8+ digits since 1989.
_CRONJOB_JOB = re.compile(r"(.+)-[0-9]{8,}", re.ASCII)
# The apiserver appends five characters of the alphabet to a generateName.
_GENERATED_SUFFIX = re.compile(rf"{_ALPHA}{{5}}", re.ASCII)
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_.-]+")
_NOT_NAMESPACE = re.compile(r"[^a-zA-Z0-9_-]+")

LABEL_KEYS = ("backstage.io/kubernetes-id", "app.kubernetes.io/name")
MAX_ENTITY_REF = 200
KIND = "component"
# Where an entity ref's namespace comes from: the object's Kubernetes namespace, or
# ENTITY_NAMESPACE for every entity (CATALOG_FIXED).
CATALOG_NAMESPACES = ("kubernetes", "entity-namespace")
CATALOG_FIXED = "entity-namespace"
# How an entity was found: a label (on the object, up its owners or on a controller's
# pod template), the top owner's name, the namespace's declared entity, the name rules.
METHODS = ("label", "owner", "namespace", "name")
METHOD_TEXT = {"label": "label", "owner": "owner", "namespace": "namespace",
               "name": "name rules"}


class Workload(NamedTuple):
    """A workload name ('' when the event names nothing) and how it was found."""

    name: str
    how: str


class Entity(NamedTuple):
    """The entity's name ('' when the event names nothing), the way it was found (one of
    METHODS) and a sentence saying how, for explanations (as detection words it:
    `<way> (<why not the view>): <how>`)."""

    name: str
    method: str
    how: str


def _strip(pattern: re.Pattern[str], name: str) -> str | None:
    found = pattern.fullmatch(name)
    return found.group(1) if found else None


def _pod_owner(name: str) -> tuple[str, str]:
    """The owner a pod's name was generated from, and which kind of owner that is."""
    base = _strip(_DEPLOYMENT_POD, name)
    if base is not None:
        return base, "name, as a Deployment's pod"
    owner = _strip(_OWNED_POD, name)
    if owner is not None:  # a DaemonSet's or a Job's; a CronJob's Job adds minutes too
        cronjob = _strip(_CRONJOB_JOB, owner)
        return (cronjob, "name, as a CronJob's pod") if cronjob \
            else (owner, "name, as a DaemonSet's or Job's pod")
    base = _strip(_STATEFUL_POD, name)
    if base is not None:
        return base, "name, as a StatefulSet's pod"
    return name, "name"


def _generated_base(resource: str | None, base: str) -> tuple[str, str]:
    """The workload of an object whose generated name starts with `base`.

    A pod's base is its owner's name (a ReplicaSet's, a DaemonSet's or a Job's), so the
    owner's own generated part is removed as well.
    """
    if resource == "pods":
        rs = _strip(_REPLICASET, base)
        if rs is not None:
            return rs, "generateName, as a Deployment's pod"
        cronjob = _strip(_CRONJOB_JOB, base)
        if cronjob is not None:
            return cronjob, "generateName, as a CronJob's pod"
    if resource == "jobs":
        cronjob = _strip(_CRONJOB_JOB, base)
        if cronjob is not None:
            return cronjob, "generateName, as a CronJob's Job"
    return base, "generateName"


def name_rules(resource: str | None, name: str) -> Workload:
    """Remove the suffixes Kubernetes generates for objects of `resource` named `name`."""
    if resource == "pods":
        base, how = _pod_owner(name)
        return Workload(base, how if base != name else "name")
    if resource == "replicasets":
        deployment = _strip(_REPLICASET, name)
        if deployment is not None:
            return Workload(deployment, "name, as a Deployment's ReplicaSet")
    if resource == "jobs":
        cronjob = _strip(_CRONJOB_JOB, name)
        if cronjob is not None:
            return Workload(cronjob, "name, as a CronJob's Job")
    return Workload(name, "name")


def workload_from_name(resource: str | None, name: str) -> str:
    """The workload for an object named `name` (the name rules alone)."""
    return name_rules(resource, name).name


_OWNER_RESOURCE = {"ReplicaSet": "replicasets", "Job": "jobs"}


def owner_reference(owners: Any) -> tuple[str, str] | None:
    """(kind, name) of the controlling owner, else of the only owner; None otherwise.

    References that are not objects with string `kind` and non-empty string `name` are
    unusable and ignored, as is a Node (the owner of a static pod's mirror).
    """
    if not isinstance(owners, list):
        return None
    usable: list[tuple[str, str]] = []
    for owner in owners:
        if not isinstance(owner, dict):
            continue
        kind, name = owner.get("kind"), owner.get("name")
        if not (isinstance(kind, str) and isinstance(name, str) and name) or kind == "Node":
            continue
        if owner.get("controller") is True:
            return kind, name
        usable.append((kind, name))
    return usable[0] if len(usable) == 1 else None


def _label(meta: dict[str, Any], keys: Sequence[str]) -> tuple[str, str] | None:
    labels = meta.get("labels")
    if isinstance(labels, dict):
        for key in keys:
            value = labels.get(key)
            if isinstance(value, str) and value.strip():
                return key, value.strip()
    return None


def _text(meta: dict[str, Any], key: str) -> str:
    value = meta.get(key)
    return value if isinstance(value, str) else ""


def resolve_workload(resource: str | None, name: str, meta: dict[str, Any] | None,
                     label_keys: Sequence[str] = LABEL_KEYS) -> Workload:
    """The workload of the object `name` of `resource` (see the module docstring).

    `meta` is the metadata of the object the event carries, if any; `label_keys` are
    tried in order. The result's name is '' when the event names no object at all.
    """
    return _resolve(resource, name, meta, label_keys)[0]


def entity_from_event(resource: str | None, name: str, meta: dict[str, Any] | None,
                      label_keys: Sequence[str] = LABEL_KEYS) -> Entity:
    """`resolve_workload`'s answer as an Entity: which way it was found, and how."""
    workload, method = _resolve(resource, name, meta, label_keys)
    return Entity(workload.name, method, workload.how)


def _resolve(resource: str | None, name: str, meta: dict[str, Any] | None,
             label_keys: Sequence[str]) -> tuple[Workload, str]:
    if meta is not None:
        label = _label(meta, label_keys)
        if label is not None:
            return Workload(label[1], f"label {label[0]} of the object the event carries"), \
                "label"
        owner = owner_reference(meta.get("ownerReferences"))
        if owner is not None:
            kind, owner_name = owner
            base = name_rules(_OWNER_RESOURCE.get(kind), owner_name).name
            return Workload(base, f"owner {kind} {owner_name} of the object the event "
                                  "carries"), "owner"
        name = name or _text(meta, "name")
        prefix = _text(meta, "generateName")
        # The apiserver ignores generateName when a name is given; trust it only when
        # the name is empty or is the prefix plus a generated suffix.
        if prefix and (not name or (name.startswith(prefix)
                                    and _GENERATED_SUFFIX.fullmatch(name[len(prefix):]))):
            base = prefix[:-1] if prefix.endswith("-") and len(prefix) > 1 else prefix
            return Workload(*_generated_base(resource, base)), "name"
    if not name:
        return Workload("", "no name"), "name"
    return name_rules(resource, name), "name"


def workload_name(resource: str | None, name: str,
                  meta: dict[str, Any] | None = None) -> str:
    """The workload's name alone ('' when the event names no object)."""
    return resolve_workload(resource, name, meta).name


def entity_ref(namespace: str, workload: str) -> str:
    """A `component:<namespace>/<name>` reference the backend's pattern accepts, written
    as Backstage's `stringifyEntityRef` writes it: lower case in every part.

    Characters the backend refuses become '-', as do the dots of a name "." or ".." (a URL
    path cannot carry those to GET /friction); an over-long name is cut and given a short
    hash of the full name so that two long names stay distinct.
    """
    ns = _NOT_NAMESPACE.sub("-", namespace.lower()) or "default"
    ns = ns[:63]
    lowered = workload.lower()
    name = _NOT_NAME.sub("-", lowered) or "unknown"
    if name in (".", ".."):  # a dot segment: GET /friction/<ref> could not name it
        name = name.replace(".", "-")
    room = MAX_ENTITY_REF - len(KIND) - len(ns) - 2
    if len(name) > room:
        digest = hashlib.blake2b(lowered.encode("utf-8", "surrogatepass"),
                                 digest_size=4).hexdigest()
        name = name[: room - 9] + "-" + digest
    return f"{KIND}:{ns}/{name}"
