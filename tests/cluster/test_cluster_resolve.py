"""Resolution on the view: one workload, one entity, whatever the action and the level."""

from __future__ import annotations

import pytest

from healert_webhook.cluster.resolve import carried_record, gitops, resolve, resolve_event
from healert_webhook.rules import DEFAULT_GITOPS

from support import cluster_objects as k8s
from support.cluster_objects import Loaded

BACKSTAGE = "backstage.io/kubernetes-id"


@pytest.fixture
def shop() -> Loaded:
    """orders-api (template labelled orders-service), its ReplicaSet and pod."""
    box = Loaded()
    dep = k8s.deployment("shop", "orders-api", template={"app": "orders",
                                                          BACKSTAGE: "orders-service"})
    rs = k8s.replicaset(dep, "7d9f8b6c4d")
    box.add(dep, rs)
    box.add_partial("pods", k8s.pod(rs, "x7k2p"))
    box.add_partial("namespaces", k8s.namespace("shop"))
    return box


def test_every_action_on_a_labelled_workload_finds_the_same_entity(shop: Loaded) -> None:
    pod = "orders-api-7d9f8b6c4d-x7k2p"
    cases = [("pods", pod, "exec"), ("pods", pod, "portforward"), ("pods", pod, "log"),
             ("pods", pod, None), ("replicasets", "orders-api-7d9f8b6c4d", None),
             ("deployments", "orders-api", "scale"), ("deployments", "orders-api", None)]
    for resource, name, sub in cases:
        found = resolve(shop.view, resource, "shop", name, subresource=sub)
        assert (found.name, found.method) == ("orders-service", "label"), (resource, sub, found)
    scale = resolve(shop.view, "deployments", "shop", "orders-api", subresource="scale")
    assert "pod template" in scale.explanation and "deployments/scale" in scale.explanation


def test_an_explicit_backstage_label_up_the_chain_beats_a_generic_one_nearer() -> None:
    box = Loaded()
    sts = k8s.statefulset("shop", "orders-db-postgresql", labels={BACKSTAGE: "orders-db"},
                          template={"app.kubernetes.io/name": "postgresql"})
    box.add(sts)
    box.add_partial("pods", k8s.pod(sts, "0"))
    for resource, name in (("pods", "orders-db-postgresql-0"),
                           ("statefulsets", "orders-db-postgresql")):
        found = resolve(box.view, resource, "shop", name)
        assert (found.name, found.method) == ("orders-db", "label"), found
    # Without the Backstage label the chart's name label decides, for both alike.
    other = k8s.statefulset("shop", "cart-db-postgresql",
                            template={"app.kubernetes.io/name": "postgresql"})
    box.add(other)
    box.add_partial("pods", k8s.pod(other, "0"))
    assert resolve(box.view, "pods", "shop", "cart-db-postgresql-0").name == "postgresql"


def test_without_labels_the_top_controller_names_the_entity() -> None:
    box = Loaded()
    dep = k8s.deployment("shop", "payments-gateway-proxy")
    rs = k8s.replicaset(dep, "5f6d7c8b9")
    box.add(dep, rs)
    box.add_partial("pods", k8s.pod(rs))
    found = resolve(box.view, "pods", "shop", "payments-gateway-proxy-5f6d7c8b9-x7k2p")
    assert (found.name, found.method) == ("payments-gateway-proxy", "owner")
    assert "Pod payments-gateway-proxy-5f6d7c8b9-x7k2p -> ReplicaSet" in found.explanation
    scale = resolve(box.view, "deployments", "shop", "payments-gateway-proxy",
                    subresource="scale")
    assert (scale.name, scale.method) == ("payments-gateway-proxy", "owner")


def test_a_job_made_from_generate_name_is_its_base() -> None:
    box = Loaded()
    job = k8s.job("shop", "db-migrate-q2w8z", generate_name="db-migrate-")
    box.add(job)
    box.add_partial("pods", k8s.pod(job, "b2c4d", kind="Job"))
    for resource, name in (("pods", "db-migrate-q2w8z-b2c4d"), ("jobs", "db-migrate-q2w8z")):
        found = resolve(box.view, resource, "shop", name)
        assert (found.name, found.method) == ("db-migrate", "owner"), found
        assert "generateName" in found.explanation


def test_a_cronjobs_pod_is_the_cronjob() -> None:
    box = Loaded()
    cron = k8s.cronjob("shop", "nightly-report")
    job = k8s.job("shop", "nightly-report-29412345", cronjob="nightly-report")
    box.add(cron, job)
    box.add_partial("pods", k8s.pod(job, "x7k2p", kind="Job"))
    found = resolve(box.view, "pods", "shop", "nightly-report-29412345-x7k2p")
    assert (found.name, found.method) == ("nightly-report", "owner")
    assert found.explanation.count("->") == 2


def test_a_pod_deleted_before_its_batch_arrives_still_resolves(shop: Loaded) -> None:
    pod = shop.view.get("pods", "shop", "orders-api-7d9f8b6c4d-x7k2p")
    assert pod is not None
    shop.view.delete("pods", pod)
    found = resolve(shop.view, "pods", "shop", "orders-api-7d9f8b6c4d-x7k2p", subresource="exec")
    assert (found.name, found.method) == ("orders-service", "label")
    assert "(deleted)" in found.explanation
    shop.clock.now += 601
    shop.view.sweep()
    gone = resolve(shop.view, "pods", "shop", "orders-api-7d9f8b6c4d-x7k2p")
    assert gone.method == "unknown" and "neither in the view nor a tombstone" in gone.explanation


def test_an_owner_the_view_lacks_is_named_by_the_name_rules() -> None:
    box = Loaded()
    rs = k8s.replicaset(k8s.deployment("shop", "orders-api"), "7d9f8b6c4d")
    box.add_partial("pods", k8s.pod(rs))  # the ReplicaSet itself is not in the view
    found = resolve(box.view, "pods", "shop", "orders-api-7d9f8b6c4d-x7k2p")
    assert (found.name, found.method) == ("orders-api", "owner")
    assert "not in the view" in found.explanation


def test_an_owner_of_another_kind_counts_once_fetched() -> None:
    box = Loaded()
    rollout = k8s.rollout("shop", "checkout", labels={BACKSTAGE: "checkout-service"})
    rs = k8s.replicaset(rollout, "6c8d9f7b5", kind="Rollout",
                        api_version="argoproj.io/v1alpha1")
    box.add(rs)
    box.add_partial("pods", k8s.pod(rs))
    before = resolve(box.view, "pods", "shop", "checkout-6c8d9f7b5-x7k2p")
    assert (before.name, before.method) == ("checkout", "owner")
    assert "not fetched" in before.explanation
    box.fetched(rollout)
    after = resolve(box.view, "pods", "shop", "checkout-6c8d9f7b5-x7k2p")
    assert (after.name, after.method) == ("checkout-service", "label")
    assert "Rollout shop/checkout" in after.explanation


def test_objects_that_are_no_workload_go_to_their_namespaces_entity() -> None:
    box = Loaded()
    box.add_partial("namespaces", k8s.namespace("payments", {BACKSTAGE: "payments-team"}),
                    k8s.namespace("scratch"))
    secret = {"metadata": {"name": "payments-db-credentials", "namespace": "payments"}}
    found = resolve(box.view, "secrets", "payments", "payments-db-credentials",
                    carried=carried_record("secrets", secret))
    assert (found.name, found.method) == ("payments-team", "namespace")
    metadata_level = resolve(box.view, "secrets", "payments", "payments-db-credentials")
    assert (metadata_level.name, metadata_level.method) == ("payments-team", "namespace")
    labelled = {"metadata": {"name": "x", "namespace": "payments",
                             "labels": {BACKSTAGE: "billing"}}}
    assert resolve(box.view, "secrets", "payments", "x",
                   carried=carried_record("secrets", labelled)).name == "billing"
    nothing = resolve(box.view, "policyexceptions", "scratch", "allow-all")
    assert nothing.method == "unknown" and "declares no entity" in nothing.explanation
    cluster_scoped = resolve(box.view, "clusterroles", None, "admin")
    assert cluster_scoped.method == "unknown"


def test_a_bare_pod_goes_to_its_namespaces_entity() -> None:
    box = Loaded()
    box.add_partial("namespaces", k8s.namespace("ops", {BACKSTAGE: "platform"}))
    box.add_partial("pods", k8s.bare_pod("ops", "node-debugger-cp1-x7k2p"))
    found = resolve(box.view, "pods", "ops", "node-debugger-cp1-x7k2p", subresource="attach")
    assert (found.name, found.method) == ("platform", "namespace")


def test_before_the_first_list_the_view_cannot_answer() -> None:
    box = Loaded()
    store = box.view.stores["pods"]
    store.listed = store.synced = False
    found = resolve(box.view, "pods", "shop", "web-0")
    assert found.method == "unknown" and "not listed yet" in found.explanation


def test_the_carried_object_answers_what_the_watch_has_not_delivered_yet(shop: Loaded) -> None:
    rs = k8s.replicaset(k8s.deployment("shop", "orders-api"), "7d9f8b6c4d")
    new_pod = k8s.pod(rs, "zz9zz")
    found = resolve(shop.view, "pods", "shop", "orders-api-7d9f8b6c4d-zz9zz",
                    carried=carried_record("pods", new_pod))
    assert (found.name, found.method) == ("orders-service", "label")
    assert "from the event" in found.explanation


def test_an_owner_cycle_ends() -> None:
    box = Loaded()
    a = {"name": "a", "namespace": "x", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "b", "controller": True}]}
    b = {"name": "b", "namespace": "x", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "a", "controller": True}]}
    for meta in (a, b):
        record = box.extractor.record("ReplicaSet", meta)
        assert record is not None
        box.view.put("replicasets", record)
    assert resolve(box.view, "replicasets", "x", "a").method == "owner"


def test_gitops_ownership_from_the_cached_object() -> None:
    box = Loaded()
    box.add(k8s.deployment("shop", "argo", annotations={
                "argocd.argoproj.io/tracking-id": "shop:apps/Deployment:shop/argo"}),
            k8s.deployment("shop", "flux", labels={"kustomize.toolkit.fluxcd.io/name": "apps"}),
            k8s.deployment("shop", "ssa", managers=("argocd-controller",)),
            k8s.deployment("shop", "by-hand"))
    expected = {
        "argo": "annotation argocd.argoproj.io/tracking-id on Deployment shop/argo",
        "flux": "label kustomize.toolkit.fluxcd.io/name on Deployment shop/flux",
        "ssa": "field manager argocd-controller on Deployment shop/ssa",
        "by-hand": None,
    }
    for name, evidence in expected.items():
        answer = gitops(box.view, "deployments", "shop", name, DEFAULT_GITOPS)
        assert answer.known and answer.evidence == evidence, name
    unknown = gitops(box.view, "deployments", "shop", "absent", DEFAULT_GITOPS)
    assert not unknown.known and unknown.evidence is None


def test_a_workload_the_view_does_not_hold_is_no_answer_even_in_a_declared_namespace() -> None:
    """A pod the view has never seen (or whose tombstone expired) is not the namespace's:
    the caller's name rules answer, as for a view that has not listed pods yet."""
    box = Loaded()
    box.add_partial("namespaces", k8s.namespace("ops", {BACKSTAGE: "platform"}))
    found = resolve(box.view, "pods", "ops", "web-7d9f8b6c4d-x7k2p", subresource="exec")
    assert found.method == "unknown" and "neither in the view nor a tombstone" in \
        found.explanation
    secret = resolve(box.view, "secrets", "ops", "db")  # never held by the view
    assert (secret.name, secret.method) == ("platform", "namespace")


HPAS = "horizontalpodautoscalers"
SCALES = "HorizontalPodAutoscaler web-hpa scales Deployment orders-api"


def carried_hpa(target: dict[str, str] | None) -> dict[str, object]:
    """An HPA as an event carries it (`target` None: the object has no scaleTargetRef)."""
    obj = k8s.hpa("shop", "web-hpa", "orders-api")
    if target is None:
        del obj["spec"]["scaleTargetRef"]
    else:
        obj["spec"]["scaleTargetRef"] = target
    return obj


def test_an_hpa_in_the_view_resolves_through_its_target_at_metadata_level(
        shop: Loaded) -> None:
    """A Metadata-level event names only the HPA: the view's record knows its target."""
    shop.add(k8s.hpa("shop", "web-hpa", "orders-api"))
    for sub in (None, "status"):
        found = resolve_event(shop.view, HPAS, "shop", "web-hpa", subresource=sub)
        assert (found.name, found.method) == ("orders-service", "label"), sub
        assert f"the pod template of Deployment shop/orders-api ({SCALES}), from the view" \
            in found.explanation
    # An HPA without a label of its own resolves like an exec into the target's pod.
    assert resolve(shop.view, "pods", "shop", "orders-api-7d9f8b6c4d-x7k2p").name == \
        "orders-service"


def test_the_views_hpa_wins_over_the_carried_one_which_serves_until_the_watch_has_it(
        shop: Loaded) -> None:
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "orders-api"}
    # Audited before its watch event (a create at Request level): the event's copy.
    early = resolve_event(shop.view, HPAS, "shop", "web-hpa", obj=carried_hpa(target))
    assert (early.name, early.method) == ("orders-service", "label")
    assert early.explanation.endswith(f"({SCALES}), from the event")
    # Once the view holds it, its copy decides (as for every other kind).
    shop.add(k8s.hpa("shop", "web-hpa", "orders-api"))
    later = resolve_event(shop.view, HPAS, "shop", "web-hpa",
                          obj=carried_hpa({**target, "name": "cart"}))
    assert later.name == "orders-service" and later.explanation.endswith(", from the view")


def test_an_hpa_the_view_does_not_hold_is_no_answer(shop: Loaded) -> None:
    """Not seen yet (a Metadata-level create read before its watch event): the caller's
    name rules, exactly as for a pod the view has not seen."""
    for obj in (None, carried_hpa(None), "not an object"):
        found = resolve_event(shop.view, HPAS, "shop", "web-hpa", obj=obj)
        assert found.method == "unknown", obj
    assert resolve_event(shop.view, HPAS, "shop", "web-hpa").explanation == \
        "horizontalpodautoscalers shop/web-hpa is neither in the view nor a tombstone"
    shop.view.stores[HPAS].listed = False
    assert resolve_event(shop.view, HPAS, "shop", "web-hpa").explanation == \
        "horizontalpodautoscalers not listed yet"
    # A carried HPA that names no target is about a workload all the same: never the
    # namespace's entity.
    box = Loaded()
    box.add_partial("namespaces", k8s.namespace("shop", labels={BACKSTAGE: "shop-team"}))
    found = resolve_event(box.view, HPAS, "shop", "web-hpa", obj=carried_hpa(None))
    assert found.method == "unknown"
    assert found.explanation == "HorizontalPodAutoscaler shop/web-hpa names no scale " \
                                "target, from the event"


def test_a_target_missing_from_the_view_is_its_name(shop: Loaded) -> None:
    shop.add(k8s.hpa("shop", "cart-hpa", "cart"),
             k8s.hpa("shop", "rs-hpa", "cart-7d9f8b6c4d", target_kind="ReplicaSet"))
    found = resolve_event(shop.view, HPAS, "shop", "cart-hpa")
    assert (found.name, found.method) == ("cart", "owner")
    assert found.explanation == (
        "scale target Deployment cart (not in the view; its name) of "
        "HorizontalPodAutoscaler shop/cart-hpa, from the view")
    # A ReplicaSet target's name is read as the name rules read a ReplicaSet's.
    assert resolve_event(shop.view, HPAS, "shop", "rs-hpa").name == "cart"


def test_a_target_of_a_kind_not_watched_follows_the_fetched_object_else_its_name() -> None:
    box = Loaded()
    box.fetched(k8s.rollout("shop", "checkout", labels={BACKSTAGE: "checkout-service"}))
    rollout = {"target_kind": "Rollout", "target_api": "argoproj.io/v1alpha1"}
    box.add(k8s.hpa("shop", "web-hpa", "checkout", **rollout),
            k8s.hpa("shop", "cart-hpa", "cart", **rollout))
    found = resolve_event(box.view, HPAS, "shop", "web-hpa")
    assert (found.name, found.method) == ("checkout-service", "label")
    assert "(HorizontalPodAutoscaler web-hpa scales Rollout checkout)" in found.explanation
    unfetched = resolve_event(box.view, HPAS, "shop", "cart-hpa")
    assert (unfetched.name, unfetched.method) == ("cart", "owner")
    assert unfetched.explanation.startswith(
        "scale target Rollout cart (of a kind not fetched (yet); its name) of "
        "HorizontalPodAutoscaler shop/cart-hpa")


def test_the_scale_target_wins_over_an_owner_and_keys_go_first(shop: Loaded) -> None:
    """KEDA's ScaledObject owns the HPA it makes; the HPA is still about its target. The
    HPA is the first link of the chain: its own Backstage label would win, a generic
    `app.kubernetes.io/name` does not beat the target's Backstage label."""
    keda = k8s.owner("ScaledObject", "orders", "shop", "keda.sh/v1alpha1")
    shop.add(k8s.hpa("shop", "keda-hpa-orders", "orders-api", owners=[keda],
                     labels={"app.kubernetes.io/name": "keda-hpa-orders"}),
             k8s.hpa("shop", "labelled", "orders-api", labels={BACKSTAGE: "autoscaling"}))
    found = resolve_event(shop.view, HPAS, "shop", "keda-hpa-orders")
    assert (found.name, found.method) == ("orders-service", "label")
    own = resolve_event(shop.view, HPAS, "shop", "labelled")
    assert (own.name, own.method) == ("autoscaling", "label")


def test_a_deleted_hpa_resolves_through_its_target_for_the_window(shop: Loaded) -> None:
    """`kubectl delete hpa` is audited after the watch has deleted the HPA."""
    meta = shop.record(k8s.hpa("shop", "web-hpa", "orders-api"))
    shop.view.put(HPAS, meta)
    live = resolve_event(shop.view, HPAS, "shop", "web-hpa")
    shop.view.delete(HPAS, meta)
    tomb = shop.view.get(HPAS, "shop", "web-hpa")
    assert tomb is not None and tomb.deleted_at is not None
    assert resolve_event(shop.view, HPAS, "shop", "web-hpa") == live
    shop.clock.now += shop.view.tombstone_window + 1
    shop.view.sweep()
    assert resolve_event(shop.view, HPAS, "shop", "web-hpa").method == "unknown"


def test_the_event_object_is_the_fallback_of_resolve_event(shop: Loaded) -> None:
    rs = k8s.replicaset(k8s.deployment("shop", "orders-api"), "7d9f8b6c4d")
    obj = k8s.pod(rs, "zz9zz")
    found = resolve_event(shop.view, "pods", "shop", "orders-api-7d9f8b6c4d-zz9zz",
                          subresource="exec", obj=obj)
    assert (found.name, found.method) == ("orders-service", "label")
    assert resolve_event(shop.view, "pods", "shop", "orders-api-7d9f8b6c4d-zz9zz",
                         obj="not an object").method == "unknown"


def test_the_view_says_which_keys_its_records_keep() -> None:
    view = Loaded().view
    assert view.keeps([BACKSTAGE, *DEFAULT_GITOPS.labels], DEFAULT_GITOPS.annotations)
    assert not view.keeps(["example.com/team"])
    assert not view.keeps([], ["example.com/managed"])
