"""Shared fixtures: the real audit fixtures, the shipped rules, an outbox, a test PKI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from healert_webhook.detect import Detector
from healert_webhook.outbox import Outbox
from healert_webhook.rules import RuleSet, load_rules

from support.paths import ROOT, SHARED_FIXTURES
from support.pki import PKI, make_pki

__all__ = ["ROOT"]  # other test modules import ROOT from here

# No agent a test starts may find a real cluster for its view (a developer's KUBECONFIG,
# a CI pod's service account): the view runs against the conformance cluster only.
for _name in ("KUBECONFIG", "HEALERT_KUBECONFIG", "KUBERNETES_SERVICE_HOST"):
    os.environ.pop(_name, None)


# Hypothesis fails an example that takes over 200 ms by default: a timed assert, which on
# a CPU shared with other jobs fails tests that are right. Timing goals live in benchmarks.
settings.register_profile("healert", deadline=None)
settings.load_profile("healert")


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


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    """A real SQLite outbox in the test's state directory, closed afterwards."""
    box = Outbox(tmp_path / "state" / "outbox.db")
    yield box
    box.close()


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    """A test PKI: a CA, a server certificate for 127.0.0.1, client certificates."""
    return make_pki(tmp_path / "pki")
