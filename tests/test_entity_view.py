"""Detection with the view of the cluster: one workload, one entity, whatever the action
and the audit level.

The view holds the objects a real kube-apiserver and kube-controller-manager made
(tests/fixtures/apiserver-1.37-objects, stored as the watches store them); the events
are real events of the same apiserver (tests/fixtures/apiserver-1.37), moved onto those
objects (the two were recorded in different runs, so generated names differ). The view's
watches against the real apiserver are conformance/tests/test_50_cluster_view.py's; the
running agents', test_55_entity_wiring.py's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from healert_webhook.cluster.view import View
from healert_webhook.config import Settings
from healert_webhook.detect import Detector
from healert_webhook.explain import explain_event
from healert_webhook.pipeline import Pipeline, make_detector
from healert_webhook.records import Friction, Stats
from healert_webhook.rules import RuleSet, parse_rules

from support import cluster_objects as k8s
from support.cluster_objects import Loaded
from support.events import audit_event
from support.paths import ROOT

OBJECTS = ROOT / "tests" / "fixtures" / "apiserver-1.37-objects"
EVENTS = ROOT / "tests" / "fixtures" / "apiserver-1.37"
SHOP_POD = "checkout-86956c5b4-sgvrj"
SHOP_CHECKOUT = "component:shop/shop-checkout"
BACKSTAGE = "backstage.io/kubernetes-id"


def every_rule() -> RuleSet:
    """The shipped rules with the optional ones enabled too."""
    text = (ROOT / "rules.yaml").read_text()
    return parse_rules("".join(line for line in text.splitlines(keepends=True)
                               if line.strip() != "enabled: false"))


RULES = every_rule()


def recorded() -> Loaded:
    """A view holding every recorded object, stored as its watch stores it."""
    box = Loaded()
    for name in ("controllers", "payments", "shop", "namespaces"):
        for item in json.loads((OBJECTS / f"{name}.json").read_text())["items"]:
            if item["kind"] in ("Pod", "Namespace"):
                box.add_partial(item["kind"].lower() + "s", item)
            else:
                box.add(item)
    return box


def events(name: str) -> list[dict[str, Any]]:
    """A recorded fixture's events."""
    return [json.loads(line) for line in (EVENTS / f"{name}.jsonl").read_text().splitlines()]


def moved(event: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
    """The event as if made on `namespace`/`name` (objectRef and requestURI)."""
    event = json.loads(json.dumps(event))
    ref = event["objectRef"]
    old = f"/namespaces/{ref['namespace']}/{ref['resource']}/{ref['name']}"
    event["requestURI"] = event["requestURI"].replace(
        old, f"/namespaces/{namespace}/{ref['resource']}/{name}")
    ref["namespace"], ref["name"] = namespace, name
    return event


def detect(detector: Detector, *items: dict[str, Any]) -> tuple[list[Friction], Stats]:
    """The friction events of `items`, once per key (an exec fires at two stages, which
    the outbox stores once), and the counts."""
    stats = Stats()
    found = detector.detect(items, stats, 1.9e9)
    return list({f.key: f for f in found}.values()), stats


@pytest.fixture(scope="module")
def box() -> Loaded:
    """The recorded objects in a synced view."""
    return recorded()


@pytest.fixture(scope="module")
def with_view(box: Loaded) -> Detector:
    """Every rule, reading the view."""
    return Detector(RULES, view=box.view)


@pytest.fixture(scope="module")
def without_view() -> Detector:
    """Every rule, from the events alone."""
    return Detector(RULES)


# What each recorded action becomes on the Deployment `checkout` (its pod template labelled
# backstage.io/kubernetes-id: shop-checkout; the Deployment itself app.kubernetes.io/name:
# checkout): (fixture, resource moved, the object's new name, the rules it fires).
ACTIONS = [
    ("exec-websocket", "pods", SHOP_POD, {"kubectl-exec"}),               # Metadata
    ("proxy-exec", "pods", SHOP_POD, {"kubectl-exec"}),                   # through a proxy
    ("logs", "pods", SHOP_POD, {"pod-log-access"}),
    ("port-forward", "pods", SHOP_POD, {"port-forward"}),
    ("debug-ephemeral", "pods", SHOP_POD, {"ephemeral-debug"}),           # RequestResponse
    ("pod-label-patch", "pods", SHOP_POD, {"config-drift"}),
    ("scale", "deployments", "checkout", {"config-drift", "gitops-drift"}),  # a Scale object
    ("gitops-patch", "deployments", "checkout", {"config-drift", "gitops-drift"}),
    ("proxy-patch", "deployments", "checkout", {"config-drift", "gitops-drift"}),  # Metadata
]


@pytest.mark.parametrize("fixture,resource,name,fired", ACTIONS)
def test_every_action_and_level_on_a_workload_is_charged_to_its_label(
        with_view: Detector, fixture: str, resource: str, name: str, fired: set[str]) -> None:
    moved_events = [moved(e, "shop", name) if e["objectRef"]["resource"] == resource else e
                    for e in events(fixture)]
    found, stats = detect(with_view, *moved_events)
    assert {f.rule for f in found} == fired
    assert {f.event["entity_ref"] for f in found} == {SHOP_CHECKOUT}
    assert {f.entity_by for f in found} == {"label"}
    assert set(stats.entities) == {"label"} and sum(stats.entities.values()) >= 1


def test_without_the_view_the_same_workload_gets_other_entities(without_view: Detector) -> None:
    """What the view fixes: the event alone names the Deployment, or its carried label."""
    exec_found, _ = detect(without_view, *[moved(e, "shop", SHOP_POD)
                                           for e in events("exec-websocket")])
    patch_found, _ = detect(without_view, *events("gitops-patch"))
    assert {f.event["entity_ref"] for f in exec_found + patch_found} == {
        "component:shop/checkout"}
    assert {f.entity_by for f in exec_found} == {"name"}
    assert {f.entity_by for f in patch_found} == {"label"}  # app.kubernetes.io/name, carried


@pytest.mark.parametrize("pod,entity,method", [
    ("orders-api-657f999d48-mvkj9", "orders-service", "label"),  # on the pod template
    ("orders-db-0", "orders-db", "owner"),
    ("log-shipper-dnzpc", "log-shipper", "owner"),
    ("db-migrate-7pknn-dfqp2", "db-migrate", "owner"),            # the Job's generateName
    ("nightly-report-manual-xncdt", "nightly-report", "owner"),   # Pod -> Job -> CronJob
    ("schema-check-25djj", "schema-check", "owner"),
])
def test_owner_chains_the_controllers_made(with_view: Detector, without_view: Detector,
                                           pod: str, entity: str, method: str) -> None:
    execs = [moved(e, "controllers", pod) for e in events("exec-websocket")]
    found, _ = detect(with_view, *execs)
    assert [(f.event["entity_ref"], f.entity_by) for f in found] == \
        [(f"component:controllers/{entity}", method)]
    if pod.startswith(("db-migrate", "nightly-report")):  # what the name alone gives
        alone, _ = detect(without_view, *execs)
        assert alone[0].event["entity_ref"] != found[0].event["entity_ref"]


def test_objects_that_are_no_workload(with_view: Detector) -> None:
    """A Secret: its namespace's declared entity, else the name rules."""
    declared, _ = detect(with_view, *[moved(e, "controllers", "orders-db-credentials")
                                      for e in events("secret-get")])
    undeclared, _ = detect(with_view, *events("secret-get"))  # payments declares none
    assert [(f.event["entity_ref"], f.entity_by) for f in declared] == \
        [("component:controllers/controllers-team", "namespace")]
    assert [(f.event["entity_ref"], f.entity_by) for f in undeclared] == \
        [("component:payments/payments-db", "name")]


def test_a_pod_the_view_does_not_know_gets_the_name_rules_not_its_namespace(
        with_view: Detector) -> None:
    """The view's silence about a pod is no answer: its namespace's label is not used."""
    found, _ = detect(with_view, *[moved(e, "controllers", "web-7d9f8b6c4d-xkj2p")
                                   for e in events("exec-websocket")])
    assert [(f.event["entity_ref"], f.entity_by) for f in found] == \
        [("component:controllers/web", "name")]


def test_a_pod_deleted_before_its_batch_is_still_its_workloads() -> None:
    box = recorded()
    detector = Detector(RULES, view=box.view)
    pod = box.view.get("pods", "shop", SHOP_POD)
    assert pod is not None
    box.view.delete("pods", pod)
    execs = [moved(e, "shop", SHOP_POD) for e in events("exec-websocket")]
    found, _ = detect(detector, *execs)
    assert [(f.event["entity_ref"], f.entity_by) for f in found] == [(SHOP_CHECKOUT, "label")]
    box.clock.now += box.view.tombstone_window + 1
    box.view.sweep()
    gone, _ = detect(detector, *execs)
    assert [(f.event["entity_ref"], f.entity_by) for f in gone] == \
        [("component:shop/checkout", "name")]


def test_before_the_first_list_the_name_rules_answer_and_say_why() -> None:
    box = Loaded()
    for store in box.view.stores.values():
        store.listed = store.synced = False
    detector = Detector(RULES, view=box.view)
    event = moved(events("exec-websocket")[1], "shop", SHOP_POD)
    decision = explain_event(detector, event, 1.9e9)
    assert decision.entity == (
        "component:shop/checkout (workload checkout, found by name rules (the view cannot "
        "answer: pods not listed yet): name, as a Deployment's pod)")


def test_explain_says_how_the_view_found_the_entity(with_view: Detector) -> None:
    event = moved(events("exec-websocket")[1], "shop", SHOP_POD)
    decision = explain_event(with_view, event, 1.9e9)
    assert decision.entity == (
        "component:shop/shop-checkout (workload shop-checkout, found by label: label "
        "backstage.io/kubernetes-id on Pod shop/checkout-86956c5b4-sgvrj, from the view, "
        "for pods/exec)")
    scale = explain_event(with_view, events("scale")[1], 1.9e9)
    assert scale.entity == (
        "component:payments/payments-api (workload payments-api, found by owner: no owner "
        "and no label: Deployment payments/payments-api, from the view, for "
        "deployments/scale)")
    chain = explain_event(with_view, moved(event, "controllers", "nightly-report-manual-xncdt"),
                          1.9e9)
    assert chain.entity == (
        "component:controllers/nightly-report (workload nightly-report, found by owner: top "
        "owner CronJob controllers/nightly-report (Pod nightly-report-manual-xncdt -> Job "
        "nightly-report-manual -> CronJob nightly-report), from the view, for pods/exec)")
    moved_scale = explain_event(with_view, moved(events("scale")[1], "shop", "checkout"), 1.9e9)
    assert moved_scale.entity.endswith(
        "found by label: label backstage.io/kubernetes-id on the pod template of Deployment "
        "shop/checkout, from the view, for deployments/scale)")


def test_gitops_ownership_at_metadata_level_comes_from_the_view(
        with_view: Detector, without_view: Detector) -> None:
    """proxy-patch is audited at Metadata: no object in the event."""
    for name, evidence in (
            ("checkout", "annotation argocd.argoproj.io/tracking-id on Deployment "
                         "shop/checkout"),
            ("ledger", "field manager argocd-controller on Deployment payments/ledger")):
        namespace = "shop" if name == "checkout" else "payments"
        event = moved(events("proxy-patch")[0], namespace, name)
        decision = explain_event(with_view, event, 1.9e9)
        fired = {r.rule: r.detail for r in decision.rules if r.fired}
        assert fired["gitops-drift"] == f"every condition holds; the object is " \
                                        f"GitOps-managed ({evidence})"
        blind = explain_event(without_view, event, 1.9e9)
        assert {r.rule: r.reason for r in blind.rules}["gitops-drift"] == "gitops"
    plain = explain_event(with_view, moved(events("proxy-patch")[0], "payments",
                                           "payments-api"), 1.9e9)
    assert {r.rule: r.detail for r in plain.rules}["gitops-drift"] == (
        "the object carries none of the GitOps annotations, labels or field managers")


def test_a_view_without_the_rules_gitops_keys_is_not_asked_about_gitops(box: Loaded) -> None:
    text = (ROOT / "rules.yaml").read_text().replace(
        "\nconfig:\n", "\nconfig:\n  gitops:\n    annotations: [example.com/managed-by-git]\n",
        1)
    custom = parse_rules(text.replace("    enabled: false\n", ""))
    detector = Detector(custom, view=box.view)
    assert detector.gitops_view is None and with_keys(box.view)
    decision = explain_event(detector, moved(events("proxy-patch")[0], "shop", "checkout"),
                             1.9e9)
    assert {r.rule: r.reason for r in decision.rules}["gitops-drift"] == "gitops"
    assert decision.entity.startswith(f"{SHOP_CHECKOUT} ")  # entities still from the view


def with_keys(view: View) -> bool:
    return view.keeps(["backstage.io/kubernetes-id"], ["argocd.argoproj.io/tracking-id"])


def test_an_hpa_is_charged_to_what_it_scales(with_view: Detector) -> None:
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "checkout-autoscaler", "namespace": "shop"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                       "name": "checkout"}, "minReplicas": 1,
                    "maxReplicas": 3}}
    create = audit_event("create", "horizontalpodautoscalers", "checkout-autoscaler", "shop",
                         user="alice", level="RequestResponse", code=201,
                         requestObject=hpa, responseObject=hpa)
    found, _ = detect(with_view, create)
    assert [(f.rule, f.event["entity_ref"], f.entity_by) for f in found] == \
        [("hpa-drift", SHOP_CHECKOUT, "label")]
    # At Metadata level the HPA's target is not in the event; the view does not hold the
    # HPA yet (its watch event has not come): its own name decides, as for any object the
    # view has not seen.
    bare = audit_event("create", "horizontalpodautoscalers", "checkout-autoscaler", "shop",
                       user="alice", code=201)
    found, _ = detect(with_view, bare)
    assert [(f.event["entity_ref"], f.entity_by) for f in found] == \
        [("component:shop/checkout-autoscaler", "name")]


def test_an_hpa_the_view_holds_is_charged_to_what_it_scales_at_metadata_level() -> None:
    """Through an access proxy every request is audited at Metadata: the create, a patch
    and the delete name only the HPA; the view knows what it scales."""
    box = recorded()
    detector = Detector(RULES, view=box.view)
    meta = box.record(k8s.hpa("shop", "checkout-autoscaler", "checkout"))
    box.view.put("horizontalpodautoscalers", meta)
    made = [audit_event(verb, "horizontalpodautoscalers", "checkout-autoscaler", "shop",
                        code=code, user="system:serviceaccount:access-system:access-proxy",
                        groups=("system:serviceaccounts", "system:authenticated"),
                        impersonatedUser={"username": "bob",
                                          "groups": ["system:authenticated"]})
            for verb, code in (("create", 201), ("patch", 200))]
    found, stats = detect(detector, *made)
    assert [(f.rule, f.event["entity_ref"], f.entity_by, f.event["actor"])
            for f in found] == [("hpa-drift", SHOP_CHECKOUT, "label", "bob")] * 2
    assert stats.entities == {"label": 2}
    decision = explain_event(detector, made[0], 1.9e9)
    assert decision.entity == (
        "component:shop/shop-checkout (workload shop-checkout, found by label: label "
        "backstage.io/kubernetes-id on the pod template of Deployment shop/checkout "
        "(HorizontalPodAutoscaler checkout-autoscaler scales Deployment checkout), from "
        "the view)")
    # A patch whose batch arrives after the HPA was deleted: its tombstone still knows
    # the target.
    box.view.delete("horizontalpodautoscalers", meta)
    patch = audit_event("patch", "horizontalpodautoscalers", "checkout-autoscaler", "shop",
                        user="alice", received="2026-11-26T10:16:00.000000Z")
    assert [(f.event["entity_ref"], f.entity_by) for f in detect(detector, patch)[0]] == \
        [(SHOP_CHECKOUT, "label")]


def test_entity_refs_are_lower_case_and_the_catalog_namespace_is_a_setting() -> None:
    box = Loaded()
    dep = k8s.deployment("Shop", "orders-api", template={BACKSTAGE: "Orders-Service"})
    rs = k8s.replicaset(dep, "7d9f8b6c4d")
    box.add(dep, rs)
    box.add_partial("pods", k8s.pod(rs, "x7k2p"))
    execs = [moved(e, "Shop", "orders-api-7d9f8b6c4d-x7k2p") for e in events("exec-websocket")]
    found, _ = detect(Detector(RULES, view=box.view), *execs)
    assert [f.event["entity_ref"] for f in found] == ["component:shop/orders-service"]
    assert found[0].event["service"] == "Orders-Service"
    fixed = Detector(RULES, view=box.view, entity_namespace="Platform",
                     catalog_namespace="entity-namespace")
    found, _ = detect(fixed, *execs)
    assert [f.event["entity_ref"] for f in found] == ["component:platform/orders-service"]
    assert found[0].event["namespace"] == "Shop"  # the Kubernetes namespace stays


def test_the_label_keys_are_a_setting(box: Loaded) -> None:
    """Only the configured keys name entities (the view keeps what it was started with)."""
    generic = Detector(RULES, view=box.view, label_keys=("app.kubernetes.io/name",))
    found, _ = detect(generic, *[moved(e, "shop", SHOP_POD) for e in events("exec-websocket")])
    # checkout's Deployment carries app.kubernetes.io/name: checkout; its pods do not.
    assert [(f.event["entity_ref"], f.entity_by) for f in found] == \
        [("component:shop/checkout", "label")]


def test_the_pipeline_counts_resolutions_and_reads_the_view_after_a_reload(
        tmp_path: Path, box: Loaded) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text((ROOT / "rules.yaml").read_text())
    settings = Settings(rules_path=rules)
    pipeline = Pipeline.from_settings(settings)
    pipeline.use_view(box.view)
    before = {m: REGISTRY.get_sample_value("healert_entity_resolutions_total",
                                           {"method": m}) for m in ("label", "name")}
    assert None not in before.values()  # shown at 0 from the start
    execs = [moved(e, "shop", SHOP_POD) for e in events("exec-websocket")]
    secret = events("secret-get")
    found = pipeline.evaluate_items(execs + secret, "replay").frictions
    # The exec fires at both of its stages (stored once): each is a resolution.
    assert [(f.rule, f.entity_by) for f in found] == [("kubectl-exec", "label")] * 2 + [
        ("emergency-access", "name")]
    after = {m: REGISTRY.get_sample_value("healert_entity_resolutions_total", {"method": m})
             for m in ("label", "name")}
    assert after == {"label": (before["label"] or 0) + 2, "name": (before["name"] or 0) + 1}
    assert pipeline.reload()
    again = pipeline.evaluate_items(execs, "replay").frictions
    assert {f.event["entity_ref"] for f in again} == {SHOP_CHECKOUT}
    assert make_detector(RULES, settings).view is None
