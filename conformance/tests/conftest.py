"""One real control plane and both agents for the whole suite, scenarios run once.

Environment variables:
  HEALERT_CONFORMANCE_BIN       folder with kube-apiserver, kubectl, etcd (default: build.sh)
  HEALERT_CONFORMANCE_AGENT     the healert-webhook executable (default: .venv/bin)
  HEALERT_CONFORMANCE_RULES     the rules file to enable every rule of (default: rules.yaml)
  HEALERT_CONFORMANCE_WORK      working folder (default: pytest's tmp folder); kept afterwards
  HEALERT_CONFORMANCE_FIXTURES  also write each scenario's audit events there as fixtures
  HEALERT_CONFORMANCE_BREADTH_POLICY    the audit policy of the entity and breadth cases
                                        (default: the one the agent generates for its
                                        rules, every one enabled, with the cluster view)
  HEALERT_CONFORMANCE_BREADTH_FIXTURES  also write each breadth case's audit events there
  HEALERT_CONFORMANCE_ENTITY_OBJECTS    also write the entity cases' objects there
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conformance.harness import breadth_env, fixtures
from conformance.harness.case_checks import CaseChecks
from conformance.harness.env import Environment
from conformance.harness.runner import Outcome, Runner
from conformance.harness.scenarios import SCENARIOS


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    """The started environment; stopped at the end of the session."""
    chosen = os.environ.get("HEALERT_CONFORMANCE_WORK")
    root = Path(chosen) if chosen else tmp_path_factory.mktemp("conformance")
    if chosen:
        _fresh(root)
    environment = Environment(root).start()
    try:
        yield environment
    finally:
        environment.stop()


def _fresh(root: Path) -> None:
    """Empty a working folder of an earlier run; refuse any other non-empty folder."""
    mark = root / ".healert-conformance"
    if root.exists() and any(root.iterdir()):
        if not mark.exists():
            raise RuntimeError(f"{root} is not empty and not a conformance working folder")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    mark.touch()


@pytest.fixture(scope="session")
def runner(env: Environment) -> Runner:
    """A runner whose baseline is the state right after bootstrap."""
    run = Runner(env, env.root / "work")
    run.baseline()
    return run


@pytest.fixture(scope="session")
def outcomes(runner: Runner, env: Environment) -> dict[str, Outcome]:
    """Every scenario run once, in order; fixtures written where asked."""
    results = {s.name: runner.run(s) for s in SCENARIOS}
    version = env.cluster.bin.version()
    fixtures.write(results.values(), env.root / "fixtures", version)
    target = os.environ.get("HEALERT_CONFORMANCE_FIXTURES")
    if target:
        fixtures.write(results.values(), Path(target), version)
    return results


@pytest.fixture(scope="session")
def rule_names(env: Environment) -> set[str]:
    """Names of the rules the agents run."""
    doc = yaml.safe_load(env.rules.read_text())
    return {rule["name"] for rule in doc.get("rules", [])}


@pytest.fixture(scope="session")
def breadth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[breadth_env.BreadthEnvironment]:
    """The entity and breadth cases' own control plane (see breadth_env), its agents
    started before its cluster; stopped at the end of the session."""
    chosen = os.environ.get("HEALERT_CONFORMANCE_WORK")
    if chosen:
        root = Path(chosen) / "breadth"
        _fresh(root)
    else:
        root = tmp_path_factory.mktemp("breadth")
    started = breadth_env.start(root)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def breadth_rule_names(breadth: breadth_env.BreadthEnvironment) -> set[str]:
    """Names of the rules the breadth environment's agents run."""
    doc = yaml.safe_load(breadth.env.rules.read_text())
    return {rule["name"] for rule in doc.get("rules", [])}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A `CaseChecks` class's tests run once per case of its module (`name`)."""
    cls = metafunc.cls
    if cls is not None and issubclass(cls, CaseChecks) and "name" in metafunc.fixturenames:
        metafunc.parametrize("name", [c.name for c in cls.cases])
