"""What the view keeps of one object: a few fields of its metadata, shared where they repeat.

A record keeps what entity resolution and GitOps detection read, and nothing else:
namespace, name, uid, generateName, the labels and annotations whose keys were asked for
(the entity label keys, the GitOps labels and annotations), the owner references, and
the names of the field managers in `managedFields`; an autoscaler's record (`Scaler`) also
keeps what it scales. Strings that repeat across objects
(namespaces, label values, generateName prefixes, owner references, manager names) are
shared, so 100,000 pods of a few hundred workloads cost little more than their names and
uids (see docs/internals.md for the measured figure).
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Iterable
from typing import Any, NamedTuple, TypeVar

T = TypeVar("T", bound=Hashable)

# Bounds on what one object may make the view keep, whatever it carries.
MAX_OWNERS = 8
MAX_MANAGERS = 16
MAX_VALUE = 512  # characters of a kept label or annotation value
# Shared tuples are looked up in a table that is emptied when it grows past this, so it
# never outgrows the objects that use it (emptying only costs sharing, not correctness).
SHARE_LIMIT = 200_000


class Owner(NamedTuple):
    """One owner reference: what resolution follows up the chain."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool


class Meta:
    """The kept metadata of one object (immutable once built; replaced on every change)."""

    __slots__ = ("annotations", "deleted_at", "generate_name", "kind", "labels", "managers",
                 "name", "namespace", "owners", "template_labels", "uid")

    def __init__(self, kind: str, namespace: str, name: str, uid: str, generate_name: str,
                 *, labels: tuple[tuple[str, str], ...],
                 annotations: tuple[tuple[str, str], ...],
                 owners: tuple[Owner, ...], managers: tuple[str, ...],
                 template_labels: tuple[tuple[str, str], ...] = (),
                 deleted_at: float | None = None) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.generate_name = generate_name
        self.labels = labels
        self.annotations = annotations
        self.owners = owners
        self.managers = managers
        self.template_labels = template_labels
        self.deleted_at = deleted_at

    def __repr__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        gone = " (deleted)" if self.deleted_at is not None else ""
        return f"<{self.kind} {where}{gone}>"

    def label(self, key: str) -> str | None:
        """The value of a kept label, or None."""
        for found, value in self.labels:
            if found == key:
                return value
        return None

    def template_label(self, key: str) -> str | None:
        """The value of a kept label of a controller's pod template, or None."""
        for found, value in self.template_labels:
            if found == key:
                return value
        return None

    def annotation(self, key: str) -> str | None:
        """The value of a kept annotation, or None."""
        for found, value in self.annotations:
            if found == key:
                return value
        return None

    def controller(self) -> Owner | None:
        """The controlling owner, else the only owner (a Node, a static pod's, is none)."""
        only, usable = None, 0
        for owner in self.owners:  # no list built: this runs for every resolution
            if owner.kind == "Node":
                continue
            if owner.controller:
                return owner
            only, usable = owner, usable + 1
        return only if usable == 1 else None

    def up(self) -> Owner | None:
        """The reference resolution follows from this object: its controller."""
        return self.controller()

    def tombstone(self, when: float) -> Meta:
        """A copy marked deleted at `when` (monotonic seconds)."""
        return Meta(self.kind, self.namespace, self.name, self.uid, self.generate_name,
                    labels=self.labels, annotations=self.annotations, owners=self.owners,
                    managers=self.managers, template_labels=self.template_labels,
                    deleted_at=when)


class Scaler(Meta):
    """The record of an autoscaler (an HPA): a Meta and the object it scales.

    Resolution follows the scale target, not an owner reference. An HPA rarely has an
    owner; when it does (KEDA's ScaledObject, an operator's resource, a chart's wrapper)
    the owner says who manages the HPA, not which service it scales, and such an owner
    usually names the same workload as its own target. The team's entity is written on
    that workload, so the target wins; the owner is ignored for the entity.
    """

    __slots__ = ("target",)

    def __init__(self, meta: Meta, target: Owner) -> None:
        super().__init__(meta.kind, meta.namespace, meta.name, meta.uid, meta.generate_name,
                         labels=meta.labels, annotations=meta.annotations, owners=meta.owners,
                         managers=meta.managers, template_labels=meta.template_labels,
                         deleted_at=meta.deleted_at)
        self.target = target

    def up(self) -> Owner | None:
        """The scale target (see the class docstring)."""
        return self.target

    def tombstone(self, when: float) -> Meta:
        """A copy marked deleted at `when`, still knowing its target."""
        return Scaler(super().tombstone(when), self.target)


class Extractor:
    """Builds records from metadata as the apiserver sends it, sharing what repeats.

    Used by the view's own thread only (its tables are not locked).
    """

    def __init__(self, label_keys: Iterable[str], annotation_keys: Iterable[str]) -> None:
        self.label_keys = tuple(dict.fromkeys(label_keys))
        self.annotation_keys = tuple(dict.fromkeys(annotation_keys))
        self._shared: dict[Any, Any] = {}

    def share(self, value: T) -> T:
        """One copy of each equal tuple (owners, labels, managers) across records."""
        found = self._shared.get(value)
        if found is not None:
            return found  # type: ignore[no-any-return]
        if len(self._shared) >= SHARE_LIMIT:
            self._shared.clear()
        self._shared[value] = value
        return value

    def record(self, kind: str, metadata: Any, template: Any = None,
               target: Owner | None = None) -> Meta | None:
        """The record of an object of `kind` from its `metadata`; None without a name.

        `template` is the labels of a controller's pod template (see template_labels);
        `target` what an autoscaler scales (see scale_target): its record is a Scaler.
        """
        if not isinstance(metadata, dict):
            return None
        name = metadata.get("name")
        if not isinstance(name, str) or not name:
            return None
        meta = Meta(kind, _interned(metadata.get("namespace")), name,
                    _text(metadata.get("uid")), _interned(metadata.get("generateName")),
                    labels=self._pairs(metadata.get("labels"), self.label_keys),
                    annotations=self._pairs(metadata.get("annotations"), self.annotation_keys),
                    owners=self._owners(metadata.get("ownerReferences")),
                    managers=self._managers(metadata.get("managedFields")),
                    template_labels=self._pairs(template, self.label_keys))
        return meta if target is None else Scaler(meta, target)

    def _pairs(self, mapping: Any, keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        if not isinstance(mapping, dict) or not mapping:
            return ()
        found = []
        for key in keys:
            value = mapping.get(key)
            if isinstance(value, str):
                found.append((key, sys.intern(value[:MAX_VALUE])))
        return self.share(tuple(found)) if found else ()

    def _owners(self, refs: Any) -> tuple[Owner, ...]:
        if not isinstance(refs, list) or not refs:
            return ()
        owners = []
        for ref in refs[:MAX_OWNERS]:
            if not isinstance(ref, dict):
                continue
            kind, name = ref.get("kind"), ref.get("name")
            if not (isinstance(kind, str) and kind and isinstance(name, str) and name):
                continue
            owners.append(Owner(_interned(ref.get("apiVersion")), sys.intern(kind),
                                sys.intern(name), _interned(ref.get("uid")),
                                ref.get("controller") is True))
        return self.share(tuple(owners)) if owners else ()

    def _managers(self, fields: Any) -> tuple[str, ...]:
        if not isinstance(fields, list) or not fields:
            return ()
        names: dict[str, None] = {}
        for entry in fields:
            manager = entry.get("manager") if isinstance(entry, dict) else None
            if isinstance(manager, str) and manager and len(names) < MAX_MANAGERS:
                names[sys.intern(manager[:MAX_VALUE])] = None
        return self.share(tuple(names)) if names else ()


def template_labels(obj: Any) -> Any:
    """The labels a controller gives its pods (a CronJob's Jobs' too), or None.

    Deployments, ReplicaSets, StatefulSets, DaemonSets and Jobs: spec.template; CronJobs:
    spec.jobTemplate, whose pod template wins over its own metadata.
    """
    spec = obj.get("spec") if isinstance(obj, dict) else None
    if not isinstance(spec, dict):
        return None
    job = spec.get("jobTemplate")
    if isinstance(job, dict):
        outer = _labels_of(job)
        inner = _labels_of(_get(job, "spec", "template"))
        return {**outer, **inner} if outer or inner else None
    return _labels_of(spec.get("template")) or None


def scale_target(obj: Any) -> Owner | None:
    """An autoscaler's `spec.scaleTargetRef` (apiVersion, kind, name), or None.

    The target is in the autoscaler's namespace; the reference carries no uid.
    """
    ref = _get(obj, "spec", "scaleTargetRef")
    if not isinstance(ref, dict):
        return None
    api_version, kind, name = ref.get("apiVersion"), ref.get("kind"), ref.get("name")
    if not (isinstance(kind, str) and kind and isinstance(name, str) and name):
        return None
    return Owner(_interned(api_version), sys.intern(kind[:MAX_VALUE]), name[:MAX_VALUE], "",
                 True)


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _labels_of(template: Any) -> dict[str, Any]:
    labels = _get(template, "metadata", "labels")
    return labels if isinstance(labels, dict) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _interned(value: Any) -> str:
    return sys.intern(value) if isinstance(value, str) else ""
