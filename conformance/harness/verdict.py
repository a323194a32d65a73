"""Judging a scenario's friction events against its expectations.

KNOWN_DISAGREEMENTS lists the scenarios where today's agent disagrees with the detection
semantics; their check is an expected failure that is not strict, so it passes again once
the agent is fixed (and the entry should then be removed).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from conformance.harness.scenarios import Scenario, expected_for

# Found against the package as of commit c58ae9e and fixed by 8753ca6 (detection sees the
# person behind an access proxy, entities the same at every audit level): cp (nvidia-dcgm
# taken for a Deployment's pod), debug-node and generate-name (generated names kept whole),
# proxy-exec and proxy-patch (the proxy's service account taken for the actor).
# proxy-secret-get: the audit policy dropped every read by a service account before its
# Secrets rule, so a person's Secret read through an access proxy was never audited; the
# policy now records service accounts' Secret gets first.
KNOWN_DISAGREEMENTS: dict[str, str] = {}


def triples(rows: dict[str, dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    """(rule, entity_ref, actor) of each friction event, counted."""
    return Counter((r["rule"], r["event"]["entity_ref"], r["event"].get("actor", ""))
                   for r in rows.values())


def show(rows: dict[str, dict[str, Any]]) -> str:
    """One line per friction event, for assertion messages."""
    return "\n".join(f"  {r['rule']} {r['event']['entity_ref']} actor={r['event'].get('actor')}"
                     f" | {r['event'].get('description')}" for r in rows.values()) or "  (none)"


def problems(scenario: Scenario, got_rows: dict[str, dict[str, Any]],
             rule_names: set[str]) -> list[str]:
    """What differs between the friction events and the scenario's expectations."""
    expected = expected_for(scenario, rule_names)
    want = Counter((e.rule, e.entity, e.actor) for e in expected)
    got = triples(got_rows)
    found = []
    if want != got:
        found.append(f"expected {sorted(want.elements())}, got:\n{show(got_rows)}")
    for item in expected:
        for row in got_rows.values():
            if (row["rule"], row["event"]["entity_ref"]) != (item.rule, item.entity):
                continue
            description = row["event"].get("description", "")
            missing = [m for m in item.mentions if m not in description]
            if missing:
                found.append(f"description {description!r} does not name {missing}")
            shown = [m for m in item.absent if m in description]
            if shown:
                found.append(f"description {description!r} shows {shown}")
            severity = row["event"].get("severity")
            if item.severity is not None and severity != item.severity:
                found.append(f"{item.rule}: severity {severity!r}, not {item.severity!r}")
    return found


def judge(scenario: Scenario, rows: dict[str, dict[str, Any]], rule_names: set[str]) -> None:
    """Fail (or xfail, for a known disagreement) unless `rows` are exactly as expected."""
    found = problems(scenario, rows, rule_names)
    if found and scenario.name in KNOWN_DISAGREEMENTS:
        pytest.xfail(f"{KNOWN_DISAGREEMENTS[scenario.name]}: " + "; ".join(found))
    assert not found, "\n".join(found)
