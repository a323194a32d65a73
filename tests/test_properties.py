"""Property tests: any input yields only friction events the backend accepts, never a crash,
and `explain` reports exactly what `detect` decided."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healert_webhook.backend_contract import validate
from healert_webhook.detect import Detector
from healert_webhook.explain import explain_event
from healert_webhook.records import Stats
from healert_webhook.rules import parse_rules

from support.paths import ROOT

# Every shipped rule enabled, plus catch-alls, so that most generated events produce output.
RULES = parse_rules(
    (ROOT / "rules.yaml").read_text().replace("enabled: false", "enabled: true")
    + """
  - name: any-write
    severity: low
    match: {verbs: [create, update, patch, delete, get]}
  - name: any-pod
    severity: low
    description: "{actor}{verb}{resource}{subresource}{name}{namespace}{workload}{code}"
    match: {resource: pods}
  - name: refined
    severity: low
    match: {users: ["oidc:*", alice], ignore_groups: [blocked], user_agent_contains: kubectl,
            response: [success, denied], gitops_managed: false}
  - name: gitops-people
    severity: medium
    match: {resources: [deployments, pods], groups: ["dev*"], gitops_managed: true}
""")
DETECTOR = Detector(RULES, entity_namespace="cluster", own_namespace="healert-system")

ENTITY = re.compile(r"[a-zA-Z0-9_-]+:[a-zA-Z0-9_-]+/[a-zA-Z0-9_.-]+")
TYPE = re.compile(r"[a-z0-9][a-z0-9-]*[a-z0-9]")

text = st.text(max_size=300)
junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), text,
                 st.lists(text, max_size=3), st.dictionaries(text, text, max_size=3))


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, junk)


names = st.one_of(st.sampled_from(["payments-api-7d9f8b6c4-xkj2p", "postgres-0",
                                   "nvidia-dcgm-x7k2p", "system:aggregate-to-edit", "",
                                   "a" * 260]), text)
times = st.one_of(st.sampled_from(["2026-11-26T10:00:00.123456Z", "2026-13-45T99:99:99Z",
                                   "2026-11-26T24:00:00Z", "2026-02-29T00:00:00Z",
                                   "\uff12\uff10\uff12\uff16-11-26T10:15:30Z",
                                   "2026-11-26T10:15:60Z", "2024-02-29T23:59:59+05:30"]), text)
users = st.fixed_dictionaries({}, optional={
    "username": maybe(st.sampled_from(["alice", "system:admin", "system:node:n1", "",
                                       "oidc:jane", "system:serviceaccount:argocd:"
                                       "argocd-application-controller"]) | text),
    "groups": maybe(st.lists(maybe(st.sampled_from(["dev", "developers", "blocked",
                                                    "system:authenticated"])), max_size=3)),
})
meta = st.fixed_dictionaries({}, optional={
    "name": maybe(names),
    "generateName": maybe(st.sampled_from(["web-", "web-7d9f8b6c4-", "-", ""]) | text),
    "managedFields": maybe(st.lists(maybe(st.fixed_dictionaries(
        {"manager": maybe(st.sampled_from(["argocd-controller", "kubectl-patch"]))})),
        max_size=3)),
    "labels": maybe(st.dictionaries(st.sampled_from(["app.kubernetes.io/name",
                                                     "backstage.io/kubernetes-id",
                                                     "kustomize.toolkit.fluxcd.io/name"]),
                                    maybe(names))),
    "annotations": maybe(st.dictionaries(st.sampled_from([
        "policy.admission.k8s.io/bypass", "argocd.argoproj.io/tracking-id"]),
        maybe(st.just("true")))),
    "ownerReferences": maybe(st.lists(st.fixed_dictionaries(
        {"kind": maybe(st.sampled_from(["ReplicaSet", "Job", "Node", "StatefulSet"])),
         "name": maybe(names)}, optional={"controller": junk}), max_size=3)),
})
obj = st.one_of(junk, st.fixed_dictionaries({"kind": maybe(st.sampled_from(["Pod", "Status"])),
                                             "metadata": maybe(meta)}))
object_ref = st.fixed_dictionaries({}, optional={
    "resource": maybe(st.sampled_from(["pods", "secrets", "deployments", "namespaces",
                                       "clusterroles", "replicasets", "jobs"])),
    "subresource": maybe(st.sampled_from(["exec", "portforward", "attach", "scale", "log"])),
    "namespace": maybe(st.sampled_from(["payments", "kube-system", "healert-system", "prod"])
                       | text),
    "name": maybe(names),
})
events = st.fixed_dictionaries({}, optional={
    "stage": maybe(st.sampled_from(["ResponseStarted", "ResponseComplete", "RequestReceived",
                                    "Panic"])),
    "verb": maybe(st.sampled_from(["get", "create", "patch", "update", "delete", "list"])),
    "user": maybe(users),
    "impersonatedUser": maybe(users),
    "userAgent": maybe(st.sampled_from(["kubectl/v1.31.2 (linux/amd64)", "k9s"]) | text),
    "objectRef": maybe(object_ref),
    "auditID": maybe(text),
    "requestURI": maybe(text),
    "requestReceivedTimestamp": maybe(times),
    "stageTimestamp": maybe(times),
    "responseStatus": maybe(st.fixed_dictionaries({"code": maybe(st.integers())})),
    "annotations": maybe(st.dictionaries(st.just("policy.admission.k8s.io/bypass"),
                                         maybe(st.just("true")))),
    "responseObject": obj,
    "requestObject": obj,
})


def check(event: dict[str, Any]) -> None:
    """What the backend accepts on `POST /events`, field by field."""
    assert ENTITY.fullmatch(event["entity_ref"]) and 3 <= len(event["entity_ref"]) <= 200
    assert TYPE.fullmatch(event["type"]) and 3 <= len(event["type"]) <= 50
    assert event["severity"] in ("high", "medium", "low")
    for key in ("actor", "service", "namespace", "workflow"):
        if key in event:
            assert isinstance(event[key], str) and len(event[key]) <= 200
    assert len(event["description"]) <= 500
    assert event["description"].isascii() and event["description"].isprintable()
    if "actor" in event:
        assert event["actor"].isascii() and event["actor"].isprintable()
    if "timestamp" in event:
        assert len(event["timestamp"]) <= 40
    assert validate(event) == [], event


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(events, junk), max_size=8))
def test_any_batch_yields_only_valid_friction_events(batch: list[Any]) -> None:
    stats = Stats()
    found = DETECTOR.detect(batch, stats)
    assert stats.events == len(batch)
    for friction in found:
        check(friction.event)
        assert re.fullmatch(r"[0-9a-f]{32}", friction.key)
    # Every event is accounted for: matched, skipped for a reason, or invalid.
    accounted = sum(stats.invalid.values()) + sum(stats.skipped.values())
    assert accounted <= len(batch)
    assert accounted + len(found) >= len(batch)
    assert "evaluation_error" not in stats.invalid, stats.failures


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(events, junk))
def test_explain_reports_exactly_what_detect_decided(event: Any) -> None:
    stats = Stats()
    found = DETECTOR.detect([event], stats)
    decision = explain_event(DETECTOR, event)
    assert list(decision.frictions) == found
    if found:
        assert decision.outcome == "friction"
    elif decision.outcome == "skipped":
        assert stats.skipped == {decision.reason: 1}
    else:
        assert decision.outcome == "invalid"
        assert stats.invalid == {decision.reason: 1}
    fired = {r.rule for r in decision.rules if r.fired}
    assert fired == {f.rule for f in found}
