"""What the view keeps of an object: only what resolution and GitOps read, shared."""

from __future__ import annotations

import sys

from healert_webhook.cluster.kinds import BY_RESOURCE
from healert_webhook.cluster.meta import (
    MAX_MANAGERS,
    MAX_OWNERS,
    MAX_VALUE,
    Extractor,
    Owner,
    Scaler,
    template_labels,
)
from healert_webhook.cluster.watch import record_of
from healert_webhook.entity import LABEL_KEYS

from support import cluster_objects as k8s


def extractor() -> Extractor:
    return Extractor(k8s.KEPT_LABELS, ("argocd.argoproj.io/tracking-id",))


def test_a_pod_keeps_its_identity_owner_managers_and_only_the_asked_labels() -> None:
    dep = k8s.deployment("shop", "orders-api", template={
        "app": "orders", "backstage.io/kubernetes-id": "orders-service", "tier": "web"})
    rs = k8s.replicaset(dep, "7d9f8b6c4d")
    item = k8s.pod(rs, "x7k2p")
    meta = extractor().record("Pod", item["metadata"])
    assert meta is not None
    assert (meta.namespace, meta.name) == ("shop", "orders-api-7d9f8b6c4d-x7k2p")
    assert meta.uid == item["metadata"]["uid"]
    assert meta.generate_name == "orders-api-7d9f8b6c4d-"
    assert meta.labels == (("backstage.io/kubernetes-id", "orders-service"),)
    assert meta.label("tier") is None and meta.label("app") is None
    owner = meta.controller()
    assert owner is not None and (owner.kind, owner.name) == ("ReplicaSet", rs["metadata"]["name"])
    assert owner.uid == rs["metadata"]["uid"] and owner.api_version == "apps/v1"
    assert meta.managers == ("kube-controller-manager", "kubelet")


def test_a_controller_keeps_its_pod_templates_labels() -> None:
    dep = k8s.deployment("shop", "orders-api", labels={"app.kubernetes.io/name": "orders"},
                         template={"backstage.io/kubernetes-id": "orders-service"})
    meta = extractor().record("Deployment", dep["metadata"], template_labels(dep))
    assert meta is not None
    assert meta.label("app.kubernetes.io/name") == "orders"
    assert meta.template_label("backstage.io/kubernetes-id") == "orders-service"


def test_a_cronjobs_template_is_its_jobs_pod_template() -> None:
    cron = k8s.cronjob("shop", "nightly", template={"backstage.io/kubernetes-id": "reports"})
    assert template_labels(cron) == {"backstage.io/kubernetes-id": "reports"}
    assert template_labels({"spec": "not an object"}) is None
    assert template_labels(k8s.namespace("shop")) is None


def test_pods_of_one_replicaset_share_what_repeats() -> None:
    ex = extractor()
    rs = k8s.replicaset(k8s.deployment("shop", "orders-api"), "7d9f8b6c4d")
    first = ex.record("Pod", k8s.pod(rs, "x7k2p")["metadata"])
    second = ex.record("Pod", k8s.pod(rs, "b2c4d")["metadata"])
    assert first is not None and second is not None
    assert first.owners is second.owners
    assert first.managers is second.managers
    assert first.generate_name is second.generate_name


def test_what_is_not_an_object_with_a_name_is_no_record() -> None:
    ex = extractor()
    assert ex.record("Pod", None) is None
    assert ex.record("Pod", []) is None
    assert ex.record("Pod", {"namespace": "shop"}) is None
    assert ex.record("Pod", {"name": ""}) is None
    assert ex.record("Pod", {"name": 7}) is None


def test_malformed_fields_are_left_out_not_fatal() -> None:
    meta = extractor().record("Pod", {
        "name": "p", "namespace": 3, "uid": None, "generateName": ["x"],
        "labels": {"backstage.io/kubernetes-id": 5, "app.kubernetes.io/name": "ok"},
        "ownerReferences": [None, {"kind": "ReplicaSet"}, {"name": "x"}, "text",
                            {"kind": "ReplicaSet", "name": "rs", "controller": "yes"}],
        "managedFields": [None, {"manager": 3}, {"manager": "kubectl"}],
    })
    assert meta is not None
    assert (meta.namespace, meta.uid, meta.generate_name) == ("", "", "")
    assert meta.labels == (("app.kubernetes.io/name", "ok"),)
    assert [(o.kind, o.name, o.controller) for o in meta.owners] == [("ReplicaSet", "rs", False)]
    assert meta.controller() is not None  # the only owner counts when none is marked
    assert meta.managers == ("kubectl",)


def test_one_object_cannot_make_the_view_keep_without_bound() -> None:
    meta = extractor().record("Pod", {
        "name": "p",
        "labels": {LABEL_KEYS[0]: "v" * 100_000},
        "ownerReferences": [{"kind": "X", "name": f"o{i}"} for i in range(1000)],
        "managedFields": [{"manager": f"m{i}"} for i in range(1000)],
    })
    assert meta is not None
    assert len(meta.owners) == MAX_OWNERS
    assert len(meta.managers) == MAX_MANAGERS
    assert len(meta.labels[0][1]) == MAX_VALUE


def test_a_node_owner_is_no_controller() -> None:
    mirror = k8s.bare_pod("kube-system", "kube-apiserver-cp1", owners=[
        {"apiVersion": "v1", "kind": "Node", "name": "cp1", "uid": "n", "controller": True}])
    meta = extractor().record("Pod", mirror["metadata"])
    assert meta is not None and meta.owners and meta.controller() is None


def test_an_hpa_keeps_its_scale_target_and_its_tombstone_too() -> None:
    keda = k8s.owner("ScaledObject", "orders", "shop", "keda.sh/v1alpha1")
    obj = k8s.hpa("shop", "web-hpa", "orders-api", owners=[keda])
    meta = record_of(BY_RESOURCE["horizontalpodautoscalers"], extractor(), obj)
    assert isinstance(meta, Scaler)
    target = Owner("apps/v1", "Deployment", "orders-api", "", True)
    assert meta.target == target
    # Resolution follows the target, not the owner reference the record still keeps.
    assert meta.up() == target and meta.controller() is not None
    assert meta.managers == ("kubectl-autoscale", "kube-controller-manager")
    tomb = meta.tombstone(5.0)
    assert isinstance(tomb, Scaler) and tomb.target == target and tomb.deleted_at == 5.0
    # An HPA that names no usable target is a plain record.
    for ref in (None, {"kind": "Deployment"}, {"name": "x"}, "orders-api"):
        broken = k8s.hpa("shop", "web-hpa", "orders-api")
        broken["spec"]["scaleTargetRef"] = ref
        plain = record_of(BY_RESOURCE["horizontalpodautoscalers"], extractor(), broken)
        assert plain is not None and not isinstance(plain, Scaler), ref


def test_records_of_other_kinds_pay_nothing_for_the_scale_target() -> None:
    """Only an autoscaler's record has the slot: 100,000 pods keep their size."""
    rs = k8s.replicaset(k8s.deployment("shop", "orders-api"), "7d9f8b6c4d")
    pod = extractor().record("Pod", k8s.pod(rs, "x7k2p")["metadata"])
    hpa = record_of(BY_RESOURCE["horizontalpodautoscalers"], extractor(),
                    k8s.hpa("shop", "web-hpa", "orders-api"))
    assert pod is not None and hpa is not None
    assert not hasattr(pod, "target") and not hasattr(pod, "__dict__")
    assert sys.getsizeof(hpa) == sys.getsizeof(pod) + 8
