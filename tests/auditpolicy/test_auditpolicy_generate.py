"""The generated policy gives each detection rule what it needs, and drops the rest."""

from __future__ import annotations

import random
import re

import pytest
from policy_needs import (
    GITOPS_CONTROLLERS,
    WRITES,
    enabled_needs,
    gitops_drift_need,
    optional_needs,
)

from healert_webhook.auditpolicy import builtin
from healert_webhook.auditpolicy.check import check
from healert_webhook.auditpolicy.document import Level, Policy, parse_policy
from healert_webhook.auditpolicy.evaluate import Identity, Request, evaluate
from healert_webhook.auditpolicy.generate import GenerateError, generate
from healert_webhook.auditpolicy.needs import ANY, Need, Needs, Target

AUTH = "system:authenticated"
ALICE = Identity("alice", (AUTH,))
BOB = Identity("bob", (AUTH,))
TELEPORT = "system:serviceaccount:teleport:teleport"


def sa(namespace: str, name: str) -> Identity:
    return Identity(f"system:serviceaccount:{namespace}:{name}",
                    ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTH))


NODE = Identity("system:node:node-1", ("system:nodes", AUTH))
CONTROLLER = sa("kube-system", "replicaset-controller")
OPERATOR = sa("operators", "operator")
ARGO = sa("argocd", "argocd-application-controller")


def req(user: Identity | None, verb: str, resource: str, sub: str = "", *, group: str = "",
        ns: str = "prod", name: str = "web", acting_for: Identity | None = None) -> Request:
    return Request(verb, user, acting_for, group, resource, sub, ns, name)


def deploy(user: Identity, verb: str = "patch", **kw: object) -> Request:
    return req(user, verb, "deployments", group="apps", **kw)  # type: ignore[arg-type]


def load(text: str) -> Policy:
    doc = parse_policy(text)
    assert doc.problems == (), doc.problems
    assert doc.policy is not None
    return doc.policy


def comments(text: str) -> dict[int, str]:
    """The comment above each policy rule, by its number."""
    found: dict[int, str] = {}
    current = 0
    for line in text.splitlines():
        head = re.match(r"  # (\d+)\. (.*)", line)
        if head:
            current = int(head[1])
            found[current] = head[2]
        elif line.startswith("  #    ") and current:
            found[current] += " " + line[7:]
    return found


@pytest.fixture
def shipped(shipped_needs: Needs) -> tuple[str, Policy]:
    text = generate(shipped_needs)
    return text, load(text)


OPTIONAL = (
    *optional_needs(),
    Need("secret-bodies", (Target("secrets", frozenset({"get"}), None),),
         level=Level.REQUEST_RESPONSE),
    Need("widget-drift", (Target("widgets", WRITES, None, group="example.com"),),
         level=Level.REQUEST),
    Need("read-with-fields", (Target("deployments", frozenset({"patch"})),),
         level=Level.REQUEST, managed_fields=True),
)
CASES = {
    "enabled": enabled_needs(),
    "enabled+optional": enabled_needs() + OPTIONAL,
    "optional": OPTIONAL,
    "gitops-drift": (gitops_drift_need(),),
}


@pytest.mark.parametrize("proxies", [(), (TELEPORT, "kube-oidc-proxy")], ids=["unnamed", "named"])
@pytest.mark.parametrize("case", CASES)
def test_the_policy_loads_cleanly_and_check_finds_nothing_missing(
        case: str, proxies: tuple[str, ...]) -> None:
    needs = Needs(CASES[case], proxies=proxies, automation=GITOPS_CONTROLLERS)
    text = generate(needs)
    assert parse_policy(text).problems == ()
    assert check(text, needs) == []


def test_the_output_is_deterministic_whatever_the_order_of_the_needs() -> None:
    needs = list(enabled_needs() + OPTIONAL)
    first = generate(Needs(tuple(needs), automation=GITOPS_CONTROLLERS))
    random.Random(7).shuffle(needs)
    again = generate(Needs(tuple(needs), automation=tuple(reversed(GITOPS_CONTROLLERS))))
    assert again == first
    assert max(len(line) for line in first.splitlines()) <= 100


def test_policy_wide_stages_and_managed_fields(shipped: tuple[str, Policy]) -> None:
    policy = shipped[1]
    assert policy.omit_stages == ("RequestReceived",)
    assert policy.omit_managed_fields is True
    assert all(rule.omit_managed_fields is None for rule in policy.rules)


def test_managed_fields_are_kept_only_where_a_rule_reads_them() -> None:
    needs = Needs((*enabled_needs(), gitops_drift_need()), automation=GITOPS_CONTROLLERS)
    policy = load(generate(needs))
    patch = evaluate(policy, deploy(ALICE))
    assert (patch.level, patch.omit_managed_fields) == (Level.REQUEST_RESPONSE, False)
    create = evaluate(policy, deploy(ALICE, "create"))
    assert (create.level, create.omit_managed_fields) == (Level.REQUEST_RESPONSE, True)
    service = evaluate(policy, req(ALICE, "patch", "services"))
    assert (service.level, service.omit_managed_fields) == (Level.REQUEST_RESPONSE, True)


def test_a_rule_reading_managed_fields_under_a_higher_need_still_gets_them() -> None:
    fields = Need("fields", (Target("deployments", frozenset({"patch"})),), Level.REQUEST,
                  managed_fields=True)
    bodies = Need("bodies", (Target(ANY, frozenset({"patch"}), None),),
                  Level.REQUEST_RESPONSE)
    text = generate(Needs((fields, bodies)))
    decision = evaluate(load(text), deploy(ALICE))
    assert (decision.level, decision.omit_managed_fields) == (Level.REQUEST_RESPONSE, False)
    assert "Raised from Request to RequestResponse" in comments(text)[decision.rule or 0]


@pytest.mark.parametrize("who", [ALICE, OPERATOR, CONTROLLER, NODE, ARGO, None])
def test_secrets_and_tokens_are_never_above_metadata(who: Identity | None) -> None:
    needs = Needs(enabled_needs() + OPTIONAL, automation=GITOPS_CONTROLLERS)
    policy = load(generate(needs))
    for group, combined in sorted(builtin.CAPPED):
        resource, _, sub = combined.partition("/")
        for verb in builtin.RESOURCE_VERBS:
            decision = evaluate(policy, req(who, verb, resource, sub, group=group))
            assert decision.level <= Level.METADATA, (combined, verb)


def test_a_rule_asking_for_secret_bodies_gets_metadata_and_the_policy_says_so() -> None:
    need = Need("secret-bodies", (Target("secrets", frozenset({"get"})),),
                Level.REQUEST_RESPONSE)
    text = generate(Needs((need,)))
    decision = evaluate(load(text), req(ALICE, "get", "secrets"))
    assert decision.level is Level.METADATA
    assert "secret-bodies (asks for RequestResponse)" in comments(text)[decision.rule or 0]


@pytest.mark.parametrize(("request_", "why"), [
    (Request("get", ALICE, path="/healthz"), "health check"),
    (Request("get", OPERATOR, path="/apis/apps/v1"), "discovery"),
    (Request("get", NODE, path="/metrics"), "metrics"),
    (req(NODE, "update", "leases", group="coordination.k8s.io", ns="kube-node-lease"),
     "node heartbeat"),
    (req(OPERATOR, "update", "leases", group="coordination.k8s.io", ns="operators"),
     "an operator's leader election"),
    (req(ALICE, "update", "leases", group="coordination.k8s.io"), "a person's lease write"),
    (req(OPERATOR, "create", "events"), "an operator's Event"),
    (req(CONTROLLER, "create", "events", group="events.k8s.io"), "a controller's Event"),
    (req(NODE, "get", "pods"), "a node reading pods"),
    (req(NODE, "patch", "pods", "status"), "a node reporting status"),
    (req(NODE, "get", "secrets"), "a node reading a Secret"),
    (req(CONTROLLER, "create", "pods"), "a controller creating pods"),
    (deploy(CONTROLLER, "update", sub="status"), "a controller updating status"),
    (req(CONTROLLER, "list", "pods", ns="", name=""), "a controller listing"),
    (req(Identity("system:kube-scheduler", (AUTH,)), "create", "pods", "binding"), "scheduler"),
    (deploy(ARGO), "Argo CD syncing"),
    (req(OPERATOR, "watch", "pods", ns="", name=""), "an operator watching"),
    (req(ALICE, "list", "pods", name=""), "a person listing pods: no rule needs it"),
    (req(ALICE, "get", "configmaps"), "a person reading a ConfigMap: no rule needs it"),
    (deploy(ALICE, "delete"), "a delete: no enabled rule needs it"),
])
def test_noise_and_everything_no_rule_needs_is_not_recorded(
        shipped: tuple[str, Policy], request_: Request, why: str) -> None:
    assert evaluate(shipped[1], request_).level is Level.NONE, why


@pytest.mark.parametrize(("request_", "level"), [
    (req(ALICE, "get", "pods", "exec"), Level.METADATA),
    (req(ALICE, "get", "pods", "portforward"), Level.METADATA),
    (req(ALICE, "get", "secrets"), Level.METADATA),
    (deploy(ALICE), Level.REQUEST_RESPONSE),
    (req(ALICE, "create", "configmaps"), Level.METADATA),
    (req(ALICE, "patch", "widgets", group="example.com"), Level.REQUEST_RESPONSE),
])
def test_people_get_what_the_rules_need(shipped: tuple[str, Policy], request_: Request,
                                        level: Level) -> None:
    assert evaluate(shipped[1], request_).level is level


def test_a_person_acting_as_someone_is_recorded_as_the_person(
        shipped: tuple[str, Policy]) -> None:
    policy = shipped[1]
    assert evaluate(policy, req(ALICE, "get", "pods", "exec", acting_for=BOB)).level \
        is Level.METADATA
    assert evaluate(policy, deploy(ALICE, acting_for=CONTROLLER)).level \
        is Level.REQUEST_RESPONSE


def test_without_named_proxies_any_service_account_outside_kube_system_may_be_one(
        shipped: tuple[str, Policy]) -> None:
    """The trap: a proxy authenticates as a service account and acts for a person."""
    policy = shipped[1]
    proxy = sa("teleport", "teleport")
    assert evaluate(policy, deploy(proxy, acting_for=ALICE)).level is Level.REQUEST_RESPONSE
    assert evaluate(policy, req(proxy, "get", "pods", "exec", acting_for=ALICE)).level \
        is Level.METADATA
    assert evaluate(policy, req(proxy, "get", "secrets", acting_for=ALICE)).level \
        is Level.METADATA
    # kube-system's accounts are the built-in controllers, never a proxy.
    assert evaluate(policy, deploy(CONTROLLER)).level is Level.NONE


def test_named_proxies_keep_their_requests_and_other_service_accounts_are_dropped() -> None:
    needs = Needs(enabled_needs(), proxies=(TELEPORT,), automation=GITOPS_CONTROLLERS)
    policy = load(generate(needs))
    teleport = sa("teleport", "teleport")
    assert evaluate(policy, deploy(teleport, acting_for=ALICE)).level \
        is Level.REQUEST_RESPONSE
    assert evaluate(policy, req(teleport, "get", "secrets", acting_for=ALICE)).level \
        is Level.METADATA
    assert evaluate(policy, deploy(OPERATOR)).level is Level.NONE
    assert evaluate(policy, req(OPERATOR, "get", "secrets")).level is Level.NONE
    assert evaluate(policy, deploy(ALICE)).level is Level.REQUEST_RESPONSE


def test_rules_that_count_kubernetes_own_actors_see_them() -> None:
    needs = Needs(enabled_needs() + OPTIONAL, automation=GITOPS_CONTROLLERS)
    policy = load(generate(needs))
    role = {"group": "rbac.authorization.k8s.io", "ns": "prod"}
    for who in (CONTROLLER, OPERATOR, NODE, ARGO, ALICE):
        assert evaluate(policy, req(who, "create", "roles", **role)).level \
            >= Level.METADATA, who  # type: ignore[arg-type]
    assert evaluate(policy, deploy(CONTROLLER)).level is Level.NONE


def test_each_policy_rule_names_the_detection_rules_it_serves(
        shipped: tuple[str, Policy]) -> None:
    text, policy = shipped
    notes = comments(text)
    assert len(notes) == len(policy.rules)
    for request_, names in [
        (deploy(ALICE), ("pipeline-skip", "config-drift")),
        (req(ALICE, "get", "pods", "exec"), ("kubectl-exec", "port-forward")),
        (req(ALICE, "get", "secrets"), ("emergency-access",)),
    ]:
        number = evaluate(policy, request_).rule
        assert number is not None
        for name in names:
            assert name in notes[number], (request_, notes[number])


def test_excluded_subresources_are_left_out_exactly() -> None:
    drift = enabled_needs()[2]
    assert drift.rule == "config-drift"
    policy = load(generate(Needs((drift,))))
    assert evaluate(policy, req(ALICE, "patch", "pods", "status")).level is Level.METADATA
    assert evaluate(policy, deploy(ALICE, sub="scale")).level is Level.METADATA
    for sub in ("exec", "attach", "portforward", "ephemeralcontainers", "eviction"):
        assert evaluate(policy, req(ALICE, "create", "pods", sub)).level is Level.NONE, sub


def test_a_custom_resource_needs_its_group() -> None:
    need = Need("gadgets", (Target("gadgets", frozenset({"patch"})),), Level.REQUEST)
    with pytest.raises(GenerateError, match=r"gadgets: 'gadgets' is not a built-in resource"):
        generate(Needs((need,)))
    text = generate(Needs((need,)), any_group=True)
    assert '- group: "*"' in text
    policy = load(text)
    assert evaluate(policy, req(ALICE, "patch", "gadgets", group="example.com")).level \
        is Level.REQUEST
    named = Need("gadgets", (Target("gadgets", frozenset({"patch"}), group="example.com"),))
    assert '- group: "example.com"' in generate(Needs((named,)))


def test_a_need_for_nothing_is_refused() -> None:
    with pytest.raises(GenerateError, match="level None"):
        generate(Needs((Need("nothing", (Target("pods"),), Level.NONE),)))


def test_no_needs_give_a_valid_policy_that_records_nothing() -> None:
    policy = load(generate(Needs(())))
    assert evaluate(policy, deploy(ALICE)).level is Level.NONE


def test_the_built_in_table_is_valid_policy_input() -> None:
    entries = "\n".join(f"  - group: {res.group!r}\n    resources: [{res.name!r}"
                        + "".join(f", '{res.name}/{sub}'" for sub in res.subresources) + "]"
                        for res in builtin.BUILTIN)
    doc = parse_policy("apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n"
                       f"  resources:\n{entries}\n")
    assert doc.problems == ()
    pairs = [(res.group, res.name) for res in builtin.BUILTIN]
    assert len(pairs) == len(set(pairs))


def test_namespaces_every_rule_skips_are_not_recorded(shipped: tuple[str, Policy]) -> None:
    policy = shipped[1]
    assert evaluate(policy, deploy(ALICE, ns="kube-system")).level is Level.NONE
    assert evaluate(policy, req(ALICE, "get", "secrets", ns="vault")).level is Level.NONE
    assert evaluate(policy, deploy(ALICE, ns="payments")).level is Level.REQUEST_RESPONSE
    # One rule that counts a namespace is enough to keep it.
    counted = Need("everywhere", (Target("deployments", frozenset({"patch"})),))
    mixed = load(generate(Needs((*enabled_needs(), counted))))
    assert evaluate(mixed, deploy(ALICE, ns="kube-system")).level >= Level.METADATA
