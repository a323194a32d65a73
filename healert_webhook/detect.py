"""Audit events in, friction events out. No I/O, no clock, no global state.

An event first meets the rule index (index.py): most are ruled out there from five fields
(the stage, the verb, the object's resource, subresource and namespace) and the user.
The few left are candidates; only they go through the slow path: type checks, the actor
(the person behind an access proxy), each candidate rule's checks in the order of
rules/conditions.py, entity resolution and rendering. An event whose evaluation raises is
counted as invalid (`evaluation_error`) and sampled in `Stats.failures`; the rest of the
batch goes on.

The entity of an event that fired is found from the view of the cluster when the
detector has one (cluster/resolve.py: the object's labels, up its owners, its
namespace's declared entity), else, or when the view cannot answer, from the event
alone (entity.py: the carried object's labels and owner, the name rules). The view is
an in-memory map another thread keeps current: reading it is no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from healert_webhook import audit
from healert_webhook.cluster.resolve import resolve_event
from healert_webhook.entity import (
    CATALOG_FIXED,
    LABEL_KEYS,
    METHOD_TEXT,
    Entity,
    entity_from_event,
    entity_ref,
)
from healert_webhook.index import Index, Match, Undecidable
from healert_webhook.records import MAX_FAILURES, Friction, Stats
from healert_webhook.rules import Rule, RuleSet
from healert_webhook.rules.candidate import Candidate
from healert_webhook.rules.conditions import decisive
from healert_webhook.text import clean_text
from healert_webhook.tokens import description_tokens

if TYPE_CHECKING:
    from healert_webhook.cluster.view import View

MAX_DESCRIPTION = 500
MAX_FIELD = 200
_MESSAGE = 200     # longest exception message kept in a failure sample
_EMPTY: dict[str, Any] = {}


def rule_failure(rule: Rule, cand: Candidate) -> str | None:
    """The first of `rule`'s checks the candidate fails (their reason), or None."""
    for check in rule.checks:
        failure = check.failure(cand)
        if failure is not None:
            return failure
    return None


class _Common(NamedTuple):
    shared: dict[str, Any]   # payload fields that do not depend on the rule
    tokens: dict[str, str]   # raw values of the description tokens
    suffix: str              # " (via <proxy>)" or " (as <user>)"
    actor: audit.Actor


class Detector:
    """Compiled rules plus the settings detection needs; immutable, safe to share.

    `view` is the view of the cluster, if the agent runs one; `label_keys` the entity
    label keys, in order; `catalog_namespace` where entity refs' namespace comes from
    (entity.CATALOG_NAMESPACES); `proxies` the access proxies configured by name
    (audit.Proxies.from_names).
    """

    def __init__(self, ruleset: RuleSet, *, entity_namespace: str = "default",
                 own_namespace: str | None = None, view: View | None = None,
                 label_keys: Sequence[str] = LABEL_KEYS,
                 catalog_namespace: str = "kubernetes",
                 proxies: Iterable[str] = ()) -> None:
        self.ruleset = ruleset
        self.rules = ruleset.enabled
        self.gitops = ruleset.gitops
        self.entity_namespace = entity_namespace
        self.view = view
        self.label_keys = tuple(label_keys)
        self.fixed_catalog = catalog_namespace == CATALOG_FIXED
        self.proxies = audit.Proxies.from_names(proxies)
        # GitOps evidence from the view only when its records keep every key that shows it.
        self.gitops_view = view if view is not None and view.keeps(
            self.gitops.labels, self.gitops.annotations) else None
        excluded = set(ruleset.ignore_namespaces)
        if own_namespace:
            excluded.add(own_namespace)
        self.excluded_namespaces = frozenset(excluded)
        self.index = Index(self.rules, self.excluded_namespaces,
                           frozenset({own_namespace}) if own_namespace else frozenset())

    def detect(self, events: Iterable[Any], stats: Stats,
               received: float | None = None) -> list[Friction]:
        """Friction events for `events`, in order; never raises on any input.

        Counts go into `stats`. A request seen at two stages yields the same keys twice;
        the outbox (or replay) keeps the first. An event whose evaluation fails is
        counted as invalid (`evaluation_error`) and the others are evaluated as usual.
        `received` is the Unix time the source received the events (detection reads no
        clock): an event time further ahead of it than audit.FUTURE_SKEW is repaired.
        """
        rule_out = self.index.rule_out
        out: list[Friction] = []
        skips: dict[str, int] = {}  # counted here, added to the Counter once per call
        n = sampled = 0
        for event in events:
            n += 1
            try:
                try:
                    found = rule_out(event)
                except Undecidable:
                    self._invalid(event, stats)
                    continue
                if isinstance(found, str):
                    skips[found] = skips.get(found, 0) + 1
                    continue
                self._evaluate(event, found, stats, out, received=received)
            except Exception as exc:  # one bad event never fails its batch
                sampled = _failed(stats, event, exc, sampled)
        stats.events += n
        stats.skipped.update(skips)
        return out

    @staticmethod
    def _invalid(event: Any, stats: Stats) -> None:
        stats.invalid[audit.invalid_reason(event) or "unusable"] += 1

    def candidate(self, event: dict[str, Any]) -> Candidate:
        """The fields every rule check of this event reads."""
        ref = event.get("objectRef")
        return Candidate(event, ref if ref is not None else _EMPTY, self.gitops, self.proxies,
                         self.gitops_view)

    def event_skip(self, cand: Candidate, leaf: Match) -> str | None:
        """A reason that settles every candidate of the leaf at once (`namespace`, or
        `system_actor` when every candidate ignores system actors)."""
        if cand.scope_ns in self.excluded_namespaces:
            return self.index.excluded_for(cand.scope_ns, leaf, cand.actor.internal)
        if leaf[1] and cand.actor.internal:
            return "system_actor"
        return None

    def _evaluate(self, event: dict[str, Any], leaf: Match, stats: Stats,
                  out: list[Friction], *, received: float | None) -> None:
        reason = audit.invalid_reason(event)
        if reason is not None:
            stats.invalid[reason] += 1
            return
        cand = self.candidate(event)
        skip = self.event_skip(cand, leaf)
        if skip is not None:
            stats.skipped[skip] += 1
            return
        matched: list[Rule] = []
        failures: list[str] = []
        for rule in leaf[0]:
            failure = rule_failure(rule, cand)
            if failure is None:
                matched.append(rule)
            else:
                failures.append(failure)
        if not matched:
            stats.skipped[decisive(failures)] += 1
            return
        found, fixup = self.frictions(cand, matched, received)
        if not found:
            stats.skipped["no_name"] += 1
            return
        if fixup is not None:
            stats.fixups[fixup] += 1
        stats.entities[found[0].entity_by] += 1
        out.extend(found)
        for rule in matched:
            stats.matched[(rule.name, rule.severity)] += 1

    def workload(self, cand: Candidate) -> Entity:
        """The entity the candidate's object belongs to ('' when it names none), how it
        was found and why (see the module docstring)."""
        view = self.view
        if view is not None:
            found = resolve_event(view, cand.resource, cand.namespace, cand.name,
                                  subresource=cand.subresource or None,
                                  obj=_carried_object(cand.event), label_keys=self.label_keys)
            if found.method != "unknown":
                return Entity(found.name, found.method,
                              f"{METHOD_TEXT[found.method]}: {found.explanation}")
            why = f"the view cannot answer: {found.explanation}"
        else:
            why = "no cluster view"
        entity = entity_from_event(cand.resource or None, cand.name,
                                   audit.carried_metadata(cand.event), self.label_keys)
        return entity._replace(how=f"{METHOD_TEXT[entity.method]} ({why}): {entity.how}")

    def frictions(self, cand: Candidate, rules: Sequence[Rule],
                  received: float | None = None) -> tuple[list[Friction], str | None]:
        """The friction events of `rules` for this event, and the timestamp fix-up made
        (`received`: see `detect`).

        Empty when the event names no object: there is no entity to charge.
        """
        entity = self.workload(cand)
        if not entity.name:
            return [], None
        common, fixup = self._common(cand, entity.name, received)
        return [self._friction(cand.event, common, rule, entity.method)
                for rule in rules], fixup

    def _common(self, cand: Candidate, workload: str,
                received: float | None) -> tuple[_Common, str | None]:
        """What every rule's friction event for this audit event shares, computed once."""
        namespace = cand.namespace
        cluster_scoped = not namespace or cand.resource == "namespaces"
        catalog = self.entity_namespace if cluster_scoped or self.fixed_catalog else namespace
        shared: dict[str, Any] = {
            "entity_ref": entity_ref(catalog, workload),
            "service": clean_text(workload, MAX_FIELD),
        }
        actor = cand.actor
        if actor.name:
            shared["actor"] = clean_text(actor.name, MAX_FIELD)
        if not cluster_scoped:
            shared["namespace"] = clean_text(namespace, MAX_FIELD)
        timestamp, fixup = audit.event_timestamp(cand.event, received)
        if timestamp is not None:
            shared["timestamp"] = timestamp
        tokens = description_tokens(cand, workload)
        if actor.proxy:
            suffix = f" (via {clean_text(actor.proxy, MAX_FIELD)})"
        elif actor.as_user:
            suffix = f" (as {clean_text(actor.as_user, MAX_FIELD)})"
        else:
            suffix = ""
        return _Common(shared, tokens, suffix, actor), fixup

    @staticmethod
    def _friction(event: dict[str, Any], common: _Common, rule: Rule,
                  entity_by: str = "") -> Friction:
        payload: dict[str, Any] = {"entity_ref": common.shared["entity_ref"],
                                   "type": rule.name, "severity": rule.severity}
        payload.update(common.shared)
        payload["description"] = _describe(rule, common)
        if rule.workflow:
            payload["workflow"] = clean_text(rule.workflow, MAX_FIELD)
        if rule.points is not None:
            payload["points"] = rule.points
        actor = common.actor
        key = audit.dedup_key(event, actor.authenticated, common.tokens["verb"], rule.name,
                              actor.impersonated)
        audit_id = event.get("auditID")
        return Friction(key, rule.name, payload,
                        clean_text(audit_id, MAX_FIELD) if isinstance(audit_id, str) else "",
                        entity_by)


def _carried_object(event: dict[str, Any]) -> dict[str, Any] | None:
    """The object the event carries (responseObject, else requestObject), as
    audit.carried_metadata picks it, or None."""
    for key in ("responseObject", "requestObject"):
        obj = event.get(key)
        if isinstance(obj, dict) and obj.get("kind") != "Status" \
                and isinstance(obj.get("metadata"), dict):
            return obj
    return None


def _failed(stats: Stats, event: Any, exc: Exception, sampled: int) -> int:
    """Count an event whose evaluation raised; sample it while fewer than MAX_FAILURES.

    The sample keeps the auditID and the exception for the log, never the input itself.
    Returns how many failures this call has sampled.
    """
    stats.invalid["evaluation_error"] += 1
    if sampled < MAX_FAILURES and len(stats.failures) < MAX_FAILURES:
        sampled += 1
        message = clean_text(str(exc), _MESSAGE)
        stats.failures.append((audit.failure_id(event),
                               f"{type(exc).__name__}: {message}" if message
                               else type(exc).__name__))
    return sampled


def _describe(rule: Rule, common: _Common) -> str:
    """The rule's template filled in, escaped and cut to the backend's limit."""
    parts = []
    for literal, token in rule.template:
        parts.append(literal)
        if token is not None:
            parts.append(clean_text(common.tokens[token], MAX_FIELD))
    return clean_text("".join(parts) + common.suffix, MAX_DESCRIPTION)
