"""The checks every case of a window-run suite gets (test_60_breadth, test_65_entity).

A test module subclasses `CaseChecks` as `TestEachCase` with `cases` set to its cases;
conftest.py parametrizes `name` over them. The module provides the `breadth` and
`results` fixtures. None of these checks is ever pending: a case waiting for a feature is
marked only on its friction check, which each module writes itself.
"""

from __future__ import annotations

from typing import ClassVar

from conformance.harness.breadth_env import BreadthEnvironment
from conformance.harness.cases import (
    Case,
    Results,
    agreement_problems,
    fact_problems,
    level_problems,
)


class CaseChecks:
    """The audit and agreement checks of each case, parametrized by its name."""

    cases: ClassVar[tuple[Case, ...]] = ()

    def test_apiserver_audited_what_the_case_needs(
            self, breadth: BreadthEnvironment, results: Results, name: str) -> None:
        """The case ran, and the apiserver audited its requests as they are known to be
        audited (the facts' levels compared under the generated policy only)."""
        outcome = results.outcomes[name]
        assert outcome.error is None, outcome.error
        found = fact_problems(outcome, levels=breadth.generated)
        assert not found, "\n".join(found)

    def test_every_event_has_the_policys_level(
            self, breadth: BreadthEnvironment, results: Results, name: str) -> None:
        """Every audit event of the case has the level the package's evaluator gives its
        request under the policy the apiserver ran."""
        found = level_problems(results.outcomes[name], breadth.policy())
        assert not found, "\n".join(found)

    def test_webhook_and_tail_agree(self, results: Results, name: str) -> None:
        """Both ways in stored the same friction events: same keys, same payloads."""
        found = agreement_problems(results.outcomes[name])
        assert not found, "\n".join(found)
