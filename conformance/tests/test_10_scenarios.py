"""The real kubectl against the real apiserver: what is audited, and what the agent makes of it.

For every scenario, under the audit policy the agent generates for its rules:
- the apiserver audited what it is known to audit (the scenario's `audited` facts), and
  every event it wrote has the level the package's evaluator gives that request under
  the policy;
- the webhook agent and the tail agent stored the same friction events (same keys, same
  payloads): the two ways in see the same requests;
- those friction events are exactly the ones the detection semantics and rules.yaml call for.

Where today's agent disagrees with the detection semantics, the scenario is listed in
verdict.KNOWN_DISAGREEMENTS and its last check is an expected failure (not strict: it passes
once the agent is fixed, and then the entry should go). The first two checks never are.
"""

from __future__ import annotations

import pytest

from conformance.harness import policy as audit_policy
from conformance.harness.cases import agreement_problems
from conformance.harness.env import Environment
from conformance.harness.runner import Outcome
from conformance.harness.scenarios import SCENARIOS
from conformance.harness.verdict import judge
from healert_webhook.auditpolicy.document import Policy
from healert_webhook.auditpolicy.evaluate import evaluate

pytestmark = pytest.mark.timeout(1200)

NAMES = [s.name for s in SCENARIOS]


@pytest.fixture(scope="module")
def policy(env: Environment) -> Policy:
    """The policy the apiserver runs: the one the agent generated for its rules."""
    return audit_policy.load(env.audit_policy)


@pytest.mark.parametrize("name", NAMES)
def test_apiserver_audited_what_design_says(outcomes: dict[str, Outcome], name: str,
                                            policy: Policy) -> None:
    """The scenario ran and the apiserver wrote the audit events it is known to write, each
    at the level the policy gives it."""
    outcome = outcomes[name]
    assert outcome.error is None, outcome.error
    events = outcome.audit_events
    for fact in outcome.scenario.audited:
        matching = [e for e in events if fact.matches(e)]
        if fact.count is None:
            assert matching, f"no audit event like {fact} among {len(events)}"
        else:
            assert len(matching) == fact.count, f"{len(matching)} events like {fact}"
    wrong = [(e["level"], decided.level.text, decided.rule, e["verb"], e["requestURI"])
             for e in events
             if (decided := evaluate(policy, audit_policy.request_of(e))).level.text
             != e["level"]]
    assert wrong == [], "levels other than the policy's (event, evaluator, rule, request)"


@pytest.mark.parametrize("name", NAMES)
def test_webhook_and_tail_agree(outcomes: dict[str, Outcome], name: str) -> None:
    """Both ways in produced the same friction events: same keys, same payloads."""
    found = agreement_problems(outcomes[name])
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", NAMES)
def test_friction_events_are_the_expected_ones(outcomes: dict[str, Outcome], name: str,
                                               rule_names: set[str]) -> None:
    """Exactly the friction events the detection semantics call for: rule, entity, actor,
    description."""
    outcome = outcomes[name]
    judge(outcome.scenario, outcome.serve, rule_names)
