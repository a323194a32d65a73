"""The recorded events of issue 26's techniques, replayed without a cluster, and the audit
needs of the entity and breadth cases checked against their policy.

- Each case of harness/scenarios_breadth.py has its file in
  tests/fixtures/apiserver-1.37-breadth/ (conformance/record-fixtures.sh breadth), listed
  in the README, every line a v1 audit Event; the entity cases' objects are in
  tests/fixtures/apiserver-1.37-entity-objects/, Secrets without their values.
- `healert-webhook replay` of all of them gives each file exactly its case's friction
  events : a third way in, next to
  the webhook and the tail, on events recorded at RequestResponse.
- the policy the breadth environment runs, the one the agent generates for every rule
  enabled with the cluster view on, records every request the cases need at the level
  they need it (decided as the apiserver decides, by the package's policy evaluator).
- rules.yaml ships each rule of issue 26's table with the table's severity and default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance.harness import breadth_env, breadth_fixtures, needs
from conformance.harness.agents import all_rules_enabled
from conformance.harness.cluster import REPO
from conformance.harness.scenarios_breadth import CASES, TABLE
from conformance.harness.verdict import problems

FOLDER = breadth_fixtures.FOLDER
KEPT = [c for c in CASES if c.fixture]


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped rules with every optional rule on, as the agents of the suite run them."""
    return all_rules_enabled(tmp_path_factory.mktemp("rules") / "rules.yaml")


@pytest.fixture(scope="module")
def replayed(rules: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, dict[str, dict[str, Any]]]:
    """Every file replayed in one run; friction events by file."""
    return breadth_fixtures.replay_all(FOLDER, rules, tmp_path_factory.mktemp("replay"))


def test_every_case_has_its_recorded_events() -> None:
    """One file per case, named in the README, each line a v1 audit Event."""
    assert {p.stem for p in FOLDER.glob("*.jsonl")} == {c.name for c in KEPT}
    readme = (FOLDER / "README.md").read_text()
    for item in KEPT:
        assert f"`{item.name}.jsonl`" in readme
        for line in (FOLDER / f"{item.name}.jsonl").read_text().splitlines():
            event = json.loads(line)
            assert event["kind"] == "Event" and event["apiVersion"] == "audit.k8s.io/v1"


def test_the_entity_objects_are_recorded_without_secret_values() -> None:
    """The entity cases' objects are there, Secrets with their metadata only."""
    folder = breadth_fixtures.ENTITY_OBJECTS
    assert {p.name for p in folder.glob("*.json")} == {"orders.json", "storefront.json",
                                                       "namespaces.json"}
    orders = json.loads((folder / "orders.json").read_text())
    names = {(i["kind"], i["metadata"]["name"]) for i in orders["items"]}
    assert {("Deployment", "orders-api"), ("StatefulSet", "ledger-db-postgresql"),
            ("CronJob", "nightly-report"), ("Job", "nightly-report-manual")} <= names
    for path in folder.glob("*.json"):
        for item in json.loads(path.read_text())["items"]:
            if item["kind"] == "Secret":
                assert "data" not in item and "stringData" not in item, path.name
                assert "not-a-real-secret" not in json.dumps(item), path.name


def test_no_secret_body_was_recorded() -> None:
    """Secrets and token requests were recorded without bodies."""
    for path in FOLDER.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            event = json.loads(line)
            ref = event.get("objectRef") or {}
            if ref.get("resource") == "secrets" or ref.get("subresource") == "token":
                assert event["level"] == "Metadata", (path.name, event["requestURI"])
                assert "requestObject" not in event and "responseObject" not in event


@pytest.mark.parametrize("name", [pytest.param(c.name, marks=c.marks()) for c in KEPT])
def test_replay_gives_the_expected_friction(replayed: dict[str, dict[str, dict[str, Any]]],
                                            rules: Path, name: str) -> None:
    """Replaying a case's recorded events gives exactly its expected friction events."""
    item = next(c for c in KEPT if c.name == name)
    names = {r["name"] for r in yaml.safe_load(rules.read_text())["rules"]}
    found = problems(item, replayed.get(name, {}), names)
    assert not found, "\n".join(found)


def test_every_replayed_friction_event_belongs_to_a_file(
        replayed: dict[str, dict[str, dict[str, Any]]]) -> None:
    """No friction event of the replay falls outside the recorded files' events."""
    assert not replayed.get(""), list(replayed[""].values())


@pytest.mark.parametrize("rule", list(TABLE))
def test_the_shipped_rules_define_the_new_rule(rule: str) -> None:
    """rules.yaml ships each rule of issue 26's table with its severity and default."""
    shipped = {r["name"]: r for r in yaml.safe_load((REPO / "rules.yaml").read_text())["rules"]}
    assert rule in shipped, f"rules.yaml has no rule {rule}"
    assert shipped[rule]["severity"] == TABLE[rule].severity
    assert shipped[rule].get("enabled", True) is TABLE[rule].enabled


def test_the_breadth_policy_records_what_every_case_needs(tmp_path: Path) -> None:
    """The policy the breadth environment runs (generated by the agent for every rule
    enabled, with the cluster view) gives every need of every entity and breadth case its
    level."""
    generated = breadth_env.generated_policy(tmp_path)
    lines = [s.line() for s in needs.shortfalls(generated, needs.all_cases())]
    assert not lines, "\n".join(lines)


def test_the_needs_check_finds_what_a_policy_starves() -> None:
    """The same check finds the needs the hand-written policy the project shipped before
    the generated one records too low (the tools' own kinds at Metadata)."""
    lines = [s.line() for s in needs.shortfalls(breadth_env.POLICIES / "hand-written.yaml",
                                                needs.all_cases())]
    assert any(line.startswith("flux-suspend-merge-patch: needs Request for `patch "
                               "kustomizations`") for line in lines), "\n".join(lines)
