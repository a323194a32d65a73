"""Shared fixtures: paths to the real audit fixtures and the shipped rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from healert_webhook.detect import Detector
from healert_webhook.rules import RuleSet, load_rules

from support.paths import ROOT, SHARED_FIXTURES

__all__ = ["ROOT"]  # other test modules import ROOT from here


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--long` runs the long variants of the reliability suites."""
    parser.addoption("--long", action="store_true", default=False,
                     help="run the long variants (many more iterations)")


@pytest.fixture
def long_run(request: pytest.FixtureRequest) -> bool:
    """True when the suite was started with --long."""
    return bool(request.config.getoption("--long"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The directory of real audit events written by real clusters."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_FIXTURES}")
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def shipped_rules() -> RuleSet:
    """The repository's rules.yaml as users get it."""
    return load_rules(ROOT / "rules.yaml")


@pytest.fixture(scope="session")
def detector(shipped_rules: RuleSet) -> Detector:
    """A detector with the shipped rules and an own namespace of healert-system."""
    return Detector(shipped_rules, own_namespace="healert-system")
