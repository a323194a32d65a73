"""What each rule needs, read off the rules file: scope, levels, actors, groups, entities."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from policy_needs import GITOPS_CONTROLLERS, IGNORED, enabled_needs, optional_needs

from healert_webhook.auditpolicy import needs as needs_module
from healert_webhook.auditpolicy.check import check
from healert_webhook.auditpolicy.document import Level, parse_policy
from healert_webhook.auditpolicy.evaluate import Identity, Request, evaluate
from healert_webhook.auditpolicy.generate import GenerateError, generate
from healert_webhook.auditpolicy.needs import (
    ANY,
    PEOPLE,
    STREAMS,
    Actor,
    Need,
    NeedsError,
    Target,
    condition_level,
    needs_of,
    rule_level,
    rule_needs,
)
from healert_webhook.rules import RuleSet, load_rules, parse_rules
from healert_webhook.rules.conditions import BY_KEY, Annotation, GitOpsManaged
from healert_webhook.rules.model import Check

from support.paths import ROOT

ALICE = Identity("alice", ("system:authenticated",))


def ruleset(body: str, config: str = "") -> RuleSet:
    return parse_rules(f"config:\n{config or '  ignore_namespaces: [kube-system]'}\n"
                       f"rules:\n{body}")


def rule(name: str, match: str, *, system: bool = False) -> str:
    return (f"  - name: {name}\n    severity: high\n    ignore_system: {str(not system).lower()}"
            f"\n    match: {match}\n")


def one_rule(match: str, **kw: bool) -> tuple[Need, ...]:
    return needs_of(ruleset(rule("r-one", match, **kw)), cluster_view=True).needs


def all_rules() -> RuleSet:
    text = (ROOT / "rules.yaml").read_text().replace("enabled: false", "enabled: true")
    return parse_rules(text)


def table_level(key: str) -> Level:
    found = Level.from_text(BY_KEY[key].level)
    assert found is not None
    return found


# --- scope ------------------------------------------------------------------------------

def test_scope_becomes_targets() -> None:
    (exec_need,) = one_rule("{resource: pods, subresource: exec}")
    assert exec_need.targets == (Target("pods", frozenset(), frozenset({"exec"})),)
    (drift, _entity) = one_rule("{resources: [pods, deployments], verbs: [patch, create], "
                                "ignore_subresources: [exec, status]}")
    assert drift.targets == tuple(
        Target(name, frozenset({"patch", "create"}), None, frozenset({"exec", "status"}))
        for name in ("deployments", "pods"))
    (anything,) = one_rule("{verb: delete}")
    assert anything.targets == (Target(ANY, frozenset({"delete"}), None),)


def test_the_shipped_rules_read_as_the_hand_written_needs() -> None:
    """Where no body is needed, what is derived is what was read off rules.yaml by hand."""
    derived: dict[str, Need] = {}
    for need in needs_of(all_rules(), cluster_view=True).needs:
        derived.setdefault(need.rule, need)  # the conditions' need comes first
    for hand in (*enabled_needs(), *optional_needs()):
        if hand.rule in ("pipeline-skip", "gitops-drift"):
            continue  # bodies: see the level tests
        got = derived[hand.rule]
        assert set(got.targets) == set(hand.targets), hand.rule
        assert (got.actors, got.ignore_namespaces, got.namespace_contains) == \
            (hand.actors, hand.ignore_namespaces, hand.namespace_contains), hand.rule
        assert got.level is Level.METADATA and not got.managed_fields, hand.rule


# --- levels -----------------------------------------------------------------------------

def test_a_rule_needs_the_highest_level_of_its_conditions() -> None:
    rules = all_rules()
    by_name = {r.name: r for r in rules.rules}
    assert rule_level(by_name["kubectl-exec"], cluster_view=False) is Level.METADATA
    assert rule_level(by_name["pipeline-skip"], cluster_view=False) is table_level("annotation")
    assert rule_level(by_name["gitops-drift"], cluster_view=False) \
        is table_level("gitops_managed")
    found: dict[str, Need] = {}
    for need in needs_of(rules, cluster_view=False).needs:
        found.setdefault(need.rule, need)
    assert found["gitops-drift"].managed_fields
    assert found["pipeline-skip"].level is table_level("annotation")


def test_managed_fields_only_when_field_managers_count() -> None:
    body = rule("drift-rule", "{resource: deployments, verb: patch, gitops_managed: true}")
    plain = needs_of(ruleset(body), cluster_view=False).needs[0]
    assert plain.managed_fields
    lean = needs_of(ruleset(body, "  gitops:\n    field_managers: []"),
                    cluster_view=False).needs[0]
    assert not lean.managed_fields


def test_the_cluster_view_level_is_used_when_the_view_is_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocked: no condition has `level_with_view` yet; a stand-in row gives one, as the
    table will for `gitops_managed` (ownership read from the view, not the object)."""
    row = SimpleNamespace(level="RequestResponse", level_with_view="Metadata")
    assert condition_level(row, cluster_view=True) is Level.METADATA  # type: ignore[arg-type]
    assert condition_level(row, cluster_view=False) \
        is Level.REQUEST_RESPONSE  # type: ignore[arg-type]
    monkeypatch.setitem(needs_module._BY_REASONS, GitOpsManaged.reasons, row)
    body = rule("drift-rule", "{resource: deployments, verb: patch, gitops_managed: true}")
    viewed = needs_of(ruleset(body), cluster_view=True).needs
    assert [(n.level, n.managed_fields) for n in viewed] == [(Level.METADATA, False)]
    blind = needs_of(ruleset(body), cluster_view=False).needs
    assert [(n.level, n.managed_fields) for n in blind] == [(Level.REQUEST_RESPONSE, True)]


def test_a_condition_without_a_row_gets_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(needs_module._BY_REASONS, GitOpsManaged.reasons)
    body = rule("drift-rule", "{resource: deployments, verb: patch, gitops_managed: true}")
    assert needs_of(ruleset(body), cluster_view=True).needs[0].level \
        is Level.REQUEST_RESPONSE


class _OwnLevel(Check):
    """Mocked: a check that states its own level, as one whose reading depends on the
    rule's verbs does (no such condition in this table yet)."""

    __slots__ = ("level",)
    reasons = Annotation.reasons

    def __init__(self, level: str) -> None:
        self.level = level


def test_a_check_that_states_its_level_wins_over_its_row() -> None:
    (base,) = load_rules(ROOT / "rules.yaml").enabled[:1]
    for text, level in (("RequestResponse", Level.REQUEST_RESPONSE),
                        ("Metadata", Level.METADATA), ("Everything", Level.REQUEST_RESPONSE)):
        stated = replace(base, checks=(*base.checks, _OwnLevel(text)))
        assert rule_level(stated, cluster_view=True) is level, text


def test_a_rule_out_of_the_config_namespaces_keeps_only_its_own() -> None:
    """Mocked: a rule that opts out of config.ignore_namespaces (a field this rule model
    does not have yet), with its own ignore_namespaces."""
    rules = ruleset(rule("in-argocd", "{resource: applications, verb: patch, "
                                     "ignore_namespaces: [vault]}"))
    real = rules.enabled[0]
    opted = SimpleNamespace(**{name: getattr(real, name) for name in (
        "name", "checks", "ignore_system", "resources", "subresource",
        "ignore_subresources", "verbs")}, config_namespaces=False)
    need = rule_needs(opted, rules, cluster_view=True, groups={})[0]  # type: ignore[arg-type]
    assert need.ignore_namespaces == {"vault"}
    assert needs_of(rules).needs[0].ignore_namespaces == {"kube-system", "vault"}


def test_streams_need_no_body() -> None:
    """exec, attach, port-forward and proxy carry no object: Metadata shows what can be."""
    body_level = table_level("annotation")
    assert body_level > Level.METADATA
    bodies, streams = one_rule('{verbs: [create, patch], annotation: "a/b=c"}')[:2]
    assert bodies.level is body_level
    assert bodies.targets == (Target(ANY, frozenset({"create", "patch"}), None, STREAMS),)
    assert streams.level is Level.METADATA
    assert streams.targets == (Target(ANY, frozenset({"create", "patch"}), STREAMS),)
    (only,) = one_rule('{resource: pods, subresource: exec, annotation: "a/b=c"}')
    assert only.level is Level.METADATA


# --- the entity -------------------------------------------------------------------------

def test_without_the_view_writes_carry_their_entity() -> None:
    rules = ruleset(rule("drift-rule", "{resources: [pods], verbs: [create, patch, delete]}"))
    base, entity = needs_of(rules, cluster_view=False).needs
    assert base.level is Level.METADATA
    assert entity.level is Level.REQUEST_RESPONSE and "labels" in entity.reason
    assert entity.targets == (Target("pods", frozenset({"create", "patch"}), None, STREAMS),)


def test_with_the_view_only_a_create_needs_its_object() -> None:
    rules = ruleset(rule("drift-rule", "{resources: [pods], verbs: [create, patch]}"))
    base, entity = needs_of(rules, cluster_view=True).needs
    assert base.level is Level.METADATA
    assert entity.level is Level.REQUEST and "generated name" in entity.reason
    assert entity.targets == (Target("pods", frozenset({"create"})),)
    reads = ruleset(rule("reads", "{resource: secrets, verb: get}"))
    assert len(needs_of(reads, cluster_view=False).needs) == 1


# --- who and where ----------------------------------------------------------------------

def test_actors_follow_ignore_system() -> None:
    assert one_rule("{resource: pods, subresource: exec}")[0].actors == PEOPLE
    assert one_rule("{resource: roles, verb: delete}", system=True)[0].actors == \
        PEOPLE | {Actor.SYSTEM}


def test_namespaces_the_rule_skips() -> None:
    (need,) = one_rule("{resource: secrets, verb: get, ignore_namespaces: [vault], "
                       "namespace_contains: Prod}")
    assert need.ignore_namespaces == {"kube-system", "vault"}
    assert need.namespace_contains == "prod"
    shipped = needs_of(load_rules(ROOT / "rules.yaml")).needs
    assert next(n for n in shipped if n.rule == "kubectl-exec").ignore_namespaces == IGNORED


def test_gitops_controllers_are_automation_and_proxies_are_passed_on() -> None:
    got = needs_of(load_rules(ROOT / "rules.yaml"), proxies=["system:serviceaccount:t:t"])
    assert got.automation == tuple(sorted(GITOPS_CONTROLLERS))
    assert got.proxies == ("system:serviceaccount:t:t",)
    prefixed = ruleset(rule("exec-too", "{resource: pods, subresource: exec}"),
                       '  gitops:\n    controllers: ["system:serviceaccount:ci:*", "bot"]')
    assert needs_of(prefixed).automation == ("bot",)  # a prefix is no user name


# --- API groups -------------------------------------------------------------------------

def test_built_in_known_custom_and_explicit_groups() -> None:
    rules = ruleset(rule("gadgets", "{resources: [deployments, kustomizations, policyexceptions, "
                              "gadgets], verb: delete}"))
    targets = needs_of(rules).needs[0].targets
    assert {(t.resource, t.group) for t in targets} == {
        ("deployments", None), ("kustomizations", "kustomize.toolkit.fluxcd.io"),
        ("policyexceptions", "kyverno.io"), ("policyexceptions", "policies.kyverno.io"),
        ("gadgets", None)}
    assert next(t for t in targets if t.resource == "deployments").groups() == ("apps",)
    assert next(t for t in targets if t.resource == "gadgets").groups() is None
    told = needs_of(rules, groups={"gadgets": ["example.com"], "kustomizations": ["x.io"]})
    assert {(t.resource, t.group) for t in told.needs[0].targets} >= {
        ("gadgets", "example.com"), ("kustomizations", "x.io")}
    with pytest.raises(NeedsError, match="deployments is a built-in resource"):
        needs_of(rules, groups={"deployments": ["example.com"]})


def test_an_unknown_group_stops_generation_unless_every_group_is_allowed() -> None:
    rules = ruleset(rule("gadgets", "{resource: gadgets, verb: delete}"))
    with pytest.raises(GenerateError, match="'gadgets' is not a built-in resource"):
        generate(needs_of(rules))
    text = generate(needs_of(rules), any_group=True)
    doc = parse_policy(text)
    assert doc.policy is not None
    request = Request("delete", ALICE, None, "example.com", "gadgets", "", "prod", "one")
    assert evaluate(doc.policy, request).level is Level.METADATA


# --- end to end -------------------------------------------------------------------------

@pytest.mark.parametrize("view", [True, False], ids=["view", "no-view"])
@pytest.mark.parametrize("which", ["shipped", "all"])
@pytest.mark.parametrize("proxies", [(), ("system:serviceaccount:teleport:teleport",)],
                         ids=["unnamed", "named"])
def test_the_generated_policy_gives_every_rule_its_needs(
        view: bool, which: str, proxies: tuple[str, ...]) -> None:
    rules = load_rules(ROOT / "rules.yaml") if which == "shipped" else all_rules()
    needs = needs_of(rules, cluster_view=view, proxies=proxies)
    text = generate(needs)
    assert parse_policy(text).problems == ()
    assert check(text, needs) == []


def test_a_rules_file_of_a_team(tmp_path: Path) -> None:
    """Only enabled rules count; a team's own custom resource takes its group."""
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n" + rule("gadget-drift", "{resource: gadgets, verb: patch}")
                    + rule("unused", "{resource: secrets, verb: get}").replace(
                        "    match", "    enabled: false\n    match"))
    needs = needs_of(load_rules(path), groups={"gadgets": ["example.com"]})
    assert {n.rule for n in needs.needs} == {"gadget-drift"}
    text = generate(needs)
    assert '- group: "example.com"' in text and "secrets" not in text.split("rules:")[1]


def test_each_comment_names_a_detection_rule_once() -> None:
    """A rule with several needs (its conditions', its entity's) is named once a line."""
    text = generate(needs_of(all_rules(), cluster_view=False))
    joined = re.sub(r"\n  #    ", " ", text)
    lines = [line for line in joined.splitlines() if "Needed by " in line or "also serves" in line]
    assert lines
    for line in lines:
        listed = re.search(r"(?:Needed by|also serves) ([^:]+?)(?::|\.$)", line)
        assert listed is not None, line
        names = [re.sub(r" \(.*", "", name) for name in listed[1].split(", ")]
        assert len(names) == len(set(names)), line


def test_a_secrets_rule_another_covers_is_not_written_twice() -> None:
    rules = ruleset(rule("any-write", '{verbs: [create, patch, update], annotation: "a/b=c"}')
                    + rule("any-change", '{verbs: [patch, update], annotation: "d/e=f"}'))
    text = generate(needs_of(rules))
    doc = parse_policy(text)
    assert doc.policy is not None
    capped = [r for r in doc.policy.rules if r.level is Level.METADATA
              and any("secrets" in e.resources for e in r.resources)]
    assert len(capped) == 1, text
    assert "It also serves any-change." in text
    assert check(text, needs_of(rules)) == []
