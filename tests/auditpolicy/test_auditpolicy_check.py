"""`check` names every need a policy starves, every secret it exposes, every bad key."""

from __future__ import annotations

import random

import pytest
from policy_needs import GITOPS_CONTROLLERS, WRITES, enabled_needs, gitops_drift_need

from healert_webhook.auditpolicy.check import Finding, FindingKind, check, exit_status
from healert_webhook.auditpolicy.document import Level, Policy, parse_policy
from healert_webhook.auditpolicy.evaluate import Identity, Request, evaluate
from healert_webhook.auditpolicy.generate import generate
from healert_webhook.auditpolicy.needs import PEOPLE, Actor, Need, Needs, Target, needs_of
from healert_webhook.rules import load_rules

from support.paths import ROOT

HEAD = "apiVersion: audit.k8s.io/v1\nkind: Policy\n"
SHIPPED = ROOT / "manifests" / "apiserver" / "audit-policy.yaml"
HAND_WRITTEN = ROOT / "conformance" / "policies" / "hand-written.yaml"
PATCH_DEPLOYMENTS = Target("deployments", frozenset({"patch"}))


def starved(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.kind is FindingKind.STARVED]


def kinds(findings: list) -> list[tuple[FindingKind, str | None, int | None]]:  # type: ignore[type-arg]
    return [(f.kind, f.detection_rule, f.policy_rule) for f in findings]


def test_the_shipped_policy_gives_the_enabled_rules_what_they_need() -> None:
    needs = needs_of(load_rules(ROOT / "rules.yaml"))
    assert check(SHIPPED.read_text(), needs) == []


def test_the_hand_written_policy_against_the_enabled_rules() -> None:
    """Four of the five enabled rules get all they need from the policy the project
    shipped before it was generated; pipeline-skip does not.

    pipeline-skip matches a bypass annotation written onto any object, which it reads in
    the object's body; that policy records bodies only for workloads and a few
    neighbours (rules 6 and 7), so the annotation is invisible on every other resource
    (rule 13, its Metadata catch-all), on proxy and session subresources (rule 3), on
    access reviews (rule 9), and on anything written through an access proxy (rule 10:
    service accounts' writes at Metadata).
    """
    needs = Needs(enabled_needs(), automation=GITOPS_CONTROLLERS)
    findings = check(HAND_WRITTEN.read_text(), needs)
    assert {(f.kind, f.detection_rule) for f in findings} == {
        (FindingKind.STARVED, "pipeline-skip")}
    by_actor = {}
    for finding in findings:
        actor = finding.message.split(" by ", 1)[1].split(";")[0]
        by_actor.setdefault(actor, set()).add(finding.policy_rule)
    assert by_actor == {
        "a person": {3, 9, 13},
        "a person acting --as someone (alice)": {3, 9, 13},
        "a person through an access proxy "
        "(system:serviceaccount:access-proxy:access-proxy)": {3, 9, 10},
    }
    assert exit_status(findings) == 1
    rest = Needs(tuple(n for n in enabled_needs() if n.rule != "pipeline-skip"))
    assert check(HAND_WRITTEN.read_text(), rest) == []


def test_a_starved_need_names_the_deciding_policy_rule() -> None:
    policy = HEAD + "rules:\n"
    policy += "".join(f"- level: None\n  nonResourceURLs: [/x{i}]\n" for i in range(6))
    policy += "- level: Metadata\n  resources: [{group: apps}]\n"
    need = Need("gitops-drift", (PATCH_DEPLOYMENTS,), Level.REQUEST, actors=frozenset(
        {Actor.PERSON}))
    (finding,) = check(policy, Needs((need,)))
    assert finding.kind is FindingKind.STARVED
    assert (finding.detection_rule, finding.policy_rule) == ("gitops-drift", 7)
    assert finding.message == ("gitops-drift needs Request for `patch deployments` by a "
                               "person; policy rule 7 gives Metadata")


def test_a_request_no_rule_matches_is_said_to_be_unrecorded() -> None:
    need = Need("kubectl-exec", (Target("pods", subresources=frozenset({"exec"})),),
                actors=frozenset({Actor.PERSON}))
    (finding,) = check(HEAD + "rules:\n- level: Metadata\n  verbs: [list]\n", Needs((need,)))
    assert finding.message == ("kubectl-exec needs Metadata for `get pods/exec` and 1 more "
                               "request by a person; no policy rule matches, so nothing is "
                               "recorded")


@pytest.fixture
def generated() -> tuple[str, Needs]:
    needs = Needs((*enabled_needs(), gitops_drift_need()), automation=GITOPS_CONTROLLERS)
    text = generate(needs)
    assert check(text, needs) == []
    return text, needs


def _insert_first(text: str, rule: str) -> str:
    head, rules = text.split("\nrules:\n", 1)
    return f"{head}\nrules:\n{rule}{rules}"


def test_dropping_service_accounts_starves_people_behind_an_access_proxy(
        generated: tuple[str, Needs]) -> None:
    text, needs = generated
    policy = _insert_first(text, "  - level: None\n    userGroups: [system:serviceaccounts]\n")
    findings = check(policy, needs)
    assert findings
    assert all(f.kind is FindingKind.STARVED and f.policy_rule == 1 for f in findings)
    assert all(" by a person through an access proxy (" in f.message for f in findings)
    assert {f.detection_rule for f in findings} == {n.rule for n in needs.needs}


def test_a_named_proxy_is_checked_as_itself(generated: tuple[str, Needs]) -> None:
    _text, needs = generated
    proxy = "system:serviceaccount:teleport:teleport"
    named = Needs(needs.needs, proxies=(proxy,), automation=needs.automation)
    assert check(generate(named), named) == []
    kept = _insert_first(generate(named), f"  - level: None\n    users: [{proxy}]\n")
    assert all(f"access proxy ({proxy})" in f.message for f in check(kept, named))
    assert check(kept, named)


def test_a_lower_level_starves_the_rules_reading_bodies(generated: tuple[str, Needs]) -> None:
    text, needs = generated
    lowered = text.replace("  - level: RequestResponse\n", "  - level: Request\n")
    findings = check(lowered, needs)
    assert {f.detection_rule for f in findings} == {"pipeline-skip", "gitops-drift"}
    assert all("gives Request" in f.message for f in findings)


def test_omitted_managed_fields_starve_the_rule_reading_them(
        generated: tuple[str, Needs]) -> None:
    text, needs = generated
    findings = check(text.replace("    omitManagedFields: false\n", ""), needs)
    assert {(f.detection_rule, f.message.split("; ")[1]) for f in findings} == {
        ("gitops-drift", f"policy rule {findings[0].policy_rule} omits managedFields, "
                         "which it reads")}


def test_omitted_stages(generated: tuple[str, Needs]) -> None:
    text, needs = generated
    complete = text.replace('omitStages: ["RequestReceived"]',
                            'omitStages: ["RequestReceived", "ResponseComplete"]')
    findings = check(complete, needs)
    # Sessions still have ResponseStarted; every other request has no stage left.
    assert {f.detection_rule for f in findings} == {
        "pipeline-skip", "gitops-drift", "config-drift", "emergency-access"}
    assert all("omits the stages it fires on" in f.message for f in findings)
    started = text.replace('omitStages: ["RequestReceived"]',
                           'omitStages: ["RequestReceived", "ResponseStarted"]')
    late = check(started, needs)
    # pipeline-skip too: it matches an old kubectl's `create pods/exec` like any write.
    assert {f.detection_rule for f in late} == {"kubectl-exec", "port-forward", "pipeline-skip"}
    assert all("so a session is seen only when it ends" in f.message for f in late)


def test_secret_values_in_the_audit_trail_are_found_with_their_rule() -> None:
    policy = HEAD + ("rules:\n- level: None\n  nonResourceURLs: ['*']\n"
                     "- level: RequestResponse\n  verbs: [get, create]\n"
                     "  resources: [{group: '', resources: [secrets, serviceaccounts/token]}]\n"
                     "- level: Request\n  resources: [{group: authentication.k8s.io}]\n"
                     "- level: Metadata\n")
    findings = check(policy, Needs(()))
    assert kinds(findings) == [(FindingKind.EXPOSURE, None, 2), (FindingKind.EXPOSURE, None, 3)]
    assert findings[0].message == (
        "policy rule 2 writes secret values to the audit trail: RequestResponse for `get "
        "secrets`, `create secrets`, `create serviceaccounts/token` by a person (Secrets, "
        "token requests and token reviews must stay at Metadata)")
    assert "`create tokenreviews`" in findings[1].message


def test_unknown_keys_and_refusals_are_findings() -> None:
    ignored = check(HEAD + "rules:\n- level: Metadata\n  stages: [ResponseComplete]\n",
                    Needs(()))
    assert kinds(ignored) == [(FindingKind.IGNORED, None, 1)]
    assert ignored[0].message == ("policy rule 1 (rules[0].stages): unknown key (did you mean "
                                  "omitStages?); the apiserver ignores it")
    refused = check(HEAD + "rules:\n- level: Everything\n", Needs(enabled_needs()))
    assert kinds(refused) == [(FindingKind.REFUSED, None, 1)]
    assert exit_status(refused) == exit_status(ignored) == 1
    assert exit_status([]) == 0


def test_the_old_agents_example_policy() -> None:
    """`stages:` ignored on six rules, Secret bodies logged, pipeline-skip starved."""
    example = ROOT.parent / "shared" / "seed" / "example.audit-policy.yaml"
    if not example.exists():
        pytest.skip(f"{example} not found")
    findings = check(example.read_text(), Needs(enabled_needs()))
    ignored = [f for f in findings if f.kind is FindingKind.IGNORED]
    assert [f.policy_rule for f in ignored] == [2, 3, 4, 5, 6, 7]
    assert [f.policy_rule for f in findings if f.kind is FindingKind.EXPOSURE] == [2]
    assert {f.detection_rule for f in findings if f.kind is FindingKind.STARVED} == {
        "pipeline-skip"}


def test_a_custom_resource_of_unknown_group_is_judged_where_the_policy_names_it() -> None:
    need = Need("widget-drift", (Target("widgets", WRITES),), Level.REQUEST,
                actors=frozenset({Actor.PERSON}))
    named = HEAD + "rules:\n- level: Request\n  resources: [{group: example.com, " \
                   "resources: [widgets]}]\n"
    assert check(named, Needs((need,))) == []
    (finding,) = check(HEAD + "rules:\n- level: Metadata\n", Needs((need,)))
    assert "`create widgets.example.com`" in finding.message


def test_namespaces_a_rule_skips_are_not_asked_for() -> None:
    need = Need("production-secret-access", (Target("secrets", frozenset({"get"})),),
                ignore_namespaces=frozenset({"kube-system"}), namespace_contains="production",
                actors=frozenset({Actor.PERSON}))
    policy = HEAD + ("rules:\n- level: None\n  namespaces: [kube-system, dev, shop-production]\n"
                     "- level: Metadata\n")
    (finding,) = check(policy, Needs((need,)))
    assert finding.message == ("production-secret-access needs Metadata for `get secrets in "
                               "shop-production` by a person; policy rule 1 gives None")


def test_people_and_groups_the_policy_names_are_asked_about() -> None:
    need = Need("kubectl-exec", (Target("pods", frozenset({"get"}), frozenset({"exec"})),),
                actors=frozenset({Actor.PERSON}))
    policy = HEAD + ("rules:\n- level: None\n  users: [carol, system:serviceaccount:a:b]\n"
                     "- level: None\n  userGroups: [oncall, system:nodes]\n- level: Metadata\n")
    assert [f.message.split(" by ")[1] for f in check(policy, Needs((need,)))] == [
        "a person (carol); policy rule 1 gives None",
        "a person in group oncall; policy rule 2 gives None"]


def test_rules_counting_kubernetes_own_actors_are_checked_for_them() -> None:
    need = Need("rbac-change", (Target("roles", WRITES, group="rbac.authorization.k8s.io"),),
                actors=PEOPLE | {Actor.SYSTEM})
    policy = HEAD + "rules:\n- level: None\n  userGroups: [system:nodes]\n- level: Metadata\n"
    (finding,) = check(policy, Needs((need,)))
    assert finding.message.startswith("rbac-change needs Metadata for `create roles` and 2 "
                                      "more requests by Kubernetes' own system:node:node-1;")


def test_ordinary_values_are_ones_the_policy_does_not_name() -> None:
    """A policy that names the usual namespace or person is still asked about the others."""
    need = Need("gitops-drift", (PATCH_DEPLOYMENTS,), Level.REQUEST,
                actors=frozenset({Actor.PERSON}))
    for condition, shown in [("namespaces: [payments]", "`patch deployments`"),
                             ("users: [alice]", "`patch deployments`")]:
        policy = HEAD + f"rules:\n- level: Request\n  {condition}\n- level: None\n"
        (finding,) = starved(check(policy, Needs((need,))))
        assert finding.message == (f"gitops-drift needs Request for {shown} by a person; "
                                   "policy rule 2 gives None"), condition


def test_a_person_in_two_groups_is_decided_by_the_first_rule_on_either() -> None:
    need = Need("gitops-drift", (PATCH_DEPLOYMENTS,), Level.REQUEST,
                actors=frozenset({Actor.PERSON}))
    policy = HEAD + ("rules:\n- level: None\n  userGroups: [contractors]\n"
                     "- level: Request\n  userGroups: [developers, contractors]\n"
                     "- level: Request\n")
    (finding,) = starved(check(policy, Needs((need,))))
    assert finding.message.endswith("by a person in group contractors; policy rule 1 gives None")


def test_check_sees_every_starved_request_a_brute_force_sees() -> None:
    """Asking rule by rule finds what asking every combination of named values finds."""
    rng = random.Random(25)
    users, groups, spaces = ["ann", "ben", "system:admin"], ["devs", "ops", "system:masters"], [
        "payments", "prod", "dev"]
    levels = ["None", "Metadata", "Request", "RequestResponse"]
    need = Need("drift", (Target("deployments", frozenset({"patch", "update"}), None,
                                 group="apps"),), Level.REQUEST,
                actors=frozenset({Actor.PERSON}), ignore_namespaces=frozenset({"dev"}))
    for _ in range(150):
        rules = []
        for _ in range(rng.randint(1, 5)):
            rule = [f"- level: {rng.choice(levels)}"]
            for key, pool in (("users", users), ("userGroups", groups),
                              ("namespaces", spaces), ("verbs", ["patch", "update", "get"])):
                if rng.random() < 0.4:
                    rule.append(f"  {key}: {rng.sample(pool, rng.randint(1, 2))}")
            if rng.random() < 0.5:
                names = f", resourceNames: [{rng.choice(['web', 'db'])}]" \
                    if rng.random() < 0.3 else ""
                rule.append(f"  resources: [{{group: apps, resources: "
                            f"['{rng.choice(['deployments', 'deployments/*', '*/scale'])}']"
                            f"{names}}}]")
            rules += rule
        text = HEAD + "rules:\n" + "\n".join(rules) + "\n"
        doc = parse_policy(text)
        assert doc.policy is not None, text
        found = bool(starved(check(doc, Needs((need,)))))
        assert found == _brute_force_starves(doc.policy, need), text


def _brute_force_starves(policy: Policy, need: Need) -> bool:
    people = [Identity(name, (*extra, "system:authenticated"))
              for name in ("ann", "ben", "system:admin", "zed")
              for extra in [(), ("devs",), ("ops",), ("system:masters",), ("devs", "ops"),
                            ("devs", "system:masters")]]
    for who in people:
        for verb in ("patch", "update"):
            for sub in ("", "scale", "status"):
                for namespace in ("payments", "prod", "dev", "elsewhere"):
                    for name in ("web", "db", "other"):
                        if not need.counts_namespace(namespace):
                            continue
                        request = Request(verb, who, None, "apps", "deployments", sub,
                                          namespace, name)
                        if evaluate(policy, request).level < need.level:
                            return True
    return False


def test_secrets_exposed_to_any_identity_a_rule_names_are_found() -> None:
    policy = HEAD + ("rules:\n- level: RequestResponse\n"
                     "  userGroups: ['system:serviceaccounts:billing']\n"
                     "  resources: [{group: '', resources: [secrets]}]\n- level: Metadata\n")
    (finding,) = check(policy, Needs(()))
    assert finding.kind is FindingKind.EXPOSURE and finding.policy_rule == 1
    assert "by Kubernetes' own system:serviceaccount:billing:someone" in finding.message
