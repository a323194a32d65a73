"""commands/policy.py: the generated policy printed, and a given policy checked."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from healert_webhook import exits
from healert_webhook.auditpolicy.document import Level, parse_policy
from healert_webhook.auditpolicy.evaluate import Identity, Request, evaluate
from healert_webhook.auditpolicy.generate import generate
from healert_webhook.auditpolicy.needs import needs_of
from healert_webhook.cli import main
from healert_webhook.commands.validate import run_validate
from healert_webhook.rules import load_rules

from support.paths import ROOT

RULES = ROOT / "rules.yaml"
HAND_WRITTEN = ROOT / "conformance" / "policies" / "hand-written.yaml"
PROXY = "system:serviceaccount:teleport:teleport"
AUTH = "system:authenticated"


def enabled() -> str:
    """The shipped file's enabled rules, as the policy's header and --check list them."""
    return ", ".join(sorted(rule.name for rule in load_rules(RULES).enabled))


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["policy", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def write(tmp_path: Path, text: str, name: str = "policy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rules_file(tmp_path: Path, *rules: str) -> Path:
    body = "".join(f"  - name: {name}\n    severity: high\n    ignore_system: true\n"
                   f"    match: {match}\n" for name, match in
                   (rule.split(" ", 1) for rule in rules))
    return write(tmp_path, f"rules:\n{body}", "rules.yaml")


def test_policy_prints_the_generated_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--rules", RULES)
    assert (code, err) == (exits.OK, "")
    assert out == generate(needs_of(load_rules(RULES), cluster_view=True))
    assert parse_policy(out).problems == ()
    assert run(capsys, "--rules", RULES)[1] == out, "deterministic"
    header = " ".join(line[2:] for line in out.split("\n\n")[0].splitlines())
    assert f"For the rules: {enabled()}." in header
    assert "# For an agent that watches the cluster (policy --cluster-view on)" in out
    # Where service accounts that may be proxies get people's share, the block says so.
    assert "--- people, and service accounts (any of them may be an access proxy) ---" in out


def test_the_cluster_view_changes_what_is_needed(capsys: pytest.CaptureFixture[str],
                                                 tmp_path: Path) -> None:
    rules = rules_file(tmp_path, "drift-rule {resource: deployments, verb: patch}")
    viewed = parse_policy(run(capsys, "--rules", rules)[1]).policy
    blind = parse_policy(run(capsys, "--rules", rules, "--cluster-view", "off")[1]).policy
    assert viewed is not None and blind is not None
    patch = Request("patch", Identity("alice", (AUTH,)), None, "apps", "deployments", "",
                    "shop", "web")
    assert evaluate(viewed, patch).level is Level.METADATA
    assert evaluate(blind, patch).level is Level.REQUEST_RESPONSE


def test_named_proxies_get_a_block_of_their_own(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--rules", RULES, "--proxy", PROXY)
    assert code == exits.OK
    assert f"# The access proxies named: {PROXY}; other service accounts" in out
    assert "--- people ---" in out
    assert f'"{PROXY}"' in out


def test_check_of_the_generated_policy_finds_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy = write(tmp_path, run(capsys, "--rules", RULES)[1])
    code, out, err = run(capsys, "--rules", RULES, "--check", policy)
    assert (code, err) == (exits.OK, "")
    assert out == (f"{policy}: gives the enabled rules of {RULES} ({enabled()}; cluster "
                   "view on) everything they need\n")


def test_check_names_the_policy_rule_that_starves_a_rule(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The hand-written policy the project shipped records most writes at Metadata."""
    code, out, _ = run(capsys, "--rules", RULES, "--check", HAND_WRITTEN)
    assert code == exits.FAILED
    lines = out.splitlines()
    assert re.match(rf"{re.escape(str(HAND_WRITTEN))}: (\d+) finding\(s\) \(\1 starved\) "
                    "against", lines[-1]), lines[-1]
    starved = [line for line in lines[:-1] if line.startswith("starved: ")]
    assert len(starved) == len(lines) - 1
    assert any(re.fullmatch(r"starved: pipeline-skip needs Request for `create bindings`, .*"
                            r"by a person; policy rule 13 gives Metadata", line)
               for line in starved), starved
    # What an access proxy does for a person is decided on the proxy's service account.
    assert any("by a person through an access proxy" in line and "policy rule 10 gives "
               "Metadata" in line for line in starved)
    # A need of the entity, not of a condition, says why.
    assert any(line.startswith("starved: config-drift needs Request (a generated name is "
                               "only in the object a create carries) for `create cronjobs`")
               for line in starved), starved


def test_check_finds_secrets_unknown_keys_and_starved_proxies(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policy = write(tmp_path, """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    userGroups: ["system:serviceaccounts"]
  - level: RequestResponse
    stages: [ResponseComplete]
    resources:
      - group: ""
        resources: ["secrets"]
  - level: RequestResponse
""")
    code, out, _ = run(capsys, "--rules", RULES, "--check", policy)
    assert code == exits.FAILED
    lines = out.splitlines()
    assert lines[0].startswith("ignored: policy rule 2 (rules[1].stages): unknown key")
    assert lines[1].startswith("exposure: policy rule 2 writes secret values to the audit "
                               "trail: RequestResponse for `get secrets`")
    assert any(line.startswith("starved: kubectl-exec needs Metadata for") and
               "by a person through an access proxy" in line and
               line.endswith("policy rule 1 gives None") for line in lines)
    assert lines[2].startswith("exposure: policy rule 3 writes secret values to the audit "
                               "trail: RequestResponse for `create serviceaccounts/token`")
    assert re.search(r"\(1 ignored, 2 exposure, \d+ starved\)", lines[-1]), lines[-1]


def test_a_policy_the_apiserver_refuses_is_reported(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    policy = write(tmp_path, "apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules: []\n")
    code, out, _ = run(capsys, "--rules", RULES, "--check", policy)
    assert code == exits.FAILED
    assert out.startswith("refused: apiVersion: 'audit.k8s.io/v1beta1' is not served")


@pytest.mark.parametrize("kind", ["missing", "fifo", "binary", "huge"])
def test_an_unreadable_policy_file_is_named(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path, kind: str) -> None:
    path = tmp_path / "policy.yaml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "binary":
        path.write_bytes(b"rules: \xff\n")
    elif kind == "huge":
        path.write_bytes(b"#" * (4 * 1024 * 1024 + 1))
    code, out, err = run(capsys, "--rules", RULES, "--check", path)
    assert (code, out) == (exits.FAILED, "")
    assert err.startswith(f"policy: {path}: "), err
    assert {"missing": "No such file", "fifo": "not a regular file", "binary": "not UTF-8",
            "huge": "larger than"}[kind] in err


def test_a_custom_resource_needs_its_group(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    rules = rules_file(tmp_path, "gadget-drift {resource: gadgets, verb: patch}")
    code, out, err = run(capsys, "--rules", rules)
    assert (code, out) == (exits.CONFIG, "")
    assert "'gadgets' is not a built-in resource" in err
    assert "--group RESOURCE=GROUP" in err and "--any-group" in err
    code, out, _ = run(capsys, "--rules", rules, "--group", "gadgets=example.com")
    assert code == exits.OK and '- group: "example.com"' in out
    code, out, _ = run(capsys, "--rules", rules, "--any-group")
    assert code == exits.OK and '- group: "*"' in out
    # The tools' own resources are known.
    known = rules_file(tmp_path, "suspended {resource: kustomizations, verb: patch}")
    code, out, _ = run(capsys, "--rules", known)
    assert code == exits.OK and '- group: "kustomize.toolkit.fluxcd.io"' in out


@pytest.mark.parametrize(("value", "says"), [
    ("gadgets", "expected RESOURCE=GROUP"),
    ("gadgets=Example.com", "is not an API group name"),
    ("gadgets=apps/v1", "is not an API group name"),
])
def test_a_bad_group_is_refused(capsys: pytest.CaptureFixture[str], value: str,
                                says: str) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["policy", "--group", value])
    assert stopped.value.code == exits.CONFIG
    assert says in capsys.readouterr().err


def test_a_built_in_resource_takes_no_group(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--rules", RULES, "--group", "pods=example.com")
    assert code == exits.CONFIG
    assert "pods is a built-in resource" in err


def test_validate_mentions_the_command_when_bodies_are_needed(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_validate(RULES) == exits.OK
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("audit policy: "))
    assert line.startswith("audit policy: pipeline-skip needs Request"), line
    assert (f": `healert-webhook policy --rules {RULES}` writes the policy these rules need, "
            f"`healert-webhook policy --rules {RULES} --check FILE` checks yours") in line
    lean = rules_file(tmp_path, "exec-only {resource: pods, subresource: exec}")
    assert run_validate(lean) == exits.OK
    assert "audit policy" not in capsys.readouterr().out
