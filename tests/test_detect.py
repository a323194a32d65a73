"""Detection semantics (DESIGN §5) with the shipped rules over realistic events."""

from __future__ import annotations

from typing import Any

import pytest

from healert_webhook.detect import Detector, Friction, Stats
from healert_webhook.rules import RuleSet, parse_rules

from support.events import (
    audit_event,
    bypass_patch,
    deployment,
    exec_spdy,
    exec_ws,
    port_forward,
    secret_get,
)


def run(detector: Detector, *events: Any) -> tuple[list[Friction], Stats]:
    stats = Stats()
    return detector.detect(list(events), stats), stats


def types(found: list[Friction]) -> list[str]:
    return [f.rule for f in found]


def test_websocket_exec_is_reported_once_with_its_workload(detector: Detector) -> None:
    found, stats = run(detector, exec_ws())
    assert types(found) == ["kubectl-exec"]
    event = found[0].event
    assert event == {
        "entity_ref": "component:payments/payments-api",
        "type": "kubectl-exec",
        "severity": "high",
        "service": "payments-api",
        "description": "kubectl exec on pods/payments-api-7d9f8b6c4-xkj2p (ns:payments) "
                       "by oidc:jane@example.com",
        "actor": "oidc:jane@example.com",
        "namespace": "payments",
        "workflow": "deploy",
        "timestamp": "2026-11-26T10:15:30.123456Z",
    }
    assert stats.matched[("kubectl-exec", "high")] == 1


def test_spdy_exec_is_exec_and_not_config_drift(detector: Detector) -> None:
    found, _ = run(detector, exec_spdy())
    assert types(found) == ["kubectl-exec"]


def test_exec_stages_share_one_key_and_request_received_never_fires(
        detector: Detector) -> None:
    started = exec_ws(audit_id="a-1")
    complete = dict(started, stage="ResponseComplete", stageTimestamp="2026-11-26T11:00:00Z")
    received = dict(started, stage="RequestReceived")
    panic = dict(started, stage="Panic")
    found, stats = run(detector, received, started, complete, panic)
    assert types(found) == ["kubectl-exec", "kubectl-exec"]
    assert found[0].key == found[1].key
    assert stats.skipped["stage"] == 2


def test_dedup_key_is_not_forgeable_by_reusing_an_audit_id(detector: Detector) -> None:
    first, _ = run(detector, exec_ws(audit_id="same"))
    other_user, _ = run(detector, exec_ws(audit_id="same", user="oidc:mallory@example.com"))
    later, _ = run(detector, exec_ws(audit_id="same", received="2026-11-27T00:00:00Z"))
    keys = {first[0].key, other_user[0].key, later[0].key}
    assert len(keys) == 3


def test_port_forward_to_statefulset_pod(detector: Detector) -> None:
    found, _ = run(detector, port_forward())
    assert types(found) == ["port-forward"]
    assert found[0].event["entity_ref"] == "component:payments/postgres"
    assert found[0].event["severity"] == "medium"


def test_spdy_port_forward_is_not_drift(detector: Detector) -> None:
    found, _ = run(detector, audit_event("create", "pods", "web-5d8f9c7b6d-abcde", "shop",
                                         subresource="portforward", code=101))
    assert types(found) == ["port-forward"]


@pytest.mark.parametrize("code", [200, 403])
def test_secret_get_counts_allowed_and_denied(detector: Detector, code: int) -> None:
    found, _ = run(detector, secret_get(code=code))
    assert types(found) == ["emergency-access"]
    assert found[0].event["description"] == (
        "Direct secret access: db-credentials in payments by oidc:jane@example.com")
    assert found[0].event["entity_ref"] == "component:payments/db-credentials"


def test_secret_list_is_not_a_secret_read(detector: Detector) -> None:
    found, stats = run(detector, audit_event("list", "secrets", "", "payments"))
    assert found == []
    assert stats.skipped["no_rule"] == 1


def test_bypass_annotation_in_response_object(detector: Detector) -> None:
    found, _ = run(detector, bypass_patch())
    assert sorted(types(found)) == ["config-drift", "pipeline-skip"]
    for friction in found:
        # A Deployment's name is never cut: only generated names are.
        assert friction.event["entity_ref"] == "component:payments/payments-gateway-proxy"


def test_bypass_annotation_on_the_audit_event_itself(detector: Detector) -> None:
    event = audit_event("update", "configmaps", "flags", "shop")
    event["annotations"]["policy.admission.k8s.io/bypass"] = "true"
    found, _ = run(detector, event)
    assert types(found) == ["pipeline-skip"]


def test_bypass_annotation_with_other_value_does_not_fire(detector: Detector) -> None:
    event = bypass_patch()
    event["responseObject"]["metadata"]["annotations"]["policy.admission.k8s.io/bypass"] = "no"
    event["requestObject"]["metadata"]["annotations"]["policy.admission.k8s.io/bypass"] = "no"
    found, _ = run(detector, event)
    assert types(found) == ["config-drift"]


def test_get_before_annotate_is_not_a_bypass(detector: Detector) -> None:
    event = audit_event("get", "deployments", "payments-gateway-proxy", "payments",
                        responseObject=deployment("payments-gateway-proxy", "payments",
                                                  annotations={
                                                      "policy.admission.k8s.io/bypass": "true"}))
    found, _ = run(detector, event)
    assert found == []


def test_kubectl_scale_is_drift(detector: Detector) -> None:
    found, _ = run(detector, audit_event("patch", "deployments", "checkout", "shop",
                                         subresource="scale"))
    assert types(found) == ["config-drift"]
    assert found[0].event["description"] == (
        "Direct patch on deployments/checkout (ns:shop) by oidc:jane@example.com")


def test_labels_win_over_names(detector: Detector) -> None:
    obj = deployment("checkout-v2", "shop", labels={"app.kubernetes.io/name": "checkout",
                                                     "backstage.io/kubernetes-id": "shop-checkout"})
    found, _ = run(detector, audit_event("patch", "deployments", "checkout-v2", "shop",
                                         level="RequestResponse", responseObject=obj))
    assert found[0].event["entity_ref"] == "component:shop/shop-checkout"
    del obj["metadata"]["labels"]["backstage.io/kubernetes-id"]
    found, _ = run(detector, audit_event("patch", "deployments", "checkout-v2", "shop",
                                         level="RequestResponse", responseObject=obj))
    assert found[0].event["entity_ref"] == "component:shop/checkout"


def test_owner_reference_names_the_deployment(detector: Detector) -> None:
    pod = {"kind": "Pod", "apiVersion": "v1", "metadata": {
        "name": "worker-7c9d5b8f6-q2w4z", "namespace": "jobs",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": "worker-7c9d5b8f6", "controller": True}]}}
    found, _ = run(detector, audit_event("patch", "pods", "worker-7c9d5b8f6-q2w4z", "jobs",
                                         level="RequestResponse", responseObject=pod))
    assert found[0].event["entity_ref"] == "component:jobs/worker"


def test_cluster_scoped_names_are_mapped_to_valid_entities() -> None:
    rules = parse_rules("""
rules:
  - name: rbac-change
    severity: high
    match: {resources: [clusterroles], verbs: [delete]}
""")
    found, _ = run(Detector(rules, entity_namespace="platform"),
                   audit_event("delete", "clusterroles", "system:aggregate-to-edit",
                               user="system:admin"))
    event = found[0].event
    assert event["entity_ref"] == "component:platform/system-aggregate-to-edit"
    assert "namespace" not in event
    assert event["actor"] == "system:admin"


@pytest.mark.parametrize("user,reported", [
    ("system:admin", True),
    ("system:masters", True),
    ("alice", True),
    ("oidc:dev@company.com", True),
    ("system:serviceaccount:ci:deployer", False),
    ("system:node:worker-1", False),
    ("system:kube-controller-manager", False),
    ("", False),
])
def test_ignore_system_actors(detector: Detector, user: str, reported: bool) -> None:
    found, stats = run(detector, exec_ws(user=user))
    assert bool(found) is reported
    if not reported:
        assert stats.skipped["system_actor"] == 1


def test_impersonation_reports_the_real_actor(detector: Detector) -> None:
    event = secret_get(user="system:admin",
                       impersonatedUser={"username": "bob", "groups": ["system:authenticated"]})
    found, _ = run(detector, event)
    assert found[0].event["actor"] == "system:admin"
    assert found[0].event["description"].endswith("by system:admin (as bob)")


def test_global_and_own_namespaces_are_never_reported(detector: Detector) -> None:
    found, stats = run(detector, exec_ws(ns="kube-system"), exec_ws(ns="healert-system"),
                       exec_ws(ns="argocd"))
    assert found == []
    assert stats.skipped["namespace"] == 3


def test_per_rule_namespace_filters() -> None:
    rules = parse_rules("""
rules:
  - name: prod-secrets
    severity: high
    match: {resource: secrets, verb: get, namespace_contains: PROD,
            ignore_namespaces: [prod-sandbox]}
""")
    detector = Detector(rules)
    found, _ = run(detector, secret_get(ns="shop-production"), secret_get(ns="staging"),
                   secret_get(ns="prod-sandbox"), secret_get(ns=""))
    assert [f.event["namespace"] for f in found] == ["shop-production"]


def test_one_event_can_fire_several_rules() -> None:
    rules = parse_rules("""
rules:
  - name: any-secret
    severity: medium
    match: {resource: secrets}
  - name: secret-get
    severity: low
    match: {resource: secrets, verb: get}
""")
    found, _ = run(Detector(rules), secret_get())
    assert types(found) == ["any-secret", "secret-get"]
    assert found[0].key != found[1].key


def test_control_characters_in_user_names_are_escaped(detector: Detector) -> None:
    user = "eve\n2026-11-26 INFO forged line\x1b[31m\u00e9"
    found, _ = run(detector, exec_ws(user=user))
    event = found[0].event
    for text in (event["actor"], event["description"]):
        assert text.isascii() and text.isprintable()
    assert "\\n2026-11-26 INFO forged line\\x1b[31m\\xe9" in event["actor"]


def test_long_values_are_cut_to_the_backend_limits(detector: Detector) -> None:
    found, _ = run(detector, exec_ws(user="u" * 5000, pod="p" * 300))
    event = found[0].event
    assert len(event["actor"]) == 200
    assert len(event["description"]) <= 500
    assert len(event["entity_ref"]) <= 200


@pytest.mark.parametrize("bad,reason", [
    ({"stage": "ResponseComplete", "objectRef": "x", "verb": "get"}, "bad_objectRef"),
    ({"stage": "ResponseComplete", "verb": "get", "user": None,
      "objectRef": {"resource": "pods", "subresource": "exec"}}, None),
    ({"stage": "ResponseComplete", "verb": 7,
      "objectRef": {"resource": "pods", "subresource": "exec"}}, "bad_verb"),
    ({}, "missing_stage"),
    ([], "not_an_object"),
    ("event", "not_an_object"),
    (None, "not_an_object"),
    ({"stage": ["ResponseComplete"]}, "bad_stage"),
    ({"stage": "Later"}, "unknown_stage"),
    ({"stage": "ResponseComplete", "verb": "get",
      "objectRef": {"resource": ["pods"]}}, "bad_objectRef_resource"),
    ({"stage": "ResponseComplete", "verb": "get", "user": "root",
      "objectRef": {"resource": "pods", "subresource": "exec"}}, "bad_user"),
    ({"stage": "ResponseComplete", "verb": "get", "user": {"username": 5},
      "objectRef": {"resource": "pods", "subresource": "exec"}}, "bad_username"),
])
def test_malformed_events_are_skipped_and_counted(detector: Detector, bad: Any,
                                                  reason: str | None) -> None:
    found, stats = run(detector, bad, exec_ws())
    assert types(found) == ["kubectl-exec"]  # the good event next to it still counts
    assert stats.events == 2
    if reason is None:  # user: null is an anonymous (internal) actor, not malformed
        assert stats.skipped["system_actor"] == 1
    else:
        assert stats.invalid == {reason: 1}


def test_index_leaves_only_candidate_rules(shipped_rules: RuleSet) -> None:
    detector = Detector(shipped_rules)
    by_resource, any_resource = detector._by_resource, detector._any_resource

    def leaf(resource: str, sub: str | None, verb: str) -> tuple[list[str], bool] | None:
        subs, other_sub = by_resource.get(resource, any_resource)
        verbs, other_verb = subs.get(sub, other_sub)
        found = verbs.get(verb, other_verb)
        return None if found is None else ([r.name for r in found[0]], found[1])

    assert leaf("pods", "exec", "get") == (["kubectl-exec"], True)
    # config-drift ignores the exec subresource; pipeline-skip still needs its annotation.
    assert leaf("pods", "exec", "create") == (["kubectl-exec", "pipeline-skip"], True)
    assert leaf("deployments", "scale", "patch") == (["pipeline-skip", "config-drift"], True)
    assert leaf("leases", None, "update") == (["pipeline-skip"], True)
    assert leaf("leases", None, "watch") is None
    assert leaf("pods", None, "list") is None
