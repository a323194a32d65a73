"""Issue 26's techniques against the real apiserver, both ways in (harness/scenarios_breadth.py).

For every case, in the breadth environment (its own control plane, with the CRDs of the
GitOps tools and policy engines, audited with the policy the agent generates for its
rules with the cluster view on):
- the case ran and the apiserver audited what it is known to audit (never pending);
- every audit event has the level the package's policy evaluator gives its request;
- the webhook agent and the tail agent stored the same friction events (never pending);
- those are exactly the ones issue 26's table and the existing rules call for: a strict
  expected failure while the rule or token the case waits for is missing.
The audit events of each case are written as fixtures where asked
(`HEALERT_CONFORMANCE_BREADTH_FIXTURES`, see conformance/record-fixtures.sh breadth).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conformance.harness import breadth_fixtures
from conformance.harness.breadth_env import BreadthEnvironment
from conformance.harness.case_checks import CaseChecks
from conformance.harness.cases import Results, WindowRunner
from conformance.harness.scenarios_breadth import CASES
from conformance.harness.verdict import problems, show

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def results(breadth: BreadthEnvironment) -> Results:
    """Every case run once, in order; its audit events written as fixtures."""
    found = WindowRunner(breadth.env, breadth.env.root / "work-breadth").run(CASES)
    folders = [breadth.env.root / "fixtures-breadth"]
    chosen = os.environ.get("HEALERT_CONFORMANCE_BREADTH_FIXTURES")
    if chosen:
        folders.append(Path(chosen))
    breadth_fixtures.write(found.outcomes.values(), folders, breadth.cluster.bin.version())
    return found


class TestEachCase(CaseChecks):
    """The audit and agreement checks of each of issue 26's techniques."""

    cases = CASES


@pytest.mark.parametrize("name", [pytest.param(c.name, marks=c.marks()) for c in CASES])
def test_friction_events_are_the_expected_ones(results: Results, name: str,
                                               breadth_rule_names: set[str]) -> None:
    """Exactly the friction events the issue's table and the rules call for."""
    outcome = results.outcomes[name]
    found = problems(outcome.scenario, outcome.serve, breadth_rule_names)
    assert not found, "\n".join(found)


def test_nothing_outside_the_cases(results: Results) -> None:
    """Every friction event belongs to a case: the setup (an internal identity) and the
    controllers' own work made none."""
    strays = {r["key"]: r for r in results.stray_serve + results.stray_tail}
    assert not strays, show(strays)
