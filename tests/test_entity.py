"""Workload names: generated suffixes are removed only where Kubernetes generates them,
and the same way at every audit level."""

from __future__ import annotations

from typing import Any

import pytest

from healert_webhook.entity import (
    entity_ref,
    owner_reference,
    resolve_workload,
    workload_from_name,
    workload_name,
)

from support.events import owner


@pytest.mark.parametrize("resource,name,workload", [
    ("pods", "payments-api-7d9f8b6c4-xkj2p", "payments-api"),    # Deployment pod, 9-char hash
    ("pods", "nginx-deployment-7998647bdf-phvq7", "nginx-deployment"),  # 10-char hash
    ("pods", "web-5d8f9c-bcdfg", "web"),                          # 6-char hash, the shortest
    ("pods", "fluentd-x7k2p", "fluentd"),                         # DaemonSet or Job pod
    ("pods", "nvidia-dcgm-x7k2p", "nvidia-dcgm"),                 # not a Deployment "nvidia"
    ("pods", "kube-flannel-ds-4x8kz", "kube-flannel-ds"),         # not a Deployment "kube-flannel"
    ("pods", "migrate-db-k8x2q", "migrate-db"),                   # a Job's pod, not "migrate"
    ("pods", "postgres-0", "postgres"),                           # StatefulSet pod
    ("pods", "kafka-12", "kafka"),
    ("pods", "backup-29412345-q8w2z", "backup"),                  # CronJob's Job's pod
    ("pods", "payments-gateway-proxy", "payments-gateway-proxy"),  # vowels: not generated
    ("pods", "debug", "debug"),
    ("pods", "node-debugger-ip-10-0-1-17.eu-west-1.compute.internal-bk2vd",
     "node-debugger-ip-10-0-1-17.eu-west-1.compute.internal"),   # kubectl debug node
    ("replicasets", "payments-api-7d9f8b6c4", "payments-api"),
    ("replicasets", "payments-api", "payments-api"),
    ("replicasets", "nvidia-dcgm", "nvidia-dcgm"),                # 4 characters: not a hash
    ("jobs", "backup-29412345", "backup"),
    ("jobs", "migrate-2", "migrate-2"),                            # too short for minutes
    ("deployments", "payments-gateway-proxy", "payments-gateway-proxy"),
    ("deployments", "api-7d9f8b6c4-xkj2p", "api-7d9f8b6c4-xkj2p"),  # never cut deployments
    ("statefulsets", "postgres-0", "postgres-0"),
    ("secrets", "db-credentials-bcdfg", "db-credentials-bcdfg"),
    (None, "x-bcdfg", "x-bcdfg"),
    ("pods", "web-\uff17\uff18", "web-\uff17\uff18"),  # full-width digits are not digits
])
def test_generated_suffixes(resource: str | None, name: str, workload: str) -> None:
    assert workload_from_name(resource, name) == workload


@pytest.mark.parametrize("name", ["test-pod-1", "nvidia-dcgm-x7k2p", "web-0",
                                  "payments-api-7d9f8b6c4-xkj2p"])
def test_a_carried_object_without_label_or_owner_changes_nothing(name: str) -> None:
    bare = workload_name("pods", name)
    assert workload_name("pods", name, {"name": name, "namespace": "foo"}) == bare
    assert workload_name("pods", "", {"name": name, "namespace": "foo"}) == bare


def test_labels_then_controlling_owner_then_only_owner() -> None:
    meta: dict[str, Any] = {"name": "x-7d9f8b6c4-xkj2p", "labels": {
        "app.kubernetes.io/name": "checkout", "backstage.io/kubernetes-id": "shop-checkout"},
        "ownerReferences": [owner("ReplicaSet", "x-7d9f8b6c4")]}
    assert resolve_workload("pods", meta["name"], meta).how == \
        "label backstage.io/kubernetes-id of the object the event carries"
    del meta["labels"]["backstage.io/kubernetes-id"]
    assert workload_name("pods", meta["name"], meta) == "checkout"
    meta["labels"] = {"app.kubernetes.io/name": "  "}  # blank labels do not count
    assert resolve_workload("pods", meta["name"], meta) == (
        "x", "owner ReplicaSet x-7d9f8b6c4 of the object the event carries")


def test_owner_selection() -> None:
    job = [owner("Job", "backup-29412345", api_version="batch/v1")]
    assert owner_reference(job) == ("Job", "backup-29412345")
    assert workload_name("pods", "backup-29412345-q8w2z", {"ownerReferences": job}) == "backup"
    # The controlling owner wins wherever it is.
    several = [owner("ConfigMap", "cfg", controller=None), owner("StatefulSet", "db")]
    assert owner_reference(several) == ("StatefulSet", "db")
    # No controller: the only owner reference counts; two of them say nothing.
    assert owner_reference([owner("CustomApp", "shop", controller=False)]) == \
        ("CustomApp", "shop")
    two = [owner("A", "a", controller=None), owner("B", "b", controller=None)]
    assert owner_reference(two) is None
    assert workload_name("pods", "web-0", {"ownerReferences": two}) == "web"
    # A Node owns a static pod's mirror: not a workload, so the name rules apply.
    mirror = {"name": "etcd-cp-1", "ownerReferences": [owner("Node", "cp-1",
                                                             api_version="v1")]}
    assert workload_name("pods", "etcd-cp-1", mirror) == workload_name("pods", "etcd-cp-1")


@pytest.mark.parametrize("junk", [
    [None, 5, "x", {"kind": "StatefulSet"}],
    [{"kind": ["ReplicaSet"], "name": "web-7d9f8b6c4", "controller": True}],
    [{"kind": {"k": "ReplicaSet"}, "name": "web-7d9f8b6c4"}],
    [{"kind": "ReplicaSet", "name": ["web"], "controller": True}],
    [{"kind": "ReplicaSet", "name": "", "controller": True}],
    {"kind": "ReplicaSet", "name": "web-7d9f8b6c4"},
    "web",
])
def test_unusable_owner_references_are_ignored_not_raised(junk: Any) -> None:
    assert owner_reference(junk) is None
    assert workload_name("pods", "web-0", {"ownerReferences": junk}) == "web"


@pytest.mark.parametrize("prefix,generated,workload,how", [
    ("payments-api-7d9f8b6c4-", "payments-api-7d9f8b6c4-xkj2p", "payments-api",
     "generateName, as a Deployment's pod"),
    ("nvidia-dcgm-", "nvidia-dcgm-x7k2p", "nvidia-dcgm", "generateName"),
    ("backup-29412345-", "backup-29412345-q8w2z", "backup",
     "generateName, as a CronJob's pod"),
    ("debug-", "debug-bk2vd", "debug", "generateName"),
    ("batch", "batchbk2vd", "batch", "generateName"),
])
def test_generate_name_is_the_name_with_its_suffix_known(prefix: str, generated: str,
                                                         workload: str, how: str) -> None:
    request = {"generateName": prefix, "namespace": "shop"}         # before the name exists
    response = {**request, "name": generated}                       # as the apiserver made it
    assert resolve_workload("pods", "", request) == (workload, how)
    assert resolve_workload("pods", "", response) == (workload, how)
    assert resolve_workload("pods", generated, response) == (workload, how)


def test_generate_name_ignored_when_the_name_was_chosen() -> None:
    # The apiserver ignores generateName when a name is given; so does the agent.
    meta = {"name": "web-0", "generateName": "web-"}
    assert workload_name("pods", "web-0", meta) == "web"
    meta = {"name": "batch-job-1", "generateName": "other-"}
    assert workload_name("jobs", "batch-job-1", meta) == "batch-job-1"


def test_no_name_at_all_is_no_workload() -> None:
    assert resolve_workload("pods", "", None) == ("", "no name")
    assert resolve_workload("pods", "", {"namespace": "shop"}) == ("", "no name")
    assert workload_name("secrets", "", {"generateName": 7}) == ""


@pytest.mark.parametrize("namespace,workload,ref", [
    ("shop", "checkout", "component:shop/checkout"),
    ("default", "system:aggregate-to-edit", "component:default/system-aggregate-to-edit"),
    ("a.b", "name.with.dots_ok", "component:a-b/name.with.dots_ok"),
    ("", "", "component:default/unknown"),
    ("shop", "caf\u00e9 \u2603", "component:shop/caf-"),
])
def test_entity_refs_are_what_the_backend_accepts(namespace: str, workload: str,
                                                  ref: str) -> None:
    assert entity_ref(namespace, workload) == ref


def test_long_names_are_cut_but_stay_distinct() -> None:
    a = entity_ref("shop", "x" * 300 + "a")
    b = entity_ref("shop", "x" * 300 + "b")
    assert len(a) == len(b) == 200
    assert a != b
