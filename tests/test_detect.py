"""Detection semantics with the shipped rules over realistic events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from healert_webhook import audit, index
from healert_webhook.backend_contract import validate
from healert_webhook.detect import Detector
from healert_webhook.records import MAX_FAILURES, Friction, Stats
from healert_webhook.rules import RuleSet, parse_rules

from support.events import (
    GITOPS_CONTROLLERS,
    PROXIES,
    audit_event,
    bypass_patch,
    deployment,
    exec_spdy,
    exec_ws,
    gitops_deployment,
    owner,
    pod_create,
    pod_object,
    port_forward,
    secret_get,
    service_account,
    through_proxy,
    workload_patch,
)
from support.paths import ROOT


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
        "description": "kubectl exec on pods/payments-api-7d9f8b6c4-xkj2p (ns:payments, "
                       "container:-, command:-) by oidc:jane@example.com",
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


def _json_patch(*ops: dict[str, Any]) -> dict[str, Any]:
    """A `kubectl patch --type=json` of a Deployment audited at Request: operations only."""
    event = audit_event("patch", "deployments", "payments-gateway-proxy", "payments",
                        level="Request")
    event["requestObject"] = list(ops)
    return event


def test_bypass_annotation_added_by_a_json_patch(detector: Detector) -> None:
    key = "/metadata/annotations/policy.admission.k8s.io~1bypass"
    found, _ = run(detector, _json_patch({"op": "add", "path": key, "value": "true"}))
    assert sorted(types(found)) == ["config-drift", "pipeline-skip"]
    whole = {"op": "replace", "path": "/metadata/annotations",
             "value": {"policy.admission.k8s.io/bypass": "true"}}
    assert "pipeline-skip" in types(run(detector, _json_patch(whole))[0])


def test_a_json_patch_that_removes_or_sets_another_value_is_no_bypass(
        detector: Detector) -> None:
    key = "/metadata/annotations/policy.admission.k8s.io~1bypass"
    for ops in ([{"op": "add", "path": key, "value": "true"}, {"op": "remove", "path": key}],
                [{"op": "add", "path": key, "value": "false"}],
                [{"op": "test", "path": key, "value": "true"}]):
        assert types(run(detector, _json_patch(*ops))[0]) == ["config-drift"], ops


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
        "Direct patch on deployments/checkout (ns:shop, manager:kubectl) by "
        "oidc:jane@example.com")


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


def test_a_person_impersonating_a_person_stays_the_actor(detector: Detector) -> None:
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
    by_resource, any_resource = detector.index.by_resource, detector.index.any_resource

    def leaf(resource: str, sub: str | None, verb: str) -> tuple[list[str], bool] | None:
        subs, other_sub = by_resource.get(resource, any_resource)
        verbs, other_verb = subs.get(sub, other_sub)
        found = verbs.get(verb, other_verb)
        return None if found is None else ([r.name for r in found[0]], found[1])

    assert leaf("pods", "exec", "get") == (["kubectl-exec"], True)
    # config-drift ignores the exec subresource; pipeline-skip still needs its annotation.
    assert leaf("pods", "exec", "create") == (["kubectl-exec", "pipeline-skip"], True)
    # gitops-suspend names no resource: Flux's annotation can be on any object.
    assert leaf("deployments", "scale", "patch") == (
        ["pipeline-skip", "config-drift", "gitops-suspend"], True)
    assert leaf("leases", None, "update") == (["pipeline-skip", "gitops-suspend"], True)
    assert leaf("leases", None, "watch") is None
    assert leaf("pods", None, "list") is None


def test_every_candidate_matches_scope_failure(shipped_rules: RuleSet) -> None:
    """The index and the per-rule statement of it (used by explain) agree."""
    rules = parse_rules((ROOT / "rules.yaml").read_text().replace("enabled: false",
                                                                    "enabled: true"))
    detector = Detector(rules)
    resources = [*sorted({r for rule in rules.rules for r in rule.resources or ()}), "leases"]
    subs = [None, "", "exec", "attach", "portforward", "log", "scale", "status", "eviction"]
    verbs = ["get", "list", "create", "update", "patch", "delete", "watch"]
    for resource in [*resources, None]:
        for sub in subs:
            for verb in verbs:
                leaf = detector.index.leaf(resource, sub, verb)
                indexed = [r.name for r in leaf[0]] if leaf else []
                stated = [r.name for r in detector.rules
                          if index.scope_failure(r, resource, sub, verb) is None]
                assert indexed == stated, (resource, sub, verb)
                if leaf:
                    assert leaf[1] == all(r.ignore_system for r in leaf[0])


def _quadratic_index(rules: Any) -> Any:
    """The index as it was first built (each key filters every rule): the reference the
    grouped build must equal."""
    def leaf(chosen: list[Any]) -> Any:
        # (no namespace of config.ignore_namespaces here: an empty map where one opts out)
        opted = {} if any(not r.config_namespaces for r in chosen) else None
        return (tuple(chosen), all(r.ignore_system for r in chosen), opted) if chosen else None

    def verb_map(chosen: list[Any]) -> Any:
        verbs = {v for r in chosen for v in (r.verbs or ())}
        return ({v: leaf([r for r in chosen if r.verbs is None or v in r.verbs])
                 for v in verbs}, leaf([r for r in chosen if r.verbs is None]))

    def sub_map(chosen: list[Any]) -> Any:
        subs: set[Any] = {None, ""}
        for r in chosen:
            subs.update({r.subresource} - {None}, r.ignore_subresources)
        by_sub = {}
        for sub in subs:
            key = None if sub == "" else sub
            by_sub[sub] = verb_map([r for r in chosen
                                    if r.subresource in (None, key)
                                    and key not in r.ignore_subresources])
        return by_sub, verb_map([r for r in chosen if r.subresource is None])

    named = {res for r in rules for res in (r.resources or ())}
    return ({res: sub_map([r for r in rules if r.resources is None or res in r.resources])
             for res in named}, sub_map([r for r in rules if r.resources is None]))


@pytest.mark.parametrize("seed", range(20))
def test_grouped_index_equals_the_filtering_one(seed: int) -> None:
    """Random rule sets: the linear build gives the same index, key for key, in order."""
    import random

    rng = random.Random(seed)
    pick = {"resources": ["pods", "secrets", "deployments", "leases", "jobs"],
            "subresource": ["exec", "log", "scale", "status"],
            "verbs": ["get", "create", "patch", "delete", "update"]}
    lines = ["rules:"]
    for n in range(rng.randint(1, 40)):
        lines += [f"  - name: rule-{n}", "    severity: low",
                  f"    ignore_system: {rng.choice(['true', 'false'])}",
                  f"    config_ignore_namespaces: {rng.choice(['true', 'false'])}",
                  "    match:", "      namespace_contains: a"]
        if rng.random() < 0.7:
            lines.append(f"      resources: {rng.sample(pick['resources'], rng.randint(1, 3))}")
        if rng.random() < 0.4:
            lines.append(f"      subresource: {rng.choice(pick['subresource'])}")
        elif rng.random() < 0.4:
            ignored = rng.sample(pick["subresource"], rng.randint(1, 2))
            lines.append(f"      ignore_subresources: {ignored}")
        if rng.random() < 0.6:
            lines.append(f"      verbs: {rng.sample(pick['verbs'], rng.randint(1, 3))}")
    rules = parse_rules("\n".join(lines) + "\n").enabled
    assert index.build_index(rules) == _quadratic_index(rules)


# --- the actor is the person ------------------------------------------------------------

@pytest.mark.parametrize("proxy", sorted(PROXIES))
def test_exec_through_an_access_proxy_is_the_persons(detector: Detector, proxy: str) -> None:
    account, person = PROXIES[proxy]
    found, stats = run(detector, through_proxy(exec_ws(), proxy))
    assert types(found) == ["kubectl-exec"], stats
    event = found[0].event
    assert event["actor"] == person["username"]
    assert event["description"] == (
        f"kubectl exec on pods/payments-api-7d9f8b6c4-xkj2p (ns:payments, container:-, "
        f"command:-) by {person['username']} (via {account['username']})")
    assert validate(event) == []


def test_a_person_impersonating_a_service_account_stays_the_actor(detector: Detector) -> None:
    event = secret_get(user="oidc:jane@example.com",
                       impersonatedUser=service_account("ci", "deployer"))
    found, _ = run(detector, event)
    assert found[0].event["actor"] == "oidc:jane@example.com"
    assert found[0].event["description"].endswith(
        "by oidc:jane@example.com (as system:serviceaccount:ci:deployer)")


def test_an_internal_identity_impersonating_another_is_skipped(detector: Detector) -> None:
    # Argo CD's sync impersonation: the controller acts as the destination's account.
    event = exec_ws(user="system:serviceaccount:argocd:argocd-application-controller",
                    impersonatedUser=service_account("payments", "argocd-deployer"))
    found, stats = run(detector, event)
    assert found == []
    assert stats.skipped == {"system_actor": 1}


def test_ignore_system_judges_the_actor_not_the_proxy() -> None:
    rules = parse_rules("""
rules:
  - name: people-only
    severity: low
    ignore_system: true
    match: {resource: pods, subresource: exec}
  - name: everyone
    severity: low
    match: {resource: pods, subresource: exec}
""")
    proxied = through_proxy(exec_ws(), "rancher")
    found, _ = run(Detector(rules), proxied)
    assert types(found) == ["people-only", "everyone"]
    assert {f.event["actor"] for f in found} == {"u-7gkmh"}


def test_proxied_request_keeps_one_key_across_stages_and_resends(detector: Detector) -> None:
    started = through_proxy(exec_ws(audit_id="a-9"), "teleport")
    complete = {**started, "stage": "ResponseComplete", "stageTimestamp": "2026-11-26T11:00Z"}
    first, _ = run(detector, started, complete, started)
    assert len({f.key for f in first}) == 1
    other = {**started, "impersonatedUser": {"username": "bob@example.com"}}
    second, _ = run(detector, other)
    assert second[0].key != first[0].key


CERT_PROXY = {"username": "kube-oidc-proxy", "groups": ["access-proxies",
                                                      "system:authenticated"]}
JANE = {"username": "oidc:jane@example.com", "groups": ["oidc:platform"]}


@pytest.mark.parametrize("proxies", [("kube-oidc-proxy",), ("user:kube-oidc-proxy",),
                                     ("group:access-proxies",), ("other", "group:access-proxies")])
def test_a_configured_proxy_that_is_no_service_account_hands_the_actor_over(
        shipped_rules: RuleSet, proxies: tuple[str, ...]) -> None:
    """kube-oidc-proxy authenticating with a client certificate: not `system:`, so only the
    setting says it is a proxy."""
    event = {**exec_ws(), "user": CERT_PROXY, "impersonatedUser": JANE}
    plain, _ = run(Detector(shipped_rules), event)
    assert plain[0].event["actor"] == "kube-oidc-proxy"
    assert plain[0].event["description"].endswith(" (as oidc:jane@example.com)")
    found, _ = run(Detector(shipped_rules, proxies=proxies), event)
    assert found[0].event["actor"] == "oidc:jane@example.com"
    assert found[0].event["description"].endswith(
        "by oidc:jane@example.com (via kube-oidc-proxy)")
    assert found[0].key == plain[0].key  # the key names both, whoever is the actor
    groups = audit.actor_groups(event, audit.resolve_actor(event,
                                                           audit.Proxies.from_names(proxies)))
    assert groups == ("oidc:platform",)


def test_a_configured_proxy_is_judged_by_whom_it_impersonates(shipped_rules: RuleSet) -> None:
    detector = Detector(shipped_rules, proxies=("kube-oidc-proxy",))
    as_controller = {**exec_ws(), "user": CERT_PROXY,
                     "impersonatedUser": service_account("payments", "deployer")}
    found, stats = run(detector, as_controller)
    assert found == [] and stats.skipped == {"system_actor": 1}
    alone = {**exec_ws(), "user": CERT_PROXY}  # its own request: it is the actor
    assert run(detector, alone)[0][0].event["actor"] == "kube-oidc-proxy"
    # A person not named in the setting who impersonates stays the actor.
    person = {**exec_ws(), "user": {"username": "alice", "groups": ["access-proxy-users"]},
              "impersonatedUser": JANE}
    assert run(detector, person)[0][0].event["actor"] == "alice"


# --- an entity never depends on the audit level ------------------------------------------

@pytest.mark.parametrize("name,workload", [
    ("nvidia-dcgm-x7k2p", "nvidia-dcgm"),
    ("kube-flannel-ds-4x8kz", "kube-flannel-ds"),
    ("migrate-db-k8x2q", "migrate-db"),
])
def test_daemonset_and_job_pods_are_not_deployments(detector: Detector, name: str,
                                                     workload: str) -> None:
    found, _ = run(detector, exec_ws(pod=name, ns="gpu"))
    assert found[0].event["entity_ref"] == f"component:gpu/{workload}"


def test_kubectl_debug_node_pod_create_and_exec_are_charged_alike(detector: Detector) -> None:
    pod = "node-debugger-ip-10-0-1-17.eu-west-1.compute.internal-bk2vd"
    obj = pod_object(pod, "payments")  # kubectl names it; no labels, no owner
    created, _ = run(detector, pod_create(obj, level="RequestResponse"))
    created_request, _ = run(detector, pod_create(obj, level="Request"))
    created_metadata, _ = run(detector, pod_create(obj, level="Metadata"))
    execed, _ = run(detector, exec_ws(pod=pod))
    refs = {f.event["entity_ref"] for f in created + created_request + created_metadata
            + execed}
    assert refs == {"component:payments/node-debugger-ip-10-0-1-17.eu-west-1.compute.internal"}
    assert types(created) == ["config-drift"] and types(execed) == ["kubectl-exec"]


def test_a_hand_made_pod_is_charged_alike_with_and_without_the_object(
        detector: Detector) -> None:
    obj = pod_object("test-pod-1", "foo")
    levels = [run(detector, pod_create(obj, level=level))[0]
              for level in ("Metadata", "Request", "RequestResponse")]
    execed, _ = run(detector, exec_ws(pod="test-pod-1", ns="foo"))
    assert {f.event["entity_ref"] for found in [*levels, execed] for f in found} == \
        {"component:foo/test-pod"}


def test_generate_name_at_request_level_and_no_name_at_metadata_level(
        detector: Detector) -> None:
    obj = pod_object("", "shop", generate_name="checkout-7d9f8b6c4-")
    request, _ = run(detector, pod_create(obj, level="Request"))
    assert request[0].event["entity_ref"] == "component:shop/checkout"
    assert request[0].event["description"] == (
        "Direct create on pods/checkout-7d9f8b6c4- (ns:shop, manager:kubectl) by "
        "oidc:jane@example.com")
    response, _ = run(detector, pod_create(obj, level="RequestResponse",
                                           generated="checkout-7d9f8b6c4-q2w4z"))
    assert response[0].event["entity_ref"] == "component:shop/checkout"
    assert "pods/checkout-7d9f8b6c4-q2w4z " in response[0].event["description"]
    metadata, stats = run(detector, pod_create(obj, level="Metadata"))
    assert metadata == []
    assert stats.skipped == {"no_name": 1}


def test_the_controlling_owner_wins_else_the_only_owner() -> None:
    rules = parse_rules("rules:\n  - name: pod-writes\n    severity: low\n"
                        "    match: {resource: pods, verbs: [patch]}\n")
    detector = Detector(rules)

    def charged(owners: list[dict[str, Any]]) -> str:
        obj = pod_object("worker-7c9d5b8f6-q2w4z", "jobs", owners=owners)
        event = audit_event("patch", "pods", "worker-7c9d5b8f6-q2w4z", "jobs",
                            level="RequestResponse", responseObject=obj)
        return str(run(detector, event)[0][0].event["entity_ref"])

    assert charged([owner("ConfigMap", "cfg", controller=None),
                    owner("ReplicaSet", "worker-7c9d5b8f6")]) == "component:jobs/worker"
    assert charged([owner("Workflow", "nightly", controller=False,
                          api_version="argoproj.io/v1alpha1")]) == "component:jobs/nightly"
    # Two owners, neither controlling: the name decides.
    assert charged([owner("A", "a", controller=None), owner("B", "b", controller=None)]) \
        == "component:jobs/worker"


@pytest.mark.parametrize("kind", [["ReplicaSet"], {"a": 1}, 7, None])
def test_owner_kind_of_any_type_never_fails_the_event(detector: Detector, kind: Any) -> None:
    obj = pod_object("web-7d9f8b6c4-xkj2p", "shop", owners=[
        {"apiVersion": "apps/v1", "kind": kind, "name": "web-7d9f8b6c4", "controller": True}])
    event = audit_event("patch", "pods", "web-7d9f8b6c4-xkj2p", "shop",
                        level="RequestResponse", requestObject=obj, responseObject=obj)
    found, stats = run(detector, event)
    assert [f.event["entity_ref"] for f in found] == ["component:shop/web"]
    assert stats.invalid == {}


# --- GitOps-aware drift ------------------------------------------------------------------

@pytest.fixture(scope="module")
def gitops_detector() -> Detector:
    """The shipped rules with gitops-drift enabled (the tier)."""
    text = (ROOT / "rules.yaml").read_text()
    start = text.index("  - name: gitops-drift")
    end = text.index("\n\n", start)
    block = text[start:end].replace("    enabled: false\n", "")
    return Detector(parse_rules(text[:start] + block + text[end:]))


@pytest.mark.parametrize("tool", ["argocd", "kustomize", "helm"])
def test_a_person_patching_a_gitops_deployment_is_gitops_drift(gitops_detector: Detector,
                                                              tool: str) -> None:
    found, _ = run(gitops_detector, workload_patch(gitops_deployment("checkout", "shop", tool)))
    assert types(found) == ["config-drift", "gitops-drift"]
    event = found[1].event
    assert event["entity_ref"] == "component:shop/checkout"
    assert event["description"] == ("Hand patch on GitOps-managed deployments/checkout "
                                     "(ns:shop, manager:kubectl-patch) by "
                                     "oidc:jane@example.com")


@pytest.mark.parametrize("tool", ["argocd", "kustomize", "helm"])
def test_the_gitops_controller_writing_is_never_drift(tool: str) -> None:
    # ignore_system: false, so only the controller exclusion keeps these out.
    rules = parse_rules("""
rules:
  - name: gitops-drift
    severity: high
    match: {resources: [deployments], verbs: [patch], gitops_managed: true}
""")
    user, manager, agent = GITOPS_CONTROLLERS[tool]
    event = workload_patch(gitops_deployment("checkout", "shop", tool), field_manager=manager,
                           user=user["username"], user_agent=agent)
    found, stats = run(Detector(rules), event)
    assert found == []
    assert stats.skipped == {"gitops_controller": 1}


def test_no_object_or_no_gitops_sign_is_not_gitops_drift(gitops_detector: Detector) -> None:
    metadata_level = workload_patch(gitops_deployment("checkout", "shop", "argocd"),
                                    level="Metadata")
    found, _ = run(gitops_detector, metadata_level)
    assert types(found) == ["config-drift"]
    helm_only = deployment("checkout", "shop", labels={"app.kubernetes.io/instance": "x"})
    found, _ = run(gitops_detector, workload_patch(helm_only))
    assert types(found) == ["config-drift"]


def test_split_config_drift_and_gitops_drift_count_each_change_once() -> None:
    rules = parse_rules("""
rules:
  - name: config-drift
    severity: high
    ignore_system: true
    match: {resources: [deployments], verbs: [patch], gitops_managed: false}
  - name: gitops-drift
    severity: high
    ignore_system: true
    match: {resources: [deployments], verbs: [patch], gitops_managed: true}
""")
    detector = Detector(rules)
    managed, _ = run(detector, workload_patch(gitops_deployment("a", "shop", "kustomize")))
    plain, _ = run(detector, workload_patch(deployment("b", "shop")))
    assert types(managed) == ["gitops-drift"]
    assert types(plain) == ["config-drift"]


def test_gitops_evidence_and_controllers_are_configurable() -> None:
    rules = parse_rules("""
config:
  gitops:
    annotations: [example.com/owned-by-git]
    controllers: ["system:serviceaccount:gitops:*"]
rules:
  - name: gitops-drift
    severity: high
    match: {resources: [deployments], verbs: [patch], gitops_managed: true}
""")
    detector = Detector(rules)
    obj = deployment("checkout", "shop", annotations={"example.com/owned-by-git": "main"})
    found, _ = run(detector, workload_patch(obj))
    assert types(found) == ["gitops-drift"]
    by_tool, stats = run(detector, workload_patch(
        obj, user="system:serviceaccount:gitops:reconciler"))
    assert by_tool == [] and stats.skipped == {"gitops_controller": 1}
    # Lists not given keep their defaults: Flux's labels still count.
    found, _ = run(detector, workload_patch(gitops_deployment("x", "shop", "kustomize")))
    assert types(found) == ["gitops-drift"]


# --- users, groups, user agents, responses -------------------------------------------------

def test_users_and_groups_exact_and_prefix() -> None:
    rules = parse_rules("""
rules:
  - name: oidc-people
    severity: low
    match: {resource: secrets, users: ["oidc:*", kate], ignore_users: ["oidc:bot-*"]}
  - name: sre
    severity: low
    match: {resource: secrets, groups: "oidc:sre*", ignore_groups: [oidc:sre-trainees]}
""")
    detector = Detector(rules)

    def fired(**kw: Any) -> list[str]:
        return types(run(detector, secret_get(**kw))[0])

    assert fired(user="oidc:jane@example.com", groups=("oidc:platform",)) == ["oidc-people"]
    assert fired(user="kate", groups=("oidc:sre-oncall",)) == ["oidc-people", "sre"]
    assert fired(user="oidc:bot-ci", groups=()) == []
    assert fired(user="katerina", groups=("oidc:sre", "oidc:sre-trainees")) == []
    # Behind a proxy the person's groups count, not the proxy account's.
    proxied = through_proxy(secret_get(), "pinniped")
    proxied["impersonatedUser"] = {"username": "kate", "groups": ["oidc:sre"]}
    assert types(run(detector, proxied)[0]) == ["oidc-people", "sre"]


def test_user_agent_substrings() -> None:
    rules = parse_rules("""
rules:
  - name: by-hand
    severity: low
    match: {resource: secrets, user_agent_contains: [KUBECTL, k9s],
            ignore_user_agent_contains: kubectl/v1.28}
""")
    detector = Detector(rules)
    assert types(run(detector, secret_get())[0]) == ["by-hand"]
    assert types(run(detector, secret_get(user_agent="k9s/v0.32.5 (linux/amd64)"))[0]) == \
        ["by-hand"]
    old, stats = run(detector, secret_get(user_agent="kubectl/v1.28.4 (linux/amd64)"))
    assert old == [] and stats.skipped == {"user_agent": 1}
    assert run(detector, secret_get(user_agent="Go-http-client/2.0"))[0] == []
    assert run(detector, {**secret_get(), "userAgent": ["kubectl"]})[0] == []


def test_a_denied_attempt_can_be_its_own_lower_signal() -> None:
    rules = parse_rules("""
rules:
  - name: secret-read
    severity: medium
    match: {resource: secrets, verb: get, response: success}
  - name: secret-access-denied
    severity: low
    description: "refused {code}: {name} for {actor}"
    match: {resource: secrets, verb: get, response: [denied]}
""")
    detector = Detector(rules)
    allowed, _ = run(detector, secret_get(code=200))
    denied, _ = run(detector, secret_get(code=403))
    missing, stats = run(detector, secret_get(code=404))
    assert [(f.rule, f.event["severity"]) for f in allowed] == [("secret-read", "medium")]
    assert [(f.rule, f.event["severity"]) for f in denied] == [("secret-access-denied", "low")]
    assert denied[0].event["description"] == \
        "refused 403: db-credentials for oidc:jane@example.com"
    assert missing == [] and stats.skipped == {"response": 1}


# --- skip reasons name the decisive reason ----------------------------------------------

def test_skip_reason_is_the_closest_miss_not_the_last_rule() -> None:
    rules = parse_rules("""
rules:
  - name: prod-secrets
    severity: high
    match: {resource: secrets, namespace_contains: prod, users: ["oidc:*"]}
  - name: people
    severity: low
    ignore_system: true
    match: {resource: secrets}
""")
    detector = Detector(rules)
    # prod-secrets passes the actor and namespace checks and fails on the user; people,
    # the last rule tried, fails at once on the internal actor. The user is decisive.
    event = secret_get(ns="shop-prod", user="system:serviceaccount:ci:reader")
    _, stats = run(detector, event)
    assert stats.skipped == {"user": 1}
    _, stats = run(detector, secret_get(ns="shop-dev", user="system:serviceaccount:ci:r"))
    assert stats.skipped == {"namespace_contains": 1}
    # Excluded namespaces settle every rule at once, whatever else holds.
    _, stats = run(Detector(rules, own_namespace="shop-prod"), event)
    assert stats.skipped == {"namespace": 1}


@pytest.mark.parametrize("event,reason", [
    (audit_event("watch", "leases", "", "kube-node-lease"), "no_rule"),
    (exec_ws(ns="kube-system"), "namespace"),
    (exec_ws(user="system:node:worker-1"), "system_actor"),
    # gitops-suspend cannot see Flux's annotation without the request's body
    (audit_event("update", "configmaps", "flags", "shop"), "object_missing"),
    (audit_event("update", "configmaps", "flags", "shop", level="Request",
                 requestObject={"kind": "ConfigMap", "apiVersion": "v1",
                                "metadata": {"name": "flags"}}), "object"),
    (dict(exec_ws(), stage="RequestReceived"), "stage"),
    (pod_create(pod_object("", "shop", generate_name="web-"), level="Metadata"), "no_name"),
])
def test_each_skip_has_its_own_reason(detector: Detector, event: dict[str, Any],
                                      reason: str) -> None:
    _, stats = run(detector, event)
    assert stats.skipped == {reason: 1}


# --- one malformed event never fails a batch --------------------------------------------

def test_deeply_nested_fields_never_fail_the_batch(detector: Detector) -> None:
    deep: Any = "x"
    for _ in range(1000):
        deep = [deep]
    event = exec_ws(audit_id="ok")
    event["auditID"] = deep
    event["requestURI"] = {"nested": deep}
    found, stats = run(detector, event, exec_ws())
    assert len(found) == 2
    assert stats.invalid == {}
    assert all(len(f.key) == 32 for f in found)


def test_an_event_that_raises_is_counted_and_sampled(detector: Detector,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = audit.resolve_actor

    def explode(event: dict[str, Any],
                proxies: audit.Proxies = audit.NO_PROXIES) -> audit.Actor:
        if str(event.get("auditID", "")).startswith("boom"):
            raise ValueError("cannot evaluate\nthis one")
        return real(event, proxies)

    monkeypatch.setattr(audit, "resolve_actor", explode)
    bad = [exec_ws(audit_id=f"boom-{i}\x1b[2J" + "z" * 100) for i in range(30)]
    found, stats = run(detector, exec_ws(audit_id="first"), *bad, exec_ws(audit_id="last"))
    assert len(found) == 2  # the good events on both sides still count
    assert stats.invalid == {"evaluation_error": 30}
    assert len(stats.failures) == MAX_FAILURES
    audit_id, message = stats.failures[0]
    assert audit_id.startswith("boom-0\\x1b[2J") and len(audit_id) <= 64
    assert message == "ValueError: cannot evaluate\\nthis one"
    merged = Stats()
    merged.merge(stats)
    merged.merge(stats)
    assert len(merged.failures) == MAX_FAILURES
    assert merged.invalid == {"evaluation_error": 60}


# --- timestamps ---------------------------------------------------------------------------

@pytest.mark.parametrize("received", ["2026-13-45T99:99:99Z", "2026-11-26T24:00:00Z",
                                      "\uff12\uff10\uff12\uff16-11-26T10:15:30Z", None])
def test_a_bad_receive_time_falls_back_to_the_stage_time(detector: Detector,
                                                         received: str | None) -> None:
    event = exec_ws()
    event["requestReceivedTimestamp"] = received
    event["stageTimestamp"] = "2026-11-26T10:15:30.654321Z"
    found, stats = run(detector, event)
    assert found[0].event["timestamp"] == "2026-11-26T10:15:30.654321Z"
    assert stats.fixups == {"timestamp_from_stage": 1}
    assert validate(found[0].event) == []


def test_no_usable_time_leaves_the_field_to_the_backend(detector: Detector) -> None:
    event = exec_ws()
    event["requestReceivedTimestamp"] = "2026-02-30T10:00:00Z"
    event["stageTimestamp"] = "yesterday"
    found, stats = run(detector, event)
    assert "timestamp" not in found[0].event
    assert stats.fixups == {"timestamp_missing": 1}
    assert validate(found[0].event) == []


def test_the_microsecond_receive_time_is_kept_exactly(detector: Detector) -> None:
    found, stats = run(detector, exec_ws(received="2026-11-26T10:15:30.000001Z"),
                       exec_ws(received="2026-11-26T10:15:30.000002Z"))
    assert [f.event["timestamp"] for f in found] == ["2026-11-26T10:15:30.000001Z",
                                                     "2026-11-26T10:15:30.000002Z"]
    assert stats.fixups == {}


# --- events a real kube-apiserver wrote -------------------------------------------------

RECORDED = ROOT / "tests" / "fixtures" / "apiserver-1.37"


def recorded(name: str) -> list[dict[str, Any]]:
    path = RECORDED / f"{name}.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return [orjson.loads(text) for text in path.read_bytes().splitlines() if text.strip()]


@pytest.mark.parametrize("scenario,expected", [
    # an access proxy's account execs as bob: bob is the actor, the proxy is named
    ("proxy-exec", {("kubectl-exec", "component:payments/payments-api", "bob")}),
    ("proxy-patch", {("config-drift", "component:payments/payments-api", "bob")}),
    # a generateName create at Metadata level names nothing: no entity is made up
    ("proxy-generate-name", set()),
    ("generate-name", {("config-drift", "component:shop/web-shell", "bob")}),
    ("debug-node", {("config-drift", "component:payments/node-debugger-conformance-node",
                     "conformance-admin")}),
    ("cp", {("kubectl-exec", "component:payments/nvidia-dcgm", "alice")}),
    ("impersonate-as", {("emergency-access", "component:payments/payments-db", "alice")}),
    ("gitops-patch", {("config-drift", "component:shop/checkout", "bob"),
                      ("gitops-drift", "component:shop/checkout", "bob")}),
    ("gitops-managed-patch", {("config-drift", "component:payments/ledger", "bob"),
                              ("gitops-drift", "component:payments/ledger", "bob")}),
])
def test_recorded_apiserver_events(gitops_detector: Detector, scenario: str,
                                   expected: set[tuple[str, str, str]]) -> None:
    stats = Stats()
    found = gitops_detector.detect(recorded(scenario), stats)
    assert {(f.rule, f.event["entity_ref"], f.event["actor"]) for f in found} == expected
    assert stats.invalid == {}
    for friction in found:
        assert validate(friction.event) == []
        if scenario.startswith("proxy-"):
            assert friction.event["description"].endswith(
                "(via system:serviceaccount:access-system:access-proxy)")
    if scenario == "proxy-generate-name":
        assert stats.skipped["no_name"] == 1


# --- a time far ahead of the receive time ----------------------------------------

def test_a_time_far_ahead_is_repaired_and_counted_and_the_key_stays(detector: Detector) -> None:
    event = exec_ws(received="2999-01-01T00:00:00.000000Z")
    event["stageTimestamp"] = "2026-11-26T10:15:30.200000Z"
    received = 1_795_688_130.0  # 2026-11-26T10:15:30Z, as a source would pass it
    plain, _ = run(detector, event)
    stats = Stats()
    repaired = detector.detect([event], stats, received)
    assert plain[0].event["timestamp"] == "2999-01-01T00:00:00.000000Z"
    assert repaired[0].event["timestamp"] == "2026-11-26T10:15:30.200000Z"
    assert stats.fixups == {"future_timestamp_from_stage": 1}
    assert repaired[0].key == plain[0].key  # the dedup key reads the raw fields
