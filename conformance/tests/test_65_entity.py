"""Issue 24's scenarios against the real apiserver and controller-manager, both ways in
(harness/scenarios_entity.py).

In the breadth environment, whose agents have their cluster view's kubeconfig and were
started before the cluster answered. For every case: it ran and was audited as known
(never pending), every audit event at the level the package's policy evaluator gives it;
both ways in agree (never pending); the entity is the one issue 24's
resolution gives, the same for every action and audit level (a strict expected failure
while the cluster view is not wired into detection). Also: what the agents said before
the cluster answered, and that the tombstone case's batch really arrived after its pod
was gone.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conformance.harness import breadth_env, breadth_fixtures
from conformance.harness.breadth_env import BreadthEnvironment
from conformance.harness.case_checks import CaseChecks
from conformance.harness.cases import Results, WindowRunner
from conformance.harness.scenarios_entity import CASES, read_evidence
from conformance.harness.verdict import problems, show

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def results(breadth: BreadthEnvironment) -> Results:
    """Every case run once, in order (the ones that stop parts of the environment last)."""
    return WindowRunner(breadth.env, breadth.env.root / "work-entity").run(CASES)


def test_record_the_objects_the_cases_act_on(breadth: BreadthEnvironment) -> None:
    """Before any case: the objects written as kubectl shows them (for resolution tests
    without a cluster), also where asked (`HEALERT_CONFORMANCE_ENTITY_OBJECTS`)."""
    folders = [breadth.env.root / "objects-entity"]
    chosen = os.environ.get("HEALERT_CONFORMANCE_ENTITY_OBJECTS")
    if chosen:
        folders.append(Path(chosen))
    written = breadth_fixtures.write_entity_objects(breadth.cluster, folders)
    assert len(written) == 4 * len(folders)


def test_ingest_answered_before_the_cluster(breadth: BreadthEnvironment) -> None:
    """The agents ran before anything answered at the apiserver's address, and the
    webhook agent was ready: an unreachable cluster never blocks ingest."""
    before = breadth.before
    assert before.cluster_answered - before.agents_started >= breadth_env.AGENT_HEAD_START
    assert before.readyz["serve"][0] == 200, before.readyz["serve"]


def test_before_the_cluster_the_view_was_not_synced(breadth: BreadthEnvironment) -> None:
    """/readyz and the metrics said the view was not synced."""
    text = breadth.before.readyz["serve"][1]
    assert "cluster view" in text and "not synced" in text, text
    assert breadth.before.synced == {"serve": False, "tail": False}, breadth.before.synced


class TestEachCase(CaseChecks):
    """The audit and agreement checks of each of issue 24's cases."""

    cases = CASES


@pytest.mark.parametrize("name", [pytest.param(c.name, marks=c.marks()) for c in CASES])
def test_friction_events_are_the_expected_ones(results: Results, name: str,
                                               breadth_rule_names: set[str]) -> None:
    """Exactly the friction events issue 24's resolution calls for: the entity the same
    for every action and audit level."""
    outcome = results.outcomes[name]
    found = problems(outcome.scenario, outcome.serve, breadth_rule_names)
    assert not found, "\n".join(found)


def test_the_tombstone_case_batch_came_after_the_delete(breadth: BreadthEnvironment,
                                                        results: Results) -> None:
    """The webhook agent stored the exec's friction event only after its pod was deleted
    (the apiserver retried the batch): the case tests what it says it tests."""
    evidence = read_evidence(breadth.env.root / "work-entity", "entity-tombstone")
    assert evidence["stored"] > evidence["deleted"], evidence


def test_the_views_are_synced(breadth: BreadthEnvironment, results: Results) -> None:
    """After every case, the apiserver restart included, both views are synced."""
    for agent in (breadth.env.agents.serve, breadth.env.agents.tail):
        assert agent is not None
        assert breadth_env.view_synced(agent) is True, agent.name


def test_nothing_outside_the_cases(results: Results) -> None:
    """Every friction event belongs to a case."""
    strays = {r["key"]: r for r in results.stray_serve + results.stray_tail}
    assert not strays, show(strays)
