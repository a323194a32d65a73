"""rules.yaml loading and validation: every problem reported at once, with its place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from healert_webhook.detect import Detector, Stats
from healert_webhook.rules import RulesError, default_rules_text, load_rules, parse_rules

from support.events import audit_event, bypass_patch, exec_spdy, exec_ws, port_forward, secret_get
from support.paths import ROOT

SEED_RULES = ROOT.parent / "shared" / "seed" / "rules.yaml"


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, "r.yaml")
    return caught.value.problems


def test_shipped_rules_load_and_package_copy_is_identical() -> None:
    shipped = (ROOT / "rules.yaml").read_text()
    assert default_rules_text() == shipped
    ruleset = parse_rules(shipped)
    assert [r.name for r in ruleset.enabled] == [
        "kubectl-exec", "pipeline-skip", "config-drift", "port-forward", "emergency-access"]
    optional = {r.name for r in ruleset.rules if not r.enabled}
    assert {"kubectl-attach", "ephemeral-debug", "pod-log-access", "rbac-change",
            "pv-deletion"} <= optional
    assert ruleset.warnings == ()


def test_old_agent_rules_load_unchanged_and_detect_the_same() -> None:
    if not SEED_RULES.is_file():
        pytest.skip("seed rules not present")
    old = Detector(load_rules(SEED_RULES))
    new = Detector(load_rules(ROOT / "rules.yaml"))
    cases = [exec_ws(), port_forward(), secret_get(), bypass_patch(),
             audit_event("patch", "deployments", "web", "shop", subresource="scale"),
             audit_event("update", "statefulsets", "db", "shop"),
             audit_event("delete", "pods", "web-1", "shop")]
    for event in cases:
        old_found = {(f.rule, f.key) for f in old.detect([event], Stats())}
        new_found = {(f.rule, f.key) for f in new.detect([event], Stats())}
        assert old_found == new_found, event
    # The one intended difference: exec sent as create no longer counts as drift.
    old_spdy = [f.rule for f in old.detect([exec_spdy()], Stats())]
    new_spdy = [f.rule for f in new.detect([exec_spdy()], Stats())]
    assert old_spdy == ["kubectl-exec", "config-drift"]
    assert new_spdy == ["kubectl-exec"]


def test_typo_in_a_match_key_is_caught_with_line_and_hint() -> None:
    found = problems("""rules:
  - name: kubectl-exec
    severity: high
    match:
      resouce: pods
""")
    assert found == ["r.yaml:5: rules[0] (kubectl-exec).match.resouce: unknown key "
                     "(did you mean 'resource'?); allowed: resource, resources, subresource, "
                     "ignore_subresources, verb, verbs, annotation, namespace_contains, "
                     "ignore_namespaces"]


def test_every_problem_is_reported_at_once() -> None:
    found = problems("""config:
  ignore_namespaces: kube-system
  colour: blue
rules:
  - name: Bad_Name
    severity: critical
    ignore_system: "yes"
    match:
      resources: pods
      verb: [get, list]
      annotation: no-equals-sign
  - name: ok-rule
    severity: low
    match: {verb: get}
  - name: ok-rule
    severity: low
    match: {verb: get}
  - severity: low
  - name: empty-match
    severity: low
    match: {}
  - name: points
    severity: low
    points: 500
    match: {verb: get}
  - just a string
""")
    text = "\n".join(found)
    expected = [
        "r.yaml:2: config.ignore_namespaces: expected a list of strings, got a string",
        "r.yaml:3: config.colour: unknown key",
        "r.yaml:5: rules[0] (Bad_Name).name: 'Bad_Name' is not a name the backend accepts",
        "r.yaml:6: rules[0] (Bad_Name).severity: 'critical' is not one of high, medium, low",
        "r.yaml:7: rules[0] (Bad_Name).ignore_system: expected true or false, got a string",
        "r.yaml:9: rules[0] (Bad_Name).match.resources: expected a list of strings",
        "r.yaml:10: rules[0] (Bad_Name).match.verb: expected a string, got a list",
        "r.yaml:11: rules[0] (Bad_Name).match.annotation: expected \"key=value\"",
        "r.yaml:15: rules[2] (ok-rule).name: duplicate name; first used by rules[1]",
        "r.yaml:18: rules[3]: missing 'name'",
        "r.yaml:18: rules[3]: missing 'match'",
        "r.yaml:21: rules[4] (empty-match).match: needs at least one condition",
        "r.yaml:24: rules[5] (points).points: must be between 1 and 100, got 500",
        "r.yaml:26: rules[6]: expected a rule (a mapping), got a string",
    ]
    for item in expected:
        assert item in text, f"missing {item!r} in:\n{text}"
    assert len(found) == len(expected)


@pytest.mark.parametrize("text,message", [
    ("", "r.yaml:1: the file is empty"),
    ("# only a comment\n", "r.yaml:1: the file is empty"),
    ("rules:\n  - name: x\n   bad indent: [\n", "r.yaml:3:"),
    ("- a\n- b\n", "expected a mapping with 'config' and 'rules', got a list"),
    ("config: {}\n", "missing 'rules'"),
    ("rules: {name: x}\n", "rules: expected a list of rules, got a mapping"),
])
def test_broken_files_are_explained(text: str, message: str) -> None:
    found = problems(text)
    assert any(message in p for p in found), found


def test_invalid_yaml_names_line_and_column() -> None:
    found = problems("rules:\n  - name: \"unterminated\n")
    assert len(found) == 1
    assert found[0].startswith("r.yaml:3:1: invalid YAML")


def test_disabled_rules_are_validated_too() -> None:
    found = problems("""rules:
  - name: later
    severity: hgh
    enabled: false
    match: {verb: get}
""")
    assert found == ["r.yaml:3: rules[0] (later).severity: 'hgh' is not one of high, medium, "
                     "low"]


def test_unknown_tokens_and_verbs_are_warnings_not_errors() -> None:
    ruleset = parse_rules("""rules:
  - name: odd
    severity: low
    description: "{who} did {verb}"
    match: {verb: gte}
""", "r.yaml")
    assert len(ruleset.warnings) == 2
    assert "unknown token {who}" in ruleset.warnings[0]
    assert "verb 'gte'" in ruleset.warnings[1]
    rule = ruleset.rules[0]
    assert rule.template == (("{who} did ", "verb"), ("", None))


def test_non_utf8_and_unreadable_files(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"rules:\n  - name: caf\xe9\n")
    with pytest.raises(RulesError, match="not UTF-8"):
        load_rules(bad)
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "healert_webhook", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60, check=False)


def test_validate_command_summarises_valid_file() -> None:
    done = run_cli("validate", str(ROOT / "rules.yaml"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("enabled  kubectl-exec")
    assert any(line.startswith("disabled kubectl-attach") for line in lines)
    assert lines[-1].endswith("valid, 18 rules (5 enabled); namespaces ignored by every rule: "
                              "argocd, cert-manager, istio-system, kube-node-lease, "
                              "kube-public, kube-system, monitoring, vault")


def test_validate_command_lists_every_error_and_fails(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: x\n    severity: bad\n    match: {resouce: pods}\n")
    done = run_cli("validate", str(path))
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    assert "'x' is not a name the backend accepts" in errors[0]
    assert done.stdout == ""


def test_validate_defaults_to_local_rules_then_packaged(tmp_path: Path) -> None:
    packaged = run_cli("validate", cwd=tmp_path)
    assert packaged.returncode == 0
    assert "<packaged rules.yaml>: valid" in packaged.stdout
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    local = run_cli("validate", cwd=tmp_path)
    assert local.returncode == 0
    assert "rules.yaml: valid, 0 rules" in local.stdout
    assert "nothing will be detected" in local.stderr
