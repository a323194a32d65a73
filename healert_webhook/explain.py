"""Why an audit event fired a rule or did not, in sentences (`replay --explain`).

`explain_event` is a pure function over a Detector and one parsed event: it takes the
same steps as `Detector.detect` (the index's fast path, each candidate rule's checks in
order, the entity) and records every decision with a sentence a platform engineer can
act on; each check explains its own failure (rules/conditions.py). The command that
reads files and prints the decisions is commands/explain.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from healert_webhook import audit
from healert_webhook.detect import Detector, rule_failure
from healert_webhook.index import Match, Undecidable, scope_failure
from healert_webhook.records import Friction
from healert_webhook.rules import Rule
from healert_webhook.rules.candidate import Candidate
from healert_webhook.rules.conditions import GitOpsManaged, decisive
from healert_webhook.rules.model import shown as _show

_SHOWN = 200  # longest value quoted in a sentence
_HOW = 1000  # longest account of how an entity was found (an owner chain is long)


@dataclass(frozen=True)
class RuleDecision:
    """What one enabled rule made of one event.

    `reason` is `fired`, why the rule is not a candidate (`resource`, `subresource`,
    `verb`), a reason that settled every candidate (`namespace`, `system_actor`), the
    condition it failed (see rules/conditions.py), or `no_name` when it matched an event
    that names no object. `detail` says it in a sentence.
    """

    rule: str
    candidate: bool
    fired: bool
    reason: str
    detail: str


@dataclass(frozen=True)
class EventDecision:
    """What the detector made of one event, and why.

    `outcome` is `friction`, `skipped` or `invalid`; `reason` is the skip or invalid
    reason counted in `Stats` ('' for a friction). `entity` says which entity the event
    is charged to and which way it was found (a label, an owner, the namespace, the
    name rules, and why not the view of the cluster), when it got that far.
    """

    audit_id: str
    stage: str
    request: str
    actor: str
    outcome: str
    reason: str
    detail: str
    entity: str
    rules: tuple[RuleDecision, ...]
    frictions: tuple[Friction, ...]


def _request(event: dict[str, Any]) -> str:
    ref = event.get("objectRef")
    ref = ref if isinstance(ref, dict) else {}
    what = _show(ref.get("resource")) if ref.get("resource") is not None else "(no object)"
    if ref.get("subresource"):
        what += "/" + _show(ref.get("subresource"))
    where = ""
    if ref.get("namespace"):
        where = f" {_show(ref.get('namespace'))}/{_show(ref.get('name'))}"
    elif ref.get("name"):
        where = f" {_show(ref.get('name'))}"
    return f"{_show(event.get('verb'))} {what}{where}"


def _actor_text(event: dict[str, Any], proxies: audit.Proxies = audit.NO_PROXIES) -> str:
    actor = audit.resolve_actor(event, proxies)
    text = _show(actor.name) if actor.name else "(nobody)"
    kind = "internal" if actor.internal else "person"
    if actor.proxy:
        return f"{text} ({kind}, via {_show(actor.proxy)})"
    if actor.as_user:
        return f"{text} ({kind}, as {_show(actor.as_user)})"
    return f"{text} ({kind})"


def _scope_detail(rule: Rule, reason: str, ref: dict[str, Any], verb: Any) -> str:
    if reason == "resource":
        return (f"resource {_show(ref.get('resource'))} is not "
                + ", ".join(sorted(rule.resources or ())))
    if reason == "subresource":
        sub = ref.get("subresource") or None
        if rule.subresource is not None and rule.subresource != sub:
            return f"subresource {_show(sub)} is not {rule.subresource}"
        return f"subresource {_show(sub)} is in the rule's ignore_subresources"
    return f"verb {_show(verb)} is not one of " + ", ".join(sorted(rule.verbs or ()))


def _condition_detail(rule: Rule, reason: str, cand: Candidate) -> str:
    """A sentence for a failed condition: its check explains itself."""
    check = rule.check(reason)
    return check.explain(reason, cand) if check is not None else reason


def _decision(event: dict[str, Any], outcome: str, reason: str, detail: str,
              rules: Sequence[RuleDecision] = (), *, entity: str = "",
              frictions: Sequence[Friction] = ()) -> EventDecision:
    return EventDecision(
        audit_id=_show(event.get("auditID")), stage=_show(event.get("stage")),
        request=_request(event), actor=_actor_text(event), outcome=outcome, reason=reason,
        detail=detail, entity=entity, rules=tuple(rules), frictions=tuple(frictions))


def explain_event(detector: Detector, event: Any,
                  received: float | None = None) -> EventDecision:
    """Every decision `detector` makes about `event`, with its reason.

    The outcome, reason and friction events are exactly what `Detector.detect` yields
    and counts for this event alone, received at `received` (see `Detector.detect`).
    """
    if not isinstance(event, dict):
        return EventDecision("(none)", "(none)", "(not an event)", "(nobody)", "invalid",
                             "not_an_object", "the item is not a JSON object", "", (), ())
    try:
        decision = _explain(detector, event, received)
    except Exception as exc:  # the detector counts these as evaluation_error too
        decision = _decision(event, "invalid", "evaluation_error",
                             f"evaluating the event raised {type(exc).__name__}")
    if detector.proxies:  # the actor as the detector sees it, behind a configured proxy
        decision = replace(decision, actor=_actor_text(event, detector.proxies))
    return decision


def _invalid(event: dict[str, Any]) -> EventDecision:
    reason = audit.invalid_reason(event) or "unusable"
    return _decision(event, "invalid", reason, f"the event is malformed ({reason})")


def _explain(detector: Detector, event: dict[str, Any],
             received: float | None) -> EventDecision:
    stage = event.get("stage")
    if not isinstance(stage, str) or stage not in audit.FIRING_STAGES:
        if isinstance(stage, str) and stage in audit.QUIET_STAGES:
            return _decision(event, "skipped", "stage", f"stage {stage} never fires; only "
                             "ResponseStarted and ResponseComplete do")
        return _invalid(event)
    # Detection's own fast path (index.py), then the same slow path as Detector.detect.
    ref = event.get("objectRef")
    ref = ref if isinstance(ref, dict) else {}
    verb = event.get("verb")
    try:
        found = detector.index.rule_out(event)
    except Undecidable:
        return _invalid(event)
    outside = _outside(detector, ref, verb)
    if found == "no_rule":
        return _decision(event, "skipped", "no_rule", "no enabled rule names this "
                         "resource, subresource and verb", outside)
    if found == "namespace":
        return _decision(event, "skipped", "namespace", f"namespace "
                         f"{_show(ref.get('namespace'))} is excluded for every rule "
                         "(config.ignore_namespaces or the agent's own namespace)", outside)
    if found == "system_actor":
        leaf = detector.index.leaf(ref.get("resource"), ref.get("subresource"), verb)
        user = event.get("user")
        return _internal(event, leaf[0] if leaf else (),
                         user.get("username") if isinstance(user, dict) else None, outside)
    if isinstance(found, str):  # the stage, handled above
        return _invalid(event)
    if audit.invalid_reason(event) is not None:
        return _invalid(event)
    cand = detector.candidate(event)
    return _candidates(detector, event, cand, found, outside, received=received)


def _outside(detector: Detector, ref: dict[str, Any], verb: Any) -> list[RuleDecision]:
    """The enabled rules that are not candidates, each with the field that ruled it out."""
    decided = []
    for rule in detector.rules:
        reason = scope_failure(rule, ref.get("resource"), ref.get("subresource"), verb)
        if reason is not None:
            decided.append(RuleDecision(rule.name, False, False, reason,
                                        _scope_detail(rule, reason, ref, verb)))
    return decided


def _internal(event: dict[str, Any], candidates: tuple[Rule, ...], username: Any,
              outside: list[RuleDecision]) -> EventDecision:
    who = _show(username) if username else "(nobody)"
    decided = [RuleDecision(rule.name, True, False, "system_actor", f"the actor {who} is "
                            "internal and the rule has ignore_system: true")
               for rule in candidates]
    return _decision(event, "skipped", "system_actor", f"the actor {who} is internal and "
                     "impersonates nobody; every candidate rule has ignore_system: true",
                     decided + outside)


def _candidates(detector: Detector, event: dict[str, Any], cand: Candidate,
                leaf: Match, outside: list[RuleDecision], *,
                received: float | None) -> EventDecision:
    skip = detector.event_skip(cand, leaf)
    if skip == "namespace":
        return _decision(event, "skipped", skip, f"namespace {_show(cand.scope_ns)} is "
                         "excluded for every rule (config.ignore_namespaces or the agent's "
                         "own namespace)", outside)
    decided: list[RuleDecision] = []
    failures: list[str] = []
    matched: list[Rule] = []
    for rule in leaf[0]:
        failure = "system_actor" if skip else rule_failure(rule, cand)
        if failure is None:
            matched.append(rule)
            detail = "every condition holds"
            gitops = rule.check("gitops")
            if isinstance(gitops, GitOpsManaged):
                detail += gitops.fired(cand)
            decided.append(RuleDecision(rule.name, True, True, "fired", detail))
        else:
            failures.append(failure)
            decided.append(RuleDecision(rule.name, True, False, failure,
                                        _condition_detail(rule, failure, cand)))
    everything = decided + outside
    if not matched:
        reason = decisive(failures)
        return _decision(event, "skipped", reason, "no candidate rule fired; the closest "
                         f"miss failed on {reason}", everything)
    workload = detector.workload(cand)
    found, fixup = detector.frictions(cand, matched, received)
    if not found:
        unnamed = [RuleDecision(d.rule, True, False, "no_name", "fired, but the request "
                                "names no object to charge it to") if d.fired else d
                   for d in decided]
        return _decision(event, "skipped", "no_name", "the request names no object (no "
                         "name, no generateName): there is no entity to charge",
                         unnamed + outside)
    entity = f"{found[0].event['entity_ref']} (workload {_show(workload.name)}, found by " \
             f"{_show(workload.how, _HOW)})"
    detail = f"{len(found)} friction event(s)"
    if fixup is not None:
        why = (f"lies more than {audit.FUTURE_SKEW:g} s ahead of the time it was read"
               if fixup.startswith(audit.FUTURE) else "is missing or not a time")
        detail += f" ({fixup.replace('_', ' ')}: the receive time {why})"
    return _decision(event, "friction", "", detail, everything, entity=entity,
                     frictions=found)
