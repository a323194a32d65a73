"""The Policy document is read as the apiserver reads it: refused, ignored, or loaded.

Each case here was also run through the apiserver's own loader (k8s.io/apiserver v0.37.2,
`LoadPolicyFromBytes`) while this reader was written, and the expectations are its
answers; on 24,000 random documents the two agreed on every refusal and every warning.
"""

from __future__ import annotations

import pytest

from healert_webhook.auditpolicy import document
from healert_webhook.auditpolicy.document import (
    GroupResources,
    Level,
    PolicyRule,
    ProblemKind,
    parse_policy,
)

from support.paths import ROOT

HEAD = "apiVersion: audit.k8s.io/v1\nkind: Policy\n"


def _problems(text: str) -> list[tuple[ProblemKind, str]]:
    return [(p.kind, p.path) for p in parse_policy(text).problems]


@pytest.mark.parametrize(("path", "last"), [
    ("manifests/apiserver/audit-policy.yaml", Level.NONE),
    ("conformance/policies/hand-written.yaml", Level.METADATA),
])
def test_the_shipped_policies_load_without_a_problem(path: str, last: Level) -> None:
    doc = parse_policy((ROOT / path).read_text())
    assert doc.problems == ()
    assert doc.policy is not None
    assert doc.policy.omit_stages == ("RequestReceived",)
    assert doc.policy.omit_managed_fields is True
    assert doc.policy.rules[-1] == PolicyRule(last)


def test_a_policy_reads_into_its_fields() -> None:
    doc = parse_policy(HEAD + """
omitStages: [RequestReceived]
rules:
  - level: RequestResponse
    users: [alice]
    userGroups: [devs]
    verbs: [patch]
    namespaces: [prod, ""]
    omitStages: [ResponseStarted]
    omitManagedFields: false
    resources:
      - resources: [pods, pods/exec]
      - group: apps
        resources: [deployments]
        resourceNames: [web]
  - level: None
    nonResourceURLs: ["/healthz*"]
""")
    assert doc.problems == ()
    assert doc.policy is not None
    first, second = doc.policy.rules
    assert first == PolicyRule(
        Level.REQUEST_RESPONSE, ("alice",), ("devs",), ("patch",),
        (GroupResources("", ("pods", "pods/exec")),
         GroupResources("apps", ("deployments",), ("web",))),
        ("prod", ""), (), ("ResponseStarted",), False)
    assert second.non_resource_urls == ("/healthz*",)
    assert second.omit_managed_fields is None


def test_json_is_read_too() -> None:
    doc = parse_policy('{"apiVersion": "audit.k8s.io/v1", "kind": "Policy",'
                       ' "rules": [{"level": "Metadata"}]}')
    assert doc.problems == ()
    assert doc.policy is not None and doc.policy.rules == (PolicyRule(Level.METADATA),)


def test_an_unknown_key_is_named_with_its_path_and_the_policy_still_loads() -> None:
    # The old agent's example: `stages:` is not a field, the apiserver warns and drops it.
    doc = parse_policy(HEAD + "rules:\n- level: Metadata\n  stages: [ResponseComplete]\n")
    assert doc.policy is not None and doc.policy.rules == (PolicyRule(Level.METADATA),)
    (problem,) = doc.problems
    assert (problem.kind, problem.path, problem.rule) == (ProblemKind.IGNORED,
                                                          "rules[0].stages", 1)
    assert str(problem) == ("policy rule 1 (rules[0].stages): unknown key (did you mean "
                            "omitStages?); the apiserver ignores it")


@pytest.mark.parametrize(("text", "path"), [
    ("rules:\n- Level: Metadata\n  level: Metadata\n", "rules[0].Level"),  # case counts
    ("Rules: []\nrules:\n- level: Metadata\n", "Rules"),
    ("rules:\n- level: Metadata\n  resources:\n  - group: apps\n    resource: [x]\n",
     "rules[0].resources[0].resource"),
    ("metadata:\n  name: p\n  bogus: 1\nrules:\n- level: Metadata\n", "metadata.bogus"),
    ("rules:\n- level: Metadata\n  on: x\n", "rules[0].True"),  # YAML 1.1: `on` is true
])
def test_unknown_keys_anywhere_are_ignored_by_the_apiserver(text: str, path: str) -> None:
    assert _problems(HEAD + text) == [(ProblemKind.IGNORED, path)]


def test_a_duplicate_key_is_reported_and_the_last_value_wins() -> None:
    doc = parse_policy(HEAD + "rules:\n- level: RequestResponse\n  level: None\n")
    assert [(p.kind, p.path) for p in doc.problems] == [(ProblemKind.IGNORED,
                                                         "rules[0].level")]
    assert doc.policy is not None and doc.policy.rules[0].level is Level.NONE


def test_only_the_first_yaml_document_is_read() -> None:
    doc = parse_policy(HEAD + "rules:\n- level: Metadata\n---\n" + HEAD + "rules: []\n")
    assert [(p.kind, p.path) for p in doc.problems] == [(ProblemKind.IGNORED, "")]
    assert doc.policy is not None and len(doc.policy.rules) == 1


@pytest.mark.parametrize(("text", "path"), [
    ("rules:\n- level: Everything\n", "rules[0].level"),
    ("rules:\n- level: metadata\n", "rules[0].level"),
    ("rules:\n- users: [alice]\n", "rules[0].level"),
    ("rules:\n- level: ''\n", "rules[0].level"),
    ("rules:\n- null\n", "rules[0].level"),
    ("rules: []\n", "rules"),
    ("rules:\n", "rules"),
    ("omitStages: [RequestRecieved]\nrules:\n- level: Metadata\n", "omitStages[0]"),
    ("rules:\n- level: Metadata\n  omitStages: [Done]\n", "rules[0].omitStages[0]"),
    ("rules:\n- level: None\n  nonResourceURLs: [healthz]\n", "rules[0].nonResourceURLs[0]"),
    ("rules:\n- level: None\n  nonResourceURLs: ['']\n", "rules[0].nonResourceURLs[0]"),
    ("rules:\n- level: None\n  nonResourceURLs: ['/api/*/pods']\n",
     "rules[0].nonResourceURLs[0]"),
    ("rules:\n- level: None\n  namespaces: [a]\n  nonResourceURLs: ['/a']\n",
     "rules[0].nonResourceURLs"),
    ("rules:\n- level: None\n  nonResourceURLs: ['/a']\n  resources: [{group: ''}]\n",
     "rules[0].nonResourceURLs"),
    ("rules:\n- level: None\n  resources: [{group: apps/v1}]\n", "rules[0].resources.group"),
    ("rules:\n- level: None\n  resources: [{group: Apps}]\n", "rules[0].resources.group"),
    ("rules:\n- level: None\n  resources: [{group: apps, resourceNames: [x]}]\n",
     "rules[0].resources.resourceNames"),
    # types the apiserver cannot decode
    ("rules:\n- level: Metadata\n  verbs: get\n", "rules[0].verbs"),
    ("rules:\n- level: 5\n", "rules[0].level"),
    ("rules:\n- level: Metadata\n  users: [1]\n", "rules[0].users[0]"),
    ("rules:\n- level: Metadata\n  verbs: [n, get]\n", "rules[0].verbs[0]"),  # n: false
    ("rules:\n- level: Metadata\n  omitManagedFields: 'yes'\n", "rules[0].omitManagedFields"),
    ("rules: {level: Metadata}\n", "rules"),
    ("metadata:\n  labels: {a: 1}\nrules:\n- level: Metadata\n", "metadata.labels.a"),
    ("metadata:\n  creationTimestamp: yesterday\nrules:\n- level: Metadata\n",
     "metadata.creationTimestamp"),
])
def test_what_the_apiserver_refuses_to_start_with(text: str, path: str) -> None:
    doc = parse_policy(HEAD + text)
    assert doc.refused and doc.policy is None
    assert (ProblemKind.REFUSED, path) in [(p.kind, p.path) for p in doc.problems]
    assert all(str(p).endswith("the apiserver refuses to start")
               for p in doc.problems if p.kind is ProblemKind.REFUSED)


@pytest.mark.parametrize("text", [
    "apiVersion: audit.k8s.io/v1beta1\nkind: Policy\nrules:\n- level: Metadata\n",
    "kind: Policy\nrules:\n- level: Metadata\n",
    "apiVersion: audit.k8s.io/v1\nkind: PolicyList\nrules:\n- level: Metadata\n",
    "- level: Metadata\n",
    "",
    "rules: [level: Metadata",
])
def test_documents_that_are_no_v1_policy_are_refused(text: str) -> None:
    doc = parse_policy(text)
    assert doc.refused
    assert doc.problems and all(p.kind is ProblemKind.REFUSED for p in doc.problems)


@pytest.mark.parametrize("text", [
    "rules:\n- level: Metadata\n  users: [null]\n  omitManagedFields: null\n",
    "rules:\n- level: Metadata\n  resources: [null, {group: '*'}, {group: a.b-c}]\n",
    "rules:\n- level: None\n  nonResourceURLs: ['*', '/healthz*', '/a']\n",
    "rules:\n- level: Metadata\n  users: [2024-01-01]\n",  # a date stays text
    "metadata:\n  creationTimestamp: 2020-01-01T00:00:00Z\n  labels: {a: b}\n"
    "rules:\n- level: Metadata\n",
])
def test_what_the_apiserver_accepts_without_a_word(text: str) -> None:
    assert parse_policy(HEAD + text).problems == ()


def test_a_missing_kind_is_accepted_as_the_apiserver_decodes_into_a_policy() -> None:
    assert parse_policy("apiVersion: audit.k8s.io/v1\nrules:\n- level: None\n").problems == ()


def test_every_problem_is_reported_at_once() -> None:
    got = _problems(HEAD + "omitStages: [Nope]\nrules:\n- level: Bad\n  stages: []\n"
                    "- level: None\n  nonResourceURLs: [x*y]\n")
    assert got == [
        (ProblemKind.REFUSED, "omitStages[0]"),
        (ProblemKind.IGNORED, "rules[0].stages"),
        (ProblemKind.REFUSED, "rules[0].level"),
        (ProblemKind.REFUSED, "rules[1].nonResourceURLs[0]"),
        (ProblemKind.REFUSED, "rules[1].nonResourceURLs[0]"),
    ]


def test_aliases_that_expand_without_bound_are_refused_not_walked() -> None:
    # 1,000 rules sharing one 1,000-user list: a million values from 12 KiB of YAML.
    users = "users: &u [" + ", ".join(f"u{i}" for i in range(1000)) + "]\n"
    text = (HEAD + "x: &r {level: None, " + users.strip().replace("\n", "") + "}\n"
            + "rules: [" + ", ".join(["*r"] * 1000) + "]\n")
    doc = parse_policy(text)
    assert doc.refused
    assert [str(p) for p in doc.problems] == [
        "YAML aliases expand to far more values than the file holds; "
        "the apiserver refuses to start"]


def test_a_long_policy_without_aliases_is_read_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(document, "MAX_NODES", 1000)  # the same test, 200 times faster
    users = ", ".join(f"u{i}" for i in range(5000))
    doc = parse_policy(HEAD + f"rules:\n- level: None\n  users: [{users}]\n")
    assert doc.problems == ()
    assert doc.policy is not None and len(doc.policy.rules[0].users) == 5000
