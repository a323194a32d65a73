"""Audit events in, friction events out. No I/O, no clock, no global state.

The rules are compiled into a three-level index, resource -> subresource -> verb, whose
leaves are the rules that could match. Most audit events (controllers watching leases,
kubelets reading pods) find an empty leaf after three dict lookups and cost nothing more.
Only candidates go through the slow path: type checks, namespace and actor filters,
annotations, entity resolution and rendering.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from healert_webhook import audit
from healert_webhook.entity import entity_ref, object_metadata, workload_name
from healert_webhook.rules import Rule, RuleSet

MAX_DESCRIPTION = 500
MAX_FIELD = 200
_ANY = object()  # index key for "a value no rule names"
_EMPTY: dict[str, Any] = {}

# A leaf: the candidate rules and whether all of them ignore system actors; None if empty.
Leaf = tuple[tuple[Rule, ...], bool] | None
# resource -> (subresource -> (verb -> leaf, leaf for other verbs), other subresources)
VerbMap = tuple[dict[Any, Leaf], Leaf]
SubMap = tuple[dict[Any, VerbMap], VerbMap]


class Friction(NamedTuple):
    """One detection: its dedup key, the rule, and the backend payload (DESIGN §6 fields)."""

    key: str
    rule: str
    event: dict[str, Any]


@dataclass
class Stats:
    """What one call of `Detector.detect` saw, for the metrics and the replay summary."""

    events: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    matched: Counter[tuple[str, str]] = field(default_factory=Counter)

    def merge(self, other: Stats) -> None:
        """Add another Stats' counts to this one."""
        self.events += other.events
        self.invalid.update(other.invalid)
        self.skipped.update(other.skipped)
        self.matched.update(other.matched)


def _leaf(rules: Sequence[Rule]) -> Leaf:
    if not rules:
        return None
    return tuple(rules), all(rule.ignore_system for rule in rules)


def _verb_map(rules: Sequence[Rule]) -> VerbMap:
    verbs = {verb for rule in rules for verb in (rule.verbs or ())}
    by_verb = {verb: _leaf([r for r in rules if r.verbs is None or verb in r.verbs])
               for verb in verbs}
    return by_verb, _leaf([r for r in rules if r.verbs is None])


def _sub_map(rules: Sequence[Rule]) -> SubMap:
    subs: set[Any] = {None, ""}
    for rule in rules:
        if rule.subresource is not None:
            subs.add(rule.subresource)
        subs.update(rule.ignore_subresources)
    by_sub: dict[Any, VerbMap] = {}
    for sub in subs:
        key = None if sub == "" else sub
        chosen = [r for r in rules
                  if (r.subresource is None or r.subresource == key)
                  and key not in r.ignore_subresources]
        by_sub[sub] = _verb_map(chosen)
    other = [r for r in rules if r.subresource is None]
    return by_sub, _verb_map(other)


def build_index(rules: Sequence[Rule]) -> tuple[dict[Any, SubMap], SubMap]:
    """Index enabled rules by resource, subresource and verb (see the module docstring)."""
    named = {res for rule in rules for res in (rule.resources or ())}
    by_resource = {
        res: _sub_map([r for r in rules if r.resources is None or res in r.resources])
        for res in named
    }
    return by_resource, _sub_map([r for r in rules if r.resources is None])


class Detector:
    """Compiled rules plus the settings detection needs; immutable, safe to share."""

    def __init__(self, ruleset: RuleSet, *, entity_namespace: str = "default",
                 own_namespace: str | None = None) -> None:
        self.ruleset = ruleset
        self.rules = ruleset.enabled
        self.entity_namespace = entity_namespace
        excluded = set(ruleset.ignore_namespaces)
        if own_namespace:
            excluded.add(own_namespace)
        self.excluded_namespaces = frozenset(excluded)
        self._by_resource, self._any_resource = build_index(self.rules)

    def detect(self, events: Iterable[Any], stats: Stats) -> list[Friction]:
        """Friction events for `events`, in order; never raises on any input.

        Counts go into `stats`. A request seen at two stages yields the same keys twice;
        the outbox (or replay) keeps the first.
        """
        by_resource = self._by_resource
        any_resource = self._any_resource
        excluded = self.excluded_namespaces
        human = audit.HUMAN_SYSTEM_USERS
        firing = audit.FIRING_STAGES
        out: list[Friction] = []
        n = no_rule = quiet = other_ns = internal = 0
        for event in events:
            n += 1
            try:
                stage = event["stage"]
                if stage not in firing:
                    if stage in audit.QUIET_STAGES:
                        quiet += 1
                    else:
                        self._invalid(event, stats)
                    continue
                ref = event.get("objectRef")
                if ref is None:
                    ref = _EMPTY
                subs, other_sub = by_resource.get(ref.get("resource"), any_resource)
                verbs, other_verb = subs.get(ref.get("subresource"), other_sub)
                verb = event.get("verb")
                leaf = verbs.get(verb, other_verb)
                if leaf is None:
                    no_rule += 1
                    continue
                if verb.__class__ is not str:
                    raise TypeError("verb")
                # Cheap filters that settle most candidates before the slow path.
                namespace = ref.get("namespace")
                if namespace and namespace in excluded:
                    other_ns += 1
                    continue
                if leaf[1]:
                    user = event.get("user")
                    username = user.get("username") if user else None
                    if not username or (username[:7] == "system:" and username not in human):
                        internal += 1
                        continue
            except (KeyError, TypeError, AttributeError):
                self._invalid(event, stats)
                continue
            self._evaluate(event, ref, leaf[0], stats, out)
        stats.events += n
        for reason, count in (("no_rule", no_rule), ("stage", quiet),
                              ("namespace", other_ns), ("system_actor", internal)):
            if count:
                stats.skipped[reason] += count
        return out

    @staticmethod
    def _invalid(event: Any, stats: Stats) -> None:
        stats.invalid[audit.invalid_reason(event) or "unusable"] += 1

    def _evaluate(self, event: dict[str, Any], ref: dict[str, Any],
                  candidates: tuple[Rule, ...], stats: Stats, out: list[Friction]) -> None:
        reason = audit.invalid_reason(event)
        if reason is not None:
            stats.invalid[reason] += 1
            return
        user = event.get("user") or _EMPTY
        username: str = user.get("username") or ""
        resource: str = ref.get("resource") or ""
        name: str = ref.get("name") or ""
        namespace: str = ref.get("namespace") or ""
        scope_ns = name if resource == "namespaces" and not namespace else namespace
        if scope_ns in self.excluded_namespaces:
            stats.skipped["namespace"] += 1
            return
        internal = audit.is_internal_actor(username)
        matched: list[Rule] = []
        last_skip = "filtered"
        for rule in candidates:
            if rule.ignore_system and internal:
                last_skip = "system_actor"
                continue
            if scope_ns and scope_ns in rule.ignore_namespaces:
                last_skip = "namespace"
                continue
            if rule.namespace_contains is not None and \
                    rule.namespace_contains not in scope_ns.lower():
                last_skip = "namespace"
                continue
            if rule.annotation is not None and not _has_annotation(event, *rule.annotation):
                last_skip = "annotation"
                continue
            matched.append(rule)
        if not matched:
            stats.skipped[last_skip] += 1
            return
        common = self._common(event, ref, username)
        for rule in matched:
            out.append(self._friction(event, common, rule))
            stats.matched[(rule.name, rule.severity)] += 1

    def _common(self, event: dict[str, Any], ref: dict[str, Any],
                username: str) -> _Common:
        """What every rule's friction event for this audit event shares, computed once."""
        resource: str = ref.get("resource") or ""
        name: str = ref.get("name") or ""
        namespace: str = ref.get("namespace") or ""
        cluster_scoped = not namespace or resource == "namespaces"
        workload = workload_name(resource, name, object_metadata(event)) or resource or "unknown"
        shared: dict[str, Any] = {
            "entity_ref": entity_ref(self.entity_namespace if cluster_scoped else namespace,
                                     workload),
            "service": audit.clean_text(workload, MAX_FIELD),
        }
        if username:
            shared["actor"] = audit.clean_text(username, MAX_FIELD)
        if not cluster_scoped:
            shared["namespace"] = audit.clean_text(namespace, MAX_FIELD)
        timestamp = audit.event_timestamp(event)
        if timestamp is not None:
            shared["timestamp"] = timestamp
        status = event.get("responseStatus")
        code = status.get("code") if isinstance(status, dict) else None
        tokens = {
            "actor": username or "unknown",
            "resource": resource,
            "name": name,
            "namespace": namespace or "-",
            "verb": event["verb"],
            "subresource": ref.get("subresource") or "",
            "code": str(code) if isinstance(code, int) else "",
            "workload": workload,
        }
        impersonated = audit.impersonated_name(event)
        suffix = f" (as {audit.clean_text(impersonated, MAX_FIELD)})" if impersonated else ""
        return _Common(shared, tokens, suffix, username)

    @staticmethod
    def _friction(event: dict[str, Any], common: _Common, rule: Rule) -> Friction:
        payload: dict[str, Any] = {"entity_ref": common.shared["entity_ref"],
                                   "type": rule.name, "severity": rule.severity}
        payload.update(common.shared)
        payload["description"] = _describe(rule, common)
        if rule.workflow:
            payload["workflow"] = audit.clean_text(rule.workflow, MAX_FIELD)
        if rule.points is not None:
            payload["points"] = rule.points
        key = audit.dedup_key(event, common.username, common.tokens["verb"], rule.name)
        return Friction(key, rule.name, payload)


class _Common(NamedTuple):
    shared: dict[str, Any]   # payload fields that do not depend on the rule
    tokens: dict[str, str]   # raw values of the description tokens
    suffix: str              # " (as <user>)" when the actor impersonated someone
    username: str


def _describe(rule: Rule, common: _Common) -> str:
    """The rule's template filled in, escaped and cut to the backend's limit."""
    parts = []
    for literal, token in rule.template:
        parts.append(literal)
        if token is not None:
            parts.append(audit.clean_text(common.tokens[token], MAX_FIELD))
    return audit.clean_text("".join(parts) + common.suffix, MAX_DESCRIPTION)


def _has_annotation(event: dict[str, Any], key: str, value: str) -> bool:
    """The annotation on the audit event itself or on the object it carries."""
    annotations = event.get("annotations")
    if isinstance(annotations, dict) and annotations.get(key) == value:
        return True
    for field_name in ("responseObject", "requestObject"):
        obj = event.get(field_name)
        if isinstance(obj, dict):
            meta = obj.get("metadata")
            if isinstance(meta, dict):
                found = meta.get("annotations")
                if isinstance(found, dict) and found.get(key) == value:
                    return True
    return False
