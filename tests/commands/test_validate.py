"""commands/validate.py: the rules file checked, each rule summarised, warnings and --strict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from healert_webhook.cli import main
from healert_webhook.commands.validate import run_validate
from healert_webhook.rules import MAX_LISTED, load_rules

from support.paths import ROOT, SEED_RULES


def validate(path: Path | None, capsys: pytest.CaptureFixture[str],
             strict: bool = False) -> tuple[int, str, str]:
    code = run_validate(path, strict)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_validate_summarises_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(ROOT / "rules.yaml", capsys)
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    assert lines[0].startswith("enabled  kubectl-exec")
    assert any(line.startswith("disabled kubectl-attach") for line in lines)
    assert any(line.startswith("disabled gitops-drift") and "gitops-managed=yes" in line
               for line in lines)
    assert any(line.startswith("audit level: pod-security-relabel: the audit policy must log "
                               "patch, update of namespaces at Request or higher")
               for line in lines)
    assert lines[-1].endswith("valid, 31 rules (12 enabled); namespaces ignored by every rule: "
                              "argocd, cert-manager, istio-system, kube-node-lease, "
                              "kube-public, kube-system, monitoring, vault")


def test_validate_lists_every_error_and_exits_2(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - name: x\n    severity: bad\n    match: {resouce: pods}\n")
    code = main(["validate", str(path), "--strict"])
    captured = capsys.readouterr()
    assert code == 2
    assert f"rules file {path} is invalid (3 problem(s)):" in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("  ")]
    assert len(errors) == 3
    assert "'x' is not a name the backend accepts" in errors[0]
    assert captured.out == ""


def test_validate_defaults_to_local_rules_then_packaged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RULES_PATH", raising=False)
    assert main(["validate"]) == 0
    assert "<packaged rules.yaml>: valid" in capsys.readouterr().out
    (tmp_path / "rules.yaml").write_text("rules: []\n")
    assert main(["validate"]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert "rules.yaml: valid, 0 rules" in out
    assert "nothing will be detected" in err


def test_old_agent_file_warns_with_the_one_line_fix_and_strict_fails(
        capsys: pytest.CaptureFixture[str]) -> None:
    if not SEED_RULES.is_file():
        pytest.skip("seed rules not present")
    code, out, err = validate(SEED_RULES, capsys)
    assert code == 0
    assert "valid, 5 rules (5 enabled)" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1
    assert "rules[2] (config-drift).match: also fires on every kubectl exec, attach and " \
        "port-forward that older kubectl sends as 'create' on pods" in warnings[0]
    assert warnings[0].endswith("add under match: ignore_subresources: "
                                "[exec, attach, portforward]")
    code, _, err = validate(SEED_RULES, capsys, strict=True)
    assert code == 1
    assert "1 warning(s), refused in strict mode" in err


def test_many_warnings_are_listed_fifty_at_a_time_by_validate(tmp_path: Path,
                                                              capsys: Any) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n" + "".join(
        f"  - {{name: rule-{i:03d}, severity: low, match: {{resource: pod}}}}\n"
        for i in range(120)))
    ruleset = load_rules(path)
    assert (len(ruleset.warnings), ruleset.warning_count) == (MAX_LISTED, 120)
    assert main(["validate", "--strict", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("warning: ") for line in err) == MAX_LISTED + 1
    assert "... and 70 more warning(s)" in err[MAX_LISTED]
    assert err[-1] == f"{path}: 120 warning(s), refused in strict mode"


def test_validate_of_a_million_problems_prints_the_first_fifty(tmp_path: Path,
                                                               capsys: Any) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n" + "- 1\n" * 1_000_000)  # 4 MiB: the most a file may hold
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("is invalid (1000000 problem(s)):")
    assert len(err) == 1 + MAX_LISTED + 1
    assert "999950 more problem(s)" in err[-1]
