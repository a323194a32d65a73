"""Workload names: generated suffixes are removed only where Kubernetes generates them."""

from __future__ import annotations

import pytest

from healert_webhook.entity import entity_ref, workload_from_name, workload_name


@pytest.mark.parametrize("resource,name,workload", [
    ("pods", "payments-api-7d9f8b6c4-xkj2p", "payments-api"),   # Deployment pod
    ("pods", "nginx-deployment-7998647bdf-phvq7", "nginx-deployment"),
    ("pods", "fluentd-x7k2p", "fluentd"),                        # DaemonSet or Job pod
    ("pods", "postgres-0", "postgres"),                          # StatefulSet pod
    ("pods", "kafka-12", "kafka"),
    ("pods", "backup-29412345-q8w2z", "backup"),                 # CronJob's Job's pod
    ("pods", "payments-gateway-proxy", "payments-gateway-proxy"),  # vowels: not generated
    ("pods", "debug", "debug"),
    ("replicasets", "payments-api-7d9f8b6c4", "payments-api"),
    ("replicasets", "payments-api", "payments-api"),
    ("jobs", "backup-29412345", "backup"),
    ("jobs", "migrate-2", "migrate-2"),                           # too short for minutes
    ("deployments", "payments-gateway-proxy", "payments-gateway-proxy"),
    ("deployments", "api-7d9f8b6c4-xkj2p", "api-7d9f8b6c4-xkj2p"),  # never cut deployments
    ("statefulsets", "postgres-0", "postgres-0"),
    ("secrets", "db-credentials-bcdfg", "db-credentials-bcdfg"),
    (None, "x-bcdfg", "x-bcdfg"),
])
def test_generated_suffixes(resource: str | None, name: str, workload: str) -> None:
    assert workload_from_name(resource, name) == workload


def test_carried_object_without_owner_keeps_its_name() -> None:
    meta = {"name": "test-pod-1", "namespace": "foo"}
    assert workload_name("pods", "test-pod-1", ("Pod", meta)) == "test-pod-1"
    # Without the object, the name alone looks like a StatefulSet pod.
    assert workload_name("pods", "test-pod-1", None) == "test-pod"


def test_owner_kinds() -> None:
    job_owner = {"name": "backup-29412345-q8w2z", "ownerReferences": [
        {"kind": "Job", "name": "backup-29412345", "controller": True}]}
    assert workload_name("pods", "backup-29412345-q8w2z", ("Pod", job_owner)) == "backup"
    mirror = {"name": "etcd-cp-1", "ownerReferences": [{"kind": "Node", "name": "cp-1"}]}
    assert workload_name("pods", "etcd-cp-1", ("Pod", mirror)) == "etcd-cp-1"
    several = {"name": "x", "ownerReferences": [
        {"kind": "ConfigMap", "name": "cfg"},
        {"kind": "StatefulSet", "name": "db", "controller": True}]}
    assert workload_name("pods", "x", ("Pod", several)) == "db"
    # Owner references without names are unusable: the pod counts as unowned.
    junk = {"name": "web-0", "ownerReferences": [None, 5, {"kind": "StatefulSet"}]}
    assert workload_name("pods", "web-0", ("Pod", junk)) == "web-0"


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
