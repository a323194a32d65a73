"""rules.yaml loading and validation: every problem reported at once, with its place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from healert_webhook.detect import Detector
from healert_webhook.records import Stats
from healert_webhook.rules import (
    DEFAULT_GITOPS,
    MAX_LISTED,
    RulesError,
    Superseded,
    default_rules_text,
    load_rules,
    parse_rules,
)
from healert_webhook.rules.conditions import GitOpsManaged, Groups, Response, UserAgent, Users

from support.events import (
    audit_event,
    bypass_patch,
    exec_spdy,
    exec_ws,
    port_forward,
    secret_get,
    through_proxy,
)
from support.paths import ROOT, SEED_RULES


def problems(text: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_rules(text, "r.yaml")
    return caught.value.problems


def test_shipped_rules_load_and_package_copy_is_identical() -> None:
    shipped = (ROOT / "rules.yaml").read_text()
    assert default_rules_text() == shipped
    ruleset = parse_rules(shipped)
    assert [r.name for r in ruleset.enabled] == [
        "kubectl-exec", "pipeline-skip", "config-drift", "port-forward", "emergency-access",
        "kubelet-proxy", "pod-proxy", "gitops-suspend", "policy-exception",
        "pod-security-relabel", "token-mint", "secret-write"]
    optional = {r.name for r in ruleset.rules if not r.enabled}
    assert {"kubectl-attach", "ephemeral-debug", "pod-log-access", "rbac-change",
            "pv-deletion", "manual-pod-delete", "eviction-by-hand", "csr-approval",
            "service-exposure", "namespace-deletion"} <= optional
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
                     "ignore_subresources, verb, verbs, ignore_namespaces, "
                     "namespace_contains, users, ignore_users, groups, ignore_groups, "
                     "user_agent_contains, ignore_user_agent_contains, response, "
                     "annotation, gitops_managed, object"]


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












def test_applying_the_fix_silences_the_warning_and_stops_the_double_count() -> None:
    if not SEED_RULES.is_file():
        pytest.skip("seed rules not present")
    text = SEED_RULES.read_text()
    anchor = "      verbs:\n        - create\n        - update\n        - patch\n"
    assert text.count(anchor) == 1
    fixed = parse_rules(text.replace(
        anchor, anchor + "      ignore_subresources: [exec, attach, portforward]\n"))
    assert fixed.warnings == ()
    assert [f.rule for f in Detector(fixed).detect([exec_spdy()], Stats())] == ["kubectl-exec"]


def test_a_partial_ignore_list_names_only_what_is_missing() -> None:
    ruleset = parse_rules("""rules:
  - name: drift
    severity: high
    match: {resources: [pods], verbs: [create], ignore_subresources: [exec, eviction]}
""", "r.yaml")
    assert len(ruleset.warnings) == 1
    assert "every kubectl attach and port-forward" in ruleset.warnings[0]
    assert ruleset.warnings[0].endswith(
        "ignore_subresources: [eviction, exec, attach, portforward]")


@pytest.mark.parametrize("match,expected", [
    ("resource: pod", "resource 'pod' is never audited: the apiserver writes the plural, "
                      "lower-case name (did you mean 'pods'?)"),
    ("resources: [Secrets]", "resource 'Secrets' is never audited: the apiserver writes the "
                             "plural, lower-case name (did you mean 'secrets'?)"),
    # a custom resource named by its kind: the plural the apiserver writes, not the kind
    ("resource: PolicyException", "resource 'PolicyException' is never audited: the "
                                  "apiserver writes the plural, lower-case name (did you "
                                  "mean 'policyexceptions'?)"),
    ("resource: policyexception", "did you mean 'policyexceptions'?"),
    ("resource: NetworkPolicy", "did you mean 'networkpolicies'?"),
    ("resource: gateway", "did you mean 'gateways'?"),
    ("resource: deploy", "did you mean 'deployments'?"),
    ("resource: pods/exec", "write resource: pods and subresource: exec"),
    ("verb: GET", "verb 'GET' is not one the apiserver audits (verbs are lower case: 'get')"),
    ("verbs: [exec]", "verb 'exec' is not one the apiserver audits ('exec' is a subresource: "
                      "write subresource: exec and leave the verb out"),
    ("verb: port-forward", "write subresource: portforward"),
    ("verb: connect", "audited as get, or create from older kubectl"),
    ("verb: gte", "verb 'gte' is not one the apiserver audits (did you mean 'get'?)"),
    ("resource: pods, subresource: port-forward",
     "subresource 'port-forward' is never audited: the apiserver writes 'portforward'"),
    ("resource: pods, subresource: logs", "the apiserver writes 'log'"),
    ("verbs: [list]", "verb 'list': such requests name no object, so they are never charged "
                      "to an entity (skipped as no_name)"),
])
def test_values_the_apiserver_never_writes_are_warnings_with_a_fix(match: str,
                                                                   expected: str) -> None:
    ruleset = parse_rules("rules:\n  - name: rule-one\n    severity: low\n"
                          f"    match: {{{match}}}\n", "r.yaml")
    assert any(expected in w for w in ruleset.warnings), ruleset.warnings


def test_plural_lower_case_resources_draw_no_warning() -> None:
    ruleset = parse_rules("rules:\n  - name: rule-one\n    severity: low\n    match:\n"
                          "      resources: [policyexceptions, kustomizations, gateways]\n",
                          "r.yaml")
    assert ruleset.warnings == ()


def test_the_new_match_fields_compile() -> None:
    ruleset = parse_rules("""rules:
  - name: rule-one
    severity: low
    match:
      resource: secrets
      users: ["oidc:*", kate]
      ignore_users: oidc:bot
      groups: [sre]
      ignore_groups: ["oidc:interns*"]
      user_agent_contains: KubeCtl
      ignore_user_agent_contains: [Terraform, helm]
      response: [denied, error]
      gitops_managed: false
""")
    rule = ruleset.rules[0]
    users, groups = rule.check("user"), rule.check("group")
    agents, response = rule.check("user_agent"), rule.check("response")
    gitops = rule.check("gitops")
    assert isinstance(users, Users) and users.include is not None
    assert users.include.exact == {"kate"} and users.include.prefixes == ("oidc:",)
    assert users.exclude is not None and users.exclude.matches("oidc:bot")
    assert isinstance(groups, Groups) and groups.exclude is not None
    assert groups.exclude.matches("oidc:interns-2026")
    assert isinstance(agents, UserAgent) and agents.include == ("kubectl",)
    assert agents.exclude == ("terraform", "helm")
    assert isinstance(response, Response) and response.classes == {"denied", "error"}
    assert isinstance(gitops, GitOpsManaged) and gitops.managed is False
    # the checks are kept in the order they are tried
    assert [c.reasons[0] for c in rule.checks] == [
        "user", "group", "user_agent", "response", "gitops_controller"]
    assert "user=kate|oidc:*" in rule.summary()
    # Without `response` the one check is the default: every answer but 404 Not Found.
    plain = parse_rules("rules:\n  - {name: rule-two, severity: low, match: {verb: get}}\n"
                        ).rules[0]
    assert [(type(c), c.summary()) for c in plain.checks] == [(Response, "")]


def test_mistakes_in_the_new_fields_are_errors() -> None:
    found = problems("""rules:
  - name: rule-one
    severity: low
    match:
      users: ["*@example.com"]
      groups: "*"
      response: 403
  - name: rule-two
    severity: low
    match: {users: [], response: [allowed], gitops_managed: "yes",
            user_agent_contains: [""]}
""")
    text = "\n".join(found)
    for item in [
        "r.yaml:5: rules[0] (rule-one).match.users: '*@example.com': '*' may only end a name",
        "r.yaml:6: rules[0] (rule-one).match.groups: '*' alone matches everyone",
        "r.yaml:7: rules[0] (rule-one).match.response: takes a class of response, not a code",
        "r.yaml:10: rules[1] (rule-two).match.users: an empty list matches nobody",
        "r.yaml:10: rules[1] (rule-two).match.response: 'allowed' is not one of success, denied, "
        "error",
        "r.yaml:10: rules[1] (rule-two).match.gitops_managed: expected true or false, got a string",
        "r.yaml:11: rules[1] (rule-two).match.user_agent_contains[0]: empty string",
    ]:
        assert item in text, f"missing {item!r} in:\n{text}"
    assert len(found) == 7


def test_users_that_ignore_system_always_skips_are_a_warning() -> None:
    ruleset = parse_rules("""rules:
  - name: ci-bots
    severity: low
    ignore_system: true
    match: {resource: secrets, users: ["system:serviceaccount:ci:*"]}
""", "r.yaml")
    assert any("ignore_system: true skips: the rule never fires" in w
               for w in ruleset.warnings)


def test_gitops_config_defaults_overrides_and_checks() -> None:
    assert parse_rules("rules: []\n").gitops == DEFAULT_GITOPS
    ruleset = parse_rules("""config:
  gitops:
    labels: [app.kubernetes.io/instance, example.com/git]
    field_managers: []
    controllers: [system:serviceaccount:ops:deployer, "system:serviceaccount:flux-*"]
rules: []
""", "r.yaml")
    gitops = ruleset.gitops
    assert gitops.annotations == DEFAULT_GITOPS.annotations
    assert gitops.labels == ("app.kubernetes.io/instance", "example.com/git")
    assert gitops.field_managers == frozenset()
    assert gitops.controllers.matches("system:serviceaccount:flux-system:helm-controller")
    assert not gitops.controllers.matches("system:serviceaccount:argocd:"
                                          "argocd-application-controller")
    assert any("app.kubernetes.io/instance is set by Helm" in w for w in ruleset.warnings)
    assert problems("config:\n  gitops: [x]\nrules: []\n") == [
        "r.yaml:2: config.gitops: expected a mapping with annotations, labels, "
        "field_managers, controllers, got a list"]
    assert "config.gitops.owners: unknown key" in problems(
        "config:\n  gitops: {owners: [x]}\nrules: []\n")[0]


def test_old_agent_rules_see_people_behind_proxies_too() -> None:
    if not SEED_RULES.is_file():
        pytest.skip("seed rules not present")
    old = Detector(load_rules(SEED_RULES))
    found = old.detect([through_proxy(exec_ws(), "teleport")], Stats())
    assert [f.event["actor"] for f in found] == ["alice@example.com"]


# --- big files: the first problems listed, the rest counted -----------------------

def test_a_file_of_many_problems_lists_the_first_fifty_and_counts_the_rest() -> None:
    with pytest.raises(RulesError) as caught:
        parse_rules("rules:\n" + "- 1\n" * 100_000, "r.yaml")
    exc = caught.value
    assert exc.total == 100_000
    assert len(exc.problems) == MAX_LISTED == 50
    assert exc.problems[0] == "r.yaml:2: rules[0]: expected a rule (a mapping), got a number"
    assert exc.problems[-1].startswith("r.yaml:51: rules[49]:")
    assert exc.lines()[-1] == ("... and 99950 more problem(s), not listed (the first 50 "
                               "are, in file order)")
    assert len(str(exc).splitlines()) == 52


def test_the_problems_listed_are_the_first_in_the_file_whatever_their_order_found() -> None:
    # 60 unknown keys on lines 3-62, then (found last) the missing list, on line 1
    text = "config:\n  gitops:\n" + "".join(f"    bogus{i}: 1\n" for i in range(60))
    found = problems(text)
    assert len(found) == MAX_LISTED
    assert found[0] == "r.yaml:1: top level: missing 'rules' (the list of detection rules)"
    assert [int(p.split(":")[1]) for p in found[1:]] == list(range(3, 3 + MAX_LISTED - 1))






def test_a_superseded_load_stops_inside_the_yaml_and_inside_the_rules() -> None:
    asked: list[int] = []

    def after(calls: int) -> Any:
        def superseded() -> bool:
            asked.append(1)
            return len(asked) >= calls
        return superseded

    with pytest.raises(Superseded):  # while composing the nodes
        parse_rules("rules:\n" + "- 1\n" * 100_000, "r.yaml", after(2))
    asked.clear()
    text = "rules:\n" + "".join(f"  - {{name: rule-{i:04d}, severity: low, match: "
                                f"{{verb: get}}}}\n" for i in range(1000))
    with pytest.raises(Superseded):  # while validating the rules (few nodes: asked there)
        parse_rules(text, "r.yaml", after(3))
    assert parse_rules(text, "r.yaml", lambda: False).rules[-1].name == "rule-0999"


# --- the object condition and the opt-out of config.ignore_namespaces (issue 26) -----

def test_the_object_condition_compiles_its_tests_and_their_audit_level() -> None:
    from healert_webhook.rules.conditions import ObjectFields

    ruleset = parse_rules("""rules:
  - name: exposed
    severity: low
    match:
      resource: services
      verbs: [create, patch]
      object: {path: spec.type, in: [NodePort, LoadBalancer]}
  - name: restarted
    severity: low
    match:
      resource: pods
      verb: delete
      object:
        - path: metadata.ownerReferences[].controller
          equals: true
  - name: exceptions
    severity: low
    match:
      resources: [policyexceptions, namespaces]
      object:
        - resources: [policyexceptions]
        - path: 'metadata.labels."admission.gatekeeper.sh/ignore"'
          present: true
          resources: namespaces
""")
    exposed, restarted, exceptions = (r.check("object") for r in ruleset.rules)
    assert isinstance(exposed, ObjectFields) and exposed.level == "Request"
    assert exposed.tests[0].path is not None
    assert exposed.tests[0].path.tokens == ("spec", "type")
    assert exposed.tests[0].values == ("NodePort", "LoadBalancer")
    assert "object=spec.type in [NodePort, LoadBalancer]" in ruleset.rules[0].summary()
    assert isinstance(restarted, ObjectFields) and restarted.level == "RequestResponse"
    assert restarted.tests[0].path is not None
    assert restarted.tests[0].path.tokens == ("metadata", "ownerReferences", None,
                                              "controller")
    assert restarted.need() == ("the audit policy must log delete of pods at RequestResponse "
                                "(the object of a read or a delete is only in the answer)")
    assert isinstance(exceptions, ObjectFields) and exceptions.level == "RequestResponse"
    assert exceptions.tests[1].path is not None
    assert exceptions.tests[1].path.tokens == (
        "metadata", "labels", "admission.gatekeeper.sh/ignore")
    assert "object=any policyexceptions or metadata.labels." in ruleset.rules[2].summary()


def test_mistakes_in_the_object_condition_are_errors_with_their_line() -> None:
    found = problems("""rules:
  - name: rule-one
    severity: low
    match:
      object:
        - {path: spec.type}
        - {path: spec.type, equals: a, in: [b]}
        - {equals: a}
        - {path: 'metadata.labels."open', present: true}
        - {path: spec..type, present: true}
        - {path: spec.type, equals: null}
        - {path: spec.type, in: []}
        - {path: spec.type, in: NodePort}
        - {path: spec.type, equal: NodePort}
        - {resources: []}
        - "spec.type"
  - name: rule-two
    severity: low
    config_ignore_namespaces: "no"
    match: {object: spec.type}
""")
    text = "\n".join(found)
    for item in [
        "r.yaml:6: rules[0] (rule-one).match.object[0]: needs exactly one of present, "
        "equals, in",
        "r.yaml:7: rules[0] (rule-one).match.object[1]: needs exactly one of present, "
        "equals, in (got equals, in)",
        "r.yaml:8: rules[0] (rule-one).match.object[2]: missing 'path'",
        "r.yaml:9: rules[0] (rule-one).match.object[3].path: 'metadata.labels.\"open': a "
        "quoted key is not closed",
        "r.yaml:10: rules[0] (rule-one).match.object[4].path: 'spec..type': a key is missing "
        "at character 6",
        "r.yaml:11: rules[0] (rule-one).match.object[5].equals: null is no value to compare "
        "with; to test that the field is absent write present: false",
        "r.yaml:12: rules[0] (rule-one).match.object[6].in: an empty list matches no value",
        "r.yaml:13: rules[0] (rule-one).match.object[7].in: expected a list of values, got a "
        "string (for one value write equals)",
        "r.yaml:14: rules[0] (rule-one).match.object[8].equal: unknown key (did you mean "
        "'equals'?)",
        "r.yaml:14: rules[0] (rule-one).match.object[8]: needs exactly one of present, "
        "equals, in",
        "r.yaml:15: rules[0] (rule-one).match.object[9].resources: an empty list matches no "
        "object",
        "r.yaml:16: rules[0] (rule-one).match.object[10]: expected a test (a mapping with "
        "path and one of present, equals, in), got a string",
        "r.yaml:19: rules[1] (rule-two).config_ignore_namespaces: expected true or false, got "
        "a string",
        "r.yaml:20: rules[1] (rule-two).match.object: expected a test (a mapping with path "
        "and one of present, equals, in) or a list of them, got a string",
    ]:
        assert item in text, f"missing {item!r} in:\n{text}"
    assert len(found) == 14, text


def test_object_values_of_the_wrong_type_and_unaudited_resources_are_warnings() -> None:
    ruleset = parse_rules("""rules:
  - name: rule-one
    severity: low
    match:
      object:
        - {path: 'metadata.annotations."argocd.argoproj.io/skip-reconcile"', equals: true}
        - {path: spec.suspend, equals: true, resources: [Kustomization]}
""", "r.yaml")
    assert ruleset.warnings == (
        "r.yaml:6: rules[0] (rule-one).match.object[0]: annotations hold strings, so true "
        "never matches: quote it ('\"true\"')",
        "r.yaml:7: rules[0] (rule-one).match.object[1].resources: resource 'Kustomization' is "
        "never audited: the apiserver writes the plural, lower-case name (did you mean "
        "'kustomizations'?)")


def test_validate_says_what_each_rule_needs_of_the_audit_policy(tmp_path: Path) -> None:
    import io

    from healert_webhook.commands.validate import run_validate

    out = io.StringIO()
    assert run_validate(ROOT / "rules.yaml", out=out, err=io.StringIO()) == 0
    needs = [line for line in out.getvalue().splitlines() if line.startswith("audit level")]
    assert [line.split(":")[1].strip() for line in needs] == [
        "gitops-suspend", "policy-exception", "pod-security-relabel"]
    assert "log patch, update of applications, buckets," in needs[0]
    assert "and any resource (for metadata.annotations.\"kustomize.toolkit.fluxcd.io/" \
           "reconcile\") at Request or higher" in needs[0]
    everything = tmp_path / "rules.yaml"
    everything.write_text((ROOT / "rules.yaml").read_text().replace("enabled: false",
                                                                  "enabled: true"))
    out = io.StringIO()
    assert run_validate(everything, out=out, err=io.StringIO()) == 0
    assert "audit level: manual-pod-delete: the audit policy must log delete of pods at " \
           "RequestResponse" in out.getvalue()
    assert "audit level: gitops-drift: log updates and patches of these objects at " \
           "RequestResponse" in out.getvalue()


def test_absent_on_a_create_is_a_warning() -> None:
    text = """rules:
  - name: relabel
    severity: low
    match:
      resource: namespaces
      {verbs}
      object: {{path: 'metadata.labels."pod-security.kubernetes.io/enforce"', present: false}}
"""
    warned = parse_rules(text.format(verbs="verbs: [create, patch]"), "r.yaml").warnings
    assert warned == ("r.yaml:5: rules[0] (relabel).match.object: present: false "
                      "(metadata.labels.\"pod-security.kubernetes.io/enforce\") matches every "
                      "object created without the field, not only its removal: give the rule "
                      "verbs without create (verbs: [update, patch])",)
    assert parse_rules(text.format(verbs="verb: delete"), "r.yaml").warnings == ()
    assert len(parse_rules(text.format(verbs=""), "r.yaml").warnings) == 1
