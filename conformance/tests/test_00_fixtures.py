"""The committed fixtures, replayed: `healert-webhook replay` gives each scenario's expected
friction events (no cluster needed; a third way in, next to the webhook and the tail)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conformance.harness.agents import AGENT, all_rules_enabled
from conformance.harness.breadth_fixtures import RETENTION_DAYS
from conformance.harness.cluster import REPO
from conformance.harness.scenarios import SCENARIOS
from conformance.harness.verdict import judge

FIXTURES = REPO / "tests" / "fixtures" / "apiserver-1.37"
KEPT = [s for s in SCENARIOS if s.fixture]


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped rules with every optional rule on, as the agents of the suite run them."""
    return all_rules_enabled(tmp_path_factory.mktemp("rules") / "rules.yaml")


def _agent(*args: str, cwd: Path) -> str:
    return subprocess.run([str(AGENT), *args], capture_output=True, text=True, timeout=120,
                          check=True, cwd=cwd).stdout


def _replay(path: Path, rules: Path, state: Path) -> dict[str, dict[str, Any]]:
    state.mkdir(parents=True, exist_ok=True)
    # Recorded events grow old: past the backend's retention (30 days by default) the
    # outbox would set them aside as expired and list none of them.
    _agent("replay", "--forward", "--rules", str(rules), "--state-dir", str(state),
           "--backend-retention-days", str(RETENTION_DAYS), str(path), cwd=state)
    listed = _agent("outbox", "list", "--json", "--limit", "100000", "--state-dir", str(state),
                    cwd=state)
    return {row["key"]: row for row in json.loads(listed)}


def test_every_fixture_is_listed_and_well_formed() -> None:
    """One file per kept scenario, named in the README, each line a v1 audit Event."""
    files = {p.stem for p in FIXTURES.glob("*.jsonl")}
    assert files == {s.name for s in KEPT}
    readme = (FIXTURES / "README.md").read_text()
    for name in files:
        assert f"`{name}.jsonl`" in readme
        for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines():
            event = json.loads(line)
            assert event["kind"] == "Event" and event["apiVersion"] == "audit.k8s.io/v1"


@pytest.mark.parametrize("name", [s.name for s in KEPT])
def test_fixture_replays_to_the_expected_friction(name: str, rules: Path,
                                                  tmp_path: Path) -> None:
    """Replaying a fixture gives exactly the scenario's expected friction events."""
    path = FIXTURES / f"{name}.jsonl"
    assert path.exists(), f"{path} is missing: run conformance/record-fixtures.sh"
    scenario = next(s for s in SCENARIOS if s.name == name)
    if scenario.recorded is not None:  # recorded under another policy than the suite's
        scenario = replace(scenario, expect=scenario.recorded)
    names = {line.split(":", 1)[1].strip() for line in rules.read_text().splitlines()
             if line.strip().startswith("- name:")}
    judge(scenario, _replay(path, rules, tmp_path / "state"), names)
