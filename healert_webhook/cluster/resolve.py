"""Entity resolution and GitOps ownership read from the view: pure functions, no I/O.

For the object an event is about (a subresource such as `pods/exec` or
`deployments/scale` is about its parent, the object the same name names), its chain is
the object, then each controlling owner up to the top controller (Pod -> ReplicaSet ->
Deployment, Pod -> Job -> CronJob, any owner of another kind the view fetched). A
HorizontalPodAutoscaler's next link is what it scales (`spec.scaleTargetRef`, kept in its
record: meta.Scaler says why it wins over an owner reference), then that workload's own
chain (HPA -> Deployment, HPA -> Rollout once fetched):

1. `label`: the first configured label key (in order) found anywhere on the chain,
   nearest object first, on an object's own labels or on a controller's pod template.
   Key first, then object: an explicit `backstage.io/kubernetes-id` on the Deployment
   wins over a generic `app.kubernetes.io/name` on its pods, so a scale of the
   Deployment and an exec into one of its pods, whose chains start at different
   objects, are charged to the same entity;
2. `owner`: else the name of the top of the chain (a Job made from `generateName` is its
   `generateName` base); an owner (or scale target) the view does not hold ends the
   chain with its name as the name rules read it. A controller with no owner is its
   own top;
3. `namespace`: an object that is no controller and has no owner (a Secret, a bare
   Pod): the entity its namespace declares with the same label keys;
4. `unknown`: the caller falls back to the name rules. So does an object of a watched
   resource that the view cannot tell about: not listed yet, or neither live nor a
   tombstone (the view's silence about a pod is no answer, unlike a Secret, which it
   never holds), and an autoscaler whose target is not known.

The object is the view's copy when it has one (live or a tombstone), else the metadata
the event carries (a create can be audited before the watch delivers it): an HPA's
create at Request level and above still names its target. Resolution never waits for
the view to catch up (detection may run on the loop that answers the webhook), so an
HPA created at Metadata level whose event is read before its watch event (a few
milliseconds apart: docs/internals.md has the measurement) falls back to the name rules
on the HPA's own name, as any object the view has not seen yet does.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, NamedTuple, Protocol

from healert_webhook.cluster.kinds import BY_RESOURCE, CONTROLLERS, watched_kind
from healert_webhook.cluster.meta import (
    Extractor,
    Meta,
    Owner,
    Scaler,
    scale_target,
    template_labels,
)
from healert_webhook.cluster.view import View
from healert_webhook.entity import LABEL_KEYS, name_rules

MAX_CHAIN = 10  # owners followed at most (a reference cycle ends here)
_NAME_RULES_OF = {"ReplicaSet": "replicasets", "Job": "jobs"}
_CONTROLLER_KINDS = frozenset(BY_RESOURCE[r].kind for r in CONTROLLERS)
_SCALER_KINDS = frozenset(k.kind for k in BY_RESOURCE.values() if k.scales)


class Resolution(NamedTuple):
    """An entity name ('' when unknown), how it was found, and a short explanation."""

    name: str
    method: str  # label | owner | namespace | unknown
    explanation: str


class GitOpsKeys(Protocol):
    """What marks an object GitOps-managed (rules.GitOps has these)."""

    @property
    def annotations(self) -> tuple[str, ...]:
        """Annotation keys."""

    @property
    def labels(self) -> tuple[str, ...]:
        """Label keys."""

    @property
    def field_managers(self) -> frozenset[str]:
        """Field manager names."""


class GitOpsAnswer(NamedTuple):
    """Whether the object was found at all, and the evidence of GitOps management."""

    known: bool
    evidence: str | None


def carried_record(resource: str, obj: Any, label_keys: Sequence[str] = LABEL_KEYS,
                   gitops: GitOpsKeys | None = None) -> Meta | None:
    """A record of the object an event carries, kept as the view would keep it."""
    if not isinstance(obj, dict):
        return None
    labels = [*label_keys, *(gitops.labels if gitops else ())]
    annotations = gitops.annotations if gitops else ()
    watched = BY_RESOURCE.get(resource)
    kind = watched.kind if watched is not None else resource
    template = template_labels(obj) if resource in CONTROLLERS else None
    target = scale_target(obj) if watched is not None and watched.scales else None
    return Extractor(labels, annotations).record(kind, obj.get("metadata"), template, target)


def describe(meta: Meta) -> str:
    """`Deployment shop/orders-api`, `Namespace shop`, with `(deleted)` for a tombstone."""
    where = f"{meta.namespace}/{meta.name}" if meta.namespace else meta.name
    return f"{meta.kind} {where}" + (" (deleted)" if meta.deleted_at is not None else "")


def _find(view: View, resource: str, namespace: str, name: str,
          carried: Meta | None) -> tuple[Meta | None, str]:
    kind = BY_RESOURCE.get(resource)
    if kind is not None and name:
        found = view.get(resource, namespace if kind.namespaced else "", name)
        if found is not None:
            return found, "the view"
        if carried is None and not view.listed(resource):
            return None, f"{resource} not listed yet"
    if carried is not None:
        return carried, "the event"
    if resource in BY_RESOURCE:
        return None, f"{resource} {namespace}/{name} is neither in the view nor a tombstone"
    return None, f"{resource} are not watched and the event carries no object"


def _chain(view: View, found: Meta) -> tuple[list[Meta], Owner | None]:
    """The object and its controllers (an autoscaler: its target, then the target's) up to
    the top; the reference the view lacks, if any."""
    chain = [found]
    for _ in range(MAX_CHAIN):
        ref = chain[-1].up()
        if ref is None:
            return chain, None
        parent = view.owner(ref, chain[-1].namespace)
        if parent is None:
            return chain, ref
        chain.append(parent)
    return chain, None


def _label(chain: Sequence[Meta], keys: Sequence[str]) -> tuple[str, str, int, str] | None:
    """(key, value, index in the chain, where on that object) of the first label found."""
    for key in keys:
        for index, meta in enumerate(chain):
            own, template = meta.label(key), meta.template_label(key)
            for where, value in (("", own), ("the pod template of ", template)):
                if value is not None and value.strip():
                    return key, value.strip(), index, where
    return None


def _own_name(meta: Meta) -> str:
    prefix = meta.generate_name
    if prefix and meta.name.startswith(prefix):
        return prefix[:-1] if prefix.endswith("-") and len(prefix) > 1 else prefix
    return meta.name


def _path(chain: list[Meta]) -> str:
    if len(chain) < 2:
        return ""
    parts = [f"{chain[0].kind} {chain[0].name}"]
    for before, meta in pairwise(chain):
        parts.append(f"{' scales ' if isinstance(before, Scaler) else ' -> '}"
                     f"{meta.kind} {meta.name}")
    return " (" + "".join(parts) + ")"


def resolve(view: View, resource: str, namespace: str | None, name: str, *,
            subresource: str | None = None, carried: Meta | None = None,
            label_keys: Sequence[str] = LABEL_KEYS) -> Resolution:
    """The entity of the object `name` of `resource` (see the module docstring).

    `carried` is the event's own copy of the object (see `carried_record`), used when the
    view has none. The view must keep `label_keys` (it keeps what it was built with).
    """
    ns = namespace or ""
    found, source = _find(view, resource, ns, name, carried)
    if found is None:
        if resource in BY_RESOURCE:  # the view should know it and does not: no answer
            return Resolution("", "unknown", source)
        return _namespace(view, ns, label_keys, source)
    tail = f", from {source}" + (f", for {resource}/{subresource}" if subresource else "")
    return _from(view, found, ns, tail, label_keys)


def _from(view: View, found: Meta, ns: str, tail: str,
          label_keys: Sequence[str]) -> Resolution:
    """Resolution from a found object: up its chain, else its namespace."""
    chain, missing = _chain(view, found)
    label = _label(chain, label_keys)
    if label is not None:
        key, value, index, part = label
        return Resolution(value, "label", f"label {key} on {part}{describe(chain[index])}"
                                          f"{_path(chain[:index + 1])}{tail}")
    top = chain[-1]
    if missing is not None:
        reading = name_rules(_NAME_RULES_OF.get(missing.kind), missing.name)
        held = "not in the view" if watched_kind(missing.api_version, missing.kind) \
            else "of a kind not fetched (yet)"
        link = "scale target" if isinstance(top, Scaler) else "owner"
        return Resolution(reading.name, "owner",
                          f"{link} {missing.kind} {missing.name} ({held}; its {reading.how})"
                          f" of {describe(top)}{_path(chain)}{tail}")
    if top.kind in _SCALER_KINDS:  # an autoscaler is about a workload: never its namespace
        return Resolution("", "unknown", f"{describe(top)} names no scale target{tail}")
    if len(chain) > 1 or top.kind in _CONTROLLER_KINDS:
        what = "top owner" if len(chain) > 1 else "no owner and no label:"
        made = " (its generateName)" if _own_name(top) != top.name else ""
        return Resolution(_own_name(top), "owner",
                          f"{what} {describe(top)}{made}{_path(chain)}{tail}")
    return _namespace(view, ns, label_keys, f"{describe(found)} has no label and no owner")


def resolve_event(view: View, resource: str, namespace: str | None, name: str, *,
                  subresource: str | None = None, obj: Any = None,
                  label_keys: Sequence[str] = LABEL_KEYS) -> Resolution:
    """`resolve` for an audit event: `obj` is the object it carries (a dict), if any.

    The view's copy of the object wins; the carried one serves only when the view holds
    none (an HPA the view has not seen yet still resolves through the `scaleTargetRef`
    the event carries).
    """
    carried = None
    if isinstance(obj, dict) and not _held(view, resource, namespace or "", name):
        carried = carried_record(resource, obj, label_keys)  # only what the view lacks
    return resolve(view, resource, namespace, name, subresource=subresource, carried=carried,
                   label_keys=label_keys)


def _held(view: View, resource: str, namespace: str, name: str) -> bool:
    """True when the view holds the object (live or a tombstone): its copy wins."""
    kind = BY_RESOURCE.get(resource)
    return kind is not None and bool(name) and \
        view.get(resource, namespace if kind.namespaced else "", name) is not None


def _namespace(view: View, namespace: str, label_keys: Sequence[str], why: str) -> Resolution:
    if namespace:
        found = view.get("namespaces", "", namespace)
        if found is not None:
            label = _label([found], label_keys)
            if label is not None:
                return Resolution(label[1], "namespace",
                                  f"label {label[0]} on {describe(found)} ({why})")
            why += f"; Namespace {namespace} declares no entity"
    return Resolution("", "unknown", why)


def gitops(view: View, resource: str, namespace: str | None, name: str, keys: GitOpsKeys, *,
           carried: Meta | None = None) -> GitOpsAnswer:
    """Whether the object is GitOps-managed, from its cached (else carried) metadata.

    The evidence reads like audit.gitops_evidence's: `annotation <key> on <object>`,
    `label <key> on <object>`, `field manager <name> on <object>`. The view keeps only
    the GitOps annotation and label keys it was built with.
    """
    found, _ = _find(view, resource, namespace or "", name, carried)
    if found is None:
        return GitOpsAnswer(False, None)
    where = describe(found)
    for key in keys.annotations:
        if found.annotation(key):
            return GitOpsAnswer(True, f"annotation {key} on {where}")
    for key in keys.labels:
        if found.label(key):
            return GitOpsAnswer(True, f"label {key} on {where}")
    for manager in found.managers:
        if manager in keys.field_managers:
            return GitOpsAnswer(True, f"field manager {manager} on {where}")
    return GitOpsAnswer(True, None)
