"""`healert-webhook replay --explain`: print why each audit event fired a rule or did not.

It reads audit files the way `replay` does (sources/replay.py) and prints explain.py's
decision for each event, optionally only for one auditID or one user.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TextIO

from healert_webhook import audit, exits
from healert_webhook.config import Settings
from healert_webhook.explain import EventDecision, explain_event
from healert_webhook.pipeline import Pipeline
from healert_webhook.sources.replay import ReadReport, read_files


def _wanted(event: Any, audit_id: str | None, user: str | None,
            proxies: audit.Proxies = audit.NO_PROXIES) -> bool:
    if not isinstance(event, dict):
        return audit_id is None and user is None
    if audit_id is not None and event.get("auditID") != audit_id:
        return False
    if user is not None:
        actor = audit.resolve_actor(event, proxies)
        return user in (actor.authenticated, actor.impersonated)
    return True


def render(place: str, decision: EventDecision, duplicates: set[str]) -> list[str]:
    """The readable lines for one event's decision."""
    lines = [f"{place} auditID {decision.audit_id} {decision.stage} {decision.request} "
             f"by {decision.actor}"]
    if decision.outcome == "friction":
        lines.append(f"  => {decision.detail}, charged to {decision.entity}")
        for friction in decision.frictions:
            again = " (already seen at another stage or in a resend: sent once)" \
                if friction.key in duplicates else ""
            lines.append(f"     {friction.rule} ({friction.event['severity']}): "
                         f"{friction.event['description']}{again}")
    else:
        lines.append(f"  => {decision.outcome} ({decision.reason}): {decision.detail}")
    for rule in decision.rules:
        if rule.candidate:
            verdict = f"not fired ({rule.reason}): {rule.detail}"
            if rule.fired:
                verdict = "fired" + rule.detail.partition("every condition holds")[2]
            lines.append(f"  rule {rule.rule}: {verdict}")
    others = [f"{r.rule} ({r.reason})" for r in decision.rules if not r.candidate]
    if others:
        lines.append("  not candidates: " + ", ".join(others))
    return lines


def run_explain(settings: Settings, paths: Sequence[str], *, audit_id: str | None,
                user: str | None, out: TextIO) -> int:
    """`replay --explain`: print every decision for the events in `paths`.

    Only events with auditID `audit_id` and/or made by (or as) `user` are shown when
    given. Exit 0, or 1 when a file could not be read; raises RulesError when the rules
    cannot be used.
    """
    detector = Pipeline.from_settings(settings).detector
    report = ReadReport()
    seen: set[str] = set()
    shown = frictions = 0
    failed: list[str] = []
    numbers: dict[str, int] = {}
    for path, batch in read_files(paths, report, settings.tail_max_line_bytes, failed):
        for event in batch:
            number = numbers[path] = numbers.get(path, 0) + 1
            if not _wanted(event, audit_id, user, detector.proxies):
                continue
            decision = explain_event(detector, event, time.time())
            shown += 1
            frictions += len(decision.frictions)
            for line in render(f"{path} #{number}", decision, seen):
                print(line, file=out)
            seen.update(f.key for f in decision.frictions)
    print(f"explain: {report.lines} lines, {shown} events shown, {frictions} friction "
          f"events (before removing repeats)", file=out)
    for example in report.examples:
        print(f"  invalid line {example}", file=out)
    for failure in failed:
        print(f"  cannot read {failure}", file=out)
    return exits.FAILED if failed else exits.OK
